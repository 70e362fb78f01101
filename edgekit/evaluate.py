"""Accuracy on anything that predicts: a torch model or a backend Runner, on any ArrayDataset."""
from __future__ import annotations

from typing import Callable

import numpy as np

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
    """Accuracy, macro precision/recall/F1, per-class F1, and 95% bootstrap intervals of accuracy and macro-F1."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n_boot, len(y_true)))
    boot_acc = (y_true[idx] == y_pred[idx]).mean(1)
    boot_f1 = np.array([f1_score(y_true[i], y_pred[i], labels=labels, average="macro", zero_division=0) for i in idx[:200]])
    return {"n": int(len(y_true)), "accuracy": float((y_true == y_pred).mean()),
            "precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f),
            "accuracy_ci95": [float(np.percentile(boot_acc, 2.5)), float(np.percentile(boot_acc, 97.5))],
            "f1_macro_ci95": [float(np.percentile(boot_f1, 2.5)), float(np.percentile(boot_f1, 97.5))],
            "per_class_f1": {n: float(v) for n, v in zip(class_names, per_class)}}


def evaluate(obj, dataset, class_names: list[str], missing: bool = True, batch_size: int = 64, output: str | None = None) -> dict:
    """Metrics on the full inputs, plus accuracy with each modality missing (zeros + mask bit 0)."""
    fn = as_predict(obj, output)
    logits = predict(fn, dataset, batch_size)
    result = classification_metrics(dataset.labels, logits.argmax(1), class_names)
    if missing and "modality_mask" in dataset.inputs:
        result["missing_modality_accuracy"] = {
            m: float((predict(fn, dataset.without(m), batch_size).argmax(1) == dataset.labels).mean()) for m in dataset.modalities}
    return result


def only(dataset, modality: str):
    """The dataset with every modality but one missing (for single-modality baselines)."""
    for m in dataset.modalities:
        if m != modality:
            dataset = dataset.without(m)
    return dataset
