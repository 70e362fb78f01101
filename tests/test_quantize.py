"""INT8 quantization with NNCF: calibrated on paired samples, exported as Q/DQ that ONNX Runtime runs, saved and
restored, a precision policy per branch, the accuracy-aware search, and clear errors for bad calibration."""
import numpy as np
import onnx
import pytest
import torch

from edgekit import checkpoint
from edgekit.data import ArrayDataset, avdigits
from edgekit.data.calibration import sample
from edgekit.errors import EdgekitError
from edgekit.evaluate import evaluate
from edgekit.passes.quantize import nncf_config, quantize


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, fsdd):
    model, spec, cfg = checkpoint.load(tiny_checkpoint)
    train, val = avdigits.load("train", fsdd), avdigits.load("val", fsdd)
    return model, spec, cfg, sample(train, 64, missing=0.2), val


@pytest.fixture(scope="module")
def quantized(setup):
    model, spec, _, cal, _ = setup
    return quantize(model, spec, cal)


def test_ptq_exports_qdq_that_onnxruntime_runs(setup, quantized, tmp_path):
    from edgekit.export import to_onnx
    from edgekit.parity import ort_predict

    model, spec, _, _, val = setup
    q, rec = quantized
    assert rec["quantizers"] > 20 and rec["calibration"]["size"] == 64
    assert set(rec["calibration"]["class_counts"].values()) == {6, 7}  # stratified by class
    report = to_onnx(q, spec, tmp_path / "model.onnx", check_parity_on=val)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and report["precision"] == "int8"
    run = ort_predict(tmp_path / "model.onnx")
    feed, labels = next(val.batches(64))
    ort_acc = (run(feed).argmax(1) == labels).mean()
    fp_acc = evaluate(model, val.subset(np.arange(64)), spec.class_names, missing=False)["accuracy"]
    assert ort_acc >= fp_acc - 0.1


def test_quantized_checkpoint_roundtrip(setup, quantized, tmp_path):
    model, spec, cfg, _, _ = setup
    q, _ = quantized
    checkpoint.save(q, spec, tmp_path / "q", cfg["model"], quantization={"nncf": nncf_config(q)})
    again, _, _ = checkpoint.load(tmp_path / "q")
    x = {k: torch.from_numpy(v) for k, v in spec.example_inputs(4).items()}
    with torch.no_grad():
        assert torch.allclose(again(**x), q.eval()(**x), atol=1e-5)
    assert nncf_config(model) is None


def test_keep_float_keeps_a_branch_out_of_int8(setup, quantized):
    model, spec, _, cal, _ = setup
    q, rec = quantize(model, spec, cal, keep_float=["audio"])
    audio = {op: e for op, e in rec["precision_map"].items() if op.startswith("audio/")}
    assert audio and all(e["precision"] == "fp32" for e in audio.values())
    assert any(e["precision"] == "int8" for op, e in rec["precision_map"].items() if op.startswith("image/"))
    assert rec["quantizers"] < quantized[1]["quantizers"]


def test_accuracy_aware_search_meets_budget_or_says_not_met(setup):
    model, spec, _, cal, val = setup
    # calibrating on audio scaled down 20x gives its activation ranges far too narrow: a badly quantized model
    inputs = dict(cal.inputs, audio=cal.inputs["audio"] * np.float32(0.05))
    bad = ArrayDataset(inputs, cal.labels, cal.modalities)
    small_val = val.subset(np.arange(80))
    q, rec = quantize(model, spec, bad, max_accuracy_drop=1.0, validation=small_val, ranking_samples=16)
    aa = rec["accuracy_aware"]
    assert aa["int8_accuracy_all_quantized"] < aa["fp32_accuracy"] - 0.01  # the search had work to do
    assert aa["float_ops"] and aa["final_accuracy"] > aa["int8_accuracy_all_quantized"]
    assert aa["met"] == (aa["drop"] <= 1.0) and ("budget met" in aa["note"] if aa["met"] else "NOT met" in aa["note"])
    floats = {op for op, e in rec["precision_map"].items() if e["precision"] == "fp32"}
    assert set(aa["float_ops"]) <= floats and aa["trials"][0] == {"float_ops": 0, "accuracy": aa["int8_accuracy_all_quantized"]}
    _, capped = quantize(model, spec, bad, max_accuracy_drop=0.0, validation=small_val, ranking_samples=4, max_float_ops=1)
    cap = capped["accuracy_aware"]
    assert not cap["met"] and "NOT met" in cap["note"] and len(cap["float_ops"]) <= 1


def test_calibration_errors_are_clear(setup):
    model, spec, _, cal, _ = setup
    with pytest.raises(EdgekitError, match="empty"):
        quantize(model, spec, cal.subset(np.arange(0)))
    no_audio = ArrayDataset({k: v for k, v in cal.inputs.items() if k != "audio"}, cal.labels, cal.modalities)
    with pytest.raises(EdgekitError, match="audio"):
        quantize(model, spec, no_audio)
    never = cal.without("text")
    with pytest.raises(EdgekitError, match="'text'"):
        quantize(model, spec, never)
    with pytest.raises(EdgekitError, match="match no operation"):
        quantize(model, spec, cal, ignored_scope={"names": ["no/such/op"]})
    with pytest.raises(EdgekitError, match="validation"):
        quantize(model, spec, cal, max_accuracy_drop=0.5)
