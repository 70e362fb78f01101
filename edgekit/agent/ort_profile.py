"""ONNX Runtime's own precision map: which operator each executed node ran (QLinearConv, QGemm, MatMulInteger... are
INT8 kernels; Conv, MatMul, Gemm on dequantized floats are not) and its MACs, from ORT's profiler. Standard library
only, so the device agent uses it as it is; edgekit.profile and edgekit.runtime_precision use the same rules on the
host (one definition of "an INT8 kernel" for the benchmarks' profile and the report)."""
from __future__ import annotations

import json
import math
import os
import tempfile

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "FakeQuantize", "DynamicQuantizeLinear")
INT8_PREFIXES = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize", "QAttention", "QOrdered")
CONV = ("Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcConv", "NhwcFusedConv")
MATMUL = ("MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul",
          "Gemm", "FusedGemm", "QGemm", "MatMulNBits")


def op_precision(op: str) -> str:
    """int8 | qdq (a quantize/dequantize conversion: INT8's overhead, no compute) | fp32, from an ORT operator name."""
    if op in QDQ_OPS:
        return "qdq"
    return "int8" if op.startswith(INT8_PREFIXES) else "fp32"


def node_macs(op: str, input_shapes: list, output_shapes: list, weight: list | None = None) -> int:
    """MACs of one node at the profiled batch: a convolution's output elements x (Cin/groups x kernel area) from its
    weight (given, or among the inputs when the session did not prepack it), a matrix multiply's output elements x
    the inner dimension of its first input. Other operators: 0."""
    if not output_shapes or not output_shapes[0]:
        return 0
    if op in CONV:
        i = 3 if op == "QLinearConv" else 1
        w = weight or (input_shapes[i] if len(input_shapes) > i else None)
        return math.prod(output_shapes[0]) * math.prod(w[1:]) if w and len(w) > 2 else 0
    if op in MATMUL and input_shapes and input_shapes[0]:
        return math.prod(output_shapes[0]) * int(input_shapes[0][-1])
    return 0


def shapes(v) -> list:
    """ORT's input/output_type_shape ([{"float": [1, 64, 14, 14]}, ...]) as plain shapes."""
    try:
        return [list(s) for item in v or [] for s in item.values()]
    except (AttributeError, TypeError):
        return []


def trace_nodes(trace: list, since_ts: float = 0) -> list[dict]:
    """The *_kernel_time events of a profile (from since_ts on), one record per node (its first event)."""
    out: dict[str, dict] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < since_ts:
            continue
        a = e.get("args", {})
        name, op = e["name"][: -len("_kernel_time")], a.get("op_name", "")
        out.setdefault(name, {"name": name, "type": op, "kernel": a.get("provider", ""), "precision": op_precision(op),
                              "input_shapes": shapes(a.get("input_type_shape")), "output_shapes": shapes(a.get("output_type_shape"))})
    return list(out.values())


def profile_map(onnx_path: str, feed: dict, providers: list[str], threads: int | None = None) -> dict:
    """Run `feed` once through a profiled session of the ONNX (prepacking off, so the profile records every weight's
    shape) and return the precision map (trt_plan.mac_summary's shape)."""
    import onnxruntime as ort

    from .trt_plan import mac_summary

    with tempfile.TemporaryDirectory(prefix="edgekit-ortmap-") as d:
        so = ort.SessionOptions()
        so.enable_profiling, so.profile_file_prefix = True, os.path.join(d, "ort")
        so.add_session_config_entry("session.disable_prepacking", "1")
        if threads:
            so.intra_op_num_threads = int(threads)
        session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        session.run(None, feed)
        with open(session.end_profiling()) as f:
            trace = json.load(f)
    layers = [{**n, "macs": node_macs(n["type"], n["input_shapes"], n["output_shapes"])} for n in trace_nodes(trace)]
    return mac_summary(layers, "ONNX Runtime profiler (SessionOptions.enable_profiling): the operator of each executed node; "
                               "MACs from the shapes it records")
