"""Spoken-digit audio synthesized on the fly with espeak-ng, so audio examples and tests need no dataset download.

The bundled libespeak-ng (PyPI `espeakng-loader`) is driven through ctypes in synchronous retrieval mode, so samples
come back through a callback in the calling thread and nothing is played or written to disk.

Determinism: espeak-ng keeps hidden static state between utterances (pitch-flutter phase, AGC, cycle counters) that no
API call resets, so the same text and settings give a different waveform each time. Each utterance is therefore
synthesized by a freshly loaded private copy of the library (dlopen/dlclose, ~3 ms) with its breath-noise generator
seeded (espeak seeds it from time() otherwise), which makes a take a pure function of its parameters, independent of
what was synthesized before in the process.
"""
from __future__ import annotations

import _ctypes
import atexit
import ctypes
import math
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from scipy.signal import lfilter, resample_poly

from edgekit.errors import EdgekitError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Accents x voice variants; only those present in the bundled data are used (checked once at first use).
_LANGS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
_SYNCHRONOUS, _DONT_EXIT = 2, 0x8000  # without DONT_EXIT espeak calls exit() on missing data, killing the process
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER values from speak_lib.h
_HINT = "pip install --force-reinstall espeakng-loader (it bundles libespeak-ng and its voice data)"

_LOCK = threading.Lock()  # espeak-ng is global state and not thread-safe: every call into it holds this lock
_ENGINE: dict | None = None
_CHUNKS: list[bytes] = []


@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
def _on_audio(wav, n, _events):  # module-level so ctypes never frees it while espeak points to it; wav NULL = done
    if wav and n > 0:
        _CHUNKS.append(ctypes.string_at(wav, 2 * n))
    return 0


def _open(eng: dict):
    lib = ctypes.CDLL(eng["lib_path"])
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, str(eng["data"].parent).encode(), _DONT_EXIT)  # dir holding the data
    if rate <= 0:
        _ctypes.dlclose(lib._handle)
        raise EdgekitError(f"espeak-ng failed to initialize with voice data at {eng['data']}", _HINT)
    lib.espeak_SetSynthCallback(_on_audio)
    return lib, rate


def _close(lib) -> None:
    lib.espeak_Terminate()
    _ctypes.dlclose(lib._handle)  # drops the library's static state; the next _open starts clean


def _engine() -> dict:
    """Locate the library, make the private copy and list usable voices, once per process; caller holds _LOCK."""
    global _ENGINE
    if _ENGINE is None:
        try:  # private copy of the .so (own inode): another espeakng_loader user can't share or disturb our instance
            import espeakng_loader

            data, tmp = Path(espeakng_loader.get_data_path()), tempfile.mkdtemp(prefix="edgekit-espeak-")
            atexit.register(shutil.rmtree, tmp, True)
            eng = {"lib_path": shutil.copy(espeakng_loader.get_library_path(), tmp), "data": data}
            lib, eng["rate"] = _open(eng)
        except (ImportError, OSError, RuntimeError) as e:
            raise EdgekitError(f"cannot load the espeak-ng speech synthesizer: {e}", _HINT) from e
        try:  # a bad language returns EE_NOT_FOUND; a bad variant is silently ignored, so check its file instead
            langs = [lang for lang in _LANGS if lib.espeak_SetVoiceByName(lang.encode()) == 0]
            eng["voices"] = [lang + (f"+{v}" if v else "") for lang in langs for v in _VARIANTS
                             if not v or (data / "voices" / "!v" / v).is_file()]
        finally:
            _close(lib)
        if not eng["voices"]:
            raise EdgekitError(f"espeak-ng has no English voice in {data}", _HINT)
        _ENGINE = eng
    return _ENGINE


def _speak(eng: dict, text: str, voice: str, rate: int, pitch: int, pitch_range: int, noise_seed: int) -> np.ndarray:
    """int16 speech at espeak's native rate from a fresh library instance; caller holds _LOCK."""
    lib, _ = _open(eng)
    try:
        lib.espeak_SetVoiceByName(voice.encode())
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            lib.espeak_SetParameter(param, value, 0)
        lib.espeak_ng_SetRandSeed(ctypes.c_long(noise_seed))  # breathy voices (f2, f3, ...) add noise seeded by time()
        _CHUNKS.clear()
        encoded = text.encode()
        if lib.espeak_Synth(encoded, len(encoded) + 1, 0, 1, 0, 0, None, None) != 0:  # 1 = POS_CHARACTER
            raise RuntimeError(f"espeak_Synth failed for {text!r} with voice {voice}")
        lib.espeak_Synchronize()
        audio = np.frombuffer(b"".join(_CHUNKS), dtype=np.int16)
        if not np.any(audio):
            raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {voice}")
        return audio
    finally:
        _close(lib)


def synthesize_digits(n_per_digit: int, seed: int, sample_rate: int = 8000) -> list[tuple[np.ndarray, int, str]]:
    """Returns [(waveform float32 in [-1,1] at sample_rate, digit, voice_tag)], digit-major, n_per_digit takes each.

    Each take draws its own voice (accent+variant), rate (120-220 wpm), pitch and pitch range (20-80), level, leading
    silence (0-0.3 s) and coloured background noise (5-25 dB SNR), so a small keyword model has to generalise rather
    than memorise one waveform per digit. Take (digit, k) depends only on (seed, digit, k) and the installed espeak
    data: the same seed gives bit-identical audio and raising n_per_digit only appends takes. voice_tag (e.g.
    "en-us+f2") lets callers split train/test by speaker.
    """
    if n_per_digit < 0 or sample_rate <= 0:
        raise EdgekitError(f"bad synthesize_digits arguments n_per_digit={n_per_digit}, sample_rate={sample_rate}",
                           "use n_per_digit >= 0 and a positive sample_rate such as 8000 or 16000")
    takes = []
    with _LOCK:
        eng = _engine()
        for digit, word in enumerate(DIGIT_WORDS):
            for k in range(n_per_digit):
                rng = np.random.default_rng([seed, digit, k])
                voice = eng["voices"][rng.integers(len(eng["voices"]))]
                settings = (int(v) for v in rng.integers([120, 20, 20, 1], [221, 81, 81, 2**31]))
                rate, pitch, pitch_range, noise_seed = settings
                takes.append((rng, digit, voice, _speak(eng, word, voice, rate, pitch, pitch_range, noise_seed)))
    g = math.gcd(sample_rate, eng["rate"])
    out = []
    for rng, digit, voice, raw in takes:  # pure numpy from here, so outside the lock
        x = resample_poly(raw / 32768.0, sample_rate // g, eng["rate"] // g)
        loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())  # trim espeak's own silence: ours is the only pad
        x = x[loud[0]:loud[-1] + 1] * (rng.uniform(0.3, 0.8) / np.abs(x).max())
        lead, tail = int(rng.uniform(0.0, 0.3) * sample_rate), int(rng.uniform(0.05, 0.15) * sample_rate)
        speech_power = np.mean(x ** 2)
        x = np.concatenate([np.zeros(lead), x, np.zeros(tail)])
        noise = lfilter([1.0], [1.0, -rng.uniform(0.0, 0.95)], rng.standard_normal(x.size))  # white .. brownish
        noise *= np.sqrt(speech_power / 10 ** (rng.uniform(5, 25) / 10) / np.mean(noise ** 2))
        out.append((np.clip(x + noise, -1.0, 1.0).astype(np.float32), digit, voice))
    return out
