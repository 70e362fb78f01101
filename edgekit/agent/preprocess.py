"""Per-input preprocessing steps that need only numpy: what turns a raw image, waveform or sentence into the
array a model takes. It is the one definition of these steps: edgekit.data applies it when it builds the
train/val/test splits, and a deploy bundle carries this file so the device repeats exactly the same steps.
Python 3.10 stdlib + numpy only (scipy when present): steps that need more -- decoding an image file (Pillow),
Hugging Face tokenization (transformers) -- raise CallerMustPrepare naming the step and the input; the host does
them in edgekit/data/preprocess.py.

A step is recorded per model input in the ModelSpec (`InputSpec.preprocess`), e.g.
    {"image": {"size": [32, 32], "mode": "RGB", "mean": [0.5], "std": [0.25], "layout": "NCHW", "scale": 255}}
    {"audio": {"sample_rate": 8000, "features": "log_mel", "n_fft": 256, "hop": 128, "n_mels": 40, "frames": 64, ...}}
    {"text": {"vocab": [...], "max_length": 16, "pad": 0, "unknown": 1, "lowercase": true}}
    {"text": {"tokenizer": "/abs/tokenizer", "max_length": 32, "pad": 0}}   (Hugging Face: the caller tokenizes)
    {"array": {}}                                                             (used as given)
    {"mask_of": "input_ids"}                                                  (filled with its text input)
"""
from __future__ import annotations

import re

import numpy as np


class CallerMustPrepare(ValueError):
    """This runtime cannot do a recorded step here: the caller must pass the model-ready array instead."""


# ---- audio ---------------------------------------------------------------------------------------------------

def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = mel_to_hz(np.linspace(hz_to_mel(20.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0.0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid))).astype(np.float32)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x
    try:  # the same polyphase filter as training when scipy is there
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(rate), int(target))
        return resample_poly(x, target // g, rate // g).astype(np.float32)
    except ImportError:  # numpy-only devices: linear interpolation (slightly different high frequencies)
        n = int(round(len(x) * target / rate))
        return np.interp(np.arange(n) * rate / target, np.arange(len(x)), x).astype(np.float32)


def log_mel(x: np.ndarray, sample_rate: int = 8000, target_rate: int = 8000, n_fft: int = 256, hop: int = 128,
            n_mels: int = 40, frames: int = 64, **_) -> np.ndarray:
    """[n_mels, frames] natural-log mel power of a waveform, centred in a fixed window (static graph)."""
    x = resample(np.asarray(x, np.float32), sample_rate, target_rate)
    need = n_fft + hop * (frames - 1)
    if len(x) >= need:
        start = (len(x) - need) // 2
        x = x[start : start + need]
    else:
        pad = need - len(x)
        x = np.pad(x, (pad // 2, pad - pad // 2))
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    return np.log(mel_filterbank(target_rate, n_fft, n_mels) @ spec.T + 1e-6).astype(np.float32)


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II rows (the MFCC transform of librosa / scipy norm='ortho')."""
    k, n = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


def audio_features(wave: np.ndarray, rate: int, pre: dict) -> np.ndarray:
    """A waveform at `rate` -> [n_mels or n_mfcc, frames] normalised features, as `pre` records."""
    feats = log_mel(wave, rate, target_rate=pre["sample_rate"], **{k: pre[k] for k in ("n_fft", "hop", "n_mels", "frames")})
    if pre.get("features") == "mfcc":
        feats = dct_matrix(pre["n_mfcc"], pre["n_mels"]) @ feats
    return ((feats - pre.get("mean", 0.0)) / pre.get("std", 1.0)).astype(np.float32)


# ---- images --------------------------------------------------------------------------------------------------

def resize_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing (torch interpolate, align_corners=False);
    [H, W] or [H, W, C]."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

    r0, r1, wr = axis(img.shape[0], h)
    c0, c1, wc = axis(img.shape[1], w)
    extra = (None,) * (img.ndim - 2)  # broadcast over channels
    wr, wc = wr[(slice(None), None) + extra], wc[(None, slice(None)) + extra]
    rows = img[r0] * (1 - wr) + img[r1] * wr
    return (rows[:, c0] * (1 - wc) + rows[:, c1] * wc).astype(np.float32)


LUMA = np.array([19595, 38470, 7471], np.float32) / 65536  # ITU-R 601-2, as Pillow's convert("L")


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] colour -> [H, W] float32 luma (Pillow's weights, without its rounding to 8 bits)."""
    return (np.asarray(rgb, np.float32) @ LUMA).astype(np.float32)


def image_array(pixels: np.ndarray, pre: dict) -> np.ndarray:
    """Decoded pixels ([H, W] grey or [H, W, C] with C in 1, 3, 4; 0..scale) -> the model's per-sample array:
    colour mode, bilinear resize, /scale, (x - mean) / std per channel, [C, H, W] (NCHW) or [H, W, C] (NHWC)."""
    img = np.asarray(pixels, np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"an image must be [H, W] or [H, W, C] with 1-4 channels, got shape {list(np.shape(pixels))}")
    if img.shape[-1] in (2, 4):  # drop alpha
        img = img[..., :-1]
    if pre.get("mode", "RGB") == "L":
        img = img if img.shape[-1] == 1 else to_grey(img)[:, :, None]
    elif img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    size = pre.get("size")
    if size and tuple(img.shape[:2]) != tuple(size):
        img = resize_bilinear(img, int(size[0]), int(size[1]))
    img = img / float(pre.get("scale", 255.0))
    c = img.shape[-1]
    mean = np.resize(np.asarray(pre.get("mean", [0.0]), np.float32), c)
    std = np.resize(np.asarray(pre.get("std", [1.0]), np.float32), c)
    img = (img - mean) / std
    return np.ascontiguousarray(img.transpose(2, 0, 1) if pre.get("layout", "NCHW") == "NCHW" else img, np.float32)


# ---- text ----------------------------------------------------------------------------------------------------

WORD = re.compile(r"[a-z]+")


def tokenize(text: str, vocab: list[str], seq_len: int, unknown: int = 1, pad: int = 0) -> np.ndarray:
    return word_ids(text, {"vocab": vocab, "max_length": seq_len, "unknown": unknown, "pad": pad})[0]


def word_ids(text: str, pre: dict, index: dict | None = None) -> tuple[np.ndarray, bool]:
    """Word-level ids padded to max_length, and whether the sentence was longer (then truncated). Words are
    runs of letters a-z (after lower-casing unless lowercase is false); unknown words get the `unknown` id."""
    index = index if index is not None else {w: i for i, w in enumerate(pre["vocab"])}
    words = WORD.findall(text.lower()) if pre.get("lowercase", True) else re.findall(r"[A-Za-z]+", text)
    n, unk, pad = pre["max_length"], pre.get("unknown", 1), pre.get("pad", 0)
    ids = [index.get(w, unk) for w in words[:n]]
    return np.array(ids + [pad] * (n - len(ids)), np.int64), len(words) > n


# ---- one raw value -> model arrays ----------------------------------------------------------------------------

def prepare(name: str, pre: dict, value, sample_rate: int | None = None) -> dict[str, np.ndarray]:
    """One raw value of input `name` -> {input name: per-sample array}; a text input also fills its mask input.
    Raw values: image -> pixel array [H, W(, C)]; audio -> waveform (at `sample_rate`, else the recorded rate);
    text -> a string (or ids already); array -> the array. Raises CallerMustPrepare naming what is needed."""
    if "image" in pre:
        if isinstance(value, (str, bytes)):
            raise CallerMustPrepare(f"input '{name}' needs image decoding, which this numpy-only runtime does not do: "
                                    f"pass the decoded pixels as an array [H, W] or [H, W, C] (e.g. "
                                    f"numpy.asarray(PIL.Image.open(file))), not a file")
        return {name: image_array(value, pre["image"])}
    if "audio" in pre:
        a = pre["audio"]
        return {name: audio_features(np.asarray(value, np.float32).reshape(-1), sample_rate or a["sample_rate"], a)}
    if "text" in pre:
        t = pre["text"]
        mask_name = t.get("mask_input")
        if isinstance(value, str):
            if "vocab" in t:
                ids = word_ids(value, t)[0]
                mask = (ids != t.get("pad", 0)).astype(np.int64)
            else:
                given = f"'{name}' and '{mask_name}'" if mask_name else f"'{name}'"
                raise CallerMustPrepare(
                    f"input '{name}' needs Hugging Face tokenization (tokenizer {t['tokenizer']}), which this "
                    f"numpy-only runtime does not do: pass {given} as token ids, "
                    f"tokenized with max_length={t['max_length']}, padding='max_length', truncation=True "
                    "(on the host: edgekit.data.preprocess.hf_tokenize)")
        else:
            ids = np.asarray(value, np.int64).reshape(-1)[: t["max_length"]]
            ids = np.concatenate([ids, np.full(t["max_length"] - len(ids), t.get("pad", 0), np.int64)])
            mask = (ids != t.get("pad", 0)).astype(np.int64)
        return {name: ids, **({mask_name: mask} if mask_name else {})}
    return {name: np.asarray(value)}
