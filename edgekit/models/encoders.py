"""Per-modality encoders. Every width is a constructor argument so a pruned model can be rebuilt from its config."""
from __future__ import annotations

import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int, mid: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, mid, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ConvEncoder(nn.Module):
    """A small ResNet over a [B, C, H, W] map: used for images and for log-mel spectrograms.

    cfg: {in_ch, stem, stages: [{width, stride, mids: [mid per residual block]}], dim}
    """

    def __init__(self, cfg: dict):
        super().__init__()
        layers = [nn.Conv2d(cfg["in_ch"], cfg["stem"], 3, padding=1, bias=False), nn.BatchNorm2d(cfg["stem"]), nn.ReLU()]
        prev = cfg["stem"]
        for st in cfg["stages"]:
            layers += [nn.Conv2d(prev, st["width"], 3, stride=st["stride"], padding=1, bias=False),
                       nn.BatchNorm2d(st["width"]), nn.ReLU()]
            layers += [ResidualBlock(st["width"], m) for m in st["mids"]]
            prev = st["width"]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(prev, cfg["dim"])

    def forward(self, x):
        return torch.relu(self.proj(self.body(x).mean(dim=(2, 3))))


class MultiHeadAttention(nn.Module):
    """softmax(QK^T/sqrt(d))V with separate q/k/v/out Linears, so heads can be pruned as channel groups
    and the ONNX graph stays plain MatMul/Softmax (nn.MultiheadAttention is opaque to pruning tools)."""

    def __init__(self, d_model: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q, self.k, self.v = (nn.Linear(d_model, inner) for _ in range(3))
        self.out = nn.Linear(inner, d_model)

    def forward(self, x, key_bias=None):
        b, n, _ = x.shape
        split = lambda t: t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if key_bias is not None:  # [B, N]: 0 for present keys, large negative for missing ones
            scores = scores + key_bias[:, None, None, :]
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class TransformerLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, head_dim: int, ff: int, dropout: float = 0.1):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, heads, head_dim)
        self.ff1, self.ff2 = nn.Linear(d_model, ff), nn.Linear(ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, key_bias=None):
        x = x + self.drop(self.attn(self.norm1(x), key_bias))
        return x + self.drop(self.ff2(torch.relu(self.ff1(self.norm2(x)))))


NEG = -1e4  # finite, so a fully masked row gives a uniform softmax instead of NaN (and fp16 stays finite)


class TextTransformer(nn.Module):
    """cfg: {vocab, seq_len, d_model, layers: [{heads, head_dim, ff}], dim}; token 0 is padding."""

    def __init__(self, cfg: dict, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(cfg["vocab"], cfg["d_model"])
        self.pos = nn.Parameter(torch.zeros(1, cfg["seq_len"], cfg["d_model"]))
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(cfg["d_model"], ly["heads"], ly["head_dim"], ly["ff"], dropout) for ly in cfg["layers"])
        self.norm = nn.LayerNorm(cfg["d_model"])
        self.proj = nn.Linear(cfg["d_model"], cfg["dim"])

    def forward(self, tokens):
        keep = (tokens != 0).float()
        x = self.embed(tokens) + self.pos
        for layer in self.layers:
            x = layer(x, (1.0 - keep) * NEG)
        x = self.norm(x)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
        return torch.relu(self.proj(pooled))


class TextLSTM(nn.Module):
    """cfg: {vocab, seq_len, d_model, hidden, dim}; the LSTM option for text."""

    def __init__(self, cfg: dict, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(cfg["vocab"], cfg["d_model"])
        self.lstm = nn.LSTM(cfg["d_model"], cfg["hidden"], batch_first=True)
        self.proj = nn.Linear(cfg["hidden"], cfg["dim"])

    def forward(self, tokens):
        keep = (tokens != 0).float()
        h, _ = self.lstm(self.embed(tokens))
        pooled = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
        return torch.relu(self.proj(pooled))


def build_text_encoder(cfg: dict, dropout: float):
    return TextLSTM(cfg, dropout) if cfg.get("kind", "transformer") == "lstm" else TextTransformer(cfg, dropout)
