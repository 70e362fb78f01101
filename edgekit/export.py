"""ONNX export: one portable file per variant. Named inputs/outputs from the ModelSpec, dynamic batch, INT8 as
explicit QuantizeLinear/DequantizeLinear pairs (what TensorRT 10/11, ONNX Runtime and OpenVINO all read), cleaned
with onnxslim and checked with the ONNX checker.

INT8 weights stay float32 initializers behind a Q->DQ pair rather than being folded to int8 initializers: the
file is 4x larger, but folded weights lose OpenVINO's int8 path whenever the model goes through
ov.convert_model or a PrePostProcessor (as benchmark_app does) — measured 5x slower on the base model. Each
backend stores the weights as int8 itself (OpenVINO's IR, TensorRT's engine).

A BatchNorm after a convolution is folded into it at export even when the convolution's weights are behind Q/DQ
(exact for symmetric weights: the integers keep their values, the per-channel scale absorbs the BatchNorm);
otherwise Conv -> BatchNormalization -> Q is a pattern no runtime runs as an int8 convolution. The CPU backends then
rewrite the activations' Q/DQ pairs to uint8 (`prepare_int8_for_cpu`): the signed pairs are for TensorRT.

Parity is checked after every export: the torch model's logits on held-out samples are compared with ONNX
Runtime's. Those samples and the torch logits are saved beside the file (`<stem>.parity.npz`), so every later
compile can be checked against the torch model too, even on a device without torch."""
from __future__ import annotations

import json
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from edgekit.data import ArrayDataset
from edgekit.errors import EdgekitError
from edgekit.io import atomic_path, atomic_write_json, atomic_write_npz
from edgekit.spec import InputSpec, ModelSpec, OutputSpec

# 17 is the first opset with LayerNormalization; TensorRT 10.3 (JetPack 6), ONNX Runtime and OpenVINO all read it.
DEFAULT_OPSET = 17
SPEC_KEY = "edgekit.spec"  # ONNX metadata_props key: the file carries its own ModelSpec
MIN_TOP1 = {"fp32": 0.99, "fp16": 0.95, "int8": 0.95}
RANDOM_SAMPLES = 32  # parity samples when no held-out data is given

_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}


def sidecar(onnx_path, kind: str) -> Path:
    """model.onnx -> model.export.json / model.parity.npz"""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.{kind}")


# ---------------------------------------------------------------------------------------------------- parity

def _as_fn(obj):
    if isinstance(obj, np.ndarray) or (callable(obj) and not hasattr(obj, "run") and not hasattr(obj, "state_dict")):
        return obj
    from edgekit.evaluate import as_predict

    return as_predict(obj)


def _logits(fn, data: ArrayDataset, batch_size: int = 64) -> np.ndarray:
    from edgekit.evaluate import predict

    return fn[: len(data)] if isinstance(fn, np.ndarray) else predict(fn, data, batch_size)


def parity(reference_predict, candidate_predict, dataset: ArrayDataset, max_samples: int = 256, batch_size: int = 64) -> dict:
    """Compare two predictors (torch model, Runner, feed->logits function, or precomputed logits) on the first
    `max_samples` samples: top-1 agreement and max/mean absolute logit difference."""
    n = min(len(dataset), max_samples)
    data = dataset.subset(np.arange(n))
    ref = np.asarray(_logits(_as_fn(reference_predict), data, batch_size), np.float64)
    cand = np.asarray(_logits(_as_fn(candidate_predict), data, batch_size), np.float64)
    if ref.shape != cand.shape:
        raise EdgekitError(f"parity: reference logits have shape {ref.shape}, candidate {cand.shape}", "both must predict [N, classes] for the same samples")
    diff = np.abs(ref - cand)
    out = {"n": int(n), "top1_agreement": float((ref.argmax(1) == cand.argmax(1)).mean()),
           "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "finite": bool(np.isfinite(cand).all())}
    if data.labels.min() >= 0:
        out["reference_accuracy"] = float((ref.argmax(1) == data.labels).mean())
        out["candidate_accuracy"] = float((cand.argmax(1) == data.labels).mean())
    return out


def check_parity(result: dict, min_top1: float = 0.99, what: str = "export") -> dict:
    """Record the threshold and verdict in `result`; raise EdgekitError, with the numbers, when top-1 agreement
    is below `min_top1` or the outputs are not finite."""
    result["min_top1"] = min_top1
    result["passed"] = bool(result["finite"] and result["top1_agreement"] >= min_top1)
    if result["passed"]:
        return result
    raise EdgekitError(
        f"{what} parity failed: top-1 agreement {result['top1_agreement']:.2%} (need >= {min_top1:.1%}) over {result['n']} samples, "
        f"max |logit diff| {result['max_abs_diff']:.4g}, mean {result['mean_abs_diff']:.4g}" + ("" if result["finite"] else ", outputs contain NaN/Inf"),
        "the converted graph computes something else: look for ops the target handles differently; for INT8/FP16 "
        "recalibrate on representative data, keep sensitive layers in higher precision, or lower min_top1 knowingly")


def random_dataset(spec: ModelSpec, n: int = RANDOM_SAMPLES, seed: int = 0) -> ArrayDataset:
    """Inputs of the right names/shapes/dtypes when no held-out data is at hand (labels unknown: -1)."""
    return ArrayDataset(spec.example_inputs(n, seed), np.full(n, -1, np.int64), tuple(spec.modalities))


def save_parity_samples(onnx_path, data: ArrayDataset, reference_logits: np.ndarray) -> Path:
    out = sidecar(onnx_path, "parity.npz")
    atomic_write_npz(out, labels=data.labels, reference_logits=np.asarray(reference_logits, np.float32),
                     **{f"input.{k}": v for k, v in data.inputs.items()})
    return out


def load_parity_samples(onnx_path) -> tuple[ArrayDataset, np.ndarray] | None:
    """(samples, torch reference logits) saved by the export of this ONNX file, or None."""
    p = sidecar(onnx_path, "parity.npz")
    if not p.exists():
        return None
    with np.load(p, allow_pickle=False) as z:
        inputs = {k.removeprefix("input."): z[k] for k in z.files if k.startswith("input.")}
        return ArrayDataset(inputs, z["labels"]), z["reference_logits"]


def ort_predict(onnx_path, output: str | None = None):
    """A feed -> logits function running the ONNX file on ONNX Runtime's CPU provider (the reference runtime)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = [output or sess.get_outputs()[0].name]
    return lambda feed: sess.run(out, {k: np.ascontiguousarray(v) for k, v in feed.items()})[0]


def compiled_parity(runner, onnx_path, spec: ModelSpec, max_samples: int = 256) -> dict:
    """Parity of a compiled artifact against the torch model (samples saved at export), or against ONNX
    Runtime on the source ONNX with random inputs when the file came without them."""
    saved = load_parity_samples(onnx_path)
    if saved is not None:
        data, reference = saved
        res = parity(reference, runner, data, max_samples)
        res["reference"] = "torch (samples saved at export)"
    else:
        data = random_dataset(spec)
        res = parity(ort_predict(onnx_path, spec.output_names[0]), runner, data, max_samples)
        res["reference"] = "onnxruntime CPU on the source ONNX (random inputs: no parity samples beside it)"
    return res


# ---------------------------------------------------------------------------------------------------- export

def _positional(model, spec: ModelSpec):
    """The model with forward(*inputs in spec order): ONNX input names are assigned by position, so the order
    must be the spec's, not forward()'s."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            out = self.model(**dict(zip(spec.input_names, args)))
            return tuple(out[n] for n in spec.output_names) if isinstance(out, dict) else out

    return Positional().train(model.training)  # the exporter restores this mode on the whole tree afterwards


def _strip_nncf(model, example: dict):
    """An NNCF-quantized torch model exports OpenVINO-only FakeQuantize ops by default; stripping it to torch's
    native FakeQuantize modules makes the exporter write standard QuantizeLinear/DequantizeLinear pairs."""
    if "nncf" not in sys.modules:  # only NNCF can have wrapped it, and then NNCF is imported
        return model
    from nncf.torch.function_hook.wrapper import is_wrapped

    if not is_wrapped(model):
        return model
    import nncf

    return nncf.strip(model, do_copy=True, strip_format=nncf.StripFormat.NATIVE, example_input=example)


def _failing_module(model, example: dict, op: str | None) -> tuple[str, str] | None:
    """Run the model once, tracking the module stack, and return (module path, class) of the innermost module
    that calls `op` (or that raises, when the failure is in Python code rather than in an op's conversion)."""
    import torch
    from torch.overrides import TorchFunctionMode

    stack, found, handles = [], [], []
    modules = dict(model.named_modules())
    for name, mod in modules.items():
        handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: stack.append(n)))
        handles.append(mod.register_forward_hook(lambda m, a, o: stack.pop()))

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if op and not found and getattr(func, "__name__", "").lstrip("_") == op.lstrip("_"):
                found.append(stack[-1] if stack else "")
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Spy():
            model(**example)
    except Exception:  # noqa: BLE001 — a failure inside forward is itself the answer
        if not found:
            found.append(stack[-1] if stack else "")
    finally:
        for h in handles:
            h.remove()
    if not found:
        return None
    return found[0] or "<root>", type(modules[found[0]]).__name__


def _export_error(model, example: dict, opset: int, e: Exception) -> EdgekitError:
    text = str(e).strip()
    first = next((line for line in text.splitlines() if line.strip()), type(e).__name__)
    m = re.search(r"aten::(\w+)", text)
    op = m.group(1) if m else None
    where = _failing_module(model, example, op)
    loc = f"module '{where[0]}' ({where[1]})" if where else "an unknown module"
    return EdgekitError(f"ONNX export failed at op '{op or '?'}' in {loc}: {type(e).__name__}: {first[:300]}",
                        f"rewrite that part of {loc} with ONNX-exportable ops, or try a newer --opset (now {opset})")


def _torch_export(model, spec: ModelSpec, opset: int, example: dict):
    import onnx
    import torch

    names = spec.input_names + spec.output_names
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as d:
        f = Path(d) / "model.onnx"
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer chatter
                torch.onnx.export(_positional(model, spec), tuple(example[n] for n in spec.input_names), str(f),
                                  input_names=spec.input_names, output_names=spec.output_names, opset_version=opset,
                                  dynamic_axes={n: {0: "batch"} for n in names}, do_constant_folding=True,
                                  dynamo=False)  # the TorchScript exporter handles fake-quant -> Q/DQ and dynamic batch reliably
        except Exception as e:  # noqa: BLE001 — any exporter failure becomes "which module, which op"
            raise _export_error(model, example, opset, e) from e
        return onnx.load(str(f))


def _init_map(graph) -> dict:
    return {i.name: i for i in graph.initializer}


def _signed_qdq(proto) -> int:
    """TensorRT reads only signed, symmetric INT8 Q/DQ. Rewrite unsigned pairs with zero point 0 (what torch emits
    after ReLU) as int8 with scale * 255/127: the same range with 7-bit resolution, which is what TensorRT
    would give such a tensor anyway. Returns how many nodes changed."""
    from onnx import numpy_helper

    g, changed, made, stale = proto.graph, 0, {}, set()
    inits = _init_map(g)
    for node in g.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp, scale = inits.get(node.input[2]), inits.get(node.input[1])
        if zp is None or scale is None:
            continue
        z = numpy_helper.to_array(zp)
        if z.dtype != np.uint8 or z.any():
            continue
        for k, make in ((1, lambda: numpy_helper.to_array(scale).astype(np.float32) * np.float32(255 / 127)),
                        (2, lambda: np.zeros(z.shape, np.int8))):
            name = f"{node.input[k]}__s8"
            if name not in made:
                made[name] = g.initializer.add()
                made[name].CopyFrom(numpy_helper.from_array(make(), name))
            node.input[k] = name
        changed += 1
        stale.update(node.output if node.op_type == "QuantizeLinear" else ())
    kept = [v for v in g.value_info if v.name not in stale]  # recorded as uint8 by the exporter
    del g.value_info[:]
    g.value_info.extend(kept)
    return changed


def _consumers(graph) -> dict:
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _fold_bn_into_qdq_conv(proto) -> int:
    """Fold each BatchNormalization that follows a Conv with Q/DQ weights into that Conv.

    The exporter folds BatchNorm only into plain float weights; behind a Q->DQ pair it leaves a
    Conv -> BatchNormalization -> Q chain, which no runtime turns into an int8 convolution (ONNX Runtime keeps such
    a Conv in float with its inputs dequantized: measured slower than the FP32 model on the base model). The fold
    is exact for symmetric weight quantization (zero point 0): with a = gamma / sqrt(var + eps) per output channel,
    round(W*a / (s*|a|)) = sign(a) * round(W/s), so the weight integers keep their values (up to sign) and the
    per-channel scale becomes s*|a|; the bias becomes (b - mean) * a + beta (float, as the exporter writes it).
    Returns how many BatchNorms were folded."""
    from onnx import helper, numpy_helper

    g = proto.graph
    inits = _init_map(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers = _consumers(g)
    graph_outputs = {o.name for o in g.output}
    folded, drop = 0, []

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    for conv in list(g.node):
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.output[0] in graph_outputs:
            continue
        users = consumers.get(conv.output[0], [])
        if len(users) != 1 or users[0].op_type != "BatchNormalization" or users[0].input[0] != conv.output[0]:
            continue
        bn = users[0]
        if any(a.name == "training_mode" and a.i for a in bn.attribute) or len(bn.output) != 1:
            continue
        gamma, beta, mean, var = (const(n) for n in bn.input[1:5])
        dq = producer.get(conv.input[1])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if (q is None or q.op_type != "QuantizeLinear" or any(x is None for x in (gamma, beta, mean, var))
                or len(consumers.get(conv.input[1], [])) != 1 or len(consumers.get(q.output[0], [])) != 1
                or q.input[0] not in inits or len(q.input) < 3 or q.input[1:3] != dq.input[1:3]):
            continue
        w, scale, zp = const(q.input[0]), const(q.input[1]), const(q.input[2])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        a = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps))
        cout = w.shape[0]
        axis = next((at.i for at in q.attribute if at.name == "axis"), 1)
        per_channel = scale.ndim == 1 and scale.size == cout and axis == 0
        if (scale is None or zp is None or zp.any() or a.shape != (cout,) or np.abs(a).min() < 1e-12
                or not (per_channel or scale.size == 1)):
            continue
        shape = (cout,) + (1,) * (w.ndim - 1)
        new_w = (w.astype(np.float64) * a.reshape(shape)).astype(np.float32)
        new_scale = (np.broadcast_to(scale.astype(np.float64).reshape(-1), (cout,)) * np.abs(a)).astype(np.float32)
        new_zp = np.zeros(cout, zp.dtype)
        bias = const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(cout, np.float32)
        if bias is None:
            continue
        new_b = ((bias.astype(np.float64) - mean) * a + beta).astype(np.float32)
        stem = f"{conv.name or conv.output[0]}__bnfold"
        for name, arr in ((f"{stem}.w", new_w), (f"{stem}.scale", new_scale), (f"{stem}.zp", new_zp), (f"{stem}.b", new_b)):
            init = g.initializer.add()
            init.CopyFrom(numpy_helper.from_array(arr, name))
            inits[name] = init
        q.input[0], q.input[1], q.input[2] = f"{stem}.w", f"{stem}.scale", f"{stem}.zp"
        dq.input[1], dq.input[2] = f"{stem}.scale", f"{stem}.zp"
        for node in (q, dq):
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("axis", 0))
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = f"{stem}.b"
        conv.output[0] = bn.output[0]  # the Conv now writes what the BatchNorm wrote
        drop.append(bn)
        folded += 1
    for bn in drop:
        g.node.remove(bn)
    if folded:
        stale = {n.input[0] for n in drop}  # the Conv's old output name is gone
        kept = [v for v in g.value_info if v.name not in stale]
        del g.value_info[:]
        g.value_info.extend(kept)
    return folded


def _activations_to_uint8(proto) -> dict:
    """Rewrite the int8 activation Q/DQ pairs of an INT8 export into the uint8 form x86 int8 kernels want (weights
    stay int8: the U8S8 path of ONNX Runtime's and oneDNN's int8 GEMM/conv kernels). Both rewrites keep the numbers:

    - after a Relu, a symmetric int8 pair (scale s, zero point 0: how edgekit's export writes NNCF's unsigned
      quantizer for TensorRT) becomes uint8 with zero point 0 and scale s*127/255 — NNCF's own quantizer, same
      range, twice the resolution. ONNX Runtime then drops the Relu (its zero point is the type's minimum) and fuses
      DQ -> Conv/MatMul -> Q into QLinearConv/QGemm; with int8 zero point 0 the Relu blocks that fusion and the
      Conv runs in float between a DequantizeLinear and a QuantizeLinear (slower than the FP32 model).
    - any other int8 activation pair becomes uint8 with zero point + 128 and the same scale (exactly the same
      values). ONNX Runtime does that itself for a Q/DQ pair with one consumer, but not for a tensor read by several
      (the q, k and v projections of one LayerNorm output), and with an int8 activation its MatMul fusions do not
      apply on x86: those MatMuls stayed float, with their weights dequantized on every run.
    Returns {"relu_outputs": n, "shifted": m} (pairs rewritten)."""
    from onnx import numpy_helper

    g = proto.graph
    inits = _init_map(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers = _consumers(g)
    made: set[str] = set()
    counts = {"relu_outputs": 0, "shifted": 0}

    def add(name, arr):
        if name not in made and name not in inits:
            init = g.initializer.add()
            init.CopyFrom(numpy_helper.from_array(arr, name))
            made.add(name)
        return name

    for q in g.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[0] in inits:
            continue  # weights (constant inputs) stay int8
        s_name, z_name = q.input[1], q.input[2]
        if s_name not in inits or z_name not in inits:
            continue
        scale, zp = numpy_helper.to_array(inits[s_name]), numpy_helper.to_array(inits[z_name])
        users = consumers.get(q.output[0], [])
        if (zp.dtype != np.int8 or scale.size != 1 or not users
                or any(u.op_type != "DequantizeLinear" or list(u.input[1:3]) != [s_name, z_name] for u in users)):
            continue
        src = producer.get(q.input[0])
        if src is not None and src.op_type == "Relu" and not zp.any():
            new = (add(f"{s_name}__relu_u8", (scale.astype(np.float64) * 127 / 255).astype(np.float32)),
                   add(f"{z_name}__relu_u8", np.zeros(zp.shape, np.uint8)))
            counts["relu_outputs"] += 1
        else:
            new = (s_name, add(f"{z_name}__u8", (zp.astype(np.int16) + 128).astype(np.uint8)))
            counts["shifted"] += 1
        for node in [q, *users]:
            node.input[1], node.input[2] = new
    if any(counts.values()):
        stale = {q.output[0] for q in g.node if q.op_type == "QuantizeLinear"}  # recorded as int8
        kept = [v for v in g.value_info if v.name not in stale]
        del g.value_info[:]
        g.value_info.extend(kept)
    return counts


def prepare_int8_for_cpu(src_onnx, dst_onnx) -> dict | None:
    """The CPU backends' view of an INT8 (Q/DQ) ONNX: BatchNorms folded into Q/DQ convolutions (for files exported
    before the export did it) and activations as uint8 (see `_activations_to_uint8`). Writes `dst_onnx` and returns
    what was rewritten, or None (nothing written) when the file has no Q/DQ. The values computed are the same up to
    float rounding (after a Relu: the same range at a finer step), and the compile's parity check still compares
    the result with the torch model."""
    import onnx

    proto = onnx.load(str(src_onnx))
    if onnx_precision(proto) != "int8":
        return None
    done = {"bn_folded": _fold_bn_into_qdq_conv(proto), **_activations_to_uint8(proto)}
    _prune_initializers(proto.graph)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise EdgekitError(f"rewriting the Q/DQ pairs of {src_onnx} for CPU made an invalid graph: {str(e).splitlines()[0][:300]}",
                           "this is an edgekit bug: report it with the ONNX file") from e
    with atomic_path(Path(dst_onnx), suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
    return done


def _prune_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    live = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)


def onnx_precision(proto) -> str:
    """int8 if the graph carries Q/DQ, fp16 if its weights are float16, else fp32."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        return "int8"
    return "fp16" if any(i.data_type == 10 for i in proto.graph.initializer) else "fp32"


def _finish(proto, spec: ModelSpec, path: Path) -> dict:
    """Attach the spec, check, save atomically; returns the facts the report needs."""
    import onnx

    _prune_initializers(proto.graph)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {SPEC_KEY: spec.model_dump_json()})
    proto.producer_name = "edgekit"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise EdgekitError(f"the exported ONNX graph is invalid: {str(e).splitlines()[0][:300]}", "report it with the model; try another --opset") from e
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
    ops: dict[str, int] = {}
    for n in proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"path": str(path), "size_bytes": path.stat().st_size, "nodes": len(proto.graph.node),
            "op_counts": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            "has_qdq": "QuantizeLinear" in ops or "DequantizeLinear" in ops, "precision": onnx_precision(proto)}


def to_onnx(model, spec: ModelSpec, path, opset: int = DEFAULT_OPSET, check_parity_on: ArrayDataset | None = None,
            min_top1: float | None = None, max_samples: int = 256, slim: bool = True) -> dict:
    """Export a torch model (plain, or NNCF-quantized -> Q/DQ) to one ONNX file and check parity against the torch
    model with ONNX Runtime on `check_parity_on` (random inputs if None). Writes `path`, `<stem>.export.json`
    (the report returned) and `<stem>.parity.npz`; raises EdgekitError when parity is below `min_top1`
    (default 0.99 for FP32, 0.95 for INT8)."""
    import onnx
    import torch

    path = Path(path)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        example = {k: torch.from_numpy(v) for k, v in spec.example_inputs(2).items()}  # batch 2: no size-1 specialisation
        export_model = _strip_nncf(model, example)
        proto = _torch_export(export_model, spec, opset, example)
        nodes_raw = len(proto.graph.node)
        slimmed = None
        if slim:
            import onnxslim

            try:
                proto, slimmed = onnxslim.slim(proto), True
            except Exception as e:  # noqa: BLE001 — cleanup is an optimisation; the unslimmed graph is still valid
                slimmed = f"skipped: {type(e).__name__}: {str(e)[:200]}"
        bn_folded = _fold_bn_into_qdq_conv(proto)
        signed = _signed_qdq(proto)
        facts = _finish(proto, spec, path)
        data = check_parity_on if check_parity_on is not None else random_dataset(spec)
        data = data.subset(np.arange(min(len(data), max_samples)))
        reference = _logits(_as_fn(export_model), data)
        result = parity(reference, ort_predict(path, spec.output_names[0]), data, max_samples)
    finally:
        model.train(was_training)
    result["data"] = "held-out samples" if check_parity_on is not None else f"{len(data)} random inputs"
    result["candidate"] = "onnxruntime CPU"
    try:
        save_parity_samples(path, data, reference)
    except EdgekitError:
        path.unlink(missing_ok=True)  # an ONNX without its parity record must not look like a finished export
        raise
    report = {**facts, "opset": opset, "dynamic_batch": True, "nodes_before_cleanup": nodes_raw, "onnxslim": slimmed,
              "qdq_unsigned_to_signed": signed, "bn_folded_into_qdq_conv": bn_folded, "parity": result,
              "export_seconds": round(time.perf_counter() - t0, 3), "exporter": f"torch {torch.__version__} (TorchScript)",
              "onnx": onnx.__version__, "spec": spec.model_dump()}
    return _save_report(path, report, min_top1 if min_top1 is not None else MIN_TOP1[facts["precision"]], f"ONNX export {path}")


def _save_report(path: Path, report: dict, min_top1: float, what: str) -> dict:
    """The report is written even when parity fails (it holds the numbers to debug with); then the failure is raised."""
    failure = None
    try:
        check_parity(report["parity"], min_top1, what)
    except EdgekitError as e:
        failure = e
    try:
        atomic_write_json(sidecar(path, "export.json"), report)
    except EdgekitError:
        for f in (path, sidecar(path, "parity.npz")):
            Path(f).unlink(missing_ok=True)
        raise
    if failure:
        raise failure
    return report


# ---------------------------------------------------------------------------------------------------- fp16

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
    facts = _finish(onnx.shape_inference.infer_shapes(proto), spec, dst)
    saved = load_parity_samples(src)
    if saved is not None:
        data, reference = saved
        what = "torch (samples saved with the FP32 export)"
    else:
        data = random_dataset(spec)
        reference, what = _logits(ort_predict(src), data), f"{src.name} on onnxruntime (random inputs)"
    result = dict(parity(reference, ort_predict(dst, spec.output_names[0]), data, max_samples), reference=what, candidate="onnxruntime CPU")
    save_parity_samples(dst, data.subset(np.arange(min(len(data), max_samples))), np.asarray(reference)[:max_samples])
    report = {**facts, "source": str(src), "keep_fp32": sorted(keep_fp32), "io_dtype": "float32", "parity": result, "spec": spec.model_dump()}
    return _save_report(dst, report, min_top1, f"FP16 conversion {dst}")


# ---------------------------------------------------------------------------------------------------- spec

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
    meta = {p.key: p.value for p in proto.metadata_props}
    if SPEC_KEY in meta:
        return ModelSpec.model_validate_json(meta[SPEC_KEY])
    cfg = path.parent / "config.json"
    if cfg.exists():
        try:
            return ModelSpec.model_validate(json.loads(cfg.read_text())["spec"])
        except (json.JSONDecodeError, KeyError, ValueError):
            pass
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
        inputs.append(InputSpec(name=v.name, shape=shape(v, "input"), dtype=dt))
    outputs = [OutputSpec(name=v.name, shape=shape(v, "output")) for v in proto.graph.output]
    n_cls = outputs[0].shape[-1] if outputs and outputs[0].shape and outputs[0].shape[-1] else 0
    return ModelSpec(inputs=inputs, outputs=outputs, class_names=[str(i) for i in range(n_cls)])


def export_checkpoint(checkpoint_path, out, fsdd=None, opset: int = DEFAULT_OPSET, max_samples: int = 256,
                      min_top1: float | None = None) -> dict:
    """Export a saved checkpoint, checking parity on held-out data (the avdigits test split for models trained
    on it; random inputs for other models)."""
    from edgekit import checkpoint

    model, spec, _ = checkpoint.load(checkpoint_path)
    data = None
    if spec.preprocessing.get("dataset") == "avdigits":
        from edgekit.data import avdigits

        data = avdigits.load("test", fsdd, spec.preprocessing.get("seed", 0))
    return to_onnx(model, spec, out, opset=opset, check_parity_on=data, min_top1=min_top1, max_samples=max_samples)
