"""benchmarks/baselines.py on a tiny model with very few iterations: every row is there, the ratios are the ones
the pooled latencies give, the run's results.json gets a `baselines` section the report renders, the per-layer
profiles are written, and bad input is one line with exit status 2. No timing is asserted."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.backends.base import get_backend

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "baselines.py"
BACKENDS = ["onnxruntime"] + (["openvino"] if get_backend("openvino").available()[0] else [])
TARGETS = ["--target-speedup-vs-b2", "1.6", "--target-speedup-vs-b1", "3", "--target-max-drop-pt", "1"]  # as an issue asks
FAST = ["--rounds", "3", "--seconds", "0.02", "--min-iterations", "3", "--warmup", "2", "--calibration-size", "16",
        "--eval-samples", "48", "--profile-iterations", "3", "--backends", ",".join(BACKENDS)]


def _script(*args, env=None):
    import os

    e = dict(os.environ, **(env or {}))
    e.pop("EDGEKIT_DEBUG", None)
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO, env=e, timeout=900)


@pytest.fixture(scope="module")
def baselines_run(tiny_run, tiny_checkpoint, tmp_path_factory):
    """A copy of the run `edgekit run` left for the tiny model (conftest.tiny_run: fp32 and an NNCF INT8 variant
    exported as Q/DQ among others, results.json measured on ONNX Runtime and OpenVINO); the script adds to it."""
    from conftest import copy_run

    return copy_run(tiny_run[0], tmp_path_factory.mktemp("run") / "cpu"), tiny_checkpoint


@pytest.mark.slow
def test_baselines_rows_ratios_results_and_profiles(baselines_run, fsdd):
    run, ck = baselines_run
    # E is the run's INT8 variant whatever the run recommends (--variant overrides --run's choice, which follows timings)
    res = _script("--checkpoint", ck, "--run", run, "--variant", run / "variants" / "int8", *FAST,
                  *(["--fsdd", fsdd] if fsdd else []), *TARGETS)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((run / "baselines" / "baselines.json").read_text())
    rows = {(r["key"], r["backend"]): r for r in doc["rows"]}
    assert set(rows) == {("B0", "torch"), ("B2u", "onnxruntime")} | {(k, b) for k in ("B1", "B2", "E") for b in BACKENDS}
    assert len({r["name"] for r in doc["rows"]}) == len(doc["rows"])
    b0 = rows[("B0", "torch")]
    for r in doc["rows"]:
        s = r["latency_ms"]["1"]
        assert s["n"] >= 3 * 3 and s["min"] <= s["median"] <= s["p99"] <= s["max"]
        assert len(r["round_medians_ms"]["1"]) == len(r["round_medians_ms"]["8"]) == 3
        assert r["throughput"]["8"] > 0 and r["size_bytes"] > 0 and 0 <= r["metrics"]["accuracy"] <= 1
        assert r["metrics"]["n"] == 48
    for b in BACKENDS:
        e, b1, b2 = rows[("E", b)], rows[("B1", b)], rows[("B2", b)]
        assert e["variant"] == "int8" and e["precision"] == "int8" and b2["precision"] == "int8" and b1["precision"] == "fp32"
        for ref_name, ref in (("B0", b0), ("B1", b1), ("B2", b2)):
            ra = e["ratios"][ref_name]
            # the median of the paired per-round p50 ratios: the statistic its 95% interval is of
            per_round = np.asarray(ref["round_medians_ms"]["1"]) / np.asarray(e["round_medians_ms"]["1"])
            assert ra["speedup_p50_b1"] == pytest.approx(float(np.median(per_round)), rel=1e-9)
            assert ra["speedup_p50_b1_ci95"][0] <= ra["speedup_p50_b1"] <= ra["speedup_p50_b1_ci95"][1]
            assert ra["throughput_ratio_b8"] == pytest.approx(e["throughput"]["8"] / ref["throughput"]["8"], rel=1e-9)
            assert ra["accuracy_delta_pt"] == pytest.approx(100 * (e["metrics"]["accuracy"] - ref["metrics"]["accuracy"]))
            lo, hi = ra["speedup_p50_b1_per_round"]
            assert lo <= hi
        assert set(b2["ratios"]) == {"B0", "B1"} and set(b1["ratios"]) == {"B0"}
        assert set(e["ratios"]) == {"B0", "B1", "B2"} | ({"B2u"} if b == "onnxruntime" else set())
        t = doc["standing"][b]
        assert t["E"] == "int8" and t["speedup_vs_B2"]["value"] == pytest.approx(e["ratios"]["B2"]["speedup_p50_b1"])
        ci = t["speedup_vs_B2"]["ci95"]  # the speed rule: met when the interval's lower end is above the target
        assert t["speedup_vs_B2"]["target"] == 1.6 and t["speedup_vs_B2"]["met"] == (ci is not None and ci[0] > 1.6)
        b2u = {rows[("B2u", b)]["name"]} if b == "onnxruntime" else set()
        assert isinstance(t["accuracy_drop_vs_fp32_pt"]["met"], bool) and set(t["int8_faster_than_fp32"]) == {b2["name"], e["name"]} | b2u
        assert e["qdq_rewrite"]["relu_outputs"] + e["qdq_rewrite"]["shifted"] > 0  # edgekit's CPU Q/DQ rewrite applied to E
        prof = json.loads((run / "baselines" / f"profile-{b}.json").read_text())
        ms = [x["ms"] for x in prof["top"]]
        assert 0 < len(ms) <= 10 and ms == sorted(ms, reverse=True) and prof["iterations"] == 3
        assert sum(x["share"] for x in prof["all_layers"]) == pytest.approx(1.0)
    # results.json: the same rows in SI units, rendered by the report
    merged = json.loads((run / "results.json").read_text())["baselines"]
    assert [r["name"] for r in merged["rows"]] == [r["name"] for r in doc["rows"]] and merged["note"] == doc["note"]
    for m, r in zip(merged["rows"], doc["rows"]):
        assert m["latency_p50"] == pytest.approx(r["latency_ms"]["1"]["median"] / 1000)
        assert m["throughput"] == pytest.approx(r["throughput"]["8"]) and m["accuracy"] == r["metrics"]["accuracy"]
        assert m["speedup_vs_B2"] == (r["ratios"]["B2"]["speedup_p50_b1"] if "B2" in r["ratios"] else None)
    report = (run / "report.md").read_text()
    assert "Baselines" in report and "speedup_vs_B2" in report and rows[("E", "onnxruntime")]["name"] in report


def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_checkpoint):
    (tmp_path / "run").mkdir()
    res = _script("--checkpoint", tiny_checkpoint, "--run", tmp_path / "run", *FAST)
    assert res.returncode == 2 and "results.json" in res.stderr and "Traceback" not in res.stderr
    res = _script("--checkpoint", tiny_checkpoint, "--variant", tmp_path / "nothing.onnx", "--out", tmp_path / "o", *FAST)
    assert res.returncode == 2 and "neither a variant directory" in res.stderr and "Traceback" not in res.stderr
    res = _script("--checkpoint", tiny_checkpoint, "--variant", tmp_path, *FAST)
    assert res.returncode == 2 and "--out" in res.stderr
    assert not (tmp_path / "run" / "baselines" / "baselines.json").exists()


def test_int8_export_folds_batchnorm_and_cpu_rewrite_fuses_every_conv(baselines_run, tmp_path, fsdd):
    """The Q/DQ placement E's speed depends on: no BatchNorm left between a Q/DQ conv and its Q, and after the CPU
    rewrite (uint8 activations) ONNX Runtime runs every convolution as QLinearConv and no MatMul in float, with
    the same predictions as the graph before the rewrite."""
    import onnx
    import onnxruntime as ort

    from edgekit.data import avdigits
    from edgekit.onnxgraph.qdq import prepare_int8_for_cpu
    from edgekit.parity import sidecar

    run, _ = baselines_run
    src = run / "variants" / "int8" / "model.onnx"
    report = json.loads(sidecar(src, "export.json").read_text())
    ops = report["op_counts"]
    assert "BatchNormalization" not in ops and report["bn_folded_into_qdq_conv"] == ops["Conv"] > 0
    done = prepare_int8_for_cpu(src, tmp_path / "cpu.onnx")
    assert done["relu_outputs"] > 0 and done["shifted"] > 0 and done["bn_folded"] == 0  # already folded at export
    assert prepare_int8_for_cpu(run / "variants" / "fp32" / "model.onnx", tmp_path / "no.onnx") is None
    assert not (tmp_path / "no.onnx").exists()

    def optimized(path):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        kinds = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
        return sess, {k: kinds.count(k) for k in set(kinds)}

    before, ops_before = optimized(src)
    after, ops_after = optimized(tmp_path / "cpu.onnx")
    assert ops_after.get("QLinearConv") == ops["Conv"] and "Conv" not in ops_after and "FusedConv" not in ops_after
    assert "MatMul" not in ops_after and ops_after.get("QLinearConv", 0) > ops_before.get("QLinearConv", 0)
    test = avdigits.load("test", fsdd).subset(np.arange(48))
    feed = {k: v for k, v in test.inputs.items()}
    a, b = before.run(None, feed)[0], after.run(None, feed)[0]
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95 and np.abs(a - b).max() < 0.5 * np.abs(a).max()


def _timed_rows():
    """Rows as edgekit.baselines leaves them after timing: B0, B1/B2 on ONNX Runtime and E, latencies in ms."""
    from edgekit.baselines import add_ratios

    def row(key, name, backend, precision, p50_ms, acc, variant=None):
        lat = {"median": p50_ms, "p99": 1.5 * p50_ms, "n": 10}
        return {"key": key, "name": name, "backend": backend, "precision": precision, "size_bytes": 1000, "variant": variant,
                "metrics": {"accuracy": acc, "f1_macro": acc - 0.01}, "latency_ms": {1: lat, 8: dict(lat, median=4 * p50_ms)},
                "throughput": {1: 1000 / p50_ms, 8: 8000 / (4 * p50_ms)}, "round_medians_ms": {1: [p50_ms] * 3, 8: [4 * p50_ms] * 3}}

    rows = [row("B0", "B0 torch", "torch", "fp32", 4.0, 0.95), row("B1", "B1 ORT", "onnxruntime", "fp32", 2.0, 0.95),
            row("B2", "B2 ORT", "onnxruntime", "int8", 1.0, 0.90), row("E", "E int8", "onnxruntime", "int8", 0.5, 0.945, "int8")]
    add_ratios(rows)
    return rows


def test_standing_judges_only_against_targets_it_is_given():
    """Acceptance numbers are the caller's: without targets E's standing has the values and no verdict; with them,
    met is value >= target for speed-ups and drop <= budget for accuracy."""
    from edgekit.baselines import standing

    rows = _timed_rows()
    bare = standing(rows)["onnxruntime"]
    assert bare["speedup_vs_B2"] == {"value": pytest.approx(2.0), "ci95": pytest.approx([2.0, 2.0]), "verdict": "faster"}
    assert bare["speedup_vs_B1"]["value"] == pytest.approx(4.0) and "met" not in bare["speedup_vs_B1"]
    assert "met" not in bare["accuracy_drop_vs_fp32_pt"] and bare["accuracy_drop_vs_fp32_pt"]["value"] == pytest.approx(0.5)
    assert {n: (v["speedup_vs_B1"], v["verdict"], v["met"]) for n, v in bare["int8_faster_than_fp32"].items()} == {
        "B2 ORT": (pytest.approx(2.0), "faster", True), "E int8": (pytest.approx(4.0), "faster", True)}
    judged = standing(rows, {"speedup_vs_B2": 2.5, "speedup_vs_B1": 3.0, "max_accuracy_drop_pt": 0.5})["onnxruntime"]
    assert (judged["speedup_vs_B2"]["met"], judged["speedup_vs_B1"]["met"], judged["accuracy_drop_vs_fp32_pt"]["met"]) == (False, True, True)
    only_b2 = standing(rows, {"speedup_vs_B2": 1.5})["onnxruntime"]
    assert only_b2["speedup_vs_B2"]["met"] is True and "target" not in only_b2["speedup_vs_B1"]


def test_results_section_is_the_results_schema_in_si_units(tmp_path):
    """The `baselines` section edgekit.results owns: seconds (not ms), batch-8 throughput, speedup_vs_X columns; it
    round-trips through results.json and the report renders it."""
    from edgekit.baselines import results_section
    from edgekit.report import write_report
    from edgekit.results import load_results, save_results

    rows = _timed_rows()
    section = results_section(rows, note="four rows")
    e = section.rows[-1].model_dump()
    assert e["latency_p50"] == pytest.approx(0.0005) and e["latency_p99"] == pytest.approx(0.00075)
    assert e["throughput"] == pytest.approx(4000.0) and e["precision"] == "int8" and e["target"] == "local"
    assert (e["speedup_vs_B0"], e["speedup_vs_B1"], e["speedup_vs_B2"], e["speedup_vs_B2u"]) == (pytest.approx(8.0), pytest.approx(4.0), pytest.approx(2.0), None)
    json_rows = [dict(r, latency_ms={str(b): v for b, v in r["latency_ms"].items()}, throughput={str(b): v for b, v in r["throughput"].items()})
                 for r in rows]  # as read back from baselines.json: batch sizes as strings
    assert results_section(json_rows).rows == results_section(rows).rows
    save_results({"schema": "edgekit-results/1", "run": {"name": "r"}, "baselines": section.model_dump()}, tmp_path / "results.json")
    assert load_results(tmp_path / "results.json").baselines.rows[-1].latency_p50 == pytest.approx(0.0005)
    write_report(tmp_path)
    assert "four rows" in (tmp_path / "report.md").read_text() and "E int8" in (tmp_path / "report.md").read_text()
