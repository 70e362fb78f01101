"""Structured pruning on Torch-Pruning's dependency graph: channels, hidden units and attention heads are
removed for real (smaller weight tensors, fewer MACs), never masked.

The dependency graph couples every layer that shares a channel axis — a residual stream, a concat of branch
features feeding one Linear, q/k/v/out of one attention, a gated sum — so one pruning decision removes the
same channels everywhere. Attention is recognised by the edgekit convention: a module with integer `heads`
and `head_dim` attributes and `q`, `k`, `v` Linears (like edgekit.models.encoders.MultiHeadAttention);
heads are pruned as whole head groups (or head dims uniformly), then `heads`/`head_dim` are updated.

A pruned model is rebuilt later either from a config derived from its new shapes (reference models) or by
replaying the pruning plan (which channels were removed, as JSON) on `factory(config)` (any model).
"""
from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.spec import ModelSpec

IMPORTANCES = ("magnitude", "taylor")
HEAD_MODES = ("heads", "dims", "both", "none")
QUANTIZER_PREFIX = "__nncf_hooks"  # an INT8 model's fake-quant modules: not part of the network's size


def example_inputs(spec: ModelSpec, batch: int = 2) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in spec.example_inputs(batch).items()}


# ---------------------------------------------------------------- measuring

def model_stats(model: nn.Module, inputs: dict) -> dict:
    """Params and MACs of the whole model and of each top-level child (its branches), counted from the aten
    ops torch runs, so attention matmuls and pruned shapes count as they are (quantizers excluded)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(**inputs)
    model.train(was_training)
    batch = next(iter(inputs.values())).shape[0]
    flops = fc.get_flop_counts()
    root = next((k for k in flops if k != "Global" and "." not in k), None)
    branches = {}
    for name, child in model.named_children():
        if name.startswith(QUANTIZER_PREFIX):
            continue
        key = f"{root}.{name}" if root else name
        branches[name] = {"params": sum(p.numel() for p in child.parameters()),
                          "macs": sum(flops.get(key, {}).values()) // 2 // batch}
    return {"params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith(QUANTIZER_PREFIX)),
            "macs": sum(flops.get("Global", {}).values()) // 2 // batch, "branches": branches}


# ---------------------------------------------------------------- what to prune and what never to

def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if isinstance(getattr(m, "heads", None), int) and isinstance(getattr(m, "head_dim", None), int)
            and all(isinstance(getattr(m, x, None), nn.Linear) for x in ("q", "k", "v"))}


def _free_parameters(model: nn.Module) -> tuple[list, list]:
    """Parameters not owned by a standard layer (positional tables, learned tokens, gates). Those of 2+ dims
    are pruned along their last (feature) axis; 1-D ones (per-modality weights, scalars) are left alone."""
    owned = set()
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
                          nn.Embedding, nn.LSTM, nn.GroupNorm, nn.PReLU, nn.MultiheadAttention)):
            owned.update(id(p) for p in m.parameters())
    free = [(n, p) for n, p in model.named_parameters() if id(p) not in owned]
    return [(n, p) for n, p in free if p.dim() >= 2], [(n, p) for n, p in free if p.dim() < 2]


def _lstm_pruner(tp):
    """Torch-Pruning 1.6's own nn.LSTM pruner indexes the gate rows wrongly; this one keeps the same hidden
    units in all four gates (rows of weight_ih/weight_hh/biases) and in weight_hh's columns."""

    class LSTMHiddenPruner(tp.pruner.BasePruningFunc):
        TARGET_MODULES = nn.LSTM

        def check(self, layer, idxs, to_output):
            if layer.num_layers != 1 or layer.bidirectional or layer.proj_size:
                raise EdgekitError("only single-layer, unidirectional nn.LSTM can be pruned", "add the LSTM to prune: {ignore: [...]}")

        def prune_out_channels(self, layer, idxs):
            keep = torch.tensor(sorted(set(range(layer.hidden_size)) - set(idxs)))
            rows = torch.cat([keep + g * layer.hidden_size for g in range(4)])
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                if hasattr(layer, name):
                    setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), rows.tolist(), 0))
            layer.weight_hh_l0 = self._prune_parameter_and_grad(layer.weight_hh_l0, keep.tolist(), 1)
            layer.hidden_size = len(keep)
            layer._init_flat_weights()
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = sorted(set(range(layer.input_size)) - set(idxs))
            layer.weight_ih_l0 = self._prune_parameter_and_grad(layer.weight_ih_l0, keep, 1)
            layer.input_size = len(keep)
            layer._init_flat_weights()
            return layer

        def get_out_channels(self, layer):
            return layer.hidden_size

        def get_in_channels(self, layer):
            return layer.input_size

    return LSTMHiddenPruner()


class _ConcatRecorder:
    """Records, for every torch.cat that torch-pruning traces, the width and grad-ness of each input.
    Torch-Pruning 1.6 gets two things wrong for fusion heads: it builds its graph from autograd, so an input
    that needs no grad (a model input such as the modality mask, concatenated to the branch features in early
    and hierarchical fusion) is invisible to it; and it disables concat index mapping whenever a 3-D parameter
    lies upstream (a ViT class-token heuristic that our text positional table trips). Either way every branch
    feeding the concat would be pruned at the same, wrong indices."""

    def __init__(self):
        self.calls = {}

    def forward_fn(self, model, inputs):
        from torch.overrides import TorchFunctionMode

        calls = self.calls

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if func in (torch.cat, torch.concat, torch.concatenate) and isinstance(out, torch.Tensor) and out.grad_fn is not None:
                    tensors = args[0] if args else kwargs["tensors"]
                    dim = (args[1] if len(args) > 1 else (kwargs or {}).get("dim", 0)) % out.dim()
                    calls[out.grad_fn] = (dim, out.dim(), [(t.requires_grad, t.shape[dim]) for t in tensors])
                return out

        with Mode():
            return model(**inputs)

    def fix(self, tp, dg) -> None:
        """Give each such concat the missing inputs as fixed-width nodes, so its offsets come out right."""
        pruner = _fixed_width_pruner(tp)
        dg.register_customized_layer(_FixedWidth, pruner)
        for node in list(dg.module2node.values()):
            if node.type != tp.ops.OPTYPE.CONCAT or node.grad_fn not in self.calls:
                continue
            dim, ndim, inputs = self.calls[node.grad_fn]
            # a concat of features ([B, C] or NCHW) needs offsets; one of tokens ([B, N, C] on N) does not
            node.enable_index_mapping = dim == 1 and ndim in (2, 4)
            if all(g for g, _ in inputs) or len(node.inputs) != sum(g for g, _ in inputs):
                continue
            traced, merged = iter(node.inputs), []
            for needs_grad, width in inputs:
                if needs_grad:
                    merged.append(next(traced))
                else:
                    fixed = tp.dependency.Node(_FixedWidth(width), grad_fn=None, name=f"fixed input ({width})")
                    fixed.type = tp.ops.OPTYPE.CUSTOMIZED
                    fixed.add_output(node)
                    dg.module2node[fixed.module] = fixed
                    merged.append(fixed)
            node.inputs = merged
            node.module.concat_sizes = None  # recomputed from the inputs at the next index-mapping update


class _FixedWidth(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.width = width


def _fixed_width_pruner(tp):
    class FixedWidthPruner(tp.pruner.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return layer.width

        get_in_channels = get_out_channels

    return FixedWidthPruner()


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
          ignore: list[str] | tuple = (), global_pruning: bool = False, batch_size: int = 32) -> tuple[nn.Module, dict]:
    """Structured pruning; returns (a pruned copy of `model`, a record of what was done).

    ratio: fraction of channels / hidden units / heads removed from every prunable group, in (0, 1).
    target_macs: instead of `ratio`, the fraction of the model's MACs to keep (e.g. 0.5): the ratio that
      reaches it is found by bisection.
    per_branch: {submodule name: ratio} overrides, e.g. {"audio": 0.3}; 0 leaves that branch whole.
    importance: "magnitude" (L2 of the coupled weights) or "taylor" (|w * dL/dw| on `calibration` batches).
    heads: "heads" removes whole attention heads, "dims" shrinks every head's dim, "both", or "none".
    ignore: submodule names never pruned (the classifier(s) and the model inputs/outputs never are).
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
                    global_pruning=global_pruning, num_classes=spec.num_classes)
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
              "attention": {n: {"heads": m.heads, "head_dim": m.head_dim} for n, m in attention_modules(pruned).items()},
              "rebuild": "config" if config is not None else "plan", "search": search, "seconds": time.time() - t0}
    return pruned, dict(record, plan=stage, config=config)


def _torch_pruning():
    from edgekit._optional import require

    return require("torch_pruning", "structured pruning")


def _accumulate_gradients(model, calibration, batches: int, batch_size: int) -> None:
    """dL/dw summed over a few labelled calibration batches: what Taylor importance multiplies with w."""
    model.zero_grad(set_to_none=True)
    for i, (feed, labels) in enumerate(calibration.batches(batch_size)):
        if i >= batches:
            break
        logits = model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()})
        nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(labels))).backward()


def _prune_once(tp, model, inputs, ratio, *, per_branch, importance, heads, round_to, ignore, global_pruning, num_classes):
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    model = copy.deepcopy(model)
    for n, p in model.named_parameters():  # deepcopy drops .grad, which Taylor importance reads
        if n in grads:
            p.grad = grads[n].clone()
    attn = attention_modules(model)
    num_heads = {getattr(m, x): m.heads for m in attn.values() for x in ("q", "k", "v")}
    ignored = _output_layers(model, num_classes) + [model.get_submodule(n) for n in ignore]
    if heads == "none":
        ignored += [getattr(m, x) for m in attn.values() for x in ("q", "k", "v")]
    unwrapped, fixed = _free_parameters(model)
    ratio_dict, head_ratio = {}, {n: ratio for n in attn}
    for name, r in per_branch.items():
        sub = model.get_submodule(name)
        if r == 0:
            ignored.append(sub)
        else:
            ratio_dict[sub] = r
        head_ratio.update({n: r for n in attn if n == name or n.startswith(name + ".")})
    # torch-pruning removes ceil(ratio * heads) heads and may remove them all; round instead and keep one
    head_dict = {getattr(attn[n], x): max(min(round(r * attn[n].heads), attn[n].heads - 1) / attn[n].heads - 1e-6, 0.0)
                 for n, r in head_ratio.items() for x in ("q", "k", "v")}
    imp = tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2)
    concats = _ConcatRecorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning warns about each free parameter we did classify
        pruner = tp.pruner.MetaPruner(
            model, inputs, importance=imp, pruning_ratio=ratio, pruning_ratio_dict=ratio_dict or None,
            ignored_layers=ignored + [p for _, p in fixed], round_to=round_to, global_pruning=global_pruning,
            num_heads=num_heads, prune_num_heads=heads in ("heads", "both"), prune_head_dims=heads in ("dims", "both"),
            head_pruning_ratio=ratio if heads in ("heads", "both") else 0.0,
            head_pruning_ratio_dict=head_dict if heads in ("heads", "both") else None,
            unwrapped_parameters=[(p, p.dim() - 1) for _, p in unwrapped], forward_fn=concats.forward_fn,
            customized_pruners={nn.LSTM: _lstm_pruner(tp)})
        concats.fix(tp, pruner.DG)
        for group in pruner.step(interactive=True):
            group.prune()
    for m in attn.values():
        m.heads = pruner.num_heads.get(m.q, m.heads)
        if m.q.out_features % m.heads:
            raise EdgekitError(f"attention pruning left {m.q.out_features} q channels for {m.heads} heads",
                               "use prune heads: heads (whole heads) or dims with round_to: null")
        m.head_dim = m.q.out_features // m.heads
    history = [[name, bool(is_out), [int(i) for i in tp._helpers.to_plain_idxs(idxs)]]
               for name, is_out, idxs in pruner.pruning_history()]
    stage = {"history": history, "unwrapped": [[n, p.dim() - 1] for n, p in unwrapped],
             "attrs": {n: {"heads": m.heads, "head_dim": m.head_dim} for n, m in attn.items()}}
    return model, stage


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
    convs = [i for i, l in enumerate(layers) if isinstance(l, nn.Conv2d)]
    stages = []
    for i in convs[1:]:
        mids = []
        for l in layers[i + 1:]:
            if isinstance(l, nn.Conv2d):
                break
            if isinstance(l, ResidualBlock):
                mids.append(l.conv1.out_channels)
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
        params = dict(model.named_parameters())
        try:
            unwrapped = [(params[n], d) for n, d in stage["unwrapped"]]
            _, fixed = _free_parameters(model)
            concats = _ConcatRecorder()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dg = tp.DependencyGraph().build_dependency(model, inputs, forward_fn=concats.forward_fn, unwrapped_parameters=unwrapped,
                                                           ignored_params=[p for _, p in fixed], verbose=False,
                                                           customized_pruners={nn.LSTM: _lstm_pruner(tp)})
                concats.fix(tp, dg)
                dg.load_pruning_history(stage["history"])
        except (KeyError, AttributeError, IndexError, RuntimeError, ValueError) as e:
            raise EdgekitError(f"the saved pruning plan does not fit this model ({type(e).__name__}: {str(e)[:160]})",
                               "load it with the factory and config it was pruned from") from e
        for name, attrs in stage.get("attrs", {}).items():
            for k, v in attrs.items():
                setattr(model.get_submodule(name), k, v)
    return model
