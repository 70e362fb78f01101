"""FP16 ONNX: float16 weights and activations with float32 inputs and outputs — how TensorRT 11 gets FP16 (it has
no FP16 builder flag), and what ONNX Runtime compiles for `precision: fp16`. A few ops stay float32 (KEEP_FP32),
with Casts around them: a mixed graph where half precision would lose too much."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.limits import check_external_data
from edgekit.onnxgraph.info import spec_for_onnx
from edgekit.onnxgraph.save import save_with_spec
from edgekit.parity import (
    MIN_TOP1,
    load_parity_samples,
    logits_of,
    ort_predict,
    parity,
    random_dataset,
    save_checked_report,
    save_parity_samples,
)

# Ops kept in float32 (Casts around them): their float inputs are parameters that must stay float32
# (Resize scales, Range bounds) or they lose too much in half precision (cumulative sums).
KEEP_FP32 = frozenset({"Resize", "Upsample", "Range", "CumSum", "RandomNormalLike", "RandomUniformLike"})


def to_fp16_onnx(src_onnx, dst_onnx, keep_fp32=KEEP_FP32, min_top1: float = MIN_TOP1["fp16"], max_samples: int = 256) -> dict:
    """An FP16 ONNX (float16 weights and activations, inputs and outputs kept float32) — how TensorRT 11 gets
    FP16, since it has no FP16 builder flag. Parity is checked with ONNX Runtime against the torch logits saved
    with `src_onnx` (or against `src_onnx` itself on random inputs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    src, dst = Path(src_onnx), Path(dst_onnx)
    check_external_data(src)  # before onnx.load reads any external data
    proto = onnx.load(str(src))
    g = proto.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node):
        raise EdgekitError(f"{src} is an INT8 (Q/DQ) model; FP16 conversion takes a float32 model", "convert the FP32 export instead")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        raise EdgekitError(f"{src} has control flow (If/Loop/Scan); FP16 conversion of subgraphs is not supported", "export without data-dependent control flow")
    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)})
    types.update({i.name: i.data_type for i in g.initializer})

    def half(arr):  # saturate instead of overflowing to inf
        return np.clip(arr, -65504, 65504).astype(np.float16)

    for i, init in enumerate(g.initializer):
        if init.data_type == F32:
            g.initializer[i].CopyFrom(numpy_helper.from_array(half(numpy_helper.to_array(init)), init.name))
    new_nodes = []

    def cast(name, to, out):
        new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}__cast"))

    renamed = {}  # float32 graph inputs -> their float16 copies
    for inp in g.input:
        if inp.type.tensor_type.elem_type == F32:
            renamed[inp.name] = f"{inp.name}__fp16"
            cast(inp.name, F16, renamed[inp.name])
    out_f32 = {o.name for o in g.output if o.type.tensor_type.elem_type == F32}
    for node in g.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == F32:
                attr.t.CopyFrom(numpy_helper.from_array(half(numpy_helper.to_array(attr.t)), attr.t.name))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == F32:
                attr.i = F16
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                value = np.array(attr.f if attr.name == "value_float" else list(attr.floats), np.float32)
                node.attribute.remove(attr)
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(half(value))))
                break
        if node.op_type in keep_fp32:
            for k, name in enumerate(node.input):
                if name and types.get(name) == F32:
                    cast(name, F32, f"{name}__to32_{len(new_nodes)}")
                    node.input[k] = new_nodes[-1].output[0]
            new_nodes.append(node)
            for k, name in enumerate(node.output):
                if types.get(name) == F32:
                    node.output[k] = f"{name}__fp32"
                    cast(node.output[k], F16, name)
            continue
        new_nodes.append(node)
    for node in new_nodes:
        for k, name in enumerate(node.output):
            if name in out_f32:
                node.output[k] = f"{name}__fp16"
                for other in new_nodes:  # later consumers of a graph output read the float16 copy
                    if other is not node:
                        for j, i in enumerate(other.input):
                            if i == name:
                                other.input[j] = node.output[k]
    for name in out_f32:
        cast(f"{name}__fp16", F32, name)
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]  # stale float32 types; the checker's inference recomputes them
    spec = spec_for_onnx(src)
    facts = save_with_spec(onnx.shape_inference.infer_shapes(proto), spec, dst, lambda why: EdgekitError(
        f"the FP16 conversion of {src} is an invalid graph: {why}",
        f"check {src} with onnx.checker.check_model; if it passes, this is an edgekit bug: report it with the file"))
    saved = load_parity_samples(src)
    if saved is not None:
        data, reference = saved
        what = "torch (samples saved with the FP32 export)"
    else:
        data = random_dataset(spec)
        reference, what = logits_of(ort_predict(src), data), f"{src.name} on onnxruntime (random inputs)"
    result = dict(parity(reference, ort_predict(dst, spec.output_names[0]), data, max_samples), reference=what, candidate="onnxruntime CPU")
    save_parity_samples(dst, data.subset(np.arange(min(len(data), max_samples))), np.asarray(reference)[:max_samples])
    report = {**facts, "source": str(src), "keep_fp32": sorted(keep_fp32), "io_dtype": "float32", "parity": result, "spec": spec.model_dump()}
    return save_checked_report(dst, report, min_top1, f"the FP16-converted graph {dst} (run by ONNX Runtime)")
