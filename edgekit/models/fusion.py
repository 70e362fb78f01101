"""Fusion heads: how per-modality features become one prediction. Each takes features [B, dim_m] per
modality (already zeroed where the modality is missing) and the mask [B, M], and returns logits [B, C]."""
from __future__ import annotations

import torch
from torch import nn

from edgekit.models.encoders import NEG, TransformerLayer


class EarlyFusion(nn.Module):
    """Concatenate features (and the mask, so the head knows what is missing), then an MLP."""

    def __init__(self, dims: list[int], cfg: dict, num_classes: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(sum(dims) + len(dims), cfg["hidden"])
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(cfg["hidden"], num_classes)

    def forward(self, feats, mask):
        return self.classifier(self.drop(torch.relu(self.fc(torch.cat(feats + [mask], dim=1)))))


class LateFusion(nn.Module):
    """One classifier per modality; logits averaged with learned weights over the modalities present."""

    def __init__(self, dims: list[int], cfg: dict, num_classes: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.branch_classifiers = nn.ModuleList(nn.Linear(d, num_classes) for d in dims)
        self.branch_weight = nn.Parameter(torch.zeros(len(dims)))

    def forward(self, feats, mask):
        w = torch.softmax(self.branch_weight, 0)[None, :] * mask  # [B, M]
        w = w / w.sum(1, keepdim=True).clamp(min=1e-6)
        logits = torch.stack([c(self.drop(f)) for c, f in zip(self.branch_classifiers, feats)], dim=1)  # [B, M, C]
        return (logits * w[..., None]).sum(1)


class HierarchicalFusion(nn.Module):
    """Fuse every pair of modalities first, then all pairs together."""

    def __init__(self, dims: list[int], cfg: dict, num_classes: int, dropout: float):
        super().__init__()
        self.pairs = [(i, j) for i in range(len(dims)) for j in range(i + 1, len(dims))]
        self.pair_fcs = nn.ModuleList(nn.Linear(dims[i] + dims[j] + 2, cfg["pair_hidden"]) for i, j in self.pairs)
        self.fc = nn.Linear(cfg["pair_hidden"] * len(self.pairs), cfg["hidden"])
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(cfg["hidden"], num_classes)

    def forward(self, feats, mask):
        pairs = [torch.relu(fc(torch.cat([feats[i], feats[j], mask[:, [i, j]]], 1))) for fc, (i, j) in zip(self.pair_fcs, self.pairs)]
        return self.classifier(self.drop(torch.relu(self.fc(torch.cat(pairs, 1)))))


class AttentionFusion(nn.Module):
    """Cross-modal attention over modality tokens plus a learned summary token: softmax(QK^T/sqrt(d))V,
    with missing modalities masked out of the keys (the summary token is never masked)."""

    def __init__(self, dims: list[int], cfg: dict, num_classes: int, dropout: float):
        super().__init__()
        d = cfg["d_model"]
        self.token_proj = nn.ModuleList(nn.Linear(dim, d) for dim in dims)
        self.modality_embed = nn.Parameter(torch.zeros(1, len(dims), d))
        self.summary = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.modality_embed, std=0.02)
        nn.init.normal_(self.summary, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(d, ly["heads"], ly["head_dim"], ly["ff"], dropout) for ly in cfg["layers"])
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, feats, mask):
        tokens = torch.stack([p(f) for p, f in zip(self.token_proj, feats)], dim=1) + self.modality_embed
        x = torch.cat([self.summary.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        key_bias = torch.cat([torch.zeros_like(mask[:, :1]), (1.0 - mask) * NEG], dim=1)
        for layer in self.layers:
            x = layer(x, key_bias)
        return self.classifier(self.norm(x[:, 0]))


FUSION_HEADS = {"early": EarlyFusion, "late": LateFusion, "hierarchical": HierarchicalFusion, "attention": AttentionFusion}
