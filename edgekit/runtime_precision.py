"""The runtime's own precision map of a compiled artifact: which layers the runtime executes in INT8, and what share
of the model's multiply-accumulates (MACs) they carry. NNCF's quantizer placement (the torch side) says where
quantizers were inserted; only the runtime says what runs in INT8 (a float op between two quantized ones, a
fusion the runtime declined, a Q/DQ pair left as a conversion).

- OpenVINO: the executed graph (`compiled_model.get_runtime_model()`): per layer its `runtimePrecision` (u8/i8 ->
  int8) and kernel (`primitiveType`); a layer's MACs are those of the ONNX nodes it executes, found by the names the
  plugin keeps in `originalLayersNames` (the compile's source ONNX, shapes inferred at batch 1), else (a MatMul the
  plugin renamed after its fused bias) the layer's own shapes.
- ONNX Runtime: its profiler, as edgekit.profile reads it for the benchmarks (one inference): per node the operator
  (QLinearConv, QGemm, MatMulIntegerToFloat, ... -> int8; Conv, MatMul, Gemm, ... -> fp32: edgekit.agent.ort_profile,
  which the device agent runs itself); a node's MACs from the shapes the profiler records and the weights of the
  artifact's (optimized) graph. NCHWc kernels pad channels to their block size: those MACs count as executed.
- TensorRT: the engine inspector (edgekit.agent.trt_plan.layer_precisions), on the device or in layers.json.

All three give the same shape (edgekit.agent.trt_plan.mac_summary): MACs per precision, `int8_mac_share`, the layers
that carry MACs and a count of layers per kind."""
from __future__ import annotations

import math
from pathlib import Path

from edgekit.agent.trt_plan import mac_summary
from edgekit.errors import EdgekitError

_OV_PRECISION = {"u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16"}


def runtime_precision(artifact, feed: dict | None = None) -> dict:
    """The precision map of an Artifact as its runtime executes it (see the module doc); feed: one batch-1 input
    (ONNX Runtime runs it once under its profiler; a random one from the spec by default)."""
    if artifact.backend == "openvino":
        return openvino_map(artifact)
    if artifact.backend == "onnxruntime":
        return onnxruntime_map(artifact, feed if feed is not None else artifact.spec.example_inputs(1))
    if artifact.backend == "tensorrt":
        from edgekit.backends.tensorrt import read_layers

        layers = read_layers(artifact.path.parent)
        if "runtime_precision" not in layers:
            raise EdgekitError(f"{artifact.path.parent / 'layers.json'} predates the runtime precision map", "recompile the artifact")
        return layers["runtime_precision"]
    raise EdgekitError(f"no runtime precision map for backend '{artifact.backend}'", "use onnxruntime, openvino or tensorrt")


# ---------------------------------------------------------------- OpenVINO: the executed graph

def onnx_node_macs(onnx_path) -> dict[str, int]:
    """MACs of one sample through each Conv / ConvTranspose / MatMul / Gemm node of an ONNX graph, by node name
    (shapes from ONNX shape inference with every dynamic axis set to 1)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    for v in proto.graph.input:
        for d in v.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1
    proto = onnx.shape_inference.infer_shapes(proto)
    g = proto.graph
    shapes = {i.name: list(i.dims) for i in g.initializer}
    for v in [*g.input, *g.value_info, *g.output]:
        shapes.setdefault(v.name, [d.dim_value or 1 for d in v.type.tensor_type.shape.dim])
    out = {}
    for n in g.node:
        a, y = (shapes.get(n.input[0]) if n.input else None), (shapes.get(n.output[0]) if n.output else None)
        if not a or not y:
            continue
        if n.op_type == "Conv" and len(n.input) > 1 and shapes.get(n.input[1]):
            out[n.name] = math.prod(y) * math.prod(shapes[n.input[1]][1:])
        elif n.op_type == "ConvTranspose" and len(n.input) > 1 and shapes.get(n.input[1]):
            out[n.name] = math.prod(a) * math.prod(shapes[n.input[1]][1:])
        elif n.op_type in ("MatMul", "Gemm"):
            trans_a = any(x.name == "transA" and x.i for x in n.attribute)
            out[n.name] = math.prod(y) * (a[0] if trans_a else a[-1])
    return out


def _claim(names: list[str], macs: dict[str, int], claimed: set) -> int:
    """MACs of the ONNX nodes behind one executed layer: its original names, exact or as the prefix of a name the
    plugin derived from them ('/proj/Gemm' -> '/proj/Gemm/WithoutBiases'). Each node is counted once."""
    total = 0
    for name in names:
        node = name if name in macs else next((n for n in macs if name.startswith(n + "/")), None)
        if node is not None and node not in claimed:
            claimed.add(node)
            total += macs[node]
    return total


def _ov_shape_macs(op, kind: str) -> int:
    """MACs of one executed layer from its own shapes, where its original names name no ONNX node (the plugin
    renames a MatMul fused with its bias after the Add): dynamic axes count as 1."""
    def dims(shape):
        return [d.get_length() if d.is_static else 1 for d in shape]
    if kind not in ("Convolution", "FullyConnected", "MatMul") or op.get_input_size() < 2:
        return 0
    y, a, w = dims(op.get_output_partial_shape(0)), dims(op.get_input_partial_shape(0)), dims(op.get_input_partial_shape(1))
    if kind == "Convolution":
        return math.prod(y) * math.prod(w) // max(y[1], 1)  # weight [Cout, Cin/g, k...] or grouped [g, Cout/g, Cin/g, k...]
    return math.prod(y) * (w[-1] if kind == "FullyConnected" else a[-1])  # FullyConnected weight [N, K]


def openvino_map(artifact) -> dict:
    from edgekit.backends.base import get_backend
    from edgekit.profile import _precision_of_kernel

    runner = get_backend("openvino").load(artifact, cache=False)
    source = artifact.meta.get("source")
    macs = onnx_node_macs(source) if source and Path(source).exists() else {}
    layers, claimed = [], set()
    for op in runner.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Input", "Output", "Parameter", "Result", "Const"):
            continue
        rt, kernel = info["runtimePrecision"].astype(str), info["primitiveType"].astype(str)
        original = [x for x in info["originalLayersNames"].astype(str).split(",") if x]
        precision = "qdq" if kind == "FakeQuantize" else _OV_PRECISION.get(rt, _precision_of_kernel(kernel))
        layers.append({"name": op.get_friendly_name(), "type": kind, "kernel": kernel, "runtime_precision": rt,
                       "precision": precision, "macs": _claim(original, macs, claimed) or _ov_shape_macs(op, kind)})
    out = mac_summary(layers, "OpenVINO executed graph (compiled_model.get_runtime_model()): runtimePrecision per layer; "
                              "MACs of the ONNX nodes in its originalLayersNames")
    out["onnx_macs"] = sum(macs.values())  # the source graph's own count, to compare with
    if not macs:
        out["note"] = f"the compile's source ONNX ({source}) is gone: no MACs, layer precisions only"
    return out


# ---------------------------------------------------------------- ONNX Runtime: the profiler

def _conv_weights(onnx_path) -> dict[str, list[int]]:
    """Weight shape of every convolution node of the artifact graph (what the session runs), by node name: the
    benchmarks' session prepacks weights, so its profile does not record them."""
    import onnx

    from edgekit.agent.ort_profile import CONV

    g = onnx.load(str(onnx_path)).graph
    init = {i.name: list(i.dims) for i in g.initializer}
    out = {}
    for n in g.node:
        w = 3 if n.op_type == "QLinearConv" else 1
        if n.op_type in CONV and len(n.input) > w and n.input[w] in init:
            out[n.name] = init[n.input[w]]
    return out


def onnxruntime_map(artifact, feed: dict) -> dict:
    """The benchmarks' profiler (edgekit.profile) on one inference, as Backend.load runs the artifact."""
    from edgekit.agent.ort_profile import node_macs
    from edgekit.profile import profile_onnxruntime

    prof = profile_onnxruntime(artifact, {k: v[:1] for k, v in feed.items()}, iterations=1, warmup=1)
    weights = _conv_weights(artifact.path)
    layers = [{**{k: x[k] for k in ("name", "type", "kernel", "precision")},
               "macs": node_macs(x["type"], x["input_shapes"], x["output_shapes"], weights.get(x["name"]))} for x in prof["all_layers"]]
    return mac_summary(layers, "ONNX Runtime profiler (SessionOptions.enable_profiling): the operator of each executed node; "
                               "MACs from its recorded shapes and the artifact graph's weights")


def measure_record(artifact) -> dict:
    """What the measure stage records: the map, or why there is none (it never fails a measurement)."""
    try:
        return runtime_precision(artifact)
    except (EdgekitError, RuntimeError) as e:  # OpenVINO raises RuntimeError
        return {"source": "", "error": getattr(e, "message", str(e).splitlines()[0][:300])}
