"""ONNX Runtime and OpenVINO backends on the real libraries: artifacts written, runners usable by evaluate(),
the bound (timed) call computes the same thing as run(), and wrong inputs fail with the expected inputs named."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgekit import export
from edgekit.backends import compile_onnx
from edgekit.backends.base import Artifact, get_backend
from edgekit.data import avdigits
from edgekit.errors import EdgekitError
from edgekit.evaluate import evaluate
from edgekit.models import build_model, preset_config
from edgekit.train import reference_spec

FSDD = "/work/shared/data/fsdd"
BACKENDS = [pytest.param("onnxruntime"),
            pytest.param("openvino", marks=[pytest.mark.openvino, pytest.mark.skipif(not get_backend("openvino").available()[0], reason="OpenVINO not installed")])]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("backends")
    torch.manual_seed(1)
    cfg = preset_config("tiny", "attention")
    model = build_model(cfg).eval()
    spec = reference_spec(cfg, avdigits.preprocessing(FSDD))
    test = avdigits.load("test", FSDD).subset(np.arange(64))
    export.to_onnx(model, spec, d / "model.onnx", check_parity_on=test)
    return d, model, spec, test


@pytest.fixture(scope="module", params=BACKENDS)
def compiled(request, exported):
    d, model, spec, test = exported
    art = compile_onnx(d / "model.onnx", request.param, d / request.param)
    return request.param, art, get_backend(request.param).load(Artifact.load(d / request.param)), model, spec, test


def test_artifact_files_and_settings(compiled):
    name, art, runner, *_ = compiled
    again = Artifact.load(art.path.parent)
    assert again.backend == name and again.precision == "fp32" and again.meta["parity"]["passed"]
    assert runner.settings["backend"] == name and runner.settings["threads"] >= 1
    if name == "onnxruntime":
        assert art.path.name == "model.onnx" and art.options["optimization"] == "all" and art.options["providers"][-1] == "CPUExecutionProvider"
    else:
        assert art.path.name == "model.xml" and (art.path.parent / "model.bin").stat().st_size > 50_000
        assert runner.settings["config"]["PERFORMANCE_HINT"] == "LATENCY"
        assert any((art.path.parent / "cache").iterdir()), "model cache written"
        assert get_backend(name).load(again).settings["model_cache_hit"]


def test_runner_works_with_evaluate(compiled):
    _, _, runner, model, spec, test = compiled
    ours, ref = evaluate(runner, test, spec.class_names), evaluate(model, test, spec.class_names)
    assert ours["accuracy"] == ref["accuracy"] and ours["missing_modality_accuracy"] == ref["missing_modality_accuracy"]


def test_bound_call_computes_the_same_as_run(compiled):
    name, _, runner, _, spec, _ = compiled
    feed = spec.example_inputs(3, seed=5)
    call = runner.bind(feed)
    call()
    out = call.keep[-1].numpy() if name == "onnxruntime" else call.request.get_output_tensor(0).data  # the binding's own infer request
    np.testing.assert_allclose(out, runner.run(feed)["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["run", "bind"])
def test_wrong_inputs_name_the_expected_ones(compiled, how):
    _, _, runner, _, spec, _ = compiled
    call = getattr(runner, how)
    good = spec.example_inputs(2)
    bad_name = dict(good)
    bad_name["img"] = bad_name.pop("image")
    with pytest.raises(EdgekitError) as e:
        call(bad_name)
    assert "missing ['image']" in e.value.message and "unexpected ['img']" in e.value.message
    assert "image[B,1,28,28]:float32" in e.value.hint and "modality_mask[B,3]:float32" in e.value.hint
    with pytest.raises(EdgekitError) as e:
        call(dict(good, audio=np.zeros((2, 1, 40, 32), np.float32)))
    assert "'audio' has shape [2, 1, 40, 32], expected [B,1,40,64]" in e.value.message and "text[B,16]:int64" in e.value.hint
    with pytest.raises(EdgekitError) as e:
        call(dict(good, text=good["text"].astype(np.int32)))
    assert "dtype int32, expected int64" in e.value.message


def test_compile_cli_openvino(exported, tmp_path):
    if not get_backend("openvino").available()[0]:
        pytest.skip("OpenVINO not installed")
    d, *_ = exported
    res = subprocess.run([sys.executable, "-m", "edgekit", "compile", str(d / "model.onnx"), "--backend", "openvino", "--out", str(tmp_path / "ov")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    art = json.loads((tmp_path / "ov" / "artifact.json").read_text())
    assert art["backend"] == "openvino" and art["meta"]["parity"]["top1_agreement"] == 1.0 and "parity top-1 100.00%" in res.stderr
    res = subprocess.run([sys.executable, "-m", "edgekit", "compile", str(d / "model.onnx"), "--backend", "openvino", "--out", str(tmp_path / "x"),
                          "--precision", "int8"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "is fp32, not int8" in res.stderr


def test_missing_backend_is_reported_with_install_command(exported, tmp_path):
    res = subprocess.run([sys.executable, "-m", "edgekit", "doctor", "--json"], capture_output=True, text=True, timeout=120)
    backends = json.loads(res.stdout)["backends"]
    assert backends["onnxruntime"]["available"]
    for name, b in backends.items():
        assert b["available"] or (b["reason"] and b["install"]), name
    missing = [n for n, b in backends.items() if not b["available"]]
    if not missing:
        pytest.skip("every backend is installed here")
    d, *_ = exported
    with pytest.raises(EdgekitError) as e:
        compile_onnx(d / "model.onnx", missing[0], tmp_path / "x")
    assert "not available" in e.value.message or "needs" in e.value.message
    assert e.value.hint
