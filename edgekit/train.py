"""Training of the reference fusion models on the built-in dataset (with modality dropout, so a missing modality at
inference time is a situation the model has seen); the loop itself is edgekit.fit."""
from __future__ import annotations

import torch

from edgekit.fit import fit, to_torch
from edgekit.spec import MASK_INPUT, InputSpec, ModelSpec, OutputSpec

CLASS_NAMES = [str(i) for i in range(10)]


def reference_spec(config: dict, preprocessing: dict) -> ModelSpec:
    shapes = config["input_shapes"]
    return ModelSpec(
        inputs=[InputSpec(name="image", shape=[None, *shapes["image"]], modality="image", optional=True),
                InputSpec(name="audio", shape=[None, *shapes["audio"]], modality="audio", optional=True),
                InputSpec(name="text", shape=[None, *shapes["text"]], dtype="int64", modality="text", optional=True),
                InputSpec(name=MASK_INPUT, shape=[None, 3])],
        outputs=[OutputSpec(name="logits", shape=[None, config["num_classes"]])],
        class_names=CLASS_NAMES, modalities=["image", "audio", "text"], preprocessing=preprocessing)


DEFAULT_EPOCHS = {"tiny": 12, "small": 8, "base": 10}
DEFAULT_LR = {"tiny": 3e-3, "small": 3e-3, "base": 1e-3}


def train_reference(preset: str, fusion: str, out, fsdd=None, seed: int = 0, epochs: int | None = None,
                    text_kind: str = "transformer", only_modality: str | None = None, progress=None) -> dict:
    """Train a reference model on the built-in dataset and save a safe checkpoint; returns its config.json content.
    `only_modality` trains a single-modality baseline (other inputs always missing)."""
    from edgekit import checkpoint
    from edgekit.data import resolve
    from edgekit.data.settings import AvdigitsData
    from edgekit.evaluate import evaluate, only
    from edgekit.models import build_model, count_macs, count_params, preset_config

    config = preset_config(preset, fusion, text_kind=text_kind)  # validates names before any slow work
    splits = resolve(AvdigitsData(fsdd=fsdd, seed=seed))
    train, val, test = splits
    spec = reference_spec(config, splits.preprocessing)
    if only_modality:
        train, val, test = (only(d, only_modality) for d in (train, val, test))
    torch.manual_seed(seed)
    model = build_model(config)
    epochs = epochs or DEFAULT_EPOCHS[preset]
    fit_result = fit(model, train, val, epochs, DEFAULT_LR[preset], seed=seed, modality_p=0.0 if only_modality else 0.2,
                     on_step=progress and (lambda n, loss: progress(n, loss)))
    metrics = evaluate(model, test, spec.class_names, missing=not only_modality)
    example = to_torch(spec.example_inputs(1))
    meta = {"metrics": {"test": metrics}, "training": {"preset": preset, "fusion": fusion, "epochs": epochs, "seed": seed,
                                                       "only_modality": only_modality, **fit_result},
            "data": {"dataset": splits.format, "source": spec.preprocessing["source"], "seed": seed,
                     "sizes": {"train": len(train), "val": len(val), "test": len(test)}},
            "stats": {"params": count_params(model), "macs": count_macs(model, example)}}
    checkpoint.save(model, spec, out, config, **meta)
    return checkpoint.read_config(out)
