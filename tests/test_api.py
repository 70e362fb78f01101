"""The Python API (edgekit.load / compress / export / compile / bench / evaluate / report): the CLI's stages as
functions, taking an nn.Module and plain Python data, with the CLI's validation and errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit.errors import EdgekitError

INPUTS = [
    {"name": "pixels", "shape": [None, 1, 8, 8], "modality": "image"},
    {"name": "input_ids", "shape": [None, 6], "dtype": "int64", "modality": "text"},
    {"name": "attention_mask", "shape": [None, 6], "dtype": "int64", "modality": "text"},
]
MISSING = {"image": {"inputs": ["pixels"]}, "text": {"inputs": ["input_ids", "attention_mask"]}}
CLASSES = ["cat", "dog", "owl"]


class Notebook(nn.Module):
    """What someone builds in a notebook: no modality_mask, HF-style text inputs, no factory."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16)
        )
        self.embed = nn.Embedding(24, 16)
        self.head = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, pixels, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        text = (self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(torch.cat([self.image(pixels), text], -1))


def samples(n, seed):
    """(inputs, label) pairs; labels as class names, as a user's data often has them."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = i % 3
        ids = rng.integers(4, 20, 6)
        ids[0] = y + 1
        out.append(
            (
                {
                    "pixels": (rng.normal(0, 1, (1, 8, 8)) + y).astype(np.float32),
                    "input_ids": ids.astype(np.int64),
                    "attention_mask": np.ones(6, np.int64),
                },
                CLASSES[y],
            )
        )
    return out


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = Notebook()
    train = samples(90, 0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x = {k: torch.from_numpy(np.stack([s[0][k] for s in train])) for k in ("pixels", "input_ids", "attention_mask")}
    y = torch.tensor([CLASSES.index(s[1]) for s in train])
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(**x), y).backward()
        opt.step()
    return model.eval()


def test_import_is_light_and_the_surface_is_documented():
    code = (
        "import sys, edgekit; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert all(callable(getattr(edgekit, n)) for n in edgekit.API); print(sorted(edgekit.API))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert set(edgekit.API) <= set(dir(edgekit))
    for name in edgekit.API:
        assert getattr(edgekit, name).__doc__, name
    with pytest.raises(AttributeError):
        edgekit.no_such_thing  # noqa: B018


def test_compress_an_in_memory_model_on_in_memory_data(trained, tmp_path):
    data = {"train": samples(90, 0), "val": samples(30, 1), "test": samples(30, 2)}
    recipe = {
        "name": "nb",
        "variants": [{"name": "kd", "passes": [{"distill": {"epochs": 1, "batch_size": 32, "patience": None}}]}],
        "calibration": {"size": 30, "missing": 0.2},
    }
    summary = edgekit.compress(
        trained, data, recipe, inputs=INPUTS, class_names=CLASSES, missing=MISSING, out=tmp_path / "run", progress=False
    )
    fp32, kd = summary["variants"]["fp32"], summary["variants"]["kd"]
    assert fp32["status"] == "ok" and kd["status"] == "ok", (fp32.get("reason"), kd.get("reason"))
    assert (tmp_path / "run" / "variants" / "kd" / "model.onnx").is_file()
    model, spec = edgekit.load(tmp_path / "run" / "source")  # rebuilt in this process from the in-memory model
    assert spec.class_names == CLASSES and spec.missing["text"] == {"inputs": ["input_ids", "attention_mask"]}
    for a, b in zip(model.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)
    metrics = edgekit.evaluate(model, data["test"], spec=spec)
    assert metrics["accuracy"] > 0.9  # the classes are easy: the data reached the model intact
    assert set(metrics["missing_modality_accuracy"]) == {"image", "text"}


def test_export_compile_bench_of_a_module(trained, tmp_path):
    from edgekit.spec import InputSpec, ModelSpec, OutputSpec

    spec = ModelSpec(
        inputs=[InputSpec(**i) for i in INPUTS], outputs=[OutputSpec(shape=[None, 3])], class_names=CLASSES
    )
    rep = edgekit.export(trained, tmp_path / "m.onnx", spec=spec, data=samples(20, 3))
    assert rep["parity"]["top1_agreement"] == 1.0 and rep["parity"]["data"] == "held-out samples"
    art = edgekit.compile(tmp_path / "m.onnx", "onnxruntime", tmp_path / "ort")
    result = edgekit.bench(art.path, batch_sizes=[1], warmup=2, iterations=20)
    assert result["batches"]["1"]["latency_ms"]["median"] > 0 and result["saved"].endswith(".json")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: edgekit.compress("not a model.txt", [], {"variants": [{"name": "a"}]}), "does not exist"),
        (
            lambda m: edgekit.compress(object(), samples(3, 0), {"variants": [{"name": "a"}]}, inputs=INPUTS),
            "not a torch.nn.Module",
        ),
        (lambda m: edgekit.compress(m, samples(3, 0), None, inputs=INPUTS), "compress needs a recipe"),
        (
            lambda m: edgekit.compress(m, samples(3, 0), {"variants": [{"name": "a"}], "varients": 1}, inputs=INPUTS),
            "unknown key 'varients'",
        ),
        (lambda m: edgekit.compress(m, 42, {"variants": [{"name": "a"}]}, inputs=INPUTS), "not an iterable of"),
        (
            lambda m: edgekit.compress(m, {"trian": []}, {"variants": [{"name": "a"}]}, inputs=INPUTS),
            "neither a split nor",
        ),
        (
            lambda m: edgekit.compress(m, samples(3, 0), {"variants": [{"name": "a"}]}),
            "needs to know the model's inputs",
        ),
        (
            lambda m: edgekit.compress(
                m,
                samples(30, 0),
                {"variants": [{"name": "a"}]},
                inputs=INPUTS,
                class_names=CLASSES,
                missing={"text": {"inputs": ["tokens"]}},
            ),
            "which the model does not take",
        ),
        (lambda m: edgekit.evaluate(m, samples(3, 0)), "needs the class names"),
        (lambda m: edgekit.export(m, "x.onnx"), "needs its spec"),
    ],
)
def test_mistakes_are_edgekit_errors(trained, tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EdgekitError) as e:
        call(trained)
    assert message in str(e.value) and e.value.hint and "\n" not in e.value.message
