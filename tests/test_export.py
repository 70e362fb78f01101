"""ONNX export on the real exporter, ONNX Runtime, OpenVINO and NNCF: parity for every fusion type, INT8 as
Q/DQ that both CPU backends run, FP16 conversion, clear failures (which module/op; parity numbers)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from edgekit import checkpoint, export, parity
from edgekit.backends import compile_onnx
from edgekit.backends.base import Artifact, get_backend
from edgekit.data import avdigits
from edgekit.errors import EdgekitError
from edgekit.models import build_model, preset_config
from edgekit.onnxgraph.fp16 import to_fp16_onnx
from edgekit.onnxgraph.info import spec_for_onnx
from edgekit.train import fit, reference_spec

HAVE_OV = get_backend("openvino").available()[0]
BACKENDS = ["onnxruntime"] + (["openvino"] if HAVE_OV else [])


@pytest.fixture(scope="module")
def data(fsdd):
    """The built-in dataset from the FSDD recordings the product finds (conftest.fsdd: $EDGEKIT_FSDD or the shared
    copy), else with synthesized speech; class-stratified subsets (the splits are sorted by class)."""
    from edgekit.data.calibration import stratified

    try:
        train, val, test = (avdigits.load(s, fsdd) for s in ("train", "val", "test"))
    except EdgekitError as e:  # neither FSDD nor a speech synthesizer on this machine
        pytest.skip(f"the built-in dataset cannot be built here: {e.message} ({e.hint})")
    pick = lambda d, n: d.subset(stratified(d.labels, n))  # noqa: E731
    return {"train": pick(train, 480), "val": pick(val, 64), "test": pick(test, 64), "pre": avdigits.preprocessing(fsdd),
            "fsdd": fsdd}


def _model(fusion="attention", text_kind="transformer", seed=0):
    torch.manual_seed(seed)
    cfg = preset_config("tiny", fusion, text_kind=text_kind)
    return build_model(cfg).eval(), cfg


@pytest.fixture(scope="module")
def trained(data):
    """A briefly trained tiny model: INT8 calibration and parity need logits with real margins."""
    model, cfg = _model()
    fit(model, data["train"], data["val"], epochs=2, lr=3e-3)
    return model.eval(), reference_spec(cfg, data["pre"]), cfg


@pytest.mark.parametrize("fusion,text_kind", [("early", "transformer"), ("late", "transformer"), ("hierarchical", "transformer"),
                                              ("attention", "transformer"), ("attention", "lstm")])
def test_every_fusion_exports_with_parity_on_ort_and_openvino(tmp_path, data, fusion, text_kind):
    model, cfg = _model(fusion, text_kind)
    spec = reference_spec(cfg, data["pre"])
    report = export.to_onnx(model, spec, tmp_path / "model.onnx", check_parity_on=data["test"])
    p = report["parity"]
    assert p["n"] == len(data["test"]) and p["top1_agreement"] >= 0.99 and p["max_abs_diff"] < 1e-4 and p["passed"]
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert [i.name for i in proto.graph.input] == spec.input_names and [o.name for o in proto.graph.output] == ["logits"]
    for v in list(proto.graph.input) + list(proto.graph.output):
        assert v.type.tensor_type.shape.dim[0].dim_param, f"{v.name} has a fixed batch axis"
    assert report["opset"] >= 17 and not report["has_qdq"] and report["nodes"] < report["nodes_before_cleanup"]
    assert json.loads((tmp_path / "model.export.json").read_text())["parity"]["top1_agreement"] == p["top1_agreement"]
    for b in BACKENDS:
        art = compile_onnx(tmp_path / "model.onnx", b, tmp_path / b)
        assert art.meta["parity"]["top1_agreement"] >= 0.99 and art.meta["parity"]["reference"].startswith("torch")
        runner = get_backend(b).load(Artifact.load(tmp_path / b))
        for batch in (1, 5):  # dynamic batch
            feed = spec.example_inputs(batch, seed=batch)
            with torch.no_grad():
                ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
            np.testing.assert_allclose(runner.run(feed)["logits"], ref, atol=1e-4, rtol=1e-4)


def _quantize(model, calib):
    import nncf

    batches = [{k: torch.from_numpy(v) for k, v in feed.items()} for feed, _ in calib.batches(32)]
    return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))


def test_int8_export_is_qdq_and_runs_on_both_backends(tmp_path, data, trained):
    model, spec, _ = trained
    q = _quantize(model, data["train"].subset(np.arange(256)))  # the first 256 of a class-interleaved order: balanced
    report = export.to_onnx(q, spec, tmp_path / "int8.onnx", check_parity_on=data["test"])
    assert report["has_qdq"] and report["precision"] == "int8" and report["parity"]["top1_agreement"] >= 0.95
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "FakeQuantize" not in ops
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "only standard ONNX ops (no OpenVINO-only FakeQuantize)"
    inits = {i.name: i for i in proto.graph.initializer}
    for n in proto.graph.node:  # TensorRT reads only signed symmetric Q/DQ
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = numpy_helper.to_array(inits[n.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), n.name
    with torch.no_grad():
        torch_acc = float((model(**{k: torch.from_numpy(v) for k, v in data["test"].inputs.items()}).argmax(1).numpy() == data["test"].labels).mean())
    for b in BACKENDS:
        art = compile_onnx(tmp_path / "int8.onnx", b, tmp_path / b)
        assert art.precision == "int8" and art.meta["parity"]["top1_agreement"] >= 0.95, art.meta["parity"]
        assert abs(art.meta["parity"]["candidate_accuracy"] - torch_acc) <= 0.05
    if HAVE_OV:
        n = _int8_layers(tmp_path / "openvino" / "model.xml", ppp=False)
        # benchmark_app passes every model through a PrePostProcessor; the int8 path must survive it whole
        # (with weights folded to int8 initializers in the ONNX, 33 int8 layers here dropped to 11)
        assert n >= 20 and _int8_layers(tmp_path / "openvino" / "model.xml", ppp=True) == n
        assert (tmp_path / "openvino" / "model.bin").stat().st_size < 0.5 * (tmp_path / "int8.onnx").stat().st_size, "IR weights stored as int8"


def _int8_layers(xml, ppp: bool) -> int:
    """Convolutions / fully connected layers the OpenVINO CPU plugin runs in 8 bits."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    core = ov.Core()
    model = core.read_model(str(xml))
    if ppp:
        PrePostProcessor(model).build()
    rt = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model()
    return sum(op.get_rt_info()["layerType"].astype(str) in ("Convolution", "FullyConnected")
               and op.get_rt_info()["runtimePrecision"].astype(str) in ("u8", "i8") for op in rt.get_ordered_ops())


def test_export_failure_names_module_and_op(tmp_path, data):
    class Ranker(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 10)

        def forward(self, mask):
            return self.fc(torch.cumprod(mask, 1))  # no ONNX symbolic for aten::cumprod at opset 17

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Sequential()
            self.head.add_module("ranker", Ranker())

        def forward(self, image, audio, text, modality_mask):
            return self.head.ranker(modality_mask)

    spec = reference_spec(preset_config("tiny", "early"), data["pre"])
    with pytest.raises(EdgekitError) as e:
        export.to_onnx(Model(), spec, tmp_path / "bad.onnx")
    assert "cumprod" in e.value.message and "head.ranker" in e.value.message and "Ranker" in e.value.message
    assert not (tmp_path / "bad.onnx").exists()


def test_parity_failure_is_an_error_with_the_numbers(data):
    logits = np.random.default_rng(0).standard_normal((len(data["test"]), 10)).astype(np.float32)
    res = parity.parity(logits, -logits, data["test"])
    assert res["top1_agreement"] < 0.2 and res["max_abs_diff"] > 0
    with pytest.raises(EdgekitError) as e:
        parity.check_parity(res, 0.99, "test")
    assert "top-1 agreement" in e.value.message and "max |logit diff|" in e.value.message and f"{res['n']} samples" in e.value.message
    ok = parity.parity(logits, logits + 1e-6, data["test"])
    assert parity.check_parity(ok)["passed"] and ok["top1_agreement"] == 1.0


def test_fp16_onnx_has_half_weights_float_io_and_parity(tmp_path, data, trained):
    model, spec, _ = trained
    export.to_onnx(model, spec, tmp_path / "fp32.onnx", check_parity_on=data["test"])
    report = to_fp16_onnx(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx")
    proto = onnx.load(str(tmp_path / "fp16.onnx"))
    floats = [i for i in proto.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert floats and all(i.data_type == TensorProto.FLOAT16 for i in floats)
    io = {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.input) + list(proto.graph.output)}
    assert io == {"image": TensorProto.FLOAT, "audio": TensorProto.FLOAT, "text": TensorProto.INT64,
                  "modality_mask": TensorProto.FLOAT, "logits": TensorProto.FLOAT}
    assert report["precision"] == "fp16" and report["parity"]["top1_agreement"] >= 0.95
    assert report["parity"]["reference"].startswith("torch") and report["size_bytes"] < 0.7 * (tmp_path / "fp32.onnx").stat().st_size
    for b in BACKENDS:  # what TensorRT 11 will read, ONNX Runtime and OpenVINO read too
        art = compile_onnx(tmp_path / "fp16.onnx", b, tmp_path / b)
        assert art.precision == "fp16" and art.meta["parity"]["top1_agreement"] >= 0.95


def test_spec_travels_with_the_onnx_and_bare_onnx_gets_one(tmp_path, data):
    model, cfg = _model("late")
    spec = reference_spec(cfg, data["pre"])
    export.to_onnx(model, spec, tmp_path / "m.onnx")
    assert spec_for_onnx(tmp_path / "m.onnx") == spec
    proto = onnx.load(str(tmp_path / "m.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    bare = spec_for_onnx(tmp_path / "bare.onnx")
    assert [(i.name, i.shape, i.dtype) for i in bare.inputs] == [(i.name, i.shape, i.dtype) for i in spec.inputs]
    assert bare.output_names == ["logits"] and len(bare.class_names) == 10
    art = compile_onnx(tmp_path / "bare.onnx", "onnxruntime", tmp_path / "ort")  # no parity samples: checked against ORT
    assert art.meta["parity"]["top1_agreement"] == 1.0 and "random" in art.meta["parity"]["reference"]


def test_export_cli_from_checkpoint(tmp_path, data):
    model, cfg = _model("hierarchical")
    spec = reference_spec(cfg, data["pre"])
    checkpoint.save(model, spec, tmp_path / "ck", cfg)
    out = tmp_path / "m.onnx"
    fsdd = ["--fsdd", data["fsdd"]] if data["fsdd"] else []  # else the export synthesizes speech, as the product does
    res = subprocess.run([sys.executable, "-m", "edgekit", "export", str(tmp_path / "ck"), "--out", str(out), *fsdd, "--fp16"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "top-1 agreement 100.00%" in res.stderr and out.exists() and out.with_suffix(".fp16.onnx").exists()
    rep = json.loads(Path(str(out).replace(".onnx", ".export.json")).read_text())
    assert rep["parity"]["data"] == "held-out samples" and rep["parity"]["n"] == 256
    res = subprocess.run([sys.executable, "-m", "edgekit", "export", str(tmp_path / "missing"), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "does not exist" in res.stderr
