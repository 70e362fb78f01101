"""TensorRT backend and the device agent's pure parts: build plans for 10.x and 11.x, engine cache keys,
trtexec command lines and JSON exports, engine-inspector precision, tegrastats power, device fingerprints.
Tests marked `tensorrt` build and run a real engine; they skip with the reason when TensorRT or a GPU is absent."""
import ast
import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.agent import fingerprint, power, trt, trt_plan
from edgekit.errors import EdgekitError

INPUTS = [{"name": "image", "shape": [None, 1, 28, 28]}, {"name": "text", "shape": [None, 16]}, {"name": "fixed", "shape": [3, 4]}]
FP32, FP16, QDQ = {"qdq": False, "float16": False}, {"qdq": False, "float16": True}, {"qdq": True, "float16": False}


# ---- option -> API mapping --------------------------------------------------------------------------------

def test_plan_tensorrt_10_takes_precision_from_the_graph_strongly_typed():
    for graph, precision in ((FP32, "fp32"), (FP16, "fp16"), (QDQ, "int8")):
        p = trt_plan.build_plan("10.3.0", graph, {}, INPUTS)
        assert (p["api"], p["precision"], p["strongly_typed"]) == ("10.x", precision, True)
        assert p["network_flags"] == ["STRONGLY_TYPED"] and p["builder_flags"] == []


def test_plan_tensorrt_10_weak_typing_only_where_asked():
    p = trt_plan.build_plan("10.3.0", FP32, {"precision": "fp16"})
    assert p["builder_flags"] == ["FP16"] and p["network_flags"] == [] and not p["strongly_typed"]
    p = trt_plan.build_plan("10.16.1", QDQ, {"fp16_fallback": True})
    assert p["builder_flags"] == ["INT8", "FP16"] and not p["strongly_typed"]  # explicit Q/DQ: no calibrator anywhere
    with pytest.raises(trt_plan.PlanError, match="Q/DQ"):
        trt_plan.build_plan("10.3.0", FP32, {"precision": "int8"})  # implicit INT8 (calibration) is never used


def test_plan_tensorrt_11_has_no_precision_flags():
    for graph in (FP32, FP16, QDQ):
        p = trt_plan.build_plan("11.1.0", graph)
        assert p["api"] == "11.x" and p["strongly_typed"] and p["network_flags"] == [] and p["builder_flags"] == []
    with pytest.raises(trt_plan.PlanError, match="FP16 builder flag") as e:
        trt_plan.build_plan("11.0.0", FP32, {"precision": "fp16"})
    assert "to_fp16_onnx" in e.value.hint
    with pytest.raises(trt_plan.PlanError, match="removed"):
        trt_plan.build_plan("11.0.0", QDQ, {"fp16_fallback": True})
    with pytest.raises(trt_plan.PlanError, match="carries fp16"):
        trt_plan.build_plan("11.0.0", FP16, {"precision": "fp32"})


def test_plan_settings_are_explicit():
    p = trt_plan.build_plan("10.3.0", FP32, {"workspace_mb": 256, "batch": {"max": 16, "opt": 4}, "tf32": False,
                                        "optimization_level": 5}, INPUTS)
    assert p["workspace_bytes"] == 256 << 20 and p["optimization_level"] == 5 and p["clear_flags"] == ["TF32"]
    assert p["shapes"] == {"image": {"min": [1, 1, 28, 28], "opt": [4, 1, 28, 28], "max": [16, 1, 28, 28]},
                           "text": {"min": [1, 16], "opt": [4, 16], "max": [16, 16]}}  # static inputs need no profile
    assert p["profiling_verbosity"] == "DETAILED"  # per-layer precision can be read back
    for bad, msg in (({"batch": {"min": 4, "opt": 2}}, "min <= opt"), ({"precision": "int4"}, "unknown")):
        with pytest.raises(trt_plan.PlanError, match=msg):
            trt_plan.build_plan("10.3.0", FP32, bad)
    with pytest.raises(trt_plan.PlanError, match="older than 10"):
        trt_plan.build_plan("8.6.2", FP32)


def test_engine_cache_key_covers_onnx_version_gpu_and_options():
    gpu = {"name": "Orin", "compute_capability": "8.7"}
    plan = trt_plan.build_plan("10.3.0", FP32, {}, INPUTS)
    key = trt_plan.engine_cache_key("a" * 64, "10.3.0", gpu, plan)
    assert key == trt_plan.engine_cache_key("a" * 64, "10.3.0", dict(gpu), dict(plan, notes=["reworded"]))
    changed = [trt_plan.engine_cache_key("b" * 64, "10.3.0", gpu, plan),
               trt_plan.engine_cache_key("a" * 64, "10.3.1", gpu, plan),
               trt_plan.engine_cache_key("a" * 64, "10.3.0", {"name": "Orin Nano", "compute_capability": "8.7"}, plan),
               trt_plan.engine_cache_key("a" * 64, "10.3.0", {"name": "Orin", "compute_capability": "8.6"}, plan),
               trt_plan.engine_cache_key("a" * 64, "10.3.0", gpu, trt_plan.build_plan("10.3.0", FP32, {"workspace_mb": 512}, INPUTS))]
    assert len({key, *changed}) == 6


def test_unchanged_variant_is_not_rebuilt(tmp_path):
    """A cache hit returns the stored engine without touching TensorRT (not installed here)."""
    gpu = {"name": "Orin", "compute_capability": "8.7"}
    plan = trt_plan.build_plan("10.3.0", FP32, {}, INPUTS)
    cache = trt.EngineCache(str(tmp_path / "engines"))
    key = trt_plan.engine_cache_key("c" * 64, "10.3.0", gpu, plan)
    cache.put(key, b"serialized-engine", {"plan": plan, "build_seconds": 12.5})
    path, meta = trt.get_or_build(cache, "model.onnx", "c" * 64, plan, gpu)
    assert Path(path).read_bytes() == b"serialized-engine" and meta["cached"] and meta["key"] == key
    assert "timing-10.3.0-Orin-8.7.cache" in cache.timing_cache("10.3.0", gpu)


# ---- trtexec ---------------------------------------------------------------------------------------------

def test_trtexec_command_per_version():
    p10 = trt_plan.build_plan("10.3.0", QDQ, {"workspace_mb": 512, "tf32": False}, INPUTS)
    cmd = trt_plan.trtexec_command(p10, "m.onnx", "m.engine", "/x", "/usr/src/tensorrt/bin/trtexec", "/c/timing.cache")
    assert cmd[:3] == ["/usr/src/tensorrt/bin/trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    for flag in ("--stronglyTyped", "--memPoolSize=workspace:512M", "--noTF32", "--skipInference", "--profilingVerbosity=detailed",
                 "--minShapes=image:1x1x28x28,text:1x16", "--maxShapes=image:8x1x28x28,text:8x16",
                 "--timingCacheFile=/c/timing.cache", "--exportLayerInfo=/x/layers.json", "--builderOptimizationLevel=3"):
        assert flag in cmd
    assert "--int8" not in cmd and "--fp16" not in cmd
    weak = trt_plan.trtexec_command(trt_plan.build_plan("10.3.0", FP32, {"precision": "fp16"}), "m.onnx", "m.engine")
    assert "--fp16" in weak and "--stronglyTyped" not in weak
    p11 = trt_plan.build_plan("11.2.0", FP16, {}, INPUTS)
    bench = trt_plan.trtexec_command(p11, "m.onnx", "m.engine", "/x", bench={"batch": 4, "iterations": 50})
    assert not {"--fp16", "--int8", "--stronglyTyped", "--skipInference"} & set(bench)
    for flag in ("--shapes=image:4x1x28x28,text:4x16", "--iterations=50", "--exportTimes=/x/times.json",
                 "--exportProfile=/x/profile.json", "--separateProfileRun", "--useSpinWait"):
        assert flag in bench


def test_parse_trtexec_exports():
    # --exportTimes records as written by samples/common/sampleReporting.cpp (TensorRT 8.4+); older ones say inMs/outMs
    times = [{"startEnqMs": i, "endEnqMs": i + 0.1, "startH2dMs": i, "endH2dMs": i + 0.05, "startComputeMs": i + 0.05,
              "endComputeMs": i + 0.05 + c, "startD2hMs": 0, "endD2hMs": 0, "h2dMs": 0.05, "computeMs": c, "d2hMs": 0.02,
              "latencyMs": c + 0.07, "endToEndMs": c + 0.1} for i, c in enumerate([1.0, 2.0, 3.0, 4.0, 10.0])]
    t = trt_plan.parse_trtexec_times(times)
    assert t["compute"]["count"] == 5 and t["compute"]["median_ms"] == 3.0 and t["compute"]["max_ms"] == 10.0
    assert t["latency"]["mean_ms"] == pytest.approx(4.07) and t["h2d_mean_ms"] == pytest.approx(0.05) and "end_to_end" in t
    old = trt_plan.parse_trtexec_times([{"startInMs": 0, "inMs": 0.1, "computeMs": 1.0, "outMs": 0.2, "latencyMs": 1.3}])
    assert old["h2d_mean_ms"] == 0.1 and old["d2h_mean_ms"] == 0.2
    profile = trt_plan.parse_trtexec_profile([{"count": 100}, {"name": "conv1", "timeMs": 50.0, "averageMs": 0.5, "medianMs": 0.48, "percentage": 62.5},
                                         {"name": "fc", "timeMs": 30.0, "averageMs": 0.3, "percentage": 37.5}])
    assert profile["iterations"] == 100 and [lay["name"] for lay in profile["layers"]] == ["conv1", "fc"]
    assert profile["total_average_ms"] == pytest.approx(0.8) and profile["layers"][1]["median_ms"] is None


# ---- per-layer precision ------------------------------------------------------------------------------------

LAYERS_10 = {"Layers": [
    {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "x", "Dimensions": [1, 1, 28, 28], "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
     "Outputs": [{"Name": "y", "Dimensions": [1, 8, 28, 28], "Format/Datatype": "Row major linear FP32 format"}], "TacticName": "sm87_xmma"},
    {"Name": "fc", "LayerType": "Gemm", "Inputs": [{"Name": "y", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
     "Outputs": [{"Name": "z", "Format/Datatype": "Row major linear FP16 format"}]},
    {"Name": "reformat", "LayerType": "Reformat", "Inputs": [{"Name": "z", "Format/Datatype": "Row major linear FP16 format"}],
     "Outputs": [{"Name": "logits", "Format/Datatype": "Row major linear FP32 format"}]},
    {"Name": "shape", "LayerType": "NoOp", "Inputs": [{"Name": "a", "Format/Datatype": "N/A due to dynamic shapes"}], "Outputs": []},
], "Bindings": ["x", "logits"]}
LAYERS_11 = {"Layers": [
    {"Name": "conv1", "LayerType": "CaskConvolution", "Inputs": [{"Name": "x", "DataType": "Int8", "Format": "Row major linear"}],
     "Outputs": [{"Name": "y", "DataType": "Half", "Format": "Row major linear"}]},
    {"Name": "fc", "LayerType": "Gemm", "Inputs": [{"Name": "y", "DataType": "Float"}], "Outputs": [{"Name": "z", "DataType": "Float"}]},
], "I/O Tensors": [{"Name": "x", "IOMode": "Input", "DataType": "Float"}, {"Name": "z", "IOMode": "Output", "DataType": "Float"}]}


def test_layer_precision_from_inspector_json_10_and_11():
    p10 = trt_plan.layer_precisions(LAYERS_10)
    assert [lay["precision"] for lay in p10["layers"]] == ["int8", "fp16", "fp16", "unknown"]
    assert p10["counts"] == {"int8": 1, "fp16": 2, "unknown": 1} and p10["io"] == ["x", "logits"]
    assert p10["layers"][0]["tactic"] == "sm87_xmma"
    p11 = trt_plan.layer_precisions(LAYERS_11)
    assert p11["counts"] == {"int8": 1, "fp32": 1} and p11["io"] == ["x", "z"]
    assert trt_plan.layer_precisions({"Layers": ["conv1", "fc"]})["counts"] == {"unknown": 2}  # LAYER_NAMES_ONLY verbosity


def test_build_failure_keeps_the_tensorrt_lines_that_explain_it():
    log = ["[INFO] parsing", "[WARNING] int64 weights cast down", "[ERROR] IBuilder::buildSerializedNetwork: Error Code 4: "
           "Internal Error (Could not find any implementation for node conv1)", "[INFO] done"]
    assert trt.key_lines(log) == [log[2]]
    e = trt.BuildError("TensorRT engine build failed", trt.key_lines(log))
    assert "Could not find any implementation" in str(e)
    from edgekit.agent.agent import _error_kind

    kind, hint, lines = _error_kind(e)
    assert kind == "build" and lines == [log[2]] and "workspace" in hint
    assert _error_kind(trt_plan.PlanError("no", "use fp32"))[:2] == ("plan", "use fp32")


# ---- tegrastats ----------------------------------------------------------------------------------------------

ORIN_NANO = ("03-14-2024 10:20:30 RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [12%@1510,8%@1510,off,off,3%@1510,"
             "5%@1510] EMC_FREQ 0% GR3D_FREQ 87% cpu@47.5C soc2@45.9C soc0@46.3C gpu@48.1C tj@48.1C soc1@45.7C "
             "VDD_IN 7120mW/5000mW VDD_CPU_GPU_CV 2480mW/1200mW VDD_SOC 1760mW/1440mW")
AGX_ORIN = ("RAM 9876/62795MB (lfb 7x4MB) CPU [1%@2201,0%@2201] GR3D_FREQ 0% VDD_GPU_SOC 3014mW/3014mW VDD_CPU_CV 502mW/502mW "
            "VIN_SYS_5V0 3620mW/3620mW VDDQ_VDD2_1V8AO 402mW/402mW")
NANO = ("RAM 1234/3964MB (lfb 331x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [3%@102,2%@102,off,off] "
        "EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@24.5C CPU@27C PMIC@100C GPU@25.5C AO@33C thermal@26.25C "
        "POM_5V_IN 2490/2490 POM_5V_GPU 0/0 POM_5V_CPU 411/411")
AGX_XAVIER = "RAM 3000/31919MB (lfb 7000x4MB) CPU [2%@1190] GPU 0/0 CPU 620/620 SOC 1240/1240 CV 0/0 VDDRQ 310/310 SYS5V 1406/1406"


def test_tegrastats_lines_of_each_jetson_generation():
    assert power.parse_line(ORIN_NANO) == {"VDD_IN": 7120, "VDD_CPU_GPU_CV": 2480, "VDD_SOC": 1760}  # current, not the running average
    assert power.board_power_mw(power.parse_line(ORIN_NANO)) == (7120.0, "VDD_IN")
    assert power.board_power_mw(power.parse_line(NANO)) == (2490.0, "POM_5V_IN")
    total, how = power.board_power_mw(power.parse_line(AGX_ORIN))
    assert total == 3014 + 502 + 3620 + 402 and how.startswith("sum of")
    assert power.parse_line(AGX_XAVIER) == {"GPU": 0, "CPU": 620, "SOC": 1240, "CV": 0, "VDDRQ": 310, "SYS5V": 1406}
    assert power.parse_line("RAM 2448/7620MB SWAP 0/3810MB IRAM 0/252kB") == {}


def test_energy_per_inference():
    samples = [(0.0, {"VDD_IN": 5000}), (0.1, {"VDD_IN": 7000})]
    s = power.summarize(samples, inferences=1000, seconds=2.0, batch=4)
    assert s["average_power_w"] == 6.0 and s["max_power_w"] == 7.0
    assert s["energy_per_inference_mj"] == pytest.approx(12.0) and s["energy_per_sample_mj"] == pytest.approx(3.0)
    assert power.summarize([])["available"] is False


def test_power_sampler_runs_tegrastats(tmp_path):
    """The sampler drives a tegrastats executable: here a script printing documented Orin lines at its interval."""
    fake = tmp_path / "tegrastats"
    fake.write_text("#!/bin/sh\nwhile true; do echo '%s'; sleep 0.05; done\n" % ORIN_NANO)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    calls = []
    res = power.measure_energy(lambda: calls.append(1), seconds=0.3, batch=1, interval_ms=50, command=str(fake))
    assert res["available"] and res["average_power_w"] == pytest.approx(7.12) and res["idle_power_w"] == pytest.approx(7.12)
    assert res["inferences"] == len(calls) > 0 and res["energy_per_inference_mj"] == pytest.approx(7.12 * res["seconds"] / len(calls) * 1000, rel=1e-3)
    assert power.measure_energy(lambda: None, command=None)["available"] in (False, True)  # real tegrastats only on a Jetson


# ---- device fingerprint --------------------------------------------------------------------------------------

def test_fingerprint_parsers_and_collect():
    rel = fingerprint.parse_tegra_release("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025")
    assert rel["l4t"] == "36.4.3" and rel["board"] == "generic" and rel["eabi"] == "aarch64"
    assert fingerprint.parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == {"name": "MAXN_SUPER", "id": 2, "raw": "NV Power Mode: MAXN_SUPER\n2\n"}
    fp = fingerprint.collect(".")
    assert fp["python"] and fp["numpy"] and fp["disk_free_mb"] > 0
    assert json.dumps(fp)  # everything is JSON, failures included
    if fp["l4t"] is None:
        assert "error" in fp["power_mode"]  # not a Jetson: recorded, not raised


# ---- what runs on the device ---------------------------------------------------------------------------------

AGENT = Path(__file__).resolve().parents[1] / "edgekit" / "agent"
ALLOWED_TOP = {"numpy", "tensorrt", "onnxruntime", "scipy"}


def test_agent_is_python_310_stdlib_and_numpy_only():
    """JetPack 6's system Python is 3.10 with numpy; nothing else of edgekit exists there."""
    for f in sorted(AGENT.glob("*.py")):
        tree = ast.parse(f.read_text(), str(f), feature_version=(3, 10))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                ok = top in sys.stdlib_module_names or top in ALLOWED_TOP or (f.name == "agent.py" and n == "edgekit")
                assert ok, f"{f.name} imports {n}"


def test_backend_reports_why_tensorrt_is_missing(tmp_path):
    from edgekit.backends.base import get_backend

    b = get_backend("tensorrt")
    ok, why = b.available()
    if ok:
        pytest.skip("TensorRT is installed here")
    assert why
    with pytest.raises(EdgekitError, match="not available") as e:
        b.compile(tmp_path / "m.onnx", None, {}, tmp_path)
    assert "edgekit deploy" in e.value.hint


# ---- real TensorRT ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trt_ready():
    from edgekit.agent.predictor import tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT with a GPU is not available: {why}")


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_run_a_real_engine(trt_ready, tmp_path, precision):
    import tensorrt
    import torch

    from edgekit.backends import compile_onnx
    from edgekit.export import to_onnx
    from edgekit.models import build_model, preset_config
    from edgekit.onnxgraph.fp16 import to_fp16_onnx
    from edgekit.train import reference_spec

    torch.manual_seed(0)
    cfg = preset_config("tiny", "attention")
    spec = reference_spec(cfg, {"vocab_size": 60})
    onnx = tmp_path / "model.onnx"
    to_onnx(build_model(cfg), spec, onnx, max_samples=16)
    if precision == "fp16" and tensorrt.__version__.split(".")[0] != "10":
        to_fp16_onnx(onnx, tmp_path / "fp16.onnx", max_samples=16)
        onnx = tmp_path / "fp16.onnx"
    opts = {"precision": precision, "cache_dir": str(tmp_path / "cache"), "batch": {"min": 1, "opt": 2, "max": 4}}
    art = compile_onnx(onnx, "tensorrt", tmp_path / "trt", opts)  # parity against the torch logits is checked inside
    assert art.meta["layer_precision_counts"] and (tmp_path / "trt" / "layers.json").exists()
    assert art.options["plan"]["tensorrt"] == tensorrt.__version__
    again = compile_onnx(onnx, "tensorrt", tmp_path / "trt2", opts)
    assert again.meta["cached"] and again.meta["cache_key"] == art.meta["cache_key"]
    from edgekit.backends.base import get_backend

    runner = get_backend("tensorrt").load(art)
    feed = spec.example_inputs(3)
    out = runner.run(feed)["logits"]
    assert out.shape == (3, 10) and np.isfinite(out).all()
    call = runner.bind(feed)
    call()
