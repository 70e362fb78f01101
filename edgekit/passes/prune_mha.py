"""nn.MultiheadAttention made prunable: the same computation with separate q/k/v Linears whose width
(heads * head_dim) is free of embed_dim.

torch's module cannot lose a head: its packed in_proj_weight is [3 * embed_dim, embed_dim] and its forward
asserts heads * head_dim == embed_dim, and Torch-Pruning only knows how to shrink embed_dim as a whole. So
before pruning each nn.MultiheadAttention is swapped for a SplitMultiheadAttention holding the same weights
(outputs equal to float rounding); a checkpoint's pruning plan names the swapped modules so a rebuild swaps
them again before the weights load.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SplitMultiheadAttention(nn.Module):
    """forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False) -> (output, weights or None), as nn.MultiheadAttention.

    `kept_heads` are the original head indices still present, so a per-head attn_mask of the original
    [B * heads, L, S] layout keeps working after heads are removed."""

    # nn.TransformerEncoderLayer takes its fused fast path only with a packed in_proj; these flags say there is none
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, dropout: float = 0.0, batch_first: bool = False):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.scale = head_dim ** -0.5  # fixed at the trained head_dim, also when head dims are pruned later
        self.kept_heads = list(range(num_heads))
        self.original_heads = num_heads
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        e = mha.embed_dim
        has_bias = mha.in_proj_bias is not None
        new = cls(e, mha.num_heads, mha.head_dim, kdim=mha.kdim, vdim=mha.vdim, bias=has_bias, dropout=mha.dropout,
                  batch_first=mha.batch_first)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().split(e)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().split(e) if has_bias else (None,) * 3
        with torch.no_grad():
            for lin, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if has_bias and mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # [L, B, E] -> [B, L, E]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, ls = query.shape[0], query.shape[1], key.shape[1]
        split = lambda t, n: t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.q_proj(query), lq), split(self.k_proj(key), ls), split(self.v_proj(value), ls)
        scores = (q * self.scale) @ k.transpose(-1, -2)  # [B, H, L, S]
        bias = self._mask_bias(attn_mask, key_padding_mask, is_causal, b, lq, ls, scores.dtype, scores.device)
        if bias is not None:
            scores = scores + bias
        weights = torch.softmax(scores, dim=-1)
        y = F.dropout(weights, p=self.dropout, training=self.training) @ v
        out = self.out_proj(y.transpose(1, 2).reshape(b, lq, self.num_heads * self.head_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights

    def _mask_bias(self, attn_mask, key_padding_mask, is_causal, b, lq, ls, dtype, device):
        """Both masks as one additive bias broadcastable to [B, H, L, S] (True in a bool mask = not attended)."""
        as_bias = lambda m: torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)
        bias = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(lq, ls, dtype=torch.bool, device=device).triu(1)
        if attn_mask is not None:
            m = as_bias(attn_mask)
            if m.dim() == 3:  # [B * original heads, L, S]: keep the rows of the heads still here
                m = m.reshape(b, self.original_heads, lq, ls)[:, self.kept_heads]
            bias = m
        if key_padding_mask is not None:
            kp = as_bias(key_padding_mask)[:, None, None, :]
            bias = kp if bias is None else bias + kp
        return bias


def split_torch_attention(model: nn.Module, skip=lambda name: False) -> list[str]:
    """Swap every nn.MultiheadAttention that can be split (not `skip(name)`) for a SplitMultiheadAttention;
    returns the swapped module paths. add_bias_kv / add_zero_attn modules are left as they are."""
    names = [name for name, m in model.named_modules() if name and type(m) is nn.MultiheadAttention and not skip(name)
             and m.bias_k is None and not m.add_zero_attn]
    resplit(model, names)
    return names


def resplit(model: nn.Module, names: list[str]) -> None:
    """Swap the named nn.MultiheadAttention modules (also the replay of a saved plan on a freshly built model)."""
    for name in names:
        m = model.get_submodule(name)
        if not isinstance(m, nn.MultiheadAttention):
            raise KeyError(f"{name} is a {type(m).__name__}, not nn.MultiheadAttention")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, SplitMultiheadAttention.from_torch(m))
    if names:
        for enc in model.modules():  # its nested-tensor fast path reads the packed in_proj_weight directly
            if isinstance(enc, nn.TransformerEncoder):
                enc.use_nested_tensor = False
