"""Knowledge distillation: the original model teaches a smaller (pruned) or quantized student.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, label)
       [+ feature_weight * sum over branches of MSE(adapter(student branch), teacher branch)]

Teacher and student see the same batch, with the same modalities dropped (modality dropout stays on, so the
student keeps the teacher's behaviour with missing inputs). A quantized student (NNCF fake-quant) trains
through its quantizers: that is quantization-aware training with a float teacher.
"""
from __future__ import annotations

import copy
import time
from typing import Optional

import torch
from pydantic import Field
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.passes.base import PassSettings

ON_QUANTIZED = "QAT"  # a fake-quant student trains through its quantizers


class DistillSettings(PassSettings):
    """Knowledge distillation from the original model; after `quantize` it is QAT."""
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft (teacher) loss; 1 - alpha goes to the labels")
    features: list[str] = Field(default_factory=list, description="branch modules whose outputs are matched too")
    feature_weight: float = Field(1.0, ge=0)
    batch_size: int = Field(64, ge=1)
    patience: Optional[int] = Field(3, ge=1, description="early stopping on validation accuracy; null = never")
    modality_p: float = Field(0.2, ge=0, lt=1, description="modality dropout probability")
    seed: int = 0


Settings = DistillSettings


class _Student(nn.Module):
    """The student plus the per-branch adapters used only for feature distillation (dropped afterwards);
    one module, so the training loop optimizes and checkpoints both."""

    def __init__(self, student: nn.Module, adapters: nn.ModuleDict):
        super().__init__()
        self.student, self.adapters = student, adapters

    def forward(self, **inputs):
        return self.student(**inputs)


class _Capture:
    """Forward hooks keeping the output of named submodules (the branch features)."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def keep(module, args, output):
            self.out[name] = output[0] if isinstance(output, tuple) else output
        return keep

    def close(self):
        for h in self.handles:
            h.remove()


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    t = temperature
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits / t, -1), nn.functional.log_softmax(teacher_logits / t, -1),
                                reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * nn.functional.cross_entropy(student_logits, labels)


def distill(student: nn.Module, teacher: nn.Module, train, val, *, epochs: int = 10, lr: float = 1e-3,
            temperature: float = 4.0, alpha: float = 0.7, features: list[str] | tuple = (), feature_weight: float = 1.0,
            batch_size: int = 64, patience: int | None = 3, modality_p: float = 0.2, seed: int = 0,
            progress=None, missing=None) -> tuple[nn.Module, dict]:
    """Train a copy of `student` to match `teacher`; returns (the student with its best-validation weights, record).
    The student as given is a candidate too: when no epoch beats its validation accuracy it comes back unchanged
    (record["kept_start"]), so distillation / QAT never return a model worse than their input.

    missing: how a modality is absent for this model (edgekit.data.missing.MissingPolicy; default: the training
      set's). Modality dropout uses it, so any model works: zeros + a mask column, an all-zero attention_mask, or
      no dropout at all for a model that never goes without a modality.

    features: submodule names (e.g. ["image", "audio", "text"]) whose outputs are also matched, through a
      learned linear adapter when the student's width differs. progress: callable(n_samples, info) or None.
    """
    from edgekit.fit import fit

    if epochs < 1:
        raise EdgekitError(f"distill epochs is {epochs}", "train for at least one epoch")
    if not (0.0 <= alpha <= 1.0) or temperature <= 0 or lr <= 0:
        raise EdgekitError(f"distill settings out of range (alpha={alpha}, temperature={temperature}, lr={lr})",
                           "use 0 <= alpha <= 1, temperature > 0 and lr > 0")
    if len(train) == 0 or len(val) == 0:
        raise EdgekitError("distillation needs non-empty train and validation splits", "check the recipe's data section")
    policy = missing or train.missing_policy
    t0 = time.time()
    student = copy.deepcopy(student)
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    features = list(features)
    for name in features:
        for m, what in ((student, "student"), (teacher, "teacher")):
            try:
                m.get_submodule(name)
            except AttributeError:
                raise EdgekitError(f"distill feature '{name}' is not a submodule of the {what}",
                                   f"choose among: {', '.join(n for n, _ in student.named_children())}") from None
    s_cap, t_cap = _Capture(student, features), _Capture(teacher, features)
    adapters = _adapters(student, teacher, features, s_cap, t_cap, train)
    wrapped = _Student(student, adapters)

    def loss_fn(model, feed, labels):
        with torch.no_grad():
            teacher_logits = teacher(**feed)
        loss = kd_loss(model(**feed), teacher_logits, labels, temperature, alpha)
        for name in features:
            s, t = s_cap.out[name], t_cap.out[name]
            loss = loss + feature_weight * nn.functional.mse_loss(model.adapters[_key(name)](s), t) / len(features)
        return loss

    info = {"loss": float("nan")}

    def on_step(n, loss):
        info["loss"] = loss
        if progress:
            progress(n, f"loss {loss:.3f}" + (f"  val acc {info['val']:.3f}" if "val" in info else ""))

    def on_epoch(h):
        info["val"] = h["val_accuracy"]

    try:
        result = fit(wrapped, train, val, epochs, lr, batch_size=batch_size, seed=seed, loss_fn=loss_fn,
                     modality_p=modality_p, patience=patience, on_epoch=on_epoch, on_step=on_step, missing=policy)
    finally:
        s_cap.close()
        t_cap.close()
    record = {"pass": "distill", "settings": {"epochs": epochs, "lr": lr, "temperature": temperature, "alpha": alpha,
                                               "features": features, "feature_weight": feature_weight, "batch_size": batch_size,
                                               "patience": patience, "modality_p": modality_p, "seed": seed},
              "dropped_modalities": policy.droppable if modality_p > 0 else [],
              "epochs_run": len(result["history"]), "best_val_accuracy": result["best_val_accuracy"],
              "start_val_accuracy": result["start_val_accuracy"], "kept_start": result["kept_start"],
              "history": result["history"], "seconds": time.time() - t0}
    return wrapped.student.eval(), record


def _key(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys may not contain dots


def _adapters(student, teacher, features, s_cap, t_cap, data) -> nn.ModuleDict:
    """A Linear per branch mapping the student's feature width to the teacher's (identity when equal)."""
    if not features:
        return nn.ModuleDict()
    feed, _ = next(data.batches(2))
    feed = {k: torch.from_numpy(v) for k, v in feed.items()}
    with torch.no_grad():
        student.eval()(**feed)
        teacher(**feed)
    out = nn.ModuleDict()
    for name in features:
        s, t = s_cap.out[name], t_cap.out[name]
        if s.shape[:-1] != t.shape[:-1]:
            raise EdgekitError(f"distill feature '{name}' has shape {tuple(s.shape)} in the student, {tuple(t.shape)} in the teacher",
                               "only the last (feature) axis may differ; choose branch outputs such as the encoders")
        out[_key(name)] = nn.Identity() if s.shape[-1] == t.shape[-1] else nn.Linear(s.shape[-1], t.shape[-1])
    return out


# ---------------------------------------------------------------- the pass registry's interface (edgekit.passes)

def run(model: nn.Module, settings: DistillSettings, ctx) -> tuple[nn.Module, dict]:
    from edgekit.data.missing import policy_for

    with ctx.progress("distilling", total=settings.epochs * len(ctx.train)) as advance:
        return distill(model, ctx.teacher, ctx.train, ctx.val, progress=lambda n, info: advance(n, info=info),
                       missing=policy_for(ctx.spec, ctx.train), **settings.model_dump())


def restore(model: nn.Module, cfg: dict, spec) -> nn.Module:
    return model  # distillation changes weights only: the checkpoint's weights are the whole result


def summary(record: dict) -> str:
    if record.get("kept_start"):
        trained = max((h["val_accuracy"] for h in record["history"]), default=float("nan"))
        return (f"kept the starting model: validation accuracy {record['start_val_accuracy']:.4f}, training reached at best "
                f"{trained:.4f} in {record['epochs_run']} epoch(s)")
    return (f"best validation accuracy {record['best_val_accuracy']:.4f} after {record['epochs_run']} epoch(s) "
            f"(start {record.get('start_val_accuracy', float('nan')):.4f})")
