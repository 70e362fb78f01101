"""INT8 post-training quantization with NNCF, calibrated on paired multimodal samples.

Plain mode: one nncf.quantize call (min/max statistics, fast bias correction), with an ignored scope and a
per-branch precision policy (`keep_float: [audio.body.0]` keeps those modules' ops in float).

Accuracy-aware mode (`max_accuracy_drop`, in accuracy points on the validation split): quantize everything,
rank the quantized ops by sensitivity (how far the logits move from the float model's when that op alone is
quantized), then return the fewest ops to float, most sensitive first, until the drop is
within budget. If no number of float ops meets it, the best model found is returned and the record says
clearly that the budget was not met. Either way the per-op precision map is part of the record.

The returned model is an NNCF-wrapped torch module (fake-quant hooks); edgekit.export writes it as Q/DQ ONNX,
and `nncf_config(model)` + the state dict rebuild it (see edgekit.checkpoint).
"""
from __future__ import annotations

import copy
import logging
import os
import re
import time
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgekit.data import ArrayDataset
from edgekit.data.calibration import check as check_calibration, describe, stratified
from edgekit.errors import EdgekitError
from edgekit.passes.base import PassSettings
from edgekit.spec import ModelSpec

PRESETS = ("performance", "mixed")


class IgnoredScopeSettings(PassSettings):
    names: list[str] = Field(default_factory=list, description="NNCF op names, e.g. audio/body/0/conv2d/0")
    patterns: list[str] = Field(default_factory=list, description="regular expressions over NNCF op names")
    types: list[str] = Field(default_factory=list, description="op types, e.g. matmul")


class QuantizeSettings(PassSettings):
    """INT8 post-training quantization; `max_accuracy_drop` turns on accuracy-aware mode."""
    preset: Literal["performance", "mixed"] = "performance"
    fast_bias_correction: bool = True
    keep_float: list[str] = Field(default_factory=list, description="modules kept in float, e.g. [audio.body.0]")
    ignored_scope: Optional[IgnoredScopeSettings] = None
    model_type: Optional[Literal["transformer"]] = None
    batch_size: int = Field(32, ge=1)
    max_accuracy_drop: Optional[float] = Field(None, ge=0, description="points on the validation split")
    ranking_samples: int = Field(128, ge=1, description="validation samples used to rank op sensitivity")
    max_float_ops: Optional[int] = Field(None, ge=1, description="give up after this many ops in float")


Settings = QuantizeSettings


# NNCF compiles a C++ extension for its fake-quant ops on first use and gives up after 60 s by default: too short for
# a 2-core machine under load (a fresh machine's first quantization failed so). Users can still set their own.
EXTENSION_LOAD_TIMEOUT_S = "900"


def _nncf():
    from edgekit._optional import require

    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_LOAD_TIMEOUT_S)
    nncf = require("nncf", "INT8 quantization")
    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf


def _tensors(feed: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}


def _feeds(data: ArrayDataset, spec: ModelSpec, batch_size: int) -> list[dict]:
    return [_tensors({n: feed[n] for n in spec.input_names}) for feed, _ in data.batches(batch_size)]


@torch.no_grad()
def _logits(model, feeds: list[dict]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(**f) for f in feeds])


def _accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() == labels).mean())


# ---------------------------------------------------------------- naming: modules <-> NNCF ops

def _graph(model, example):
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    return build_nncf_graph(model, example)


def op_modules(model, example) -> dict[str, str]:
    """NNCF op name -> the module whose weight it uses ('image/body/0/conv2d/0' -> 'image.body.0'). NNCF names
    ops by call path, which loses ModuleList indices, so module names come from the weights instead."""
    from nncf.torch.model_graph_manager import get_const_node, get_weight_tensor_port_ids

    graph, out = _graph(model, example), {}
    for node in graph.get_all_nodes():
        try:
            ports = get_weight_tensor_port_ids(node, graph)
        except Exception:  # noqa: BLE001 — ops without weight metadata simply have no module
            continue
        for port in ports:
            const = get_const_node(node, port, graph)
            if const is not None and getattr(const.layer_attributes, "name", None):
                out[node.node_name] = const.layer_attributes.name.rsplit(".", 1)[0]
    return out


def _ops(model, example) -> list[str]:
    return [n.node_name for n in _graph(model, example).get_all_nodes()]


def build_ignored_scope(model, example, keep_float=(), scope: dict | None = None):
    """An nncf.IgnoredScope from module prefixes to keep in float (every op inside them) plus raw NNCF
    names/patterns/types; unknown names are an error listing what exists."""
    nncf = _nncf()
    names = set()
    if keep_float:
        modules = dict(model.named_modules())
        by_module, ops = op_modules(copy.deepcopy(model), example), _ops(copy.deepcopy(model), example)
        for prefix in keep_float:
            if prefix not in modules:
                top = ", ".join(n for n, _ in model.named_children())
                raise EdgekitError(f"keep_float names '{prefix}', which is not a module of the model", f"use a module path such as one of: {top}")
            path = prefix.replace(".", "/") + "/"
            hit = {op for op, mod in by_module.items() if mod == prefix or mod.startswith(prefix + ".")}
            hit |= {op for op in ops if op.startswith(path)}
            names |= hit
    scope = dict(scope or {})
    unknown = set(scope) - {"names", "patterns", "types"}
    if unknown:
        raise EdgekitError(f"ignored_scope has unknown key(s) {sorted(unknown)}", "allowed keys: names, patterns, types (NNCF op names/regexes/types)")
    user_names = list(scope.get("names", []))
    if user_names or scope.get("patterns"):
        ops = set(_ops(copy.deepcopy(model), example))
        bad = [n for n in user_names if n not in ops]
        bad += [p for p in scope.get("patterns", []) if not any(re.search(p, o) for o in ops)]
        if bad:
            raise EdgekitError(f"ignored_scope entries match no operation: {bad}",
                               f"NNCF op names look like: {', '.join(sorted(ops)[:6])}, ...; or use keep_float with module names")
    if not (names or scope):
        return None, []
    return nncf.IgnoredScope(names=sorted(names | set(user_names)), patterns=list(scope.get("patterns", [])),
                             types=list(scope.get("types", [])), validate=False), sorted(names | set(user_names))


# ---------------------------------------------------------------- the pass

def quantize(model: nn.Module, spec: ModelSpec, calibration: ArrayDataset, *, preset: str = "performance",
             fast_bias_correction: bool = True, keep_float: list[str] | tuple = (), ignored_scope: dict | None = None,
             model_type: str | None = None, batch_size: int = 32, max_accuracy_drop: float | None = None,
             validation: ArrayDataset | None = None, ranking_samples: int = 128, max_float_ops: int | None = None,
             progress=None) -> tuple[nn.Module, dict]:
    """INT8 PTQ; returns (NNCF-quantized copy of `model`, record). With `max_accuracy_drop` (points, e.g. 0.5)
    and a `validation` split, runs the accuracy-aware search described in the module docstring."""
    nncf = _nncf()
    if preset not in PRESETS:
        raise EdgekitError(f"unknown quantization preset '{preset}'", f"choose one of: {', '.join(PRESETS)}")
    if model_type not in (None, "transformer"):
        raise EdgekitError(f"unknown model_type '{model_type}'", "use 'transformer' or leave it out")
    check_calibration(calibration, spec)
    if max_accuracy_drop is not None:
        if max_accuracy_drop < 0:
            raise EdgekitError(f"max_accuracy_drop is {max_accuracy_drop}", "give the allowed drop in accuracy points, e.g. 0.5")
        if validation is None or len(validation) == 0:
            raise EdgekitError("accuracy-aware quantization needs a non-empty validation split", "check the recipe's data section")
    t0 = time.time()
    model = copy.deepcopy(model).eval()
    example = _tensors(spec.example_inputs(2))
    scope, float_ops = build_ignored_scope(model, example, keep_float, ignored_scope)
    feeds = _feeds(calibration, spec, batch_size)
    kwargs = dict(preset=getattr(nncf.QuantizationPreset, preset.upper()), subset_size=len(feeds),
                  fast_bias_correction=fast_bias_correction, ignored_scope=scope,
                  model_type=nncf.ModelType.TRANSFORMER if model_type == "transformer" else None)
    try:
        q = nncf.quantize(model, nncf.Dataset(feeds), **kwargs)
    except nncf.ValidationError as e:
        raise EdgekitError(f"NNCF refused the quantization settings: {str(e).splitlines()[0][:300]}", "check ignored_scope / keep_float") from e
    except Exception as e:
        if type(e).__name__ == "ExtensionLoaderTimeoutException":
            raise EdgekitError(f"NNCF's C++ extension did not build or load within {os.environ['NNCF_EXTENSION_LOAD_TIMEOUT']} s",
                               "a stale build lock: remove ~/.cache/torch_extensions/*/nncf; a slow machine: set NNCF_EXTENSION_LOAD_TIMEOUT=0 (no limit)") from e
        raise
    _unshare_quantizers(q)
    record = {"pass": "quantize", "settings": {"preset": preset, "fast_bias_correction": fast_bias_correction, "keep_float": list(keep_float),
                                                "ignored_scope": ignored_scope or {}, "model_type": model_type, "batch_size": batch_size,
                                                "max_accuracy_drop": max_accuracy_drop},
              "calibration": describe(calibration, spec.class_names), "policy_float_ops": float_ops}
    if max_accuracy_drop is not None:
        record["accuracy_aware"] = _accuracy_aware(model, q, spec, validation, max_accuracy_drop, batch_size, ranking_samples, max_float_ops, progress)
    record["precision_map"] = precision_map(q, example, float_ops, record.get("accuracy_aware", {}))
    record["quantizers"] = sum(1 for _ in _quantizers(q))
    record["seconds"] = time.time() - t0
    return q, record


# ---------------------------------------------------------------- accuracy-aware search

def _quantizers(q):
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer

    for name, module in get_hook_storage(q).named_hooks(remove_duplicate=False):
        if isinstance(module, BaseQuantizer):
            yield name, module


def _op_of(hook_name: str) -> str:
    from nncf.torch.function_hook.hook_storage import decode_hook_name

    return decode_hook_name(hook_name)[1]


def _groups(q) -> dict[str, list]:
    """Quantizers grouped by the op they belong to (its weight and inputs, or its output)."""
    groups: dict[str, list] = {}
    for name, module in _quantizers(q):
        groups.setdefault(_op_of(name), []).append((name, module))
    return groups


def _set(group, enabled: bool) -> None:
    for _, m in group:
        m.enable_quantization() if enabled else m.disable_quantization()


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    p = torch.log_softmax(reference, -1)
    return float(torch.nn.functional.kl_div(torch.log_softmax(logits, -1), p, reduction="batchmean", log_target=True))


def _accuracy_aware(fp_model, q, spec, val, budget, batch_size, ranking_samples, max_float_ops, progress) -> dict:
    feeds = _feeds(val, spec, max(batch_size, 100))  # few large batches: each forward of a fake-quant model is costly
    fp_logits = _logits(fp_model, feeds)
    fp_acc = _accuracy(fp_logits, val.labels)
    q_acc = _accuracy(_logits(q, feeds), val.labels)
    out = {"max_accuracy_drop": budget, "metric": "accuracy", "split": "val", "n": len(val),
           "fp32_accuracy": fp_acc, "int8_accuracy_all_quantized": q_acc, "float_ops": [], "ranking": []}
    if (fp_acc - q_acc) * 100 <= budget:
        return dict(out, met=True, final_accuracy=q_acc, drop=(fp_acc - q_acc) * 100,
                    note=f"fully quantized model is within budget ({(fp_acc - q_acc) * 100:.2f} <= {budget} points)")
    groups = _groups(q)
    rank_idx = stratified(val.labels, ranking_samples)  # class-stratified: the val split may be sorted by class
    rank_feeds = _feeds(val.subset(rank_idx), spec, len(rank_idx))
    ref = fp_logits[torch.from_numpy(rank_idx)]
    # sensitivity of an op = how far the logits move when it alone is quantized (every other op in float):
    # its own damage, not masked by the damage of ops before or after it
    for group in groups.values():
        _set(group, False)
    scores = []
    for i, (op, group) in enumerate(groups.items()):
        _set(group, True)
        scores.append((_kl(ref, _logits(q, rank_feeds)), op))
        _set(group, False)
        if progress:
            progress(1, f"ranking {i + 1}/{len(groups)}")
    scores.sort(key=lambda s: -s[0])
    out["ranking"] = [{"op": op, "kl_alone": s} for s, op in scores]
    out["ranking_samples"] = {"n": len(rank_idx), "per_class": np.bincount(val.labels[rank_idx]).tolist()}
    ranked = [op for _, op in scores]
    limit = min(max_float_ops or len(ranked), len(ranked))
    trials: dict[int, float] = {0: q_acc}

    def accuracy_with(k: int) -> float:  # the k most sensitive ops in float, the rest quantized
        if k not in trials:
            for i, op in enumerate(ranked):
                _set(groups[op], i >= k)
            trials[k] = _accuracy(_logits(q, feeds), val.labels)
            if progress:
                progress(1, f"{k} ops in float: val acc {trials[k]:.4f}")
        return trials[k]

    def met(k):
        return (fp_acc - accuracy_with(k)) * 100 <= budget

    # doubling, then bisection: O(log n) evaluations for the fewest float ops (the drop shrinks roughly
    # monotonically as more of the most sensitive ops go back to float)
    lo, hi = 0, None
    k = 1
    while k <= limit:
        if met(k):
            hi = k
            break
        lo = k
        k = limit if k < limit and 2 * k > limit else 2 * k
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if met(mid) else (mid, hi)
        chosen = hi
    else:  # the budget cannot be met: keep the most accurate configuration tried (fewest float ops on ties)
        chosen = max(trials, key=lambda k: (trials[k], -k))
    float_ops = ranked[:chosen]
    for op, group in groups.items():
        _set(group, op not in float_ops)
    _drop_disabled(q)
    final, is_met = trials[chosen], (fp_acc - trials[chosen]) * 100 <= budget
    out.update(met=is_met, final_accuracy=final, drop=(fp_acc - final) * 100, float_ops=float_ops,
               trials=[{"float_ops": k, "accuracy": a} for k, a in sorted(trials.items())],
               note=(f"budget met with {len(float_ops)} of {len(groups)} quantized ops kept in float" if is_met else
                     f"budget NOT met: best drop {(fp_acc - final) * 100:.2f} points with {len(float_ops)} ops in float "
                     f"(tried up to {limit}); returning the best model found"))
    return out


def _unshare_quantizers(q) -> None:
    """NNCF shares one quantizer between the consumers of a tensor (a branch output feeding two concats); give
    each hook its own copy (same scale): nncf.strip replaces only the first name of a shared module, which left
    OpenVINO-only FakeQuantize ops in the ONNX, and per-op search and saving are simpler without sharing."""
    from nncf.torch.function_hook.wrapper import get_hook_storage

    storage, seen = get_hook_storage(q), set()
    for name, module in list(storage.named_hooks(remove_duplicate=False)):
        if id(module) in seen:
            storage.delete_hook(name)
            storage.insert_hook_by_name(name, copy.deepcopy(module))
        seen.add(id(module))


def _drop_disabled(q) -> None:
    """Remove switched-off quantizers from the model, so the saved config and the exported graph carry no trace of them."""
    from nncf.torch.function_hook.wrapper import get_hook_storage

    storage = get_hook_storage(q)
    for name, module in list(_quantizers(q)):
        if not module.is_enabled_quantization():
            storage.delete_hook(name)


def precision_map(q, example, policy_float_ops: list[str], search: dict) -> dict[str, dict]:
    """Per op: int8 if it carries quantizers (of its weight, inputs or output), fp32 if kept in float by the
    policy or the search; with the module it belongs to, which tensors are quantized, and why."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name

    quantized: dict[str, set] = {}
    modules = op_modules(q, example)
    for name, _ in _quantizers(q):
        kind, op, port = decode_hook_name(name)
        quantized.setdefault(op, set()).add("output" if kind == "post_hooks" else ("weight" if op in modules and port > 0 else "input"))
    policy, searched = set(policy_float_ops), set(search.get("float_ops", []))
    rank = {r["op"]: r["kl_alone"] for r in search.get("ranking", [])}
    out = {}
    for op in sorted(set(quantized) | policy | searched):
        float_op = op in policy or op in searched
        entry = {"precision": "fp32" if float_op else "int8", "module": modules.get(op, ""), "quantized": sorted(quantized.get(op, ()))}
        if op in searched:
            entry["why"] = f"sensitive: kept in float by the accuracy-aware search (logit KL {rank.get(op, 0):.4f} when quantized alone)"
        elif op in policy:
            entry["why"] = "kept in float by keep_float / ignored_scope" + ("; its output is quantized for an INT8 consumer" if entry["quantized"] else "")
        out[op] = entry
    return out


def nncf_config(model) -> dict | None:
    """What edgekit.checkpoint needs to rebuild a quantized model (None for a float one)."""
    if "nncf" not in __import__("sys").modules:
        return None
    from nncf.torch.function_hook.wrapper import is_wrapped

    if not is_wrapped(model):
        return None
    import nncf.torch

    return nncf.torch.get_config(model)


# ---------------------------------------------------------------- the pass registry's interface (edgekit.passes)

def run(model: nn.Module, settings: QuantizeSettings, ctx) -> tuple[nn.Module, dict]:
    with ctx.progress("quantizing") as advance:
        return quantize(model, ctx.spec, ctx.calibration, validation=ctx.val, progress=lambda n, info: advance(n, info=info),
                        **settings.model_dump())


def restore(model: nn.Module, cfg: dict, spec: ModelSpec) -> nn.Module:
    """Re-insert the INT8 quantizers saved in a checkpoint's config into a freshly built model (weights load afterwards)."""
    if not cfg.get("quantization"):
        return model
    _nncf()
    import nncf.torch

    try:
        return nncf.torch.load_from_config(model, cfg["quantization"]["nncf"])
    except Exception as e:  # noqa: BLE001 — any NNCF failure here means the saved config does not fit
        raise EdgekitError(f"cannot restore the INT8 quantizers saved with this checkpoint ({type(e).__name__}: {str(e)[:200]})",
                           "load it with the NNCF version it was saved with (see config.json)") from e


def summary(record: dict) -> str:
    aa = record.get("accuracy_aware")
    return f"accuracy-aware: {aa['note']}" if aa else ""
