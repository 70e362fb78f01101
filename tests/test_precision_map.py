"""The runtime's own precision map (edgekit.runtime_precision): an fp32 and an INT8 variant built by edgekit's own
passes (NNCF quantize pass, export, compile for OpenVINO and ONNX Runtime), read back from what each runtime executes
and checked against the per-layer profile the benchmarks use (edgekit.profile); TensorRT's inspector JSON parsed from
a recorded sample; the report's section built from the maps."""
from types import SimpleNamespace

import pytest

from edgekit.agent import trt_plan
from edgekit.results import Result, Results
from edgekit.runtime_precision import runtime_precision


@pytest.fixture(scope="module")
def artifacts(fsdd, tmp_path_factory):
    from edgekit import checkpoint
    from edgekit.backends import compile_onnx
    from edgekit.data import avdigits
    from edgekit.data.calibration import sample
    from edgekit.export import to_onnx
    from edgekit.passes.quantize import quantize
    from edgekit.train import train_reference

    out = tmp_path_factory.mktemp("pmap")
    train_reference("tiny", "attention", out / "ck", fsdd=fsdd, epochs=1)  # what runs where does not need accuracy
    model, spec, _ = checkpoint.load(out / "ck")
    q, _ = quantize(model, spec, sample(avdigits.load("train", fsdd), 32))
    to_onnx(model, spec, out / "fp32.onnx")
    to_onnx(q, spec, out / "int8.onnx")
    # min_top1=0: a briefly trained model's parity is not what these tests are about
    arts = {(v, b): compile_onnx(out / f"{v}.onnx", b, out / f"{v}-{b}", min_top1=0.0, max_samples=32)
            for v in ("fp32", "int8") for b in ("openvino", "onnxruntime")}
    return {**arts, **{(v, "onnx"): out / f"{v}.onnx" for v in ("fp32", "int8")}}


def _by_name(prof):
    return {x["name"]: x["precision"] for x in prof["all_layers"]}


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_int8_share_of_macs_comes_from_the_runtime_and_matches_the_profiler(artifacts, backend):
    from edgekit.profile import profile_artifact

    fp32, int8 = (runtime_precision(artifacts[(v, backend)]) for v in ("fp32", "int8"))
    assert fp32["int8_mac_share"] == 0.0 and fp32["total_macs"] > 1e6
    assert int8["int8_mac_share"] > 0.5
    kinds = {lay["type"] for lay in int8["mac_layers"] if lay["precision"] == "int8"}
    if backend == "openvino":  # runtime precision of the executed convolutions, as the CPU plugin reports it
        assert "Convolution" in kinds and all(lay["runtime_precision"] in ("u8", "i8") for lay in _ov_layers(artifacts, "int8") if lay["type"] == "Convolution")
        assert abs(int8["total_macs"] - int8["onnx_macs"]) / int8["onnx_macs"] < 0.05  # every MAC of the graph found
    else:  # ORT's integer kernels (the Q/DQ groups fused), not Conv/MatMul on dequantized floats
        assert kinds & {"QLinearConv", "QGemm", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul"}
        assert not {lay["type"] for lay in fp32["mac_layers"]} & kinds
    for variant, m in (("fp32", fp32), ("int8", int8)):  # the benchmarks' per-layer profile sees the same kernels
        art = artifacts[(variant, backend)]
        prof = _by_name(profile_artifact(art, art.spec.example_inputs(1), iterations=2, warmup=1))
        common = [lay for lay in m["mac_layers"] if lay["name"] in prof]
        assert len(common) >= 0.9 * len(m["mac_layers"])
        assert all(prof[lay["name"]] == lay["precision"] for lay in common), [(lay["name"], lay["precision"], prof[lay["name"]]) for lay in common]


def test_device_agent_reads_onnxruntime_the_same_way(artifacts):
    """The numpy-only agent profiles the ONNX it runs itself (prepacking off, so every weight's shape is recorded);
    here the graphs edgekit compiles for a CPU (the INT8 one with uint8 activations, edgekit.onnxgraph.qdq)."""
    from edgekit.agent.agent import ort_precision_map
    from edgekit.agent.ort import OrtRunner
    from edgekit.runtime_precision import onnx_node_macs

    art = artifacts[("int8", "onnxruntime")]
    onnx = {"fp32": str(artifacts[("fp32", "onnx")]), "int8": art.meta["source"]}
    dev = {v: ort_precision_map(p, OrtRunner(p), art.spec.model_dump(), None) for v, p in onnx.items()}
    assert dev["fp32"]["int8_mac_share"] == 0.0 and dev["int8"]["int8_mac_share"] > 0.5
    graph = sum(onnx_node_macs(onnx["int8"]).values())
    assert abs(dev["int8"]["total_macs"] - graph) / graph < 0.05  # every convolution's weight found in the profile
    assert {lay["type"] for lay in dev["int8"]["mac_layers"] if lay["precision"] == "int8"} & {"QLinearConv", "QGemm", "MatMulIntegerToFloat"}


def _ov_layers(artifacts, variant):
    from edgekit.backends.base import get_backend

    runner = get_backend("openvino").load(artifacts[(variant, "openvino")], cache=False)
    return [{"type": op.get_rt_info()["layerType"].astype(str), "runtime_precision": op.get_rt_info()["runtimePrecision"].astype(str)}
            for op in runner.compiled.get_runtime_model().get_ordered_ops()]


# A TensorRT 10 engine's layer information at ProfilingVerbosity.DETAILED, in the form the TensorRT Developer Guide
# shows for IEngineInspector::getEngineInformation (section "Engine Inspector": "ParameterType": "Convolution",
# "OutMaps", "Groups", "Weights": {"Type": "Int8", "Count": ...}) and trtexec --exportLayerInfo writes (a Reformat
# with "Origin": "QDQ" for what is left of a quantize). A 1x1x28x28 input quantized, an INT8 3x3 convolution to 8
# maps fused with its ReLU, a float matrix multiply 6272 -> 10 and the output reformat.
INSPECTOR_10 = {"Layers": [
    {"Name": "/model/image__0.0/QuantizeLinear", "LayerType": "Reformat", "ParameterType": "Reformat", "Origin": "QDQ",
     "Inputs": [{"Name": "image", "Location": "Device", "Dimensions": [1, 1, 28, 28], "Format/Datatype": "Row major linear FP32 format"}],
     "Outputs": [{"Name": "/model/image__0.0/QuantizeLinear_output_0", "Location": "Device", "Dimensions": [1, 1, 28, 28],
                  "Format/Datatype": "Row major linear Int8 format"}], "TacticValue": "0x00000000000003e8"},
    {"Name": "/model/image/body/body.0/Conv + /model/image/body/body.2/Relu", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "/model/image__0.0/QuantizeLinear_output_0", "Location": "Device", "Dimensions": [1, 1, 28, 28],
                 "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
     "Outputs": [{"Name": "/model/image/body/body.2/Relu_output_0", "Location": "Device", "Dimensions": [1, 8, 28, 28],
                  "Format/Datatype": "Row major linear FP32 format"}],
     "ParameterType": "Convolution", "Kernel": [3, 3], "PaddingMode": "kEXPLICIT_ROUND_DOWN", "PrePadding": [1, 1], "PostPadding": [1, 1],
     "Stride": [1, 1], "Dilation": [1, 1], "OutMaps": 8, "Groups": 1, "Weights": {"Type": "Int8", "Count": 72}, "Bias": {"Type": "Float", "Count": 8},
     "HasBias": 1, "HasReLU": 1, "Activation": "RELU",
     "TacticName": "sm87_xmma_fprop_implicit_gemm_interleaved_i8f32_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32_nchw_tilesize32x32x64", "TacticValue": "0x9cb304e2edbc1221"},
    {"Name": "/model/head/classifier/Gemm", "LayerType": "CaskGemmMatrixMultiply", "ParameterType": "MatrixMultiply",
     "Inputs": [{"Name": "/model/Flatten_output_0", "Location": "Device", "Dimensions": [1, 6272], "Format/Datatype": "Row major linear FP32 format"},
                {"Name": "classifier.weight", "Location": "Device", "Dimensions": [6272, 10], "Format/Datatype": "Row major linear FP32 format"}],
     "Outputs": [{"Name": "logits", "Location": "Device", "Dimensions": [1, 10], "Format/Datatype": "Row major linear FP32 format"}],
     "MatrixOpA": "kNONE", "MatrixOpB": "kNONE", "TacticName": "sm87_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8", "TacticValue": "0x0000000000020318"},
    {"Name": "Reformatting CopyNode for Output Tensor 0 to /model/head/classifier/Gemm", "LayerType": "Reformat", "ParameterType": "Reformat",
     "Origin": "REFORMAT", "Inputs": [{"Name": "logits", "Dimensions": [1, 10], "Format/Datatype": "Row major linear FP32 format"}],
     "Outputs": [{"Name": "logits_out", "Dimensions": [1, 10], "Format/Datatype": "Row major linear FP32 format"}], "TacticValue": "0x0000000000000000"},
], "Bindings": ["image", "logits_out"]}


def test_tensorrt_inspector_gives_the_same_map():
    info = trt_plan.layer_precisions(INSPECTOR_10)
    layers = {lay["name"]: lay for lay in info["layers"]}
    conv, gemm = 8 * 28 * 28 * 9, 10 * 6272
    assert layers["/model/image__0.0/QuantizeLinear"]["precision"] == "qdq" and layers["/model/image__0.0/QuantizeLinear"]["macs"] == 0
    assert layers["/model/image/body/body.0/Conv + /model/image/body/body.2/Relu"]["macs"] == conv
    assert layers["/model/head/classifier/Gemm"]["macs"] == gemm
    rp = info["runtime_precision"]
    assert rp["macs"] == {"int8": conv, "fp32": gemm} and rp["int8_mac_share"] == pytest.approx(conv / (conv + gemm))
    assert [lay["name"] for lay in rp["mac_layers"]] == ["/model/image/body/body.0/Conv + /model/image/body/body.2/Relu", "/model/head/classifier/Gemm"]


def test_report_shows_runtime_share_and_nncf_placement_apart(artifacts):
    from edgekit.report_precision import _share, precision_section
    from edgekit.report_render import to_markdown

    rows = [Result(variant=v, target=b, precision=v, runtime_precision=runtime_precision(artifacts[(v, b)]))
            for v in ("fp32", "int8") for b in ("openvino", "onnxruntime")]
    res = Results(variants={"fp32": {}, "int8": {"precision": "int8", "precision_map": {"image/conv2d/0": {"precision": "int8"},
                                                                                      "head/softmax/0": {"precision": "fp32", "why": "kept in float by keep_float"}}}},
                  results=rows)
    md = to_markdown(res, precision_section(res, {"t": [SimpleNamespace(r=r) for r in rows]}))
    assert "INT8 share of MACs" in md and "Quantizers inserted by NNCF in int8" in md and "Every layer runs in INT8" not in md
    share = runtime_precision(artifacts[("int8", "openvino")])["int8_mac_share"]
    assert f"| int8 (int8) | openvino | ✅ {_share(share)} |" in md and "| fp32 (fp32) | openvino | 0.0% |" in md
