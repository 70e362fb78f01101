"""Accuracy on anything that predicts: a torch model or a backend Runner, on any ArrayDataset. The metric
definitions are edgekit.agent.measure's, shared with the device agent."""
from __future__ import annotations

from typing import Callable

import numpy as np

from edgekit.agent import measure

Predict = Callable[[dict], np.ndarray]  # feed {name: array} -> logits [B, C]


def as_predict(obj, output: str | None = None) -> Predict:
    """A torch nn.Module or a Runner (anything with .run(feed) -> {name: array}) as a logits function."""
    if hasattr(obj, "run"):
        def run(feed):
            out = obj.run(feed)
            return out[output] if output else next(iter(out.values()))
        return run
    import torch

    def torch_predict(feed):
        with torch.no_grad():
            return obj(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}).numpy()
    return torch_predict


def predict(fn: Predict, dataset, batch_size: int = 64, progress=None) -> np.ndarray:
    outs = []
    for feed, _ in dataset.batches(batch_size):
        outs.append(np.asarray(fn(feed)))
        if progress:
            progress(len(feed[next(iter(feed))]))
    return np.concatenate(outs)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], seed: int = 0, n_boot: int = 1000) -> dict:
    """The measurement core's metrics (accuracy, macro precision/recall/F1, per-class F1: the definitions the
    device agent uses too), plus 95% bootstrap intervals of accuracy and macro-F1."""
    result = measure.classification(y_true, y_pred, class_names)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n_boot, len(y_true)))
    boot_acc = (y_true[idx] == y_pred[idx]).mean(1)
    boot_f1 = np.array([measure.f1_macro(y_true[i], y_pred[i], len(class_names)) for i in idx[:200]])
    per_class = result.pop("per_class_f1")
    return {**result, "accuracy_ci95": [float(np.percentile(boot_acc, 2.5)), float(np.percentile(boot_acc, 97.5))],
            "f1_macro_ci95": [float(np.percentile(boot_f1, 2.5)), float(np.percentile(boot_f1, 97.5))],
            "per_class_f1": per_class}


def evaluate(obj, dataset, class_names: list[str], missing: bool = True, batch_size: int = 64, output: str | None = None,
             policy=None) -> dict:
    """Metrics on the full inputs, plus (`missing`) accuracy with each modality that can be missing made absent the
    way the model takes it: `policy` (an edgekit.data.missing.MissingPolicy), else the dataset's own."""
    fn = as_predict(obj, output)
    logits = predict(fn, dataset, batch_size)
    result = classification_metrics(dataset.labels, logits.argmax(1), class_names)
    policy = policy or _policy(dataset)
    if missing and policy.droppable:
        result["missing_modality_accuracy"] = {
            m: float((predict(fn, policy.drop(dataset, m), batch_size).argmax(1) == dataset.labels).mean()) for m in policy.droppable}
    return result


def only(dataset, modality: str, policy=None):
    """The dataset with every modality but one missing (for single-modality baselines)."""
    return (policy or _policy(dataset)).only(dataset, modality)


def _policy(dataset):
    from edgekit.data.missing import MissingPolicy

    return MissingPolicy.for_dataset(dataset)
