"""Audio in edgekit.data: WAV files in, the avdigits front-end's log-mel out (its steps live in
edgekit.agent.preprocess, numpy only, so a device repeats them)."""
from __future__ import annotations

import wave

import numpy as np

from edgekit.errors import EdgekitError

FRONTEND = {"sample_rate": 8000, "n_fft": 256, "hop": 128, "n_mels": 40, "frames": 64}


def read_wav(path) -> tuple[np.ndarray, int]:
    """Mono float32 in [-1, 1] and the sample rate; a broken file is a user error naming the file."""
    try:
        with wave.open(path if hasattr(path, "read") else str(path), "rb") as w:  # a file or a file object
            n, ch, width, rate = w.getnframes(), w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as e:
        why = getattr(e, "strerror", None) or str(e) or ("the file is empty or cut short" if isinstance(e, EOFError) else type(e).__name__)
        raise EdgekitError(f"cannot read WAV file {path}: {why}", "replace or delete the file; expected PCM WAV") from e
    if width != 2 or not raw:
        raise EdgekitError(f"unsupported or empty WAV file {path} ({width * 8}-bit, {n} frames)", "convert it to 16-bit PCM WAV")
    got = len(raw) // (width * ch)
    if got < n or rate <= 0:
        what = f"is truncated (its header says {n} frames, it holds {got})" if got < n else f"has sample rate {rate}"
        raise EdgekitError(f"corrupt WAV file {path}: it {what}", "re-copy or replace the file, or delete it")
    x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    return x.reshape(-1, ch).mean(1), rate


def log_mel(x: np.ndarray, sample_rate: int = 8000, n_fft: int = 256, hop: int = 128, n_mels: int = 40, frames: int = 64) -> np.ndarray:
    """[n_mels, frames] log-mel of a waveform at the front-end's rate, centred in a fixed window (static graphs):
    the device's own definition (edgekit.agent.preprocess), so host and device compute the same features."""
    from edgekit.agent.preprocess import log_mel as front_end

    return front_end(x, sample_rate, FRONTEND["sample_rate"], n_fft, hop, n_mels, frames)
