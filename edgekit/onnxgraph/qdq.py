"""Q/DQ rewrites of an INT8 (QuantizeLinear/DequantizeLinear) graph. At export: BatchNorms folded into Q/DQ
convolutions and unsigned pairs made signed (`signed_qdq`), which is what TensorRT reads. For the CPU backends:
activations made uint8 (`prepare_int8_for_cpu`), which is what x86 int8 kernels want. Every rewrite keeps the
numbers (up to float rounding); the parity checks after export and compile still compare with the torch model."""
from __future__ import annotations

import numpy as np

from edgekit.errors import InternalError
from edgekit.onnxgraph.edit import consumers, drop_value_info, init_map, prune_initializers
from edgekit.onnxgraph.info import onnx_precision
from edgekit.onnxgraph.save import check_and_save


def signed_qdq(proto) -> int:
    """TensorRT reads only signed, symmetric INT8 Q/DQ. Rewrite unsigned pairs with zero point 0 (what torch emits
    after ReLU) as int8 with scale * 255/127: the same range with 7-bit resolution, which is what TensorRT
    would give such a tensor anyway. Returns how many nodes changed."""
    from onnx import numpy_helper

    g, changed, made, stale = proto.graph, 0, {}, set()
    inits = init_map(g)
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
    drop_value_info(g, stale)  # recorded as uint8 by the exporter
    return changed


def fold_bn_into_qdq_conv(proto) -> int:
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
    inits = init_map(g)
    producer = {o: n for n in g.node for o in n.output}
    users_of = consumers(g)
    graph_outputs = {o.name for o in g.output}
    folded, drop = 0, []

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    for conv in list(g.node):
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.output[0] in graph_outputs:
            continue
        users = users_of.get(conv.output[0], [])
        if len(users) != 1 or users[0].op_type != "BatchNormalization" or users[0].input[0] != conv.output[0]:
            continue
        bn = users[0]
        if any(a.name == "training_mode" and a.i for a in bn.attribute) or len(bn.output) != 1:
            continue
        gamma, beta, mean, var = (const(n) for n in bn.input[1:5])
        dq = producer.get(conv.input[1])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if (q is None or q.op_type != "QuantizeLinear" or any(x is None for x in (gamma, beta, mean, var))
                or len(users_of.get(conv.input[1], [])) != 1 or len(users_of.get(q.output[0], [])) != 1
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
        drop_value_info(g, {n.input[0] for n in drop})  # the Conv's old output name is gone
    return folded


def _activations_to_uint8(proto) -> dict:
    """Rewrite the int8 activation Q/DQ pairs of an INT8 export into the uint8 form x86 int8 kernels want (weights
    stay int8: the U8S8 path of ONNX Runtime's and oneDNN's int8 GEMM/conv kernels). Both rewrites keep the numbers:

    - after a Relu, a symmetric int8 pair (scale s, zero point 0: how edgekit's export writes NNCF's unsigned
      quantizer for TensorRT) becomes uint8 with zero point 0 and scale s*127/255 — NNCF's own quantizer, same


      Conv runs in float between a DequantizeLinear and a QuantizeLinear (slower than the FP32 model).
    - any other int8 activation pair becomes uint8 with zero point + 128 and the same scale (exactly the same
      values). ONNX Runtime does that itself for a Q/DQ pair with one consumer, but not for a tensor read by several
      (the q, k and v projections of one LayerNorm output), and with an int8 activation its MatMul fusions do not
      apply on x86: those MatMuls stayed float, with their weights dequantized on every run.
    Returns {"relu_outputs": n, "shifted": m} (pairs rewritten)."""
    from onnx import numpy_helper

    g = proto.graph
    inits = init_map(g)
    producer = {o: n for n in g.node for o in n.output}
    users_of = consumers(g)
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
        users = users_of.get(q.output[0], [])
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
        drop_value_info(g, {q.output[0] for q in g.node if q.op_type == "QuantizeLinear"})  # recorded as int8
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
    done = {"bn_folded": fold_bn_into_qdq_conv(proto), **_activations_to_uint8(proto)}
    prune_initializers(proto.graph)
    check_and_save(proto, dst_onnx, lambda why: InternalError(
        f"rewriting the Q/DQ pairs of {src_onnx} for CPU made an invalid graph: {why}"))
    return done
