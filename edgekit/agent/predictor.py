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

import numpy as np

from .measure import MASK_INPUT
from .preprocess import CallerMustPrepare, log_mel, mel_filterbank, prepare, resample, resize_bilinear, tokenize  # noqa: F401

# ---- preprocessing: per-input steps live in preprocess.py (shared with edgekit.data); the modality-keyed
# `preprocessing` dict below is the older form, recorded by models trained on the built-in dataset ------------

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
    """{input name: array [1, ...]} from raw values given by input name or modality; absent optional modalities
    -> zeros + mask 0. Inputs with a recorded per-input `preprocess` get exactly those steps (preprocess.py); a
    step this device cannot do (e.g. Hugging Face tokenization without `transformers`) is a one-line ValueError
    saying what to pass instead."""
    pre = spec.get("preprocessing") or {}
    modalities = spec.get("modalities") or []
    feed, present, derived = {}, {}, {}
    for inp in spec["inputs"]:
        name, mod, shape = inp["name"], inp.get("modality"), inp["shape"]
        steps = inp.get("preprocess") or {}
        if name == MASK_INPUT or "mask_of" in steps:
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
            continue
        if steps:
            try:
                out = prepare(name, steps, value, sample_rate)
            except CallerMustPrepare:
                raise
            except (ValueError, OSError) as e:
                raise ValueError(f"input '{name}': {e}") from None
            feed[name] = _fit(out.pop(name), shape, inp.get("dtype", "float32"), name)
            derived.update(out)
        else:
            feed[name] = _prepare(kind, value, pre.get(key) or {}, shape, inp.get("dtype", "float32"), sample_rate)
        present[key] = 1.0
    for inp in spec["inputs"]:  # masks filled by their text input (e.g. attention_mask), unless given
        of = (inp.get("preprocess") or {}).get("mask_of")
        if of is None:
            continue
        name = inp["name"]
        value = raw.get(name) if raw.get(name) is not None else derived.get(name)
        if value is None and of in feed:  # ids given as an array: the mask marks the non-pad tokens
            text = next(i for i in spec["inputs"] if i["name"] == of).get("preprocess", {}).get("text", {})
            value = (feed[of][0] != text.get("pad", 0)).astype(np.int64)
        if value is None:
            raise ValueError(f"input '{name}' (the mask of '{of}') was not given and cannot be derived")
        feed[name] = _fit(value, inp["shape"], inp.get("dtype", "int64"), name)
    if any(i["name"] == MASK_INPUT for i in spec["inputs"]):
        if modalities and not any(present.get(m) for m in modalities):
            raise ValueError(f"every modality is missing; give at least one of {modalities}")
        feed[MASK_INPUT] = np.array([[present.get(m, 0.0) for m in modalities]], np.float32)
    return feed


def _fit(arr, shape: list, dtype: str, name: str) -> np.ndarray:
    """A per-sample array as [1, ...] in the model's shape (unit axes added or dropped) and dtype."""
    arr = np.asarray(arr)
    one = [1] + [1 if d is None else d for d in shape[1:]]
    if arr.size != int(np.prod(one)):
        raise ValueError(f"input '{name}' has {list(arr.shape)} after preprocessing, the model expects {shape[1:]} per sample")
    return arr.reshape(one).astype(dtype)


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

    from . import trt, trt_plan
    from .cudart import CudaRuntime

    shipped = os.path.join(bundle_dir, "engines", entry["name"] + ".engine")
    if os.path.exists(shipped):  # built on this device by the deploy agent
        return trt.EngineRunner(shipped), {"runtime": "tensorrt", "engine": shipped, "tensorrt": tensorrt.__version__}
    gpu = CudaRuntime().devices()[0]
    plan = trt_plan.build_plan(tensorrt.__version__, entry.get("graph", {}), {**(build or {}), "precision": entry.get("precision")},
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
