"""Graph info on real exports (torch exporter, NNCF, the FP16 conversion): one precision definition, which the
device agent's numpy-only copy, deploy and the CPU backends' compile all agree with."""
import itertools

import numpy as np
import onnx
import pytest
import torch

from edgekit.agent import trt_plan
from edgekit.backends.base import compile_precision
from edgekit.errors import EdgekitError
from edgekit.onnxgraph.info import graph_info, onnx_precision, precision_of


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """An FP32, an INT8 (Q/DQ, from edgekit's NNCF pass) and an FP16 export of one tiny model. Untrained: the
    graphs, not their accuracy, are under test, so parity is recorded but not required."""
    from edgekit.data import ArrayDataset
    from edgekit.export import to_onnx
    from edgekit.models import build_model, preset_config
    from edgekit.onnxgraph.fp16 import to_fp16_onnx
    from edgekit.passes.quantize import quantize
    from edgekit.train import reference_spec

    d = tmp_path_factory.mktemp("graphs")
    torch.manual_seed(0)
    cfg = preset_config("tiny", "early")
    model, spec = build_model(cfg).eval(), reference_spec(cfg, {})
    reports = {"fp32": to_onnx(model, spec, d / "fp32.onnx", max_samples=16)}
    calib = ArrayDataset(spec.example_inputs(32, seed=1), np.arange(32) % 10, tuple(spec.modalities))
    q, _ = quantize(model, spec, calib)
    reports["int8"] = to_onnx(q, spec, d / "int8.onnx", max_samples=16, min_top1=0.0)
    reports["fp16"] = to_fp16_onnx(d / "fp32.onnx", d / "fp16.onnx", min_top1=0.0, max_samples=16)
    return {k: (d / f"{k}.onnx", reports[k]) for k in reports}


@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
def test_agent_copy_deploy_and_export_agree_with_graph_info(graphs, precision):
    from edgekit.deploy import variant_from_onnx

    path, report = graphs[precision]
    info = graph_info(path)
    assert info == graph_info(onnx.load(str(path)))  # a path and a loaded proto say the same
    assert info == {"qdq": precision == "int8", "float16": precision == "fp16"}
    assert onnx_precision(path) == precision_of(info) == precision
    assert trt_plan.graph_precision(info) == precision, "the agent's copy of the precision rule drifted"
    assert report["precision"] == precision  # what the export / FP16 conversion recorded
    variant = variant_from_onnx(path)
    assert variant.precision == precision and variant.graph == info  # what deploy ships to the device


def test_precision_rule_copies_agree_on_every_graph_fact():
    for qdq, fp16 in itertools.product([False, True], repeat=2):
        info = {"qdq": qdq, "float16": fp16}
        assert trt_plan.graph_precision(info) == precision_of(info)


def test_compile_precision_refuses_what_the_graph_does_not_carry(graphs):
    fp32, int8 = graphs["fp32"][0], graphs["int8"][0]
    assert compile_precision(fp32, {}, "converted from") == ("fp32", "fp32")
    assert compile_precision(fp32, {"precision": "fp16"}, "converted from") == ("fp32", "fp16")
    assert compile_precision(int8, {"precision": "auto"}, "converted from") == ("int8", "int8")
    with pytest.raises(EdgekitError) as e:
        compile_precision(fp32, {"precision": "int8"}, "applied to")
    assert "is fp32, not int8" in e.value.message and "fp16 is applied to an fp32 ONNX" in e.value.hint
    with pytest.raises(EdgekitError):
        compile_precision(int8, {"precision": "fp16"}, "converted from")  # INT8 never becomes FP16 silently
    assert np.isfinite(graphs["int8"][1]["parity"]["max_abs_diff"])
