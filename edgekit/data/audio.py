"""Audio front-end (numpy only, so the deployed runtime can run it without torch): WAV -> log-mel."""
from __future__ import annotations

import wave
from functools import lru_cache

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


@lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = mel_to_hz(np.linspace(hz_to_mel(20.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0.0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
    return fb.astype(np.float32)  # [n_mels, n_fft//2+1]


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def log_mel(x: np.ndarray, sample_rate: int = 8000, n_fft: int = 256, hop: int = 128, n_mels: int = 40, frames: int = 64) -> np.ndarray:
    """[n_mels, frames] log-mel of a waveform, centred in a fixed window (so graphs stay static)."""
    x = resample(np.asarray(x, np.float32), sample_rate, FRONTEND["sample_rate"])
    need = n_fft + hop * (frames - 1)
    if len(x) >= need:
        start = (len(x) - need) // 2
        x = x[start : start + need]
    else:
        pad = need - len(x)
        x = np.pad(x, (pad // 2, pad - pad // 2))
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    return np.log(mel_filterbank(FRONTEND["sample_rate"], n_fft, n_mels) @ spec.T + 1e-6).astype(np.float32)
