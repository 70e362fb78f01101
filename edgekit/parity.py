"""Parity: does a converted model compute what the torch model computes? Every export and every compile compares
the candidate's logits with a reference on the same samples (top-1 agreement, logit differences) and fails below
a threshold per precision: MIN_TOP1 by default, the recipe's `parity: {min_top1: ...}` in a run.

The export saves its samples and the torch logits beside the ONNX (`<stem>.parity.npz`), so every later compile
can be checked against the torch model too, even on a device without torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.agent import measure
from edgekit.data import ArrayDataset
from edgekit.errors import EdgekitError, reading
from edgekit.io import atomic_write_json, atomic_write_npz
from edgekit.spec import ModelSpec

MIN_TOP1 = {"fp32": 0.99, "fp16": 0.95, "int8": 0.95}  # top-1 agreement a conversion must keep, per precision (defaults)
RANDOM_SAMPLES = 32  # parity samples when no held-out data is given


def sidecar(onnx_path, kind: str) -> Path:
    """model.onnx -> model.export.json / model.parity.npz"""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.{kind}")


def _as_fn(obj):
    if isinstance(obj, np.ndarray) or (callable(obj) and not hasattr(obj, "run") and not hasattr(obj, "state_dict")):
        return obj
    from edgekit.evaluate import as_predict

    return as_predict(obj)


def _logits(fn, data: ArrayDataset, batch_size: int = 64) -> np.ndarray:
    from edgekit.evaluate import predict

    return fn[: len(data)] if isinstance(fn, np.ndarray) else predict(fn, data, batch_size)


def logits_of(predictor, data: ArrayDataset, batch_size: int = 64) -> np.ndarray:
    """The logits of any predictor parity() takes (torch model, Runner, feed->logits function, precomputed
    logits) on `data`: what the export saves as the reference."""
    return _logits(_as_fn(predictor), data, batch_size)


def parity(reference_predict, candidate_predict, dataset: ArrayDataset, max_samples: int = 256, batch_size: int = 64) -> dict:
    """Compare two predictors (torch model, Runner, feed->logits function, or precomputed logits) on the first
    `max_samples` samples: top-1 agreement and max/mean absolute logit difference."""
    n = min(len(dataset), max_samples)
    data = dataset.subset(np.arange(n))
    ref = np.asarray(_logits(_as_fn(reference_predict), data, batch_size), np.float64)
    cand = np.asarray(_logits(_as_fn(candidate_predict), data, batch_size), np.float64)
    if ref.shape != cand.shape:
        raise EdgekitError(f"parity: reference logits have shape {ref.shape}, candidate {cand.shape}", "both must predict [N, classes] for the same samples")
    return measure.parity(ref, cand, data.labels)  # the numbers the device agent reports too


def threshold(precision: str | None, min_top1: float | dict | None = None) -> float:
    """The top-1 agreement a graph of `precision` must keep: `min_top1` as given (one number, or a mapping per
    precision such as the recipe's parity.min_top1), else the default of MIN_TOP1."""
    precision = precision or "fp32"
    if isinstance(min_top1, dict):
        min_top1 = min_top1.get(precision)
    return float(min_top1) if min_top1 is not None else MIN_TOP1.get(precision, MIN_TOP1["fp32"])


def check_parity(result: dict, min_top1: float = 0.99, what: str = "the converted graph", precision: str | None = None) -> dict:
    """Record the threshold and verdict in `result`; raise EdgekitError, with the numbers, when top-1 agreement
    is below `min_top1` or the outputs are not finite. `what` names the graph compared with the torch model
    (an exported ONNX run by ONNX Runtime, a compiled artifact); `precision` names the recipe key that sets the gate."""
    if measure.parity_passed(result, min_top1)["passed"]:
        return result
    key = f"parity: {{min_top1: {{{precision}: ...}}}}" if precision else "parity: {min_top1: ...}"
    reference = result.get("reference") or "torch"
    reference = "the torch model" if reference.startswith("torch") else reference.split(" (")[0]  # e.g. ORT on the source ONNX
    raise EdgekitError(
        f"parity of {what} vs {reference} failed: top-1 agreement {result['top1_agreement']:.2%} (need >= {min_top1:.1%}) "
        f"over {result['n']} samples, max |logit diff| {result['max_abs_diff']:.4g}, mean {result['mean_abs_diff']:.4g}"
        + ("" if result["finite"] else ", outputs contain NaN/Inf"),
        "the converted graph computes something else than the torch model: look for ops the target handles differently; "
        "for INT8/FP16 recalibrate on representative data or keep sensitive layers in higher precision; to accept the "
        f"difference knowingly, lower the recipe's {key} (now {min_top1:g})")


def save_checked_report(path: Path, report: dict, min_top1: float | dict | None, what: str) -> dict:
    """Judge report["parity"] and write the report as `<stem>.export.json` beside the ONNX file. The report is
    written even when parity fails (it holds the numbers to debug with); then the failure is raised. When the
    report cannot be written, the ONNX and its samples are removed: a file without its record is not finished."""
    failure = None
    try:
        check_parity(report["parity"], threshold(report.get("precision"), min_top1), what, report.get("precision"))
    except EdgekitError as e:
        failure = e
    try:
        atomic_write_json(sidecar(path, "export.json"), report)
    except (EdgekitError, KeyboardInterrupt):  # a disk error, or Ctrl-C/SIGTERM (edgekit.signals)
        for f in (path, sidecar(path, "parity.npz")):
            Path(f).unlink(missing_ok=True)
        raise
    if failure:
        raise failure
    return report


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
    with reading(p, "parity samples", "delete it (compiles then check parity on random inputs) or re-export the ONNX"), \
            np.load(p, allow_pickle=False) as z:
        inputs = {k.removeprefix("input."): z[k] for k in z.files if k.startswith("input.")}
        return ArrayDataset(inputs, z["labels"]), z["reference_logits"]


def ort_predict(onnx_path, output: str | None = None):
    """A feed -> logits function running the ONNX file on ONNX Runtime's CPU provider (the reference runtime)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = [output or sess.get_outputs()[0].name]
    return lambda feed: sess.run(out, {k: np.ascontiguousarray(v) for k, v in feed.items()})[0]


def compiled_parity(runner, onnx_path, spec: ModelSpec, max_samples: int = 256, saved=None) -> dict:
    """Parity of a compiled artifact against the torch model (`saved`: load_parity_samples(onnx_path), read by the
    caller before it compiled anything), or against ONNX Runtime on the source ONNX with random inputs when the
    file came without them."""
    if saved is not None:
        data, reference = saved
        res = parity(reference, runner, data, max_samples)
        res["reference"] = "torch (samples saved at export)"
    else:
        data = random_dataset(spec)
        res = parity(ort_predict(onnx_path, spec.output_names[0]), runner, data, max_samples)
        res["reference"] = "onnxruntime CPU on the source ONNX (random inputs: no parity samples beside it)"
    return res
