"""ONNX export: one portable file per variant. Named inputs/outputs from the ModelSpec, dynamic batch, INT8 as
explicit QuantizeLinear/DequantizeLinear pairs (what TensorRT 10/11, ONNX Runtime and OpenVINO all read), cleaned
with onnxslim and checked with the ONNX checker.

INT8 weights stay float32 initializers behind a Q->DQ pair rather than being folded to int8 initializers: the
file is 4x larger, but folded weights lose OpenVINO's int8 path whenever the model goes through
ov.convert_model or a PrePostProcessor (as benchmark_app does) — measured 5x slower on the base model. Each
backend stores the weights as int8 itself (OpenVINO's IR, TensorRT's engine).

A BatchNorm after a convolution is folded into it at export even when the convolution's weights are behind Q/DQ,
and unsigned Q/DQ pairs are made signed for TensorRT (edgekit.onnxgraph.qdq; the CPU backends later rewrite the
activations to uint8 there too).

Parity is checked after every export (edgekit.parity): the torch model's logits on held-out samples are compared
with ONNX Runtime's, and those samples and logits are saved beside the file (`<stem>.parity.npz`)."""
from __future__ import annotations

import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from edgekit.data import ArrayDataset
from edgekit.errors import EdgekitError
from edgekit.onnxgraph.qdq import fold_bn_into_qdq_conv, signed_qdq
from edgekit.onnxgraph.save import save_with_spec
from edgekit.parity import (
    logits_of,
    ort_predict,
    parity,
    random_dataset,
    save_checked_report,
    save_parity_samples,
    sidecar,
)
from edgekit.spec import ModelSpec

# 17 is the first opset with LayerNormalization; TensorRT 10.3 (JetPack 6), ONNX Runtime and OpenVINO all read it.
DEFAULT_OPSET = 17


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


def _finish(proto, spec: ModelSpec, path: Path) -> dict:
    """Attach the spec, check, save atomically; returns the facts the report needs. An invalid graph here comes
    from the torch exporter on the user's model and another opset may avoid it: reported as the user's to fix."""
    return save_with_spec(proto, spec, path, lambda why: EdgekitError(
        f"the exported ONNX graph is invalid: {why}", "report it with the model; try another --opset"))


def to_onnx(model, spec: ModelSpec, path, opset: int = DEFAULT_OPSET, check_parity_on: ArrayDataset | None = None,
            min_top1: float | dict | None = None, max_samples: int = 256, slim: bool = True) -> dict:
    """Export a torch model (plain, or NNCF-quantized -> Q/DQ) to one ONNX file and check parity against the torch
    model with ONNX Runtime on `check_parity_on` (random inputs if None). Writes `path`, `<stem>.export.json`
    (the report returned) and `<stem>.parity.npz`; raises EdgekitError when parity is below `min_top1` (one
    number, or a mapping per precision; default edgekit.parity.MIN_TOP1: 0.99 for FP32, 0.95 for INT8)."""
    import onnx
    import torch

    path = Path(path)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    written = False
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
        bn_folded = fold_bn_into_qdq_conv(proto)
        signed = signed_qdq(proto)
        for kind in ("export.json", "parity.npz"):  # they vouch for the graph at `path`: gone before it changes,
            sidecar(path, kind).unlink(missing_ok=True)  # back only after its parity check
        facts, written = _finish(proto, spec, path), True
        data = check_parity_on if check_parity_on is not None else random_dataset(spec)
        data = data.subset(np.arange(min(len(data), max_samples)))
        reference = logits_of(export_model, data)
        result = parity(reference, ort_predict(path, spec.output_names[0]), data, max_samples)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (edgekit.signals) during the parity check
        if written:
            path.unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)
    result["data"] = "held-out samples" if check_parity_on is not None else f"{len(data)} random inputs"
    result["candidate"] = "onnxruntime CPU"
    try:
        save_parity_samples(path, data, reference)
    except (EdgekitError, KeyboardInterrupt):
        path.unlink(missing_ok=True)  # an ONNX without its parity record must not look like a finished export
        raise
    report = {**facts, "opset": opset, "dynamic_batch": True, "nodes_before_cleanup": nodes_raw, "onnxslim": slimmed,
              "qdq_unsigned_to_signed": signed, "bn_folded_into_qdq_conv": bn_folded, "parity": result,
              "export_seconds": round(time.perf_counter() - t0, 3), "exporter": f"torch {torch.__version__} (TorchScript)",
              "onnx": onnx.__version__, "spec": spec.model_dump()}
    return save_checked_report(path, report, min_top1, f"the exported ONNX graph {path} (run by ONNX Runtime)")


def export_checkpoint(checkpoint_path, out, fsdd=None, opset: int = DEFAULT_OPSET, max_samples: int = 256,
                      min_top1: float | None = None) -> dict:
    """Export a saved checkpoint, checking parity on held-out data (the built-in dataset's test split for models
    trained on it; random inputs for other models)."""
    from edgekit import checkpoint
    from edgekit.guard import refuse_overwrite
    from edgekit.parity import sidecar

    refuse_overwrite([out, sidecar(out, "export.json"), sidecar(out, "parity.npz")], checkpoint.input_files(checkpoint_path), "the ONNX output")
    model, spec, _ = checkpoint.load(checkpoint_path)
    from edgekit.data.resolver import builtin_split

    data = builtin_split(spec, "test", fsdd)
    return to_onnx(model, spec, out, opset=opset, check_parity_on=data, min_top1=min_top1, max_samples=max_samples)
