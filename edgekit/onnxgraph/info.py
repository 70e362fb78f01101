"""What an ONNX graph is: the precision it carries (the one definition edgekit uses; the device agent keeps a
numpy-only copy, `agent.trt_plan.graph_precision`, checked against this one by the tests) and its ModelSpec."""
from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.io import load_json
from edgekit.limits import check_external_data
from edgekit.spec import ModelSpec, spec_from

SPEC_KEY = "edgekit.spec"  # ONNX metadata_props key: the file carries its own ModelSpec
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16
_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}


def _proto(model):
    """A ModelProto, or the graph of a file read without its external data (the graph is enough here)."""
    if isinstance(model, (str, os.PathLike)):
        import onnx

        return onnx.load(str(model), load_external_data=False)
    return model


def graph_info(model) -> dict:
    """What an ONNX graph (ModelProto or path) carries by itself: {"qdq": has Q/DQ nodes (INT8), "float16": has
    float16 tensors (weights, or Casts to float16)}. Deploy ships this dict to the device's engine builder."""
    g = _proto(model).graph
    qdq = any(n.op_type in QDQ_OPS for n in g.node)
    fp16 = any(i.data_type == _FLOAT16 for i in g.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == _FLOAT16 for a in n.attribute) for n in g.node)
    return {"qdq": qdq, "float16": fp16}


def precision_of(info: dict) -> str:
    """The precision a graph carries, from its graph_info: Q/DQ -> int8 (whatever else it holds: the integer
    layers decide its speed and its parity threshold), float16 tensors -> fp16, else fp32."""
    return "int8" if info.get("qdq") else ("fp16" if info.get("float16") else "fp32")


def onnx_precision(model) -> str:
    """int8 | fp16 | fp32 of an ONNX graph (ModelProto or path); see precision_of."""
    return precision_of(graph_info(model))


def graph_summary(proto) -> dict:
    """The facts an export report records about a graph: node and op counts, Q/DQ, precision."""
    ops: dict[str, int] = {}
    for n in proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"nodes": len(proto.graph.node), "op_counts": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            "has_qdq": any(op in ops for op in QDQ_OPS), "precision": onnx_precision(proto)}


def spec_for_onnx(path) -> ModelSpec:
    """The ModelSpec of an ONNX file: from its metadata (edgekit exports), a checkpoint config.json beside it,
    or derived from the graph's inputs and outputs (batch = first axis, other axes must be fixed)."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"ONNX file {path} does not exist", "export one with `edgekit export CHECKPOINT --out model.onnx`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 — protobuf raises several types for a broken file
        raise EdgekitError(f"{path} is not a readable ONNX file ({type(e).__name__})", "re-export it") from e
    check_external_data(path, proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    if SPEC_KEY in meta:
        return _fits(proto, spec_from(meta[SPEC_KEY], f"{path} (metadata '{SPEC_KEY}')"), path, f"its metadata '{SPEC_KEY}'")
    cfg = path.parent / "config.json"
    if cfg.exists():
        try:
            spec = spec_from(load_json(cfg, "checkpoint config")["spec"], str(cfg))
        except (EdgekitError, KeyError, TypeError):
            pass
        else:
            return _fits(proto, spec, path, str(cfg))
    inits = {i.name for i in proto.graph.initializer}

    def shape(v, what):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        if any(d is None for d in dims[1:]):
            raise EdgekitError(f"{what} '{v.name}' of {path} has dynamic axes besides the batch: {dims}", "export with static shapes except the first (batch) axis")
        return [None] + dims[1:] if dims else dims

    inputs = []
    for v in proto.graph.input:
        if v.name in inits:
            continue
        dt = _ONNX_DTYPES.get(v.type.tensor_type.elem_type)
        if dt is None:
            raise EdgekitError(f"input '{v.name}' of {path} has an unsupported element type {v.type.tensor_type.elem_type}", f"use one of {sorted(_ONNX_DTYPES.values())}")
        inputs.append({"name": v.name, "shape": shape(v, "input"), "dtype": dt})
    outputs = [{"name": v.name, "shape": shape(v, "output")} for v in proto.graph.output]
    n_cls = outputs[0]["shape"][-1] if outputs and outputs[0]["shape"] and outputs[0]["shape"][-1] else 0
    return spec_from({"inputs": inputs, "outputs": outputs, "class_names": [str(i) for i in range(min(n_cls, 1 << 16))]},
                     f"{path} (the shapes of its graph's inputs and outputs)")


def _fits(proto, spec: ModelSpec, path: Path, source: str) -> ModelSpec:
    """`spec` if the graph takes no input it lacks: a foreign ONNX dropped into a variant folder would otherwise be fed
    by the spec of the config.json beside it and fail inside the runtime."""
    inits = {i.name for i in proto.graph.initializer}
    extra = sorted(v.name for v in proto.graph.input if v.name not in inits and v.name not in spec.input_names)
    if extra:
        raise EdgekitError(f"{path} takes inputs {extra} that {source} does not describe (it names {spec.input_names}): the graph "
                           "is not the model its spec is for", "put the model's own exported ONNX back (edgekit export / edgekit compress)")
    return spec
