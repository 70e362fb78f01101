"""Training of the reference fusion models on avdigits (with modality dropout, so a missing modality at
inference time is a situation the model has seen)."""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn

from edgekit.data import ArrayDataset
from edgekit.spec import MASK_INPUT, InputSpec, ModelSpec, OutputSpec

CLASS_NAMES = [str(i) for i in range(10)]


def reference_spec(config: dict, preprocessing: dict) -> ModelSpec:
    shapes = config["input_shapes"]
    return ModelSpec(
        inputs=[InputSpec(name="image", shape=[None, *shapes["image"]], modality="image", optional=True),
                InputSpec(name="audio", shape=[None, *shapes["audio"]], modality="audio", optional=True),
                InputSpec(name="text", shape=[None, *shapes["text"]], dtype="int64", modality="text", optional=True),
                InputSpec(name=MASK_INPUT, shape=[None, 3])],
        outputs=[OutputSpec(name="logits", shape=[None, config["num_classes"]])],
        class_names=CLASS_NAMES, modalities=["image", "audio", "text"], preprocessing=preprocessing)


def modality_dropout(feed: dict, p: float, gen: torch.Generator, modalities=("image", "audio", "text")) -> dict:
    """Drop each modality of each sample with probability p (never all of them): zeros + mask bit 0."""
    mask = feed[MASK_INPUT].clone()
    drop = torch.rand(mask.shape, generator=gen) < p
    drop[drop.all(1)] = False
    mask[drop] = 0
    out = dict(feed, **{MASK_INPUT: mask})
    for j, m in enumerate(modalities):
        keep = mask[:, j].view(-1, *([1] * (feed[m].dim() - 1)))
        out[m] = feed[m] * keep.to(feed[m].dtype)
    return out


def to_torch(feed: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}


def fit(model: nn.Module, train: ArrayDataset, val: ArrayDataset, epochs: int, lr: float, batch_size: int = 64,
        seed: int = 0, loss_fn=None, modality_p: float = 0.2, patience: int | None = None, on_epoch=None,
        on_step=None) -> dict:
    """Generic supervised loop (also used by distillation through `loss_fn(model, feed, labels)`):
    AdamW + cosine schedule, best-validation weights kept, optional early stopping."""
    from edgekit.evaluate import predict, as_predict

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    loss_fn = loss_fn or (lambda m, feed, y: nn.functional.cross_entropy(m(**feed), y, label_smoothing=0.05))
    best, best_acc, history, stale = None, -1.0, [], 0
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        model.train()
        t0, total = time.time(), 0.0
        order = rng.permutation(len(train))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            feed = modality_dropout(to_torch({k: v[idx] for k, v in train.inputs.items()}), modality_p, gen, train.modalities)
            loss = loss_fn(model, feed, torch.from_numpy(train.labels[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            if on_step:
                on_step(len(idx), loss.item())
        model.eval()
        acc = float((predict(as_predict(model), val).argmax(1) == val.labels).mean())
        history.append({"epoch": epoch + 1, "loss": total / len(train), "val_accuracy": acc, "seconds": time.time() - t0})
        if on_epoch:
            on_epoch(history[-1])
        if acc > best_acc:
            best, best_acc, stale = copy.deepcopy(model.state_dict()), acc, 0
        else:
            stale += 1
            if patience and stale >= patience:
                break
    model.load_state_dict(best)
    return {"history": history, "best_val_accuracy": best_acc}


DEFAULT_EPOCHS = {"tiny": 12, "base": 10}
DEFAULT_LR = {"tiny": 3e-3, "base": 1e-3}


def train_reference(preset: str, fusion: str, out, fsdd=None, seed: int = 0, epochs: int | None = None,
                    text_kind: str = "transformer", only_modality: str | None = None, progress=None) -> dict:
    """Train a reference model on avdigits and save a safe checkpoint; returns its config.json content.
    `only_modality` trains a single-modality baseline (other inputs always missing)."""
    from edgekit import checkpoint
    from edgekit.data import avdigits
    from edgekit.evaluate import evaluate, only
    from edgekit.models import build_model, count_macs, count_params, preset_config

    config = preset_config(preset, fusion, text_kind=text_kind)  # validates names before any slow work
    train, val, test = (avdigits.load(s, fsdd, seed) for s in ("train", "val", "test"))
    spec = reference_spec(config, avdigits.preprocessing(fsdd, seed))
    if only_modality:
        train, val, test = (only(d, only_modality) for d in (train, val, test))
    torch.manual_seed(seed)
    model = build_model(config)
    epochs = epochs or DEFAULT_EPOCHS[preset]
    fit_result = fit(model, train, val, epochs, DEFAULT_LR[preset], seed=seed, modality_p=0.0 if only_modality else 0.2,
                     on_step=progress and (lambda n, loss: progress(n, loss)))
    metrics = evaluate(model, test, spec.class_names, missing=not only_modality)
    example = to_torch(spec.example_inputs(1))
    meta = {"metrics": {"test": metrics}, "training": {"preset": preset, "fusion": fusion, "epochs": epochs, "seed": seed,
                                                       "only_modality": only_modality, **fit_result},
            "data": {"dataset": "avdigits", "source": spec.preprocessing["source"], "seed": seed,
                     "sizes": {"train": len(train), "val": len(val), "test": len(test)}},
            "stats": {"params": count_params(model), "macs": count_macs(model, example)}}
    checkpoint.save(model, spec, out, config, **meta)
    return checkpoint.read_config(out)
