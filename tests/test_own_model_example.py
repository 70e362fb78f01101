"""examples/own-model: the user's factory, tokenizer and recipe fit together (fast checks); the whole example
(prepare.py + `edgekit run`) is the slow test."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekit.data.missing import MissingPolicy
from edgekit.recipe import load_recipe
from edgekit.spec import ModelSpec, OutputSpec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own-model"
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLE))
    try:
        import own_model

        recipe = load_recipe(EXAMPLE / "recipe.yaml")
        spec = ModelSpec(
            inputs=recipe.model.inputs,
            outputs=[OutputSpec(shape=[None, 10])],
            class_names=recipe.model.class_names,
            modalities=["image", "audio", "text"],
        )
        torch.manual_seed(0)
        yield own_model.build(recipe.model.config).eval(), spec, recipe
    finally:
        sys.path.remove(str(EXAMPLE))


def test_tokenizer_folder_is_the_recipes_and_encodes_avdigits_words(example):
    from transformers import AutoTokenizer

    from edgekit.data.avdigits import VOCAB

    _, _, recipe = example
    text = recipe.data.preprocess["input_ids"].text
    tok = AutoTokenizer.from_pretrained(str(EXAMPLE / text.tokenizer))
    assert len(tok) == recipe.model.config["vocab_size"] and tok.pad_token_id == 0
    enc = tok(" ".join(VOCAB[2:]), add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in enc  # every avdigits word is in the vocabulary


def test_missing_block_fits_the_model_and_an_absent_sentence_is_zero(example):
    model, spec, recipe = example
    policy = MissingPolicy.from_settings(dict(recipe.data.missing), spec)
    assert policy.droppable == ["image", "text"] and policy.modalities["audio"] is None
    feed = {k: torch.from_numpy(v) for k, v in spec.example_inputs(4).items()}
    feed["input_ids"] = feed["input_ids"] % recipe.model.config["vocab_size"]
    feed["attention_mask"] = torch.ones_like(feed["attention_mask"])
    gone = policy.drop(feed, "text")
    assert not gone["input_ids"].any() and not gone["attention_mask"].any()
    with torch.no_grad():
        assert torch.isfinite(model(**gone)).all()
        tokens = model.text(input_ids=gone["input_ids"], attention_mask=gone["attention_mask"]).last_hidden_state
    assert torch.isfinite(tokens).all()


def test_factory_model_exports_to_onnx_with_parity(example, tmp_path):
    import edgekit

    model, spec, recipe = example
    rng = np.random.default_rng(0)
    data = [
        (
            {
                "pixels": rng.normal(size=(1, 28, 28)).astype(np.float32),
                "audio": rng.normal(size=(1, 40, 64)).astype(np.float32),
                "input_ids": rng.integers(5, 64, 16),
                "attention_mask": (np.arange(16) < rng.integers(3, 16)).astype(np.int64),
            },
            i % 10,
        )
        for i in range(16)
    ]
    rep = edgekit.export(model, tmp_path / "own.onnx", spec=spec, data=data)
    assert rep["parity"]["top1_agreement"] == 1.0


@pytest.mark.slow
def test_the_whole_example_runs(tmp_path):
    """prepare.py (2 epochs) then `edgekit run`: every variant built, compiled for ONNX Runtime and OpenVINO."""
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "prepare.py"),
            "--epochs",
            "2",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "checkpoint"),
        ],
        check=True,
        timeout=1800,
    )
    recipe = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    recipe["model"]["checkpoint"] = str(tmp_path / "checkpoint" / "model.safetensors")
    recipe["data"]["path"] = str(tmp_path / "data" / "manifest.jsonl")
    for step in recipe["variants"]:
        for p in step["passes"]:
            if "distill" in p:
                p["distill"]["epochs"] = 1
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    for f in ("own_model.py",):
        (tmp_path / f).write_text((EXAMPLE / f).read_text())
    (tmp_path / "tokenizer").symlink_to(EXAMPLE / "tokenizer")
    r = subprocess.run(
        [sys.executable, "-m", "edgekit", "run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    text = json.dumps(results)
    for name in ("int8", "pruned-kd", "pruned-kd-int8"):
        assert name in text
    assert "missing_modality_accuracy" in text
