"""Use a deploy bundle in an application: raw inputs in, class out, with the model's preprocessing applied.

    from edgekit.runtime import load          # or, on a device with only the bundle:
    p = load("runs/demo/bundle")              #   sys.path.insert(0, "bundle"); from edgekit_agent.predictor import load
    p.predict(image=img8x8, audio_wave=wave, sample_rate=8000, text="the pin is seven")

numpy only (plus the runtime). Missing modalities are fed as zeros with their modality_mask bit 0, as the
model was trained to accept. The audio front-end is a copy of edgekit/data/audio.py's log-mel (the tests
check the two agree), because this file must run where edgekit is not installed."""
from __future__ import annotations

import json
import os
import re

import numpy as np

MASK_INPUT = "modality_mask"


# ---- preprocessing (mirrors edgekit.data: audio.log_mel, avdigits image scaling and tokenization) ----------

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


def resize_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing (torch interpolate, align_corners=False)."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

    r0, r1, wr = axis(img.shape[0], h)
    c0, c1, wc = axis(img.shape[1], w)
    rows = img[r0] * (1 - wr)[:, None] + img[r1] * wr[:, None]
    return (rows[:, c0] * (1 - wc)[None, :] + rows[:, c1] * wc[None, :]).astype(np.float32)


def tokenize(text: str, vocab: list[str], seq_len: int, unknown: int = 1, pad: int = 0) -> np.ndarray:
    index = {w: i for i, w in enumerate(vocab)}
    ids = [index.get(t, unknown) for t in re.findall(r"[a-z]+", text.lower())][:seq_len]
    return np.array(ids + [pad] * (seq_len - len(ids)), np.int64)


def _prepare(modality: str, value, pre: dict, shape: list, dtype: str, sample_rate: int | None):
    """One raw input -> the model's array for a batch of one."""
    if modality == "image" and "size" in pre:
        img = np.asarray(value, np.float32)
        if img.ndim == 3 and img.shape[-1] in (3, 4):  # HWC colour -> grey
            img = img[..., :3].mean(-1)
        img = img.reshape(img.shape[-2:]) * float(pre.get("scale", 1.0))
        if img.shape != (pre["size"], pre["size"]):
            img = resize_bilinear(img, pre["size"], pre["size"])
        return img.reshape([1] + shape[1:]).astype(dtype)
    if modality == "audio_wave" and "n_mels" in pre:
        feats = log_mel(value, sample_rate or pre["sample_rate"], target_rate=pre["sample_rate"],
                        **{k: pre[k] for k in ("n_fft", "hop", "n_mels", "frames")})
        feats = (feats - pre.get("mean", 0.0)) / pre.get("std", 1.0)
        return feats.reshape([1] + shape[1:]).astype(dtype)
    if modality == "text" and "vocab" in pre:
        if isinstance(value, str):
            value = tokenize(value, pre["vocab"], pre["seq_len"], pre.get("unknown", 1), pre.get("pad", 0))
        ids = list(np.asarray(value).reshape(-1))[: pre["seq_len"]]
        ids += [pre.get("pad", 0)] * (pre["seq_len"] - len(ids))
        return np.array(ids, dtype).reshape([1] + shape[1:])
    arr = np.asarray(value, dtype)  # already model-ready: one sample, with or without the batch axis
    one = [1] + list(shape[1:])
    return arr.reshape(one) if arr.size == int(np.prod(one)) else arr


def make_feed(spec: dict, raw: dict, sample_rate: int | None = None) -> dict:
    """{input name: array [1, ...]} from raw modality values; absent optional modalities -> zeros + mask 0."""
    pre = spec.get("preprocessing") or {}
    modalities = spec.get("modalities") or []
    feed, present = {}, {}
    for inp in spec["inputs"]:
        name, mod, shape = inp["name"], inp.get("modality"), inp["shape"]
        if name == MASK_INPUT:
            continue
        key = mod or name
        value, kind = raw.get(name), key
        if value is None and key == "audio" and raw.get("audio_wave") is not None:
            value, kind = raw["audio_wave"], "audio_wave"
        elif value is None:
            value = raw.get(key)
        if value is None:
            if not inp.get("optional"):
                raise ValueError(f"input '{name}' is required by this model")
            feed[name] = np.zeros([1] + [d for d in shape[1:]], inp.get("dtype", "float32"))
            present[key] = 0.0
        else:
            feed[name] = _prepare(kind, value, pre.get(key) or {}, shape, inp.get("dtype", "float32"), sample_rate)
            present[key] = 1.0
    if any(i["name"] == MASK_INPUT for i in spec["inputs"]):
        if modalities and not any(present.get(m) for m in modalities):
            raise ValueError(f"every modality is missing; give at least one of {modalities}")
        feed[MASK_INPUT] = np.array([[present.get(m, 0.0) for m in modalities]], np.float32)
    return feed


# ---- runners and bundles ------------------------------------------------------------------------------------

def read_manifest(bundle_dir: str) -> dict:
    path = os.path.join(bundle_dir, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{bundle_dir} is not an edgekit bundle (no manifest.json)")
    with open(path) as f:
        return json.load(f)


def pick_variant(manifest: dict, variant: str | None) -> dict:
    by_name = {v["name"]: v for v in manifest["variants"]}
    if variant is None:
        variant = manifest.get("default_variant") or manifest["variants"][0]["name"]
    if variant not in by_name:
        raise KeyError(f"variant '{variant}' is not in the bundle (has {sorted(by_name)})")
    return by_name[variant]


def default_engine_cache() -> str:
    return os.environ.get("EDGEKIT_ENGINE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgekit", "engines")


def tensorrt_available() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401

        from .cudart import CudaRuntime

        if not CudaRuntime().devices():
            return False, "no CUDA GPU found"
        return True, ""
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"


def open_runner(bundle_dir: str, entry: dict, runtime: str = "auto", build: dict | None = None,
                cache_dir: str | None = None, providers: list | None = None, threads: int | None = None):
    """A runner for one variant of a bundle, and how it was made: (runner, info).

    tensorrt: the bundle's engines/<name>.engine when present, else the engine cache, built on a miss with the
    bundle's build options (so on a device that ran `edgekit deploy`, the engine it built is found there)."""
    if runtime == "auto":
        runtime = "tensorrt" if tensorrt_available()[0] else "onnxruntime"
    onnx = os.path.join(bundle_dir, entry["onnx"])
    if runtime == "onnxruntime":
        from .ort import OrtRunner

        r = OrtRunner(onnx, providers, threads)
        return r, {"runtime": "onnxruntime", **r.settings}
    if runtime != "tensorrt":
        raise ValueError(f"unknown runtime '{runtime}' (tensorrt | onnxruntime | auto)")
    import tensorrt

    from . import trt
    from .cudart import CudaRuntime

    shipped = os.path.join(bundle_dir, "engines", entry["name"] + ".engine")
    if os.path.exists(shipped):  # built on this device by the deploy agent
        return trt.EngineRunner(shipped), {"runtime": "tensorrt", "engine": shipped, "tensorrt": tensorrt.__version__}
    gpu = CudaRuntime().devices()[0]
    plan = trt.build_plan(tensorrt.__version__, entry.get("graph", {}), {**(build or {}), "precision": entry.get("precision")},
                          entry["spec"]["inputs"])
    path, meta = trt.get_or_build(trt.EngineCache(cache_dir or default_engine_cache()), onnx, entry["sha256"], plan, gpu,
                                  _trtexec())
    return trt.EngineRunner(path), {"runtime": "tensorrt", "engine": path, "tensorrt": tensorrt.__version__, "gpu": gpu, "build": meta}


def _trtexec() -> str | None:
    import shutil

    return shutil.which("trtexec") or next((p for p in ("/usr/src/tensorrt/bin/trtexec",) if os.path.exists(p)), None)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Predictor:
    """predict(image=..., audio_wave=..., sample_rate=..., text=...) -> {label, index, probabilities}."""

    def __init__(self, runner, entry: dict, info: dict):
        self.runner, self.entry, self.info = runner, entry, info
        self.spec = entry["spec"]
        self.variant = entry["name"]
        self.class_names = self.spec.get("class_names") or []

    def feed(self, sample_rate: int | None = None, **raw) -> dict:
        return make_feed(self.spec, raw, sample_rate)

    def run(self, feed: dict) -> dict:
        return self.runner.run(feed)

    def predict(self, sample_rate: int | None = None, **raw) -> dict:
        logits = self.run(self.feed(sample_rate, **raw))[self.spec["outputs"][0]["name"]][0].astype(np.float32)
        probs = softmax(logits)
        i = int(probs.argmax())
        return {"label": self.class_names[i] if i < len(self.class_names) else str(i), "index": i,
                "probabilities": probs, "logits": logits}


def load(bundle_dir, variant: str | None = None, runtime: str = "auto", **runner_options) -> Predictor:
    """The predictor for one variant of a bundle (default: the bundle's recommended or first variant)."""
    bundle_dir = str(bundle_dir)
    manifest = read_manifest(bundle_dir)
    entry = pick_variant(manifest, variant)
    runner_options.setdefault("build", manifest.get("build"))
    runner, info = open_runner(bundle_dir, entry, runtime, **runner_options)
    return Predictor(runner, entry, info)
