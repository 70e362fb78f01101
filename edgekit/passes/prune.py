"""Structured pruning on Torch-Pruning's dependency graph: channels, hidden units and attention heads are
removed for real (smaller weight tensors, fewer MACs), never masked.

The dependency graph couples every layer that shares a channel axis — a residual stream, a concat of branch
features feeding one Linear, q/k/v/out of one attention, a gated sum — so one pruning decision removes the
same channels everywhere (prune_graph.py corrects it where it is wrong for fusion models). Attention heads
are removed whole, from q, k, v and the output projection at once, before the graph is traced
(prune_heads.py: edgekit, Hugging Face BERT/RoBERTa/DistilBERT/ViT, timm and torch.nn.MultiheadAttention
conventions); head dims, feed-forward widths and channels are then pruned on the graph.

A pruned model is rebuilt later either from a config derived from its new shapes (reference models) or by
replaying the pruning plan (which channels were removed, as JSON) on `factory(config)` (any model).
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.models.stats import model_stats
from edgekit.passes.base import PassSettings
from edgekit.passes.prune_graph import ConcatRecorder, free_parameters, lstm_pruner
from edgekit.passes.prune_heads import apply_heads, choose_heads, find_attention, find_ffn, head_attributes
from edgekit.passes.prune_mha import resplit
from edgekit.spec import ModelSpec

IMPORTANCES = ("magnitude", "taylor")
HEAD_MODES = ("heads", "dims", "both", "none")
STRUCTURES = ("heads", "ffn", "channels")


class PruneSettings(PassSettings):
    """Structured pruning: give `ratio` or `target_macs`."""
    ratio: Optional[float] = Field(None, gt=0, lt=1, description="fraction of channels/units/heads removed per group")
    target_macs: Optional[float] = Field(None, gt=0, lt=1, description="fraction of the MACs to keep; the ratio is searched")
    per_branch: dict[str, float] = Field(default_factory=dict, description="{submodule: ratio}; 0 leaves a branch whole")
    importance: Literal["magnitude", "taylor"] = "magnitude"
    calibration_batches: int = Field(4, ge=1, description="batches of the calibration set for Taylor importance")
    heads: Literal["heads", "dims", "both", "none"] = "heads"
    round_to: Optional[int] = Field(None, ge=1, description="keep channel counts multiples of this: 16 suits TensorRT, 32 AVX-512 INT8 CPU kernels (unaligned widths leave kernel blocks half empty)")
    ignore: list[str] = Field(default_factory=list, description="submodules never pruned")
    global_pruning: bool = False
    head_ratio: Optional[float] = Field(None, ge=0, lt=1, description="fraction of heads removed from each attention module (default: its branch's ratio)")
    ffn_ratio: Optional[float] = Field(None, ge=0, lt=1, description="fraction of feed-forward hidden units removed (default: its branch's ratio)")
    only: list[Literal["heads", "ffn", "channels"]] = Field(default_factory=lambda: list(STRUCTURES), min_length=1,
                                                             description="what may shrink: attention heads, feed-forward widths, all other channels")

    @model_validator(mode="after")
    def _one_amount(self):
        if (self.ratio is None) == (self.target_macs is None):
            raise ValueError("give exactly one of 'ratio' (e.g. 0.3) and 'target_macs' (e.g. 0.5)")
        bad = {k: v for k, v in self.per_branch.items() if not 0 <= v < 1}
        if bad:
            raise ValueError(f"per_branch ratios must be in [0, 1): {bad}")
        return self


Settings = PruneSettings


def example_inputs(spec: ModelSpec, batch: int = 2) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in spec.example_inputs(batch).items()}


# ---------------------------------------------------------------- what to prune and what never to

def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if isinstance(getattr(m, "heads", None), int) and isinstance(getattr(m, "head_dim", None), int)
            and all(isinstance(getattr(m, x, None), nn.Linear) for x in ("q", "k", "v"))}


def _output_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers whose output width is the number of classes: the classifier(s), whose outputs are the logits."""
    return [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]


def _resolve(model: nn.Module, name: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        top = ", ".join(n for n, _ in model.named_children())
        raise EdgekitError(f"{what} names '{name}', which is not a submodule of the model",
                           f"use a module path such as one of: {top}") from None


def _check_ratio(value, what: str, allow_zero: bool = False) -> float:
    lo_ok = value >= 0 if allow_zero else value > 0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (lo_ok and value < 1):
        rng = "[0, 1)" if allow_zero else "(0, 1)"
        raise EdgekitError(f"{what} is {value!r}, outside {rng}", "give the fraction of channels to remove, e.g. 0.3")
    return float(value)


# ---------------------------------------------------------------- the pass

def prune(model: nn.Module, spec: ModelSpec, *, ratio: float | None = None, target_macs: float | None = None,
          per_branch: dict[str, float] | None = None, importance: str = "magnitude", calibration=None,
          calibration_batches: int = 4, heads: str = "heads", round_to: int | None = None,
          ignore: list[str] | tuple = (), global_pruning: bool = False, batch_size: int = 32, head_ratio: float | None = None,
          ffn_ratio: float | None = None, only: list[str] | tuple = STRUCTURES) -> tuple[nn.Module, dict]:
    """Structured pruning; returns (a pruned copy of `model`, a record of what was done).

    ratio: fraction of channels / hidden units / heads removed from every prunable group, in (0, 1).
    target_macs: instead of `ratio`, the fraction of the model's MACs to keep (e.g. 0.5): the ratio that
      reaches it is found by bisection.
    per_branch: {submodule name: ratio} overrides, e.g. {"audio": 0.3}; 0 leaves that branch whole.
    importance: "magnitude" (L2 of the coupled weights) or "taylor" (|w * dL/dw| on `calibration` batches).
    heads: "heads" removes whole attention heads, "dims" shrinks every head's dim, "both", or "none".
    ignore: submodule names never pruned (the classifier(s) and the model inputs/outputs never are).
    head_ratio / ffn_ratio: the fraction of heads (per attention module, rounded, one always stays) / of
      feed-forward hidden units removed, instead of the ratio of the branch they sit in; 0 keeps them all.
    only: what may shrink, any of "heads", "ffn" (feed-forward widths) and "channels" (everything else:
      conv channels, hidden units, residual widths); e.g. ["heads", "ffn"] keeps an encoder's hidden size.
    """
    tp = _torch_pruning()
    if (ratio is None) == (target_macs is None):
        raise EdgekitError("prune needs exactly one of 'ratio' and 'target_macs'",
                           "e.g. prune: {ratio: 0.3} or prune: {target_macs: 0.5}")
    if ratio is not None:
        _check_ratio(ratio, "prune ratio")
    if target_macs is not None:
        _check_ratio(target_macs, "prune target_macs (fraction of MACs to keep)")
    per_branch = {k: _check_ratio(v, f"prune ratio of branch '{k}'", allow_zero=True) for k, v in (per_branch or {}).items()}
    if importance not in IMPORTANCES:
        raise EdgekitError(f"unknown pruning importance '{importance}'", f"choose one of: {', '.join(IMPORTANCES)}")
    if heads not in HEAD_MODES:
        raise EdgekitError(f"unknown attention pruning mode heads='{heads}'", f"choose one of: {', '.join(HEAD_MODES)}")
    head_ratio = None if head_ratio is None else _check_ratio(head_ratio, "prune head_ratio", allow_zero=True)
    ffn_ratio = None if ffn_ratio is None else _check_ratio(ffn_ratio, "prune ffn_ratio", allow_zero=True)
    if isinstance(only, str) or not only or set(only) - set(STRUCTURES):
        raise EdgekitError(f"prune only={only!r} names nothing known to prune", f"list some of: {', '.join(STRUCTURES)}")
    if importance == "taylor" and (calibration is None or len(calibration) == 0):
        raise EdgekitError("Taylor importance needs calibration samples with labels, and none were given",
                           "pass a calibration set, or use importance: magnitude")
    for name in list(per_branch) + list(ignore):
        _resolve(model, name, "prune settings")

    t0 = time.time()
    model = copy.deepcopy(model).eval()
    inputs = example_inputs(spec)
    before = model_stats(model, inputs)
    if importance == "taylor":
        _accumulate_gradients(model, calibration, calibration_batches, batch_size)

    settings = dict(per_branch=per_branch, importance=importance, heads=heads, round_to=round_to, ignore=list(ignore),
                    global_pruning=global_pruning, head_ratio=head_ratio, ffn_ratio=ffn_ratio, only=list(only),
                    num_classes=spec.num_classes)
    if ratio is not None:
        pruned, stage = _prune_once(tp, model, inputs, ratio, **settings)
        search = None
    else:
        pruned, stage, ratio, search = _search_ratio(tp, model, inputs, target_macs, before["macs"], settings)
    model.zero_grad(set_to_none=True)
    pruned.zero_grad(set_to_none=True)

    _check_runs(pruned, inputs, spec)
    after = model_stats(pruned, inputs)
    if after["macs"] >= before["macs"]:
        raise EdgekitError(f"pruning at ratio {ratio:.3f} removed nothing (MACs {before['macs']:,} unchanged)",
                           "raise the ratio, or check that 'ignore' does not cover every prunable layer")
    config = derived_config(pruned)
    record = {"pass": "prune", "settings": {"ratio": ratio, "target_macs": target_macs, **{k: v for k, v in settings.items() if k != "num_classes"}},
              "before": before, "after": after, "macs_reduction": before["macs"] / max(after["macs"], 1),
              "params_reduction": before["params"] / max(after["params"], 1),
              "attention": {n: {"heads": a.heads, "head_dim": a.head_dim} for n, a in find_attention(pruned).items()},
              **_removed_per_layer(model, pruned, stage),
              "rebuild": "config" if config is not None else "plan", "search": search, "seconds": time.time() - t0}
    return pruned, dict(record, plan=stage, config=config)


def _removed_per_layer(model: nn.Module, pruned: nn.Module, stage: dict) -> dict:
    """For the report: which heads left each attention module, and each feed-forward block's width before/after."""
    after, ffn_after = find_attention(pruned), find_ffn(pruned)
    heads = {n: {"before": after[n].heads + len(drop), "after": after[n].heads, "removed": drop}
             for n, drop in stage["heads"].items() if n in after}
    ffn = {n: {"before": up.out_features, "after": ffn_after[n][0].out_features}
           for n, (up, _) in find_ffn(model).items() if n in ffn_after and ffn_after[n][0].out_features != up.out_features}
    return {"heads_removed": heads, "ffn_widths": ffn}


def _torch_pruning():
    from edgekit._optional import require

    return require("torch_pruning", "structured pruning")


def _accumulate_gradients(model, calibration, batches: int, batch_size: int) -> None:
    """dL/dw summed over a few labelled calibration batches, drawn class-stratified (every batch holds every class,
    whatever the order of the set): what Taylor importance multiplies with w."""
    from edgekit.data.calibration import stratified

    model.zero_grad(set_to_none=True)
    picked = calibration.subset(stratified(calibration.labels, batches * batch_size))
    for feed, labels in picked.batches(batch_size):
        logits = model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()})
        nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(labels))).backward()


def _prune_once(tp, model, inputs, ratio, *, per_branch, importance, heads, round_to, ignore, global_pruning, head_ratio,
                ffn_ratio, only, num_classes):
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    model = copy.deepcopy(model)
    for n, p in model.named_parameters():  # deepcopy drops .grad, which Taylor importance reads
        if n in grads:
            p.grad = grads[n].clone()
    left_whole = list(ignore) + [n for n, r in per_branch.items() if r == 0]
    skip = lambda name: any(_inside(name, n) for n in left_whole)

    def branch_ratio(name):  # the innermost per_branch entry holding `name`, else the global ratio
        owners = [n for n in per_branch if _inside(name, n)]
        return per_branch[max(owners, key=len)] if owners else ratio

    remove_heads = heads in ("heads", "both") and "heads" in only
    head_stage = choose_heads(model, lambda n: (head_ratio if head_ratio is not None else branch_ratio(n)) if remove_heads else 0.0,
                              importance, skip)
    attn, ffn = find_attention(model), {n: up for n, (up, _) in find_ffn(model).items() if not skip(n)}
    ignored = _output_layers(model, num_classes) + [model.get_submodule(n) for n in left_whole]
    ignored += [m for m in model.modules() if type(m) is nn.MultiheadAttention]  # not splittable (add_bias_kv): left whole
    num_heads = {}  # q/k/v whose head dims torch-pruning shrinks; every other projection keeps its heads' rows
    for name, att in attn.items():
        projections = [lin for lin, _ in att.projections]
        if heads in ("dims", "both") and "heads" in only and not att.packed and not skip(name):
            num_heads.update({lin: att.heads for lin in projections})
        else:
            ignored += projections
    ratio_dict = {model.get_submodule(n): r for n, r in per_branch.items() if r > 0}
    prune_ffn = "ffn" in only and ffn_ratio != 0
    if not prune_ffn:
        ignored += list(ffn.values())
    elif ffn_ratio is not None:
        ratio_dict.update({up: ffn_ratio for up in ffn.values()})  # after per_branch: the more specific wins
    unwrapped, fixed = free_parameters(model)
    if "channels" not in only:  # every layer that is neither an FFN up-projection nor a head-dim q/k/v keeps its width
        allowed = set(num_heads) | (set(ffn.values()) if prune_ffn else set())
        ignored += [m for m in model.modules() if m not in allowed and next(m.parameters(recurse=False), None) is not None]
        unwrapped, fixed = [], unwrapped + fixed
    imp = tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2)
    concats = ConcatRecorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning warns about each free parameter we did classify
        pruner = tp.pruner.MetaPruner(
            model, inputs, importance=imp, pruning_ratio=ratio, pruning_ratio_dict=ratio_dict or None,
            ignored_layers=ignored + [p for _, p in fixed], round_to=round_to, global_pruning=global_pruning,
            num_heads=num_heads, prune_num_heads=False, prune_head_dims=bool(num_heads), head_pruning_ratio=0.0,
            unwrapped_parameters=[(p, p.dim() - 1) for _, p in unwrapped], forward_fn=concats.forward_fn,
            customized_pruners={nn.LSTM: lstm_pruner(tp)})
        concats.fix(tp, pruner.DG)
        for group in pruner.step(interactive=True):
            group.prune()
    apply_heads(model, head_stage)  # after the channels, whose importance counted every head (see choose_heads)
    attrs = head_attributes(model)
    for name in attn:
        if name not in attrs:
            raise EdgekitError(f"attention pruning left {name} with q/k/v widths its head count does not divide",
                               "use prune heads: heads (whole heads) or dims with round_to: null")
        for k, v in attrs[name].items():
            setattr(model.get_submodule(name), k, v)
    history = [[name, bool(is_out), [int(i) for i in tp._helpers.to_plain_idxs(idxs)]]
               for name, is_out, idxs in pruner.pruning_history()]
    stage = {**head_stage, "history": history, "unwrapped": [[n, p.dim() - 1] for n, p in unwrapped], "attrs": attrs}
    return model, stage


def _inside(name: str, scope: str) -> bool:
    return name == scope or name.startswith(scope + ".") or scope == ""


def _search_ratio(tp, model, inputs, target_macs, macs_before, settings):
    """Bisection on the channel ratio until the pruned model keeps at most `target_macs` of the MACs."""
    lo, hi, best, trials = 0.0, 0.95, None, []
    for _ in range(8):
        mid = (lo + hi) / 2
        pruned, stage = _prune_once(tp, model, inputs, mid, **settings)
        macs = model_stats(pruned, inputs)["macs"]
        trials.append({"ratio": round(mid, 4), "macs_kept": macs / macs_before})
        if macs <= target_macs * macs_before:
            best, hi = (pruned, stage, mid), mid
        else:
            lo = mid
        if best and abs(macs / macs_before - target_macs) < 0.01:
            break
    if best is None:
        raise EdgekitError(f"pruning cannot reach {target_macs:.0%} of the MACs (best {min(t['macs_kept'] for t in trials):.0%} at ratio 0.95)",
                           "raise target_macs, or prune fewer layers with 'ignore'/'per_branch'")
    return best[0], best[1], best[2], {"target_macs": target_macs, "trials": trials}


def _check_runs(model, inputs, spec: ModelSpec) -> None:
    try:
        with torch.no_grad():
            out = model.eval()(**inputs)
    except Exception as e:  # a coupling torch-pruning missed shows up as a shape error here, not later
        raise EdgekitError(f"the pruned model no longer runs ({type(e).__name__}: {str(e)[:200]})",
                           "exclude the layer named in the error with prune: {ignore: [module.path]}") from e
    want = (next(iter(inputs.values())).shape[0], spec.num_classes)
    if tuple(out.shape) != want:
        raise EdgekitError(f"the pruned model returns shape {tuple(out.shape)}, expected {want}",
                           "exclude the classifier with prune: {ignore: [...]}")


# ---------------------------------------------------------------- rebuilding a pruned model

def derived_config(model: nn.Module) -> dict | None:
    """For an edgekit reference FusionModel: its config with every width read back from the pruned modules, so
    that build_model(config) reproduces the pruned architecture exactly (checked); None for any other model."""
    from edgekit.models import FusionModel, build_model

    if type(model) is not FusionModel:
        return None
    cfg = copy.deepcopy(model.config)
    for m in ("image", "audio"):
        cfg[m] = dict(cfg[m], **_conv_widths(getattr(model, m)))
    text, tcfg = model.text, cfg["text"]
    tcfg.update(d_model=text.embed.embedding_dim, dim=text.proj.out_features)
    if hasattr(text, "lstm"):
        tcfg["hidden"] = text.lstm.hidden_size
    else:
        tcfg["layers"] = [_layer_widths(layer) for layer in text.layers]
    head, hcfg = model.head, cfg["head"]
    if hasattr(head, "layers"):
        hcfg.update(d_model=head.norm.normalized_shape[0], layers=[_layer_widths(layer) for layer in head.layers])
    if hasattr(head, "fc"):
        hcfg["hidden"] = head.fc.out_features
    if hasattr(head, "pair_fcs"):
        widths = {fc.out_features for fc in head.pair_fcs}
        if len(widths) != 1:
            return None  # the config has one pair width; unequal ones are rebuilt from the pruning plan
        hcfg["pair_hidden"] = widths.pop()
    try:
        rebuilt = build_model(cfg).state_dict()
    except Exception:  # noqa: BLE001 — any failure means the plan, not the config, must rebuild it
        return None
    same = rebuilt.keys() == model.state_dict().keys() and all(rebuilt[k].shape == v.shape for k, v in model.state_dict().items())
    return cfg if same else None


def _conv_widths(enc) -> dict:
    from edgekit.models.encoders import ResidualBlock

    layers = list(enc.body)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    stages = []
    for i in convs[1:]:
        mids = []
        for m in layers[i + 1:]:
            if isinstance(m, nn.Conv2d):
                break
            if isinstance(m, ResidualBlock):
                mids.append(m.conv1.out_channels)
        stages.append({"width": layers[i].out_channels, "stride": layers[i].stride[0], "mids": mids})
    return {"stem": layers[convs[0]].out_channels, "stages": stages, "dim": enc.proj.out_features}


def _layer_widths(layer) -> dict:
    return {"heads": layer.attn.heads, "head_dim": layer.attn.head_dim, "ff": layer.ff1.out_features}


def apply_plan(model: nn.Module, plan: list[dict], spec: ModelSpec) -> nn.Module:
    """Replay a saved pruning plan on a freshly built (unpruned) model: the same channels are removed in the
    same order, through a dependency graph traced on the spec's example inputs."""
    tp = _torch_pruning()
    inputs = example_inputs(spec)
    for stage in plan:
        try:
            resplit(model, stage.get("split_mha", []))  # the graph was traced on split attention with every head
            params = dict(model.named_parameters())
            unwrapped = [(params[n], d) for n, d in stage["unwrapped"]]
            named = {n for n, _ in stage["unwrapped"]}
            prunable, one_dim = free_parameters(model)
            fixed = [p for n, p in prunable + one_dim if n not in named]
            concats = ConcatRecorder()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dg = tp.DependencyGraph().build_dependency(model, inputs, forward_fn=concats.forward_fn, unwrapped_parameters=unwrapped,
                                                           ignored_params=fixed, verbose=False,
                                                           customized_pruners={nn.LSTM: lstm_pruner(tp)})
                concats.fix(tp, dg)
                dg.load_pruning_history(stage["history"])
            apply_heads(model, stage)
        except (KeyError, AttributeError, IndexError, RuntimeError, ValueError) as e:
            raise EdgekitError(f"the saved pruning plan does not fit this model ({type(e).__name__}: {str(e)[:160]})",
                               "load it with the factory and config it was pruned from") from e
        for name, attrs in stage.get("attrs", {}).items():
            for k, v in attrs.items():
                setattr(model.get_submodule(name), k, v)
    return model


# ---------------------------------------------------------------- the pass registry's interface (edgekit.passes)

def run(model: nn.Module, settings: PruneSettings, ctx) -> tuple[nn.Module, dict]:
    """Prune, and record how to rebuild the result: a derived config while no plan is needed yet, else a plan stage."""
    model, rec = prune(model, ctx.spec, calibration=ctx.calibration, **settings.model_dump())
    config, plan = rec.pop("config"), rec.pop("plan")
    if config is not None and not ctx.pruning_plan:
        ctx.config = config
    else:
        ctx.pruning_plan.append(plan)
    rec["rebuild"] = "config" if config is not None and not ctx.pruning_plan else "plan"
    return model, rec


def restore(model: nn.Module, cfg: dict, spec: ModelSpec) -> nn.Module:
    return apply_plan(model, cfg["pruning_plan"], spec) if cfg.get("pruning_plan") else model


def summary(record: dict) -> str:
    b, a = record["before"], record["after"]
    return f"MACs {b['macs']:,} -> {a['macs']:,} ({record['macs_reduction']:.2f}x fewer), params {b['params']:,} -> {a['params']:,}"
