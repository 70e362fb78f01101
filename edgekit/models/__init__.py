"""Reference fusion models: image + audio + text encoders joined by one of four fusion heads."""
from __future__ import annotations

import copy

from torch import nn

from edgekit.errors import EdgekitError
from edgekit.models.encoders import ConvEncoder, build_text_encoder
from edgekit.models.fusion import FUSION_HEADS
from edgekit.models.stats import count_macs, count_params, model_stats  # noqa: F401 — the one MAC/param count

MODALITIES = ("image", "audio", "text")


class FusionModel(nn.Module):
    """forward(image [B,1,H,W], audio [B,1,mels,frames], text [B,T] int64, modality_mask [B,3]) -> logits [B,C].
    A missing modality is fed as zeros with its mask bit 0; its features are zeroed before fusion."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        drop = config.get("dropout", 0.1)
        self.image = ConvEncoder(config["image"])
        self.audio = ConvEncoder(config["audio"])
        self.text = build_text_encoder(config["text"], drop)
        dims = [config[m]["dim"] for m in MODALITIES]
        self.head = FUSION_HEADS[config["fusion"]](dims, config["head"], config["num_classes"], drop)

    def branch_features(self, image, audio, text, modality_mask):
        feats = [self.image(image), self.audio(audio), self.text(text)]
        return [f * modality_mask[:, i : i + 1] for i, f in enumerate(feats)]

    def forward(self, image, audio, text, modality_mask):
        return self.head(self.branch_features(image, audio, text, modality_mask), modality_mask)


def _conv(in_ch, stem, widths, blocks, dim, strides):
    return {"in_ch": in_ch, "stem": stem, "dim": dim,
            "stages": [{"width": w, "stride": s, "mids": [w] * blocks} for w, s in zip(widths, strides)]}


def preset_config(preset: str, fusion: str, num_classes: int = 10, vocab: int = 64, seq_len: int = 16,
                  n_mels: int = 40, frames: int = 64, text_kind: str = "transformer") -> dict:
    """`tiny`: trains in about a minute on 2 cores (tests, CI). `small`: the quickstart's model, wide enough convolutions
    (~40 MMACs) that pruning and INT8 change its latency on a laptop CPU, still trained in a minute or two. `base`: a
    realistic edge model (several million parameters, a few hundred MMACs) so that compression has real work to do."""
    if fusion not in FUSION_HEADS:
        raise EdgekitError(f"unknown fusion type '{fusion}'", f"choose one of: {', '.join(FUSION_HEADS)}")
    if preset == "tiny":
        img, aud = _conv(1, 8, [16, 32], 1, 32, [2, 2]), _conv(1, 8, [16, 32], 1, 32, [2, 2])
        d, layers, hidden = 32, [{"heads": 2, "head_dim": 16, "ff": 64}], 64
    elif preset == "small":
        img, aud = _conv(1, 16, [32, 64], 1, 32, [2, 2]), _conv(1, 16, [32, 64], 1, 32, [2, 2])
        d, layers, hidden = 32, [{"heads": 2, "head_dim": 16, "ff": 64}], 64
    elif preset == "base":
        img = _conv(1, 32, [64, 128, 256], 2, 256, [2, 2, 2])
        aud = _conv(1, 32, [64, 128, 256], 2, 256, [2, 2, 2])
        d, layers, hidden = 256, [{"heads": 8, "head_dim": 32, "ff": 512}] * 2, 256
    else:
        raise EdgekitError(f"unknown preset '{preset}'", "choose 'tiny', 'small' or 'base'")
    if text_kind == "lstm":
        text = {"kind": "lstm", "vocab": vocab, "seq_len": seq_len, "d_model": d, "hidden": d, "dim": d}
    else:
        text = {"kind": "transformer", "vocab": vocab, "seq_len": seq_len, "d_model": d, "layers": copy.deepcopy(layers), "dim": d}
    img["dim"] = aud["dim"] = d
    head = {"hidden": hidden, "pair_hidden": hidden // 2, "d_model": d, "layers": copy.deepcopy(layers[:1] if preset != "base" else layers)}
    return {"fusion": fusion, "preset": preset, "num_classes": num_classes, "dropout": 0.1,
            "image": img, "audio": aud, "text": text, "head": head,
            "input_shapes": {"image": [1, 28, 28], "audio": [1, n_mels, frames], "text": [seq_len]}}


def build_model(config: dict) -> FusionModel:
    try:
        return FusionModel(config)
    except KeyError as e:
        raise EdgekitError(f"model config is missing the key {e}", "rebuild the config with edgekit.models.preset_config") from e
