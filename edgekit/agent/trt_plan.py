"""Planning a TensorRT build and reading what it produced: pure functions that need neither TensorRT nor a GPU,
so they are unit-tested anywhere (trt.py builds, caches and runs the engines).

Two API generations are handled, chosen by `tensorrt.__version__`:
- 10.x (JetPack 6): precision comes from the ONNX (explicit Q/DQ for INT8, float16 tensors for FP16) in a
  STRONGLY_TYPED network; an FP32 ONNX asked to run in FP16 uses the weakly typed FP16 builder flag.
  INT8 calibrators are never used (deprecated in 10.x, removed in 11.x).
- 11.x (JetPack 7): every network is strongly typed and the FP16/INT8 builder flags are gone, so the ONNX
  alone decides the precision; asking for a precision the ONNX does not carry is an error.

Besides the plan: the engine cache key, the plan as a trtexec command line, the parsing of trtexec's JSON
exports and of engine-inspector JSON (what precision each layer ran in)."""
from __future__ import annotations

import hashlib
import json
import re

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPTIONS = {"precision": None, "workspace_mb": 1024, "batch": {"min": 1, "opt": 1, "max": 8},
                   "optimization_level": 3, "tf32": True, "fp16_fallback": False, "timing_cache": True,
                   "builder": "python"}


class PlanError(ValueError):
    """Build options the installed TensorRT cannot honour; `hint` says what to change."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def parse_version(version: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", str(version))[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def graph_precision(graph: dict) -> str:
    """What an ONNX graph carries by itself: Q/DQ nodes -> int8, float16 tensors -> fp16, else fp32. A copy of
    edgekit.onnxgraph.info.precision_of, because the agent runs on the device without edgekit; graph is that
    module's graph_info, shipped in the bundle. tests/test_onnxgraph.py checks that the two agree."""
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
                            "export the variant with edgekit.onnxgraph.fp16.to_fp16_onnx (keep_io_types) or choose precision fp32")
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
        precision = ranked[0] if ranked else (outs[0] if outs else "unknown")
        convert = _is_conversion(layer)
        layers.append({"name": layer.get("Name"), "type": layer.get("LayerType"), "inputs": ins, "outputs": outs,
                       "precision": "qdq" if convert and precision in ("int8", "fp8") else precision,
                       "role": "convert" if convert else "compute", "macs": 0 if convert else inspector_macs(layer),
                       "tactic": layer.get("TacticName") or layer.get("TacticValue")})
    counts: dict[str, int] = {}
    for lay in layers:
        counts[lay["precision"]] = counts.get(lay["precision"], 0) + 1
    io = info.get("I/O Tensors") or [{"Name": n} for n in info.get("Bindings", [])]
    return {"layers": layers, "counts": counts, "io": [t.get("Name") for t in io],
            "runtime_precision": mac_summary(layers, "TensorRT engine inspector (ProfilingVerbosity.DETAILED): "
                                                     "layer I/O data types, MACs from Dimensions, Weights.Count and OutMaps")}


# The inspector's DETAILED layer records, as the TensorRT Developer Guide's "Engine Inspector" section shows them
# (docs.nvidia.com/deeplearning/tensorrt/developer-guide, IEngineInspector; also what trtexec --exportLayerInfo
# writes and TREx reads): "ParameterType" names the layer's kind ("Convolution", "Deconvolution",
# "MatrixMultiply", "Reformat", ...), "Origin" says why a layer exists ("QDQ" for what is left of a Q/DQ pair,
# "REFORMAT" for a layout change), a convolution gives "OutMaps", "Groups", "Kernel" and "Weights": {"Type",
# "Count"}, and every tensor its "Dimensions" (-1 for a dynamic axis).
_CONVERSIONS = ("Reformat", "Quantize", "Dequantize", "QuantizeLinear", "DequantizeLinear", "NoOp", "Shuffle", "Constant")


def _is_conversion(layer: dict) -> bool:
    """A layer that only changes layout or precision (a Reformat, a leftover Q/DQ): never INT8 compute."""
    kinds = {str(layer.get("ParameterType") or ""), str(layer.get("LayerType") or "")}
    return bool(kinds & set(_CONVERSIONS)) or str(layer.get("Origin") or "").upper() in ("QDQ", "REFORMAT")


def _per_sample(dims) -> int:
    """Elements of one sample of a tensor: the product of its dimensions after the first (the batch)."""
    n = 1
    for d in list(dims or [])[1:]:
        n *= max(int(d), 1)
    return n if dims else 0


def inspector_macs(layer: dict) -> int:
    """Multiply-accumulates of one sample through one inspector layer record: a convolution does
    Weights.Count / OutMaps per output element (Cin/groups x kernel area), a matrix multiply the inner dimension
    of its first input per output element. Other layers: 0."""
    kind = str(layer.get("ParameterType") or layer.get("LayerType") or "")
    outs = [t for t in layer.get("Outputs", []) if isinstance(t, dict)]
    ins = [t for t in layer.get("Inputs", []) if isinstance(t, dict)]
    out = _per_sample(outs[0].get("Dimensions")) if outs else 0
    if kind in ("Convolution", "Deconvolution") or "Convolution" in str(layer.get("LayerType") or ""):
        w, maps = (layer.get("Weights") or {}).get("Count"), layer.get("OutMaps")
        if kind == "Deconvolution" and ins and w and maps:  # each input element meets Weights.Count / Cin weights
            return _per_sample(ins[0].get("Dimensions")) * int(w) // max(int((ins[0].get("Dimensions") or [0, 1])[1]), 1)
        return out * int(w) // int(maps) if w and maps else 0
    if kind in ("MatrixMultiply", "FullyConnected", "Gemm") and ins and ins[0].get("Dimensions"):
        return out * max(int(ins[0]["Dimensions"][-1]), 1)
    return 0


def mac_summary(layers: list[dict], source: str) -> dict:
    """The runtime precision map's summary, one shape for every runtime (edgekit.runtime_precision builds the same
    for ONNX Runtime and OpenVINO): layers [{name, type, precision, macs, ...}] -> MACs per precision, the share of
    MACs in INT8, and the layers that carry MACs. Conversions (precision "qdq") carry none."""
    macs: dict[str, int] = {}
    for lay in layers:
        if lay.get("macs"):
            macs[lay["precision"]] = macs.get(lay["precision"], 0) + int(lay["macs"])
    total = sum(macs.values())
    kinds: dict[str, int] = {}
    for lay in layers:
        key = f"{lay.get('type')} [{lay['precision']}]"
        kinds[key] = kinds.get(key, 0) + 1
    return {"source": source, "macs": macs, "total_macs": total, "int8_mac_share": macs.get("int8", 0) / total if total else None,
            "layers_by_kind": kinds, "mac_layers": [{k: lay.get(k) for k in ("name", "type", "kernel", "precision", "macs") if lay.get(k) is not None}
                                                    for lay in layers if lay.get("macs")]}
