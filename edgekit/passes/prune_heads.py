"""Attention heads and feed-forward widths of real encoders: how pruning finds them and removes whole heads.

A head is a block of head_dim rows in each of q, k and v and the same block of columns in the output
projection; removing it from only some of them changes what the model computes. So heads are removed here,
by one index list applied to all four (never by Torch-Pruning, whose head groups need the attention op traced
the way it expects), and the module's head attributes are updated so its forward reshapes to the new count.
Recognised conventions (`find_attention`):
- separate q/k/v Linears named q/k/v (edgekit), query/key/value (Hugging Face BERT, RoBERTa, ELECTRA),
  q_proj/k_proj/v_proj (Hugging Face ViT, nn.MultiheadAttention once split) or q_lin/k_lin/v_lin (DistilBERT),
  with a head count in heads / num_heads / num_attention_heads / n_heads, and the output projection a child
  (out, o_proj, out_proj, out_lin, proj, dense) or, as in BERT, the sibling `output.dense`;
- one packed `qkv` Linear of 3 * heads * head_dim rows ([q | k | v], head-major inside each) with `num_heads`
  and a `proj` output, as in timm;
- torch.nn.MultiheadAttention, first swapped for edgekit.passes.prune_mha.SplitMultiheadAttention.
Feed-forward blocks (`find_ffn`) are Linear pairs fc1/fc2, lin1/lin2, linear1/linear2, ff1/ff2 or BERT's
intermediate.dense/output.dense; their hidden width is pruned by Torch-Pruning as one group.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from edgekit.passes.prune_mha import (
    SplitMultiheadAttention,
    split_torch_attention,
)

QKV_NAMES = (("q", "k", "v"), ("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))
HEAD_COUNT_ATTRS = ("heads", "num_heads", "num_attention_heads", "n_heads")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size")
INNER_WIDTH_ATTRS = ("all_head_size",)  # heads * head_dim, kept by some implementations
OUT_NAMES = ("out", "o_proj", "out_proj", "out_lin", "proj", "dense")
FFN_NAMES = (("fc1", "fc2"), ("lin1", "lin2"), ("linear1", "linear2"), ("ff1", "ff2"), ("intermediate.dense", "output.dense"))


@dataclass
class Attention:
    """One attention module as pruning sees it. `projections` are (Linear, blocks): a separate q, k or v has
    one block of heads * head_dim rows, a packed qkv three."""
    module: nn.Module
    projections: list
    out: nn.Linear
    heads: int
    head_dim: int

    @property
    def packed(self) -> bool:
        return any(blocks > 1 for _, blocks in self.projections)


def _linear(module, path: str):
    try:
        m = module.get_submodule(path)
    except AttributeError:
        return None
    return m if isinstance(m, nn.Linear) else None


def _int_attr(m, names) -> int | None:
    return next((getattr(m, a) for a in names if isinstance(getattr(m, a, None), int) and not isinstance(getattr(m, a), bool)), None)


def find_attention(model: nn.Module) -> dict[str, Attention]:
    """{module path: Attention} for every attention module of a recognised convention (see the module doc)."""
    parents = {id(m): p for _, p in model.named_modules() for m in p.children()}
    found = {}
    for name, m in model.named_modules():
        heads = _int_attr(m, HEAD_COUNT_ATTRS)
        if heads is None or heads < 1:
            continue
        qkv = _linear(m, "qkv")
        if qkv is not None and isinstance(getattr(m, "proj", None), nn.Linear):
            inner = qkv.out_features // 3
            if qkv.out_features == 3 * inner and inner % heads == 0 and m.proj.in_features == inner:
                found[name] = Attention(m, [(qkv, 3)], m.proj, heads, inner // heads)
            continue
        for names in QKV_NAMES:
            lins = [_linear(m, n) for n in names]
            if any(x is None for x in lins) or len({x.out_features for x in lins}) != 1:
                continue
            inner = lins[0].out_features  # head_dim follows from it: a head_dim attribute may be stale mid-pruning
            out = _output_projection(m, parents.get(id(m)), inner)
            if inner % heads == 0 and out is not None:
                found[name] = Attention(m, [(x, 1) for x in lins], out, heads, inner // heads)
            break
    return found


def _output_projection(m: nn.Module, parent: nn.Module | None, inner: int) -> nn.Linear | None:
    for n in OUT_NAMES:
        out = _linear(m, n)
        if out is not None and out.in_features == inner:
            return out
    if parent is not None and getattr(parent, "self", None) is m:  # BERT: attention.self + attention.output.dense
        out = _linear(parent, "output.dense")
        if out is not None and out.in_features == inner:
            return out
    return None


def find_ffn(model: nn.Module) -> dict[str, tuple[nn.Linear, nn.Linear]]:
    """{module path: (up projection, down projection)} of every feed-forward block of a recognised naming."""
    found = {}
    for name, m in model.named_modules():
        for up_name, down_name in FFN_NAMES:
            up, down = _linear(m, up_name), _linear(m, down_name)
            if up is not None and down is not None and up.out_features == down.in_features:
                found[name] = (up, down)
                break
    return found


# ---------------------------------------------------------------- choosing and removing heads

def head_importance(att: Attention, importance: str = "magnitude") -> torch.Tensor:
    """One score per head over its q/k/v rows (weights and biases) and output columns: the L2 norm of those
    weights ("magnitude"), or the first-order Taylor estimate sum |w * dL/dw| ("taylor", needs .grad)."""
    h, d = att.heads, att.head_dim

    def term(p):
        if importance == "taylor":
            return torch.zeros_like(p) if p.grad is None else (p.detach() * p.grad).abs()
        return p.detach() ** 2

    score = torch.zeros(h)
    for lin, blocks in att.projections:
        score += term(lin.weight).reshape(blocks, h, d, -1).sum(dim=(0, 2, 3))
        if lin.bias is not None:
            score += term(lin.bias).reshape(blocks, h, d).sum(dim=(0, 2))
    score += term(att.out.weight).reshape(-1, h, d).sum(dim=(0, 2))
    return score.sqrt() if importance == "magnitude" else score


def remove_heads(model: nn.Module, name: str, att: Attention, drop: list[int]) -> None:
    """Remove heads `drop` (indices into the current heads) from q, k, v and the output projection at once,
    then update the module's head count (and a Hugging Face config's record of pruned heads)."""
    h, d = att.heads, att.head_dim
    if not drop or any(not 0 <= i < h for i in drop) or len(set(drop)) >= h:
        raise ValueError(f"cannot remove heads {drop} of {h} from {name}")
    keep = [i for i in range(h) if i not in set(drop)]
    inner = h * d
    for lin, blocks in att.projections:
        _keep_features(lin, [s * inner + i * d + j for s in range(blocks) for i in keep for j in range(d)], dim=0)
    _keep_features(att.out, [i * d + j for i in keep for j in range(d)], dim=1)
    m = att.module
    _record_in_hf_config(m, name, h, drop)
    for a in HEAD_COUNT_ATTRS:
        if isinstance(getattr(m, a, None), int):
            setattr(m, a, len(keep))
    for a in INNER_WIDTH_ATTRS:
        if isinstance(getattr(m, a, None), int):
            setattr(m, a, len(keep) * d)
    if isinstance(m, SplitMultiheadAttention):
        m.kept_heads = [m.kept_heads[i] for i in keep]
    att.heads = len(keep)


def _keep_features(lin: nn.Linear, idx: list[int], dim: int) -> None:
    """Keep rows (dim 0: outputs) or columns (dim 1: inputs) `idx` of a Linear, with their gradients."""
    index = torch.tensor(idx, dtype=torch.long, device=lin.weight.device)

    def cut(p, axis):
        new = nn.Parameter(p.detach().index_select(axis, index).clone(), requires_grad=p.requires_grad)
        if p.grad is not None:  # Taylor importance of the channel pruning that follows reads them
            new.grad = p.grad.index_select(axis, index).clone()
        return new

    lin.weight = cut(lin.weight, dim)
    if dim == 0:
        if lin.bias is not None:
            lin.bias = cut(lin.bias, 0)
        lin.out_features = len(idx)
    else:
        lin.in_features = len(idx)


def _record_in_hf_config(m: nn.Module, name: str, heads: int, drop: list[int]) -> None:
    """Hugging Face configs record removed heads as pruned_heads {layer: [original head indices]} (transformers
    4 re-prunes from it on load; 5 keeps one head count per model, so edgekit's plan does the rebuild)."""
    cfg = getattr(m, "config", None)
    if cfg is None or not hasattr(cfg, "num_attention_heads"):
        return
    layer = getattr(m, "layer_idx", None)
    if not isinstance(layer, int):
        numbers = re.findall(r"\.(\d+)(?:\.|$)", name)
        if not numbers:
            return
        layer = int(numbers[-1])
    pruned = {int(k): list(v) for k, v in (getattr(cfg, "pruned_heads", None) or {}).items()}
    before = set(pruned.get(layer, []))
    present = [i for i in range(heads + len(before)) if i not in before]  # original indices of the current heads
    pruned[layer] = sorted(before | {present[i] for i in drop})
    cfg.pruned_heads = pruned


def choose_heads(model: nn.Module, ratio_of, importance: str = "magnitude", skip=lambda name: False) -> dict:
    """Split every nn.MultiheadAttention outside `skip`, then choose round(ratio_of(name) * heads) of the least
    important heads of each recognised attention module (at least one head stays), on the weights as they are.
    Returns the plan stage: {"split_mha": [paths], "heads": {path: [head indices to remove]}}; nothing is removed
    yet, so channel pruning that runs next still weighs every head's weights (as Torch-Pruning's own head
    pruning did)."""
    split = split_torch_attention(model, skip)
    chosen = {}
    for name, att in find_attention(model).items():
        if skip(name):
            continue
        n = min(round(ratio_of(name) * att.heads), att.heads - 1)
        if n > 0:
            order = torch.argsort(head_importance(att, importance), stable=True)
            chosen[name] = sorted(int(i) for i in order[:n])
    return {"split_mha": split, "heads": chosen}


def apply_heads(model: nn.Module, stage: dict) -> None:
    """Remove the heads a stage chose (raises KeyError/ValueError if they do not fit the model)."""
    if stage.get("heads"):
        found = find_attention(model)
        for name, drop in stage["heads"].items():
            remove_heads(model, name, found[name], drop)


def prune_heads(model: nn.Module, ratio_of, importance: str = "magnitude", skip=lambda name: False) -> dict:
    """choose_heads, then remove them: heads alone, without channel pruning."""
    stage = choose_heads(model, ratio_of, importance, skip)
    apply_heads(model, stage)
    return stage


def head_attributes(model: nn.Module) -> dict[str, dict]:
    """{path: {attribute: value}} of every head count/dim/width attribute of the recognised attention modules,
    re-derived from the projection widths (Torch-Pruning may have shrunk head dims)."""
    out = {}
    for name, att in find_attention(model).items():
        m, (lin, blocks) = att.module, att.projections[0]
        head_dim = lin.out_features // blocks // att.heads
        attrs = {a: att.heads for a in HEAD_COUNT_ATTRS if isinstance(getattr(m, a, None), int)}
        attrs.update({a: head_dim for a in HEAD_DIM_ATTRS if isinstance(getattr(m, a, None), int)})
        attrs.update({a: att.heads * head_dim for a in INNER_WIDTH_ATTRS if isinstance(getattr(m, a, None), int)})
        out[name] = attrs
    return out
