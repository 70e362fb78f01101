"""TensorRT on the device: build an engine from the portable ONNX, cache it, run it, read back what it built.

Two API generations are handled, chosen by `tensorrt.__version__`:
- 10.x (JetPack 6): precision comes from the ONNX (explicit Q/DQ for INT8, float16 tensors for FP16) in a
  STRONGLY_TYPED network; an FP32 ONNX asked to run in FP16 uses the weakly typed FP16 builder flag.
  INT8 calibrators are never used (deprecated in 10.x, removed in 11.x).
- 11.x (JetPack 7): every network is strongly typed and the FP16/INT8 builder flags are gone, so the ONNX
  alone decides the precision; asking for a precision the ONNX does not carry is an error.

Everything that does not need TensorRT (the option -> API plan, cache keys, trtexec command lines and the
parsing of its JSON exports and of engine-inspector JSON) is a pure function, so it is unit-tested anywhere."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPTIONS = {"precision": None, "workspace_mb": 1024, "batch": {"min": 1, "opt": 1, "max": 8},
                   "optimization_level": 3, "tf32": True, "fp16_fallback": False, "timing_cache": True,
                   "builder": "python"}


class PlanError(ValueError):
    """Build options the installed TensorRT cannot honour; `hint` says what to change."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


class BuildError(RuntimeError):
    """The engine build failed; `key_lines` are the TensorRT log lines that say why."""

    def __init__(self, message: str, key_lines: list[str]):
        super().__init__(message + (": " + " | ".join(key_lines[-3:]) if key_lines else ""))
        self.key_lines = key_lines


def parse_version(version: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", str(version))[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def graph_precision(graph: dict) -> str:
    """What an ONNX graph carries by itself: Q/DQ nodes -> int8, float16 tensors -> fp16, else fp32."""
    return "int8" if graph.get("qdq") else ("fp16" if graph.get("float16") else "fp32")


def build_plan(tensorrt_version: str, graph: dict, options: dict | None = None, inputs: list[dict] | None = None) -> dict:
    """Map edgekit build options onto the TensorRT API of this version: every setting explicit, so the
    plan (saved with the engine) says exactly how it was built whatever the version's defaults are.

    graph: {"qdq": bool, "float16": bool} of the ONNX; inputs: [{"name", "shape" (None = batch)}]."""
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    opts["batch"] = {**DEFAULT_OPTIONS["batch"], **(opts.get("batch") or {})}
    major = parse_version(tensorrt_version)[0]
    carried = graph_precision(graph)
    want = opts["precision"] or carried
    if want not in PRECISIONS:
        raise PlanError(f"unknown TensorRT precision '{want}'", f"choose one of {', '.join(PRECISIONS)}")
    if major < 10:
        raise PlanError(f"TensorRT {tensorrt_version} is older than 10.x (JetPack 5 or earlier)",
                        "upgrade to JetPack 6 (TensorRT 10) or run with --runtime onnxruntime")
    notes, network_flags, builder_flags = [], [], []
    if want == "int8" and carried != "int8":
        raise PlanError("INT8 needs an ONNX with explicit Q/DQ nodes; this one has none (edgekit never uses INT8 calibrators)",
                        "quantize the variant (recipe quantize: int8) so its ONNX carries Q/DQ, or choose fp16/fp32")
    if major >= 11:
        # 11.x: strongly typed always (the creation flag is deprecated and ignored, so it is not passed).
        if want == "fp16" and carried == "fp32":
            raise PlanError("TensorRT 11 removed the FP16 builder flag: FP16 must come from an ONNX with float16 tensors",
                            "export the variant with edgekit.export.to_fp16_onnx (keep_io_types) or choose precision fp32")
        if opts["fp16_fallback"] and not graph.get("float16"):
            raise PlanError("fp16_fallback needs the weakly typed INT8+FP16 flags, which TensorRT 11 removed",
                            "export a float16 ONNX with Q/DQ instead, or drop fp16_fallback")
        if want != carried:
            raise PlanError(f"precision {want} requested but the ONNX carries {carried}; TensorRT 11 builds what the graph says",
                            f"use precision {carried} or export a {want} ONNX")
        strongly_typed = True
        notes.append("TensorRT 11: strongly typed network; precision from the ONNX")
    elif want == "fp16" and carried == "fp32":
        strongly_typed = False
        builder_flags.append("FP16")
        notes.append("TensorRT 10: FP32 ONNX built with the FP16 builder flag (weak typing, deprecated from 10.12)")
    elif want == "int8" and opts["fp16_fallback"]:
        strongly_typed = False
        builder_flags += ["INT8", "FP16"]
        notes.append("TensorRT 10: explicit Q/DQ, weakly typed so layers outside Q/DQ may run in FP16; no calibrator")
    else:
        if want != carried:
            raise PlanError(f"precision {want} requested but the ONNX carries {carried}",
                            f"use precision {carried}, or an FP32 ONNX for the FP16 builder flag")
        strongly_typed = True
        network_flags.append("STRONGLY_TYPED")
        notes.append("TensorRT 10: STRONGLY_TYPED network; precision from the ONNX (same engine semantics as 11.x)")
    b = opts["batch"]
    if not (1 <= b["min"] <= b["opt"] <= b["max"]):
        raise PlanError(f"batch profile must satisfy 1 <= min <= opt <= max, got {b}", "fix the recipe's tensorrt.batch")
    shapes = {}
    for i in inputs or []:
        if any(d is None or d == -1 for d in i["shape"]):
            shapes[i["name"]] = {k: [b[k] if d is None or d == -1 else d for d in i["shape"]] for k in ("min", "opt", "max")}
    return {"tensorrt": str(tensorrt_version), "api": "11.x" if major >= 11 else "10.x", "precision": want,
            "graph": {"qdq": bool(graph.get("qdq")), "float16": bool(graph.get("float16"))},
            "strongly_typed": strongly_typed, "network_flags": network_flags, "builder_flags": builder_flags,
            "clear_flags": [] if opts["tf32"] else ["TF32"], "workspace_bytes": int(opts["workspace_mb"]) << 20,
            "batch": dict(b), "shapes": shapes, "optimization_level": int(opts["optimization_level"]),
            "profiling_verbosity": "DETAILED", "timing_cache": bool(opts["timing_cache"]),
            "builder": opts["builder"], "notes": notes}


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu: dict, plan: dict) -> str:
    """Engines are specific to the ONNX, the TensorRT version, the GPU and the build options: all four key it."""
    ident = {"onnx": onnx_sha256, "tensorrt": str(tensorrt_version), "gpu": gpu.get("name"),
             "compute_capability": gpu.get("compute_capability"),
             "plan": {k: v for k, v in plan.items() if k not in ("notes",)}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


# ---- trtexec: command line from a plan, and its JSON exports -------------------------------------------

def _dims(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(plan: dict, onnx: str, engine: str, exports: str | None = None, trtexec: str = "trtexec",
                    timing_cache: str | None = None, bench: dict | None = None) -> list[str]:
    """The trtexec invocation that builds what `plan` describes (and optionally times it, exporting JSON)."""
    cmd = [trtexec, f"--onnx={onnx}", f"--saveEngine={engine}", f"--memPoolSize=workspace:{plan['workspace_bytes'] >> 20}M",
           f"--builderOptimizationLevel={plan['optimization_level']}", "--profilingVerbosity=detailed"]
    if plan["api"] == "10.x" and plan["strongly_typed"]:
        cmd.append("--stronglyTyped")  # 11.x: always on, and --fp16/--int8 no longer exist
    cmd += [f"--{f.lower()}" for f in plan["builder_flags"]]  # FP16 / INT8 (10.x weak typing only)
    if "TF32" in plan["clear_flags"]:
        cmd.append("--noTF32")
    if plan["shapes"]:
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            cmd.append(f"{flag}=" + ",".join(f"{n}:{_dims(s[key])}" for n, s in plan["shapes"].items()))
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if exports:
        cmd.append(f"--exportLayerInfo={exports}/layers.json")
    if bench:
        if plan["shapes"]:
            cmd.append("--shapes=" + ",".join(f"{n}:{_dims([bench.get('batch', 1)] + s['opt'][1:])}" for n, s in plan["shapes"].items()))
        cmd += [f"--warmUp={int(bench.get('warmup_ms', 500))}", f"--iterations={int(bench.get('iterations', 200))}",
                f"--duration={int(bench.get('duration_s', 3))}", "--useSpinWait", "--separateProfileRun"]
        if exports:
            cmd += [f"--exportTimes={exports}/times.json", f"--exportProfile={exports}/profile.json"]
    else:
        cmd.append("--skipInference")
    return cmd


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _stats_ms(xs: list[float]) -> dict:
    if not xs:
        return {"count": 0}
    return {"count": len(xs), "mean_ms": sum(xs) / len(xs), "median_ms": _percentile(xs, 50), "p90_ms": _percentile(xs, 90),
            "p95_ms": _percentile(xs, 95), "p99_ms": _percentile(xs, 99), "min_ms": min(xs), "max_ms": max(xs)}


def parse_trtexec_times(data: list[dict]) -> dict:
    """--exportTimes: one record per inference with latencyMs (= h2d + compute + d2h) and computeMs; older
    releases name the transfers inMs/outMs. Returns latency and GPU compute statistics."""
    latency = [float(r["latencyMs"]) for r in data if "latencyMs" in r]
    compute = [float(r["computeMs"]) for r in data if "computeMs" in r]
    h2d = [float(r.get("h2dMs", r.get("inMs", 0.0))) for r in data]
    d2h = [float(r.get("d2hMs", r.get("outMs", 0.0))) for r in data]
    e2e = [float(r["endToEndMs"]) for r in data if "endToEndMs" in r]
    out = {"latency": _stats_ms(latency), "compute": _stats_ms(compute),
           "h2d_mean_ms": sum(h2d) / len(h2d) if h2d else None, "d2h_mean_ms": sum(d2h) / len(d2h) if d2h else None}
    if e2e:
        out["end_to_end"] = _stats_ms(e2e)
    return out


def parse_trtexec_profile(data: list[dict]) -> dict:
    """--exportProfile: [{"count": N}, {"name", "timeMs", "averageMs", ["medianMs"], "percentage"}, ...]."""
    count = data[0].get("count") if data and "count" in data[0] else None
    layers = [{"name": r["name"], "average_ms": float(r.get("averageMs", 0.0)), "total_ms": float(r.get("timeMs", 0.0)),
               "median_ms": float(r["medianMs"]) if "medianMs" in r else None, "percent": float(r.get("percentage", 0.0))}
              for r in data if "name" in r]
    return {"iterations": count, "layers": layers, "total_average_ms": sum(lay["average_ms"] for lay in layers)}


# ---- per-layer precision from the engine inspector (or trtexec --exportLayerInfo) -----------------------

def tensor_precision(tensor: dict) -> str:
    """Data type of one tensor record: 11.x has "DataType" ("Float", "Half", "Int8"), 10.x folds it into
    "Format/Datatype" ("Row major linear FP32 format", "Thirty-two wide channel vectorized row major Int8 format")."""
    text = str(tensor.get("DataType") or tensor.get("Format/Datatype") or tensor.get("Format") or "").lower()
    for needle, name in (("bf16", "bf16"), ("bfloat", "bf16"), ("fp8", "fp8"), ("e4m3", "fp8"), ("int8", "int8"),
                         ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"), ("int32", "int32"),
                         ("int64", "int64"), ("bool", "bool"), ("uint8", "uint8")):
        if needle in text:
            return name
    return "unknown"


_ORDER = {"int8": 0, "fp8": 0, "fp16": 1, "bf16": 1, "fp32": 2}


def layer_precisions(info: dict) -> dict:
    """Engine-inspector JSON (DETAILED verbosity) -> per-layer precision and a count per precision.

    A layer's precision is the lowest float/int8 type among its inputs and outputs: a convolution fused with
    its dequantize reads Int8 and writes Float, and it ran in INT8."""
    layers = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # LAYER_NAMES_ONLY verbosity: names but no types
            layers.append({"name": layer, "type": None, "precision": "unknown"})
            continue
        ins = [tensor_precision(t) for t in layer.get("Inputs", []) if isinstance(t, dict)]
        outs = [tensor_precision(t) for t in layer.get("Outputs", []) if isinstance(t, dict)]
        ranked = sorted({p for p in ins + outs if p in _ORDER}, key=_ORDER.get)
        layers.append({"name": layer.get("Name"), "type": layer.get("LayerType"), "inputs": ins, "outputs": outs,
                       "precision": ranked[0] if ranked else (outs[0] if outs else "unknown"),
                       "tactic": layer.get("TacticName") or layer.get("TacticValue")})
    counts: dict[str, int] = {}
    for lay in layers:
        counts[lay["precision"]] = counts.get(lay["precision"], 0) + 1
    io = info.get("I/O Tensors") or [{"Name": n} for n in info.get("Bindings", [])]
    return {"layers": layers, "counts": counts, "io": [t.get("Name") for t in io]}


# ---- building (needs TensorRT) ---------------------------------------------------------------------------

def _trt():
    import tensorrt  # noqa: PLC0415 — optional, only on a TensorRT target

    return tensorrt


def _logger(trt, lines: list[str]):
    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            name = getattr(severity, "name", str(severity)).replace("Severity.", "")
            lines.append(f"[{name}] {msg}")

    return _Logger()


def key_lines(lines: list[str], n: int = 8) -> list[str]:
    """The lines of a TensorRT log that explain a failure: errors first, else the last warnings."""
    errs = [ln for ln in lines if ln.startswith(("[ERROR]", "[INTERNAL_ERROR]", "[kERROR]", "[kINTERNAL_ERROR]"))]
    return (errs or [ln for ln in lines if "WARN" in ln[:12]])[-n:]


def build_engine(onnx_path: str, plan: dict, timing_cache_path: str | None = None) -> tuple[bytes, list[str]]:
    """ONNX -> serialized engine with the TensorRT Python API, following `plan` exactly. Returns (engine, log)."""
    trt = _trt()
    log: list[str] = []
    logger = _logger(trt, log)
    builder = trt.Builder(logger)
    flags = 0
    for f in plan["network_flags"]:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, f))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError("TensorRT could not parse the ONNX", errors + key_lines(log))
    config = builder.create_builder_config()
    for f in plan["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, f))
    for f in plan["clear_flags"]:
        config.clear_flag(getattr(trt.BuilderFlag, f))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_bytes"])
    config.builder_optimization_level = plan["optimization_level"]
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, plan["profiling_verbosity"])
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = list(t.shape)
        if -1 in dims:
            s = plan["shapes"].get(t.name) or {k: [plan["batch"][k] if d == -1 else d for d in dims] for k in ("min", "opt", "max")}
            profile.set_shape(t.name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)
    cache = None
    if plan["timing_cache"]:
        blob = b""
        if timing_cache_path and os.path.exists(timing_cache_path):
            with open(timing_cache_path, "rb") as f:
                blob = f.read()
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT engine build failed", key_lines(log))
    if cache is not None and timing_cache_path:
        _atomic_write(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized), log


def build_with_trtexec(onnx_path: str, plan: dict, out_dir: str, trtexec: str, timing_cache_path: str | None = None,
                       bench: dict | None = None) -> dict:
    """Build (and optionally time) with trtexec; returns the parsed exports and the command used."""
    os.makedirs(out_dir, exist_ok=True)
    engine = os.path.join(out_dir, "model.engine")
    cmd = trtexec_command(plan, onnx_path, engine, out_dir, trtexec, timing_cache_path, bench)
    res = subprocess.run(cmd, capture_output=True, text=True)
    log = (res.stdout + res.stderr).splitlines()
    with open(os.path.join(out_dir, "trtexec.log"), "w") as f:
        f.write("\n".join(log))
    if res.returncode != 0 or not os.path.exists(engine):
        raise BuildError(f"trtexec exited with {res.returncode}", [ln for ln in log if "[E]" in ln][-8:] or log[-5:])
    out = {"command": cmd, "engine": engine}
    for name, parse in (("times", parse_trtexec_times), ("profile", parse_trtexec_profile), ("layers", layer_precisions)):
        p = os.path.join(out_dir, f"{name}.json")
        if os.path.exists(p):
            with open(p) as f:
                out[name] = parse(json.load(f))
    return out


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class EngineCache:
    """Engines on disk by cache key: `<dir>/<key>/model.engine` plus build.json (plan, seconds, log lines).
    Lives outside any run directory, so a rerun or a new bundle with an unchanged variant skips the build."""

    def __init__(self, root: str):
        self.root = root

    def path(self, key: str) -> str:
        return os.path.join(self.root, key, "model.engine")

    def get(self, key: str) -> tuple[str, dict] | None:
        p = self.path(key)
        meta = os.path.join(self.root, key, "build.json")
        if os.path.exists(p) and os.path.exists(meta):
            with open(meta) as f:
                return p, json.load(f)
        return None

    def put(self, key: str, engine: bytes, meta: dict) -> str:
        os.makedirs(os.path.join(self.root, key), exist_ok=True)
        _atomic_write(self.path(key), engine)
        _atomic_write(os.path.join(self.root, key, "build.json"), json.dumps(meta, indent=2).encode())  # last: marks complete
        return self.path(key)

    def timing_cache(self, tensorrt_version: str, gpu: dict) -> str:
        os.makedirs(self.root, exist_ok=True)
        tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"{tensorrt_version}-{gpu.get('name')}-{gpu.get('compute_capability')}")
        return os.path.join(self.root, f"timing-{tag}.cache")


def get_or_build(cache: EngineCache, onnx_path: str, onnx_sha256: str, plan: dict, gpu: dict, trtexec: str | None = None) -> tuple[str, dict]:
    """The engine for (ONNX, TensorRT, GPU, plan): from the cache, or built now and cached."""
    key = engine_cache_key(onnx_sha256, plan["tensorrt"], gpu, plan)
    hit = cache.get(key)
    if hit:
        return hit[0], dict(hit[1], cached=True, key=key)
    t0 = time.perf_counter()
    timing = cache.timing_cache(plan["tensorrt"], gpu) if plan["timing_cache"] else None
    extra = {}
    if plan["builder"] == "trtexec":
        if not trtexec:
            raise BuildError("builder trtexec requested but trtexec was not found", ["looked in PATH and /usr/src/tensorrt/bin"])
        tmp = os.path.join(cache.root, key + ".trtexec")
        res = build_with_trtexec(onnx_path, plan, tmp, trtexec, timing)
        with open(res["engine"], "rb") as f:
            engine = f.read()
        extra = {"trtexec_command": res["command"]}
        log = []
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        engine, log = build_engine(onnx_path, plan, timing)
    meta = {"plan": plan, "gpu": gpu, "onnx_sha256": onnx_sha256, "build_seconds": round(time.perf_counter() - t0, 3),
            "engine_bytes": len(engine), "warnings": key_lines(log, 20), **extra}
    return cache.put(key, engine, meta), dict(meta, cached=False, key=key)


# ---- running (needs TensorRT + libcudart) ----------------------------------------------------------------

class EngineRunner:
    """Runs a serialized engine with device buffers: run(feed) -> outputs; bind(feed) -> callable for timing.
    Uses the name-based tensor API (set_input_shape / set_tensor_address / execute_async_v3) of 10.x and 11.x."""

    def __init__(self, engine_path: str):
        import numpy as np

        from .cudart import CudaRuntime

        self.np = np
        trt = self.trt = _trt()
        self.log: list[str] = []
        self.cuda = CudaRuntime()
        with open(engine_path, "rb") as f:
            self.runtime = trt.Runtime(_logger(trt, self.log))
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise BuildError(f"could not load engine {engine_path} (built for another TensorRT or GPU?)", key_lines(self.log))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT  # noqa: E731
        self.input_names = [n for n in names if is_in(n)]
        self.output_names = [n for n in names if not is_in(n)]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = self.cuda.stream()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device ptr, capacity bytes)
        self.max_batch = None  # the optimization profile's largest batch: bigger feeds are run in chunks
        for n in self.input_names:
            if self.engine.get_tensor_shape(n)[0] == -1:
                self.max_batch = int(self.engine.get_tensor_profile_shape(n, 0)[2][0])
                break

    def _device(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                self.cuda.free(ptr)
            ptr, cap = self.cuda.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, cap)
        return ptr

    def _prepare(self, feed: dict) -> tuple[list, dict]:
        np = self.np
        host_in = []
        for n in self.input_names:
            arr = np.ascontiguousarray(feed[n], dtype=self.dtypes[n])
            self.context.set_input_shape(n, arr.shape)
            ptr = self._device(n, arr.nbytes)
            self.context.set_tensor_address(n, ptr)
            host_in.append((ptr, arr))
        outs = {}
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            arr = np.empty(shape, self.dtypes[n])
            ptr = self._device(n, arr.nbytes)
            self.context.set_tensor_address(n, ptr)
            outs[n] = (ptr, arr)
        return host_in, outs

    def _execute(self, host_in, outs) -> None:
        for ptr, arr in host_in:
            self.cuda.memcpy_async(ptr, arr.ctypes.data, arr.nbytes, 1, self.stream)
        if not self.context.execute_async_v3(self.stream):
            raise BuildError("execute_async_v3 failed", key_lines(self.log))
        for ptr, arr in outs.values():
            self.cuda.memcpy_async(arr.ctypes.data, ptr, arr.nbytes, 2, self.stream)
        self.cuda.synchronize(self.stream)

    def run(self, feed: dict) -> dict:
        rows = len(next(iter(feed.values())))
        if self.max_batch and rows > self.max_batch:
            parts = [self.run({k: v[s : s + self.max_batch] for k, v in feed.items()}) for s in range(0, rows, self.max_batch)]
            return {k: self.np.concatenate([p[k] for p in parts]) for k in parts[0]}
        host_in, outs = self._prepare(feed)
        self._execute(host_in, outs)
        return {n: arr.copy() for n, (_, arr) in outs.items()}

    def bind(self, feed: dict):
        """Shapes and buffers set once; each call is copy-in + execute + copy-out + sync (trtexec's 'latency')."""
        host_in, outs = self._prepare(feed)
        return lambda: self._execute(host_in, outs)

    def layer_info(self, feed: dict | None = None) -> dict:
        """Per-layer precision of the built engine; with dynamic shapes the inspector needs a context whose
        input shapes are set, or it prints 'N/A due to dynamic shapes' instead of the formats."""
        if feed is not None:
            self._prepare(feed)
        inspector = self.engine.create_engine_inspector()
        for attr in ("execution_context", "context"):  # 11.x renamed the property
            try:
                setattr(inspector, attr, self.context)
                break
            except (AttributeError, TypeError):
                continue
        return layer_precisions(json.loads(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)))

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()
