"""TensorRT on the device: build an engine from the portable ONNX exactly as a plan says (trt_plan.build_plan),
cache it, run it, read back what it built. TensorRT (and libcudart, for running) are imported at the point of use,
so the agent still imports on a device that has only ONNX Runtime."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

from .trt_plan import engine_cache_key, layer_precisions, parse_trtexec_profile, parse_trtexec_times, trtexec_command


class BuildError(RuntimeError):
    """The engine build failed; `key_lines` are the TensorRT log lines that say why."""

    def __init__(self, message: str, key_lines: list[str]):
        super().__init__(message + (": " + " | ".join(key_lines[-3:]) if key_lines else ""))
        self.key_lines = key_lines


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
