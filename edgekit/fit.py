"""The supervised training loop shared by reference training (edgekit.train) and distillation / QAT
(edgekit.passes.distill). It lives apart from train.py so the passes do not import the trainer, which
saves checkpoints, which rebuild compressed models through the passes."""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn

from edgekit.data import ArrayDataset


def to_torch(feed: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}


def fit(model: nn.Module, train: ArrayDataset, val: ArrayDataset, epochs: int, lr: float, batch_size: int = 64,
        seed: int = 0, loss_fn=None, modality_p: float = 0.2, patience: int | None = None, on_epoch=None,
        on_step=None, missing=None) -> dict:
    """Generic supervised loop (also used by distillation through `loss_fn(model, feed, labels)`):
    AdamW + cosine schedule, best-validation weights kept, optional early stopping. The starting weights are
    evaluated first and count as a candidate: a model that training does not improve on the validation split
    comes back unchanged (KD / QAT never return something worse than their input). Modality dropout (probability
    `modality_p`) makes modalities absent the way the model takes it: `missing` (edgekit.data.missing.MissingPolicy),
    else the training set's own policy; a model that never goes without a modality trains without it."""
    from edgekit.evaluate import as_predict, predict

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    loss_fn = loss_fn or (lambda m, feed, y: nn.functional.cross_entropy(m(**feed), y, label_smoothing=0.05))
    rng = np.random.default_rng(seed)
    policy = missing or train.missing_policy

    def val_accuracy() -> float:
        model.eval()
        return float((predict(as_predict(model), val).argmax(1) == val.labels).mean())

    start_acc = val_accuracy()
    best, best_acc, best_epoch, history, stale = copy.deepcopy(model.state_dict()), start_acc, 0, [], 0
    for epoch in range(epochs):
        model.train()
        t0, total = time.time(), 0.0
        order = rng.permutation(len(train))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            feed = policy.dropout(to_torch({k: v[idx] for k, v in train.inputs.items()}), modality_p, gen)
            loss = loss_fn(model, feed, torch.from_numpy(train.labels[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            if on_step:
                on_step(len(idx), loss.item())
        acc = val_accuracy()
        history.append({"epoch": epoch + 1, "loss": total / len(train), "val_accuracy": acc, "seconds": time.time() - t0})
        if on_epoch:
            on_epoch(history[-1])
        if acc > best_acc:  # strictly better: on a tie the earlier (simpler to explain) weights stay
            best, best_acc, best_epoch, stale = copy.deepcopy(model.state_dict()), acc, epoch + 1, 0
        else:
            stale += 1
            if patience and stale >= patience:
                break
    model.load_state_dict(best)
    return {"history": history, "best_val_accuracy": best_acc, "start_val_accuracy": start_acc,
            "best_epoch": best_epoch, "kept_start": best_epoch == 0}
