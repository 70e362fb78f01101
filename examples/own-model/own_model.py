"""A user's own multimodal model, written the way one would without edgekit in mind.

Three inputs:
  pixels          [B, 1, 28, 28] float32   a grayscale image
  audio           [B, 1, 40, 64] float32   log-mel features of a short recording
  input_ids       [B, L] int64             a sentence, tokenized by the tokenizer in ./tokenizer
  attention_mask  [B, L] int64             1 for tokens, 0 for padding
The text branch is a Hugging Face BertModel (built offline from a BertConfig, random init, trained by prepare.py),
the image and audio branches are small CNNs, and a learned gate weighs the three branch features per sample.

A missing sentence is fed as all-zero input_ids + attention_mask: the text feature is then exactly zero (masked
mean over no tokens), and a missing image is an all-zero image. Audio is always there for this model.

edgekit calls `build(config)` with the recipe's `model.config` mapping as the one positional argument.
"""

from __future__ import annotations

import torch
from torch import nn


def build(config: dict) -> nn.Module:
    return OwnFusion(**config)


def _cnn(width: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, dim),
    )


class OwnFusion(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 10,
        hidden: int = 64,
        layers: int = 2,
        heads: int = 4,
        intermediate: int = 128,
        max_length: int = 16,
        cnn_width: int = 16,
        dropout: float = 0.1,
    ):
        super().__init__()
        from transformers import BertConfig, BertModel

        bert = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_length,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            pad_token_id=0,
        )
        bert._attn_implementation = "eager"  # plain matmul + softmax attention: exports to any ONNX runtime
        self.text = BertModel(bert, add_pooling_layer=False)
        self.image = _cnn(cnn_width, hidden)
        self.audio = _cnn(cnn_width, hidden)
        self.gate = nn.Linear(3 * hidden, 3)
        self.classifier = nn.Sequential(nn.LayerNorm(hidden), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, pixels, audio, input_ids, attention_mask):
        tokens = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(tokens.dtype)
        text = (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)  # masked mean: exactly 0 for an empty sentence
        feats = [self.image(pixels), self.audio(audio), text]
        gate = torch.softmax(self.gate(torch.cat(feats, -1)), -1)
        fused = sum(gate[:, i : i + 1] * f for i, f in enumerate(feats))
        return self.classifier(fused)
