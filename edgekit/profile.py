"""Per-layer latency of a compiled artifact, from the runtime's own profiler: where the time of one inference goes.

OpenVINO: the CPU plugin's performance counters (`PERF_COUNT` on compile_model, `get_profiling_info()` after each
infer): every executed node with its kernel (`exec_type`, e.g. `jit_avx2_I8` or `brgconv_avx2_FP32`), real time.
ONNX Runtime: its profiler (`SessionOptions.enable_profiling`), a Chrome-trace JSON with one `*_kernel_time` event
per node and run, with the operator (`op_name`, e.g. `QLinearConv` or `Conv`) and the provider.

Both profile the artifact exactly as `Backend.load` runs it (same threads, hint and optimization level), on one
bound feed, over `iterations` inferences after a warm-up; times are averaged per inference. The per-layer times add
up to less than the wall time of an inference: the rest is the runtime's own overhead between layers, which is
reported too (`overhead_ms`). Profiling itself slows inference a little; compare layers with each other, and the
profiled total with the benchmark only roughly."""
from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from edgekit.errors import EdgekitError

TOP = 10
_INT8 = re.compile(r"(^|_)(I8|U8|i8|u8|int8|uint8)($|_)")


def _precision_of_kernel(exec_type: str, op: str = "") -> str:
    """int8 | fp32 | qdq (a quantize/dequantize conversion: INT8's overhead) | other, from an OpenVINO exec_type
    (with its node type as `op`) or an ORT operator name."""
    from edgekit.agent.ort_profile import op_precision  # the one rule for ORT operators (the device agent's too)

    if op and op_precision(op) != "fp32":
        return op_precision(op)
    if _INT8.search(exec_type):
        return "int8"
    if re.search(r"(^|_)(FP32|f32)($|_)", exec_type) or op:
        return "fp32"
    return "other"


def _summary(layers: dict, wall_ms: list[float], iterations: int, top: int) -> dict:
    """layers: name -> {type, kernel, total_ms (over all iterations), ...}; the per-inference view of it."""
    per = []
    for name, d in layers.items():
        ms = d["total_ms"] / iterations
        per.append({"name": name, "type": d["type"], "kernel": d.get("kernel", ""), "precision": d["precision"], "ms": ms,
                    **{k: v for k, v in d.items() if k not in ("type", "kernel", "precision", "total_ms")}})
    per.sort(key=lambda x: -x["ms"])
    layer_ms = sum(x["ms"] for x in per)
    for x in per:
        x["share"] = x["ms"] / layer_ms if layer_ms else 0.0
    by_type: dict[str, dict] = {}
    for x in per:
        t = by_type.setdefault(f"{x['type']} [{x['precision']}]", {"ms": 0.0, "layers": 0})
        t["ms"] += x["ms"]
        t["layers"] += 1
    by_precision: dict[str, float] = {}
    for x in per:
        by_precision[x["precision"]] = by_precision.get(x["precision"], 0.0) + x["ms"]
    wall = statistics.median(wall_ms) if wall_ms else None
    return {"iterations": iterations, "layers_executed": len(per), "layer_ms": layer_ms,
            "wall_ms_median": wall, "overhead_ms": (wall - layer_ms) if wall is not None else None,
            "top": per[:top], "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["ms"])),
            "ms_by_precision": by_precision, "all_layers": per}


def _run(call, warmup: int, iterations: int, after=None) -> list[float]:
    for _ in range(warmup):
        call()
    wall = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        call()
        wall.append((time.perf_counter() - t0) * 1000)
        if after:
            after()
    return wall


def profile_openvino(artifact, feed: dict, iterations: int = 50, warmup: int = 10, threads: int | None = None, top: int = TOP) -> dict:
    """Per-layer times of an OpenVINO artifact from the CPU plugin's performance counters."""
    from edgekit.backends.base import get_backend

    if iterations < 1:
        raise EdgekitError(f"profiling needs at least one iteration, got {iterations}", "pass iterations >= 1")
    runner = get_backend("openvino").load(artifact, threads=threads, profiling=True, cache=False)
    call = runner.bind(feed)
    layers: dict[str, dict] = {}

    def collect():
        for p in call.request.get_profiling_info():  # the bound call's own infer request
            if str(p.status).endswith("NOT_RUN") or str(p.status).endswith("OPTIMIZED_OUT"):
                continue
            d = layers.setdefault(p.node_name, {"type": p.node_type, "kernel": p.exec_type,
                                                "precision": _precision_of_kernel(p.exec_type, p.node_type if p.node_type == "FakeQuantize" else ""),
                                                "total_ms": 0.0, "cpu_total_ms": 0.0})
            d["total_ms"] += p.real_time.total_seconds() * 1000
            d["cpu_total_ms"] += p.cpu_time.total_seconds() * 1000

    wall = _run(call, warmup, iterations, collect)
    for d in layers.values():
        d["cpu_ms"] = d.pop("cpu_total_ms") / iterations
    out = _summary(layers, wall, iterations, top)
    return {"backend": "openvino", "artifact": str(artifact.path), "precision": artifact.precision, "settings": runner.settings,
            "batch": len(next(iter(feed.values()))), "source": "CPU plugin performance counters (PERF_COUNT), real_time per node",
            **out}


def profile_onnxruntime(artifact, feed: dict, iterations: int = 50, warmup: int = 10, threads: int | None = None, top: int = TOP) -> dict:
    """Per-layer times of an ONNX Runtime artifact from ORT's profiler (the kernel time of each node)."""
    from edgekit.agent.ort_profile import shapes  # prepacked weights are absent from them
    from edgekit.backends.base import get_backend

    if iterations < 1:
        raise EdgekitError(f"profiling needs at least one iteration, got {iterations}", "pass iterations >= 1")
    with tempfile.TemporaryDirectory(prefix="edgekit-ortprof-") as d:
        runner = get_backend("onnxruntime").load(artifact, threads=threads, profile_prefix=str(Path(d) / "ort"))
        call = runner.bind(feed)
        wall = _run(call, warmup, iterations)
        trace = json.loads(Path(runner.session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed = runs[-iterations:]  # the warm-up runs come first
    start = timed[0]["ts"] if timed else 0
    layers: dict[str, dict] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < start:
            continue
        a = e.get("args", {})
        name = e["name"][: -len("_kernel_time")]
        op = a.get("op_name", "")
        d = layers.setdefault(name, {"type": op, "kernel": a.get("provider", ""), "precision": _precision_of_kernel("", op),
                                     "total_ms": 0.0, "output": _shape(a.get("output_type_shape")),
                                     "input_shapes": shapes(a.get("input_type_shape")), "output_shapes": shapes(a.get("output_type_shape"))})
        d["total_ms"] += e.get("dur", 0) / 1000
    if not layers:
        raise EdgekitError("ONNX Runtime's profile has no node events", "this onnxruntime build may have profiling disabled")
    out = _summary(layers, wall, len(timed) or iterations, top)
    out["model_run_ms_median"] = statistics.median(e["dur"] / 1000 for e in timed) if timed else None
    return {"backend": "onnxruntime", "artifact": str(artifact.path), "precision": artifact.precision, "settings": runner.settings,
            "batch": len(next(iter(feed.values()))), "source": "onnxruntime profiler (SessionOptions.enable_profiling), *_kernel_time events",
            **out}


def _shape(v) -> str:
    """ORT's output_type_shape ([{"float": [1, 64, 14, 14]}]) as 'float[1,64,14,14]'."""
    if not v:
        return ""
    try:
        return ", ".join(f"{t}[{','.join(map(str, s))}]" for item in v for t, s in item.items())
    except (AttributeError, TypeError):
        return str(v)


def profile_artifact(artifact, feed: dict, iterations: int = 50, warmup: int = 10, threads: int | None = None, top: int = TOP) -> dict:
    fn = {"openvino": profile_openvino, "onnxruntime": profile_onnxruntime}.get(artifact.backend)
    if fn is None:
        raise EdgekitError(f"per-layer profiling is not implemented for backend '{artifact.backend}'",
                           "profile ONNX Runtime or OpenVINO artifacts (TensorRT: trtexec --dumpProfile on the device)")
    return fn(artifact, feed, iterations, warmup, threads, top)


def print_profile(prof: dict, title: str = "") -> None:
    from rich.table import Table

    from edgekit.ui import console, escape

    t = Table("#", "layer", "type", "kernel", "prec", "ms", "share", title=title or f"{prof['backend']}: ten most expensive layers "
              f"(batch {prof['batch']}, {prof['iterations']} inferences)")
    for i, x in enumerate(prof["top"], 1):
        t.add_row(str(i), escape(x["name"][-60:]), escape(x["type"]), escape(x["kernel"]), x["precision"], f"{x['ms']:.3f}", f"{x['share']:.1%}")
    console.print(t)
    prec = ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(prof["ms_by_precision"].items()))
    wall = prof.get("wall_ms_median")
    console.print(f"layers {prof['layers_executed']}, sum of layer times {prof['layer_ms']:.3f} ms ({prec}); "
                  + (f"wall {wall:.3f} ms median, {prof['overhead_ms']:.3f} ms outside layers" if wall is not None else ""), highlight=False)
