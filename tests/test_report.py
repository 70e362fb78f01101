"""The accuracy-vs-latency report, built from real measurements: a tiny trained model, exported to ONNX,
an INT8 variant from ONNX Runtime's static quantization, a pruned variant from Torch-Pruning, each run on
ONNX Runtime and OpenVINO for metrics and latency; plus a failed variant, an unreachable remote target and a
remote ("loopback") target, the way the pipeline records them."""
import copy
import json
import resource
import shutil
import subprocess
import time
import warnings

import numpy as np
import pytest
import torch

from conftest import run_cli
from edgekit.errors import EdgekitError
from edgekit.results import SCHEMA, Results, load_results, save_results

BATCHES = (1, 8)


class _Ort:
    def __init__(self, onnx_path, spec):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1  # the test machine is shared: one thread gives steadier numbers
        self.sess, self.spec = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]), spec

    def run(self, feed):
        return {"logits": self.sess.run(None, feed)[0]}


class _OpenVINO:
    def __init__(self, onnx_path, spec):
        import openvino as ov

        self.model = ov.Core().compile_model(str(onnx_path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1})
        self.request, self.spec = self.model.create_infer_request(), spec

    def run(self, feed):
        return {"logits": self.request.infer(feed)[0].copy()}


def _latency(runner, spec, batch, iters):
    feed = spec.example_inputs(batch, seed=1)
    for _ in range(5):
        runner.run(feed)
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runner.run(feed)
        t.append(time.perf_counter() - t0)
    t = np.array(t)
    cv = float(t.std() / t.mean())
    return {"median": float(np.median(t)), "p90": float(np.percentile(t, 90)), "p99": float(np.percentile(t, 99)),
            "mean": float(t.mean()), "std": float(t.std()), "cv": cv, "min": float(t.min()), "max": float(t.max()),
            "n": iters, "high_variance": cv > 0.05}


def _measure(variant, target, make_runner, onnx_path, spec, torch_model, test, parity_data, precision, metrics=True):
    from edgekit.evaluate import evaluate
    from edgekit.parity import parity

    t0 = time.perf_counter()
    runner = make_runner(onnx_path, spec)
    build = time.perf_counter() - t0
    lat = {b: _latency(runner, spec, b, 40 if b == 1 else 15) for b in BATCHES}
    p = parity(torch_model, runner, parity_data, max_samples=64)
    return {"variant": variant, "target": target, "status": "ok", "precision": precision,
            "metrics": evaluate(runner, test, spec.class_names) if metrics else None,
            "parity": {k: p[k] for k in ("top1_agreement", "max_abs_diff", "mean_abs_diff", "n")},
            "latency": lat, "throughput": {b: b / s["median"] for b, s in lat.items()},
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "build_seconds": build, "artifact_size_bytes": onnx_path.stat().st_size}


def _branches(model, example):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(**example)
    flops = fc.get_flop_counts()
    return {b: {"params": sum(p.numel() for p in getattr(model, b).parameters()),
                "macs": sum(flops.get(f"FusionModel.{b}", {}).values()) // 2} for b in ("image", "audio", "text", "head")}


def _int8(fp32_onnx, out, calib, keep_float):
    """ONNX Runtime static INT8 (explicit Q/DQ); the per-layer map says what stayed float and why."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = (f for f, _ in calib.batches(1))

        def get_next(self):
            return next(self.it, None)

    ops = ("Conv", "MatMul", "Gemm")
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(str(fp32_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=list(ops), nodes_to_exclude=[keep_float])
    q = onnx.load(str(out))
    dq_out = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    pmap = {}
    for n in q.graph.node:
        if n.op_type in ops:
            int8 = any(i in dq_out for i in n.input)
            pmap[n.name] = {"precision": "int8" if int8 else "fp32",
                            "why": "weights and activations quantized (per-tensor, 64 calibration samples)" if int8 else
                            ("excluded: the logits layer is kept float for accuracy" if n.name == keep_float else "not quantized by the quantizer")}
    return pmap


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_checkpoint, fsdd):
    """A run directory with a results.json of real measurements (about 30 s on 2 idle cores)."""
    import torch_pruning as tp

    from edgekit import checkpoint, export
    from edgekit.data import avdigits
    from edgekit.env import fingerprint
    from edgekit.evaluate import evaluate
    from edgekit.models import count_macs, count_params
    from edgekit.train import to_torch

    run = tmp_path_factory.mktemp("run")
    model, spec, cfg = checkpoint.load(tiny_checkpoint)
    seed = spec.preprocessing.get("seed", 0)
    test, val = avdigits.load("test", fsdd, seed).subset(np.arange(300)), avdigits.load("val", fsdd, seed)
    idx = np.random.default_rng(0).permutation(len(val))  # the split is sorted by class: sample across it
    calib, parity_data = val.subset(idx[:64]), val.subset(idx[64:128])
    example = to_torch(spec.example_inputs(1))

    pruned = copy.deepcopy(model)  # 30% of the conv channels, no fine-tuning: real, and expected to miss the budget
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "unwrapped parameters": the ignored branches hold them
        tp.pruner.MetaPruner(pruned, example_inputs=example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.3,
                             ignored_layers=[pruned.text, pruned.head, pruned.image.proj, pruned.audio.proj]).step()
    onnx = {"fp32": run / "variants/fp32/model.onnx", "pruned30": run / "variants/pruned30/model.onnx", "int8": run / "variants/int8/model.onnx"}
    export.to_onnx(model, spec, onnx["fp32"], check_parity_on=parity_data)
    export.to_onnx(pruned, spec, onnx["pruned30"], check_parity_on=parity_data)
    pmap = _int8(onnx["fp32"], onnx["int8"], calib, keep_float="/model/head/classifier/Gemm")
    torch_of = {"fp32": model, "pruned30": pruned, "int8": model}

    def variant(name, m, precision, **extra):
        return {"status": "ok", "precision": precision, "params": count_params(m), "macs": count_macs(m, example),
                "size_bytes": onnx[name].stat().st_size, **extra}

    variants = {
        "fp32": variant("fp32", model, "fp32", torch_metrics=evaluate(model, test, spec.class_names)),
        "pruned30": variant("pruned30", pruned, "fp32",
                            passes=[{"pass": "prune", "method": "magnitude L2", "ratio": 0.3, "fine_tune_epochs": 0}],
                            branch_stats={"before": _branches(model, example), "after": _branches(pruned, example)}),
        "int8": variant("int8", model, "int8", precision_map=pmap, passes=[{"pass": "quantize", "tool": "onnxruntime", "format": "QDQ"}]),
        "distilled": {"status": "failed", "reason": "distill: teacher checkpoint runs/teacher not found", "passes": []},
    }
    fp = fingerprint()
    targets = {"cpu-ort": {"backend": "onnxruntime", "location": "local", "fingerprint": fp},
               "cpu-openvino": {"backend": "openvino", "location": "local", "fingerprint": fp},
               "loopback": {"backend": "onnxruntime", "location": "ssh://edgekit@127.0.0.1:2222", "fingerprint": {**fp, "transport": "ssh loopback"}},
               "jetson-orin": {"backend": "tensorrt", "location": "ssh://jetson@10.0.0.2", "status": "failed", "reason": "host unreachable"}}
    results = []
    for v in ("fp32", "pruned30", "int8"):
        results.append(_measure(v, "cpu-ort", _Ort, onnx[v], spec, torch_of[v], test, parity_data, variants[v]["precision"]))
        try:
            results.append(_measure(v, "cpu-openvino", _OpenVINO, onnx[v], spec, torch_of[v], test, parity_data, variants[v]["precision"]))
        except ImportError as e:
            targets["cpu-openvino"].update(status="failed", reason=f"openvino not installed ({e})")
    # the deploy issue's loopback device runs ONNX Runtime over SSH on this same machine: measured here directly;
    # like a device agent that only checks parity and latency, it records no metrics (the report falls back to torch's)
    results.append(_measure("fp32", "loopback", _Ort, onnx["fp32"], spec, model, test, parity_data, "fp32", metrics=False))
    calib_labels = calib.labels.tolist()
    doc = {"schema": SCHEMA,
           "run": {"name": "quickstart-tiny", "created": "2025-11-23T09:00:00Z", "edgekit_version": "0.1.0",
                   "commands": [f"edgekit train --preset tiny --fusion attention --epochs 4 --out {tiny_checkpoint}",
                                "pytest tests/test_report.py  # builds these variants and measurements"],
                   "recipe": {"model": {"checkpoint": str(tiny_checkpoint)}, "budget": {"max_accuracy_drop": 0.01},
                              "passes": {"prune": {"ratio": 0.3}, "quantize": {"precision": "int8", "calibration": {"size": 64}}},
                              "targets": list(targets)}},
           "budget": {"max_accuracy_drop": 0.01, "metric": "accuracy"}, "reference_variant": "fp32",
           "calibration": {"name": "64 random val samples", "size": len(calib),
                           "class_counts": {c: calib_labels.count(i) for i, c in enumerate(spec.class_names)},
                           "modality_coverage": {m: float(calib.inputs["modality_mask"][:, j].mean()) for j, m in enumerate(calib.modalities)}},
           "variants": variants, "targets": targets, "results": results}
    save_results(doc, run / "results.json")
    return run


@pytest.fixture(scope="module")
def report(real_run):
    from edgekit.report import write_report

    out = write_report(real_run)
    return out, out["md"].read_text(), out["html"].read_text()


def test_report_of_a_real_run_has_all_six_parts(report, real_run):
    out, md, page = report
    for title in ("## Recommendation", "## Variants per target", "## Accuracy vs latency and size", "## Multimodal view",
                  "### Accuracy with each modality missing", "### Per-branch cost before and after the passes",
                  "### Per-class F1 of the chosen variant", "## Trust", "### Parity of each deployed artifact",
                  "### Calibration set", "### Precision map of int8", "### Benchmark variation", "## Reproduce", "### Resolved recipe"):
        assert title in md, title
    res = load_results(real_run)
    ort_fp32 = next(r for r in res.results if r.variant == "fp32" and r.target == "cpu-ort")
    assert f"{ort_fp32.latency[1].median * 1e3:.3f} ms" in md  # real numbers with units
    assert f"{100 * ort_fp32.metrics.accuracy:.1f}%" in md and "MMACs" in md and " MB" in md
    assert "/model/head/classifier/Gemm" in md and "logits layer is kept float" in md
    assert "avx2" in md  # the CPU ISA in the environment fingerprint
    assert len(out["recommendation"]) == len(res.targets) and out["recommendation"][0].startswith("cpu-ort: ")
    assert out["pareto_png"].stat().st_size > 10_000 and out["size_png"].stat().st_size > 10_000
    assert page.count("<svg") == 2 and "pareto" in page


def test_remote_targets_appear_beside_local_ones(report):
    _, md, page = report
    assert "### loopback — onnxruntime, ssh://edgekit@127.0.0.1:2222" in md
    assert "### cpu-ort — onnxruntime, local" in md
    assert ">loopback<" in page  # the Pareto legend has a series for the remote target


def test_failures_are_shown_with_reasons_never_dropped(report):
    _, md, _ = report
    assert "## Failed" in md
    assert "distill: teacher checkpoint runs/teacher not found" in md
    assert "host unreachable" in md and "### jetson-orin — tensorrt, ssh://jetson@10.0.0.2" in md
    assert "jetson-orin (tensorrt, ssh://jetson@10.0.0.2)**: no recommendation: target failed (host unreachable)" in md
    assert "**target failed**: host unreachable; nothing was measured here (fp32, pruned30, int8, distilled)" in md
    assert "| int8 on loopback | ❌ no result recorded |" in md  # loopback only measured fp32: the missing pairs are listed
    assert "| distilled | ❌ variant failed: distill: teacher checkpoint runs/teacher not found |" in md


def test_html_is_self_contained(report):
    _, _, page = report
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not [u for u in ("src=\"http", "href=\"http", "url(http", "src='http") if u in page]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not _chromium(), reason="chromium not installed (Debian package `chromium`; .ci/run installs it)")
def test_report_html_loads_in_headless_chromium(report, tmp_path):
    from PIL import Image

    out, _, _ = report
    shot = tmp_path / "report.png"
    # every host name resolves to nothing: a page that needed the network would log a failed load
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}"]
    r = subprocess.run(base + [f"--screenshot={shot}", "--window-size=1280,2400", out["html"].as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert shot.exists(), r.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400) and len(img.getcolors(1 << 20) or []) > 50  # not a blank page
    dom = subprocess.run(base + ["--enable-logging=stderr", "--v=0", "--dump-dom", out["html"].as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="fig-pareto"' in dom.stdout and 'id="fig-size_accuracy"' in dom.stdout and dom.stdout.count("<svg") == 2
    assert "Recommendation" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Failed to load resource" in line or "net::ERR" in line]
    assert not console, console


def test_cli_report_prints_recommendation_and_path(real_run):
    r = run_cli("report", real_run)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("report.html") and "cpu-ort:" in r.stderr


# ------------------------------------------------------------------------------------------------ synthetic

def _doc(**over):
    lat = lambda s, cv=0.01: {"1": {"median": s, "p90": s * 1.1, "p99": s * 1.2, "cv": cv, "n": 100}}  # noqa: E731
    doc = {"schema": SCHEMA, "run": {"name": "synthetic"}, "budget": {"max_accuracy_drop": 0.01},
           "variants": {"fp32": {}, "int8": {"precision": "int8"}, "pruned": {}},
           "targets": {"cpu": {"backend": "onnxruntime"}},
           "results": [{"variant": "fp32", "target": "cpu", "metrics": {"accuracy": 0.97}, "latency": lat(0.002)},
                       {"variant": "int8", "target": "cpu", "metrics": {"accuracy": 0.96}, "latency": lat(0.001, cv=0.2)},
                       {"variant": "pruned", "target": "cpu", "metrics": {"accuracy": 0.90}, "latency": lat(0.0005)}]}
    doc.update(over)
    return doc


def _recs(doc):
    from edgekit.report import analyse, recommend

    res = Results.model_validate(doc)
    return {t: (kind, text) for t, (kind, text, _) in recommend(res, analyse(res)[0]).items()}


def test_recommendation_is_fastest_within_budget_on_the_same_target():
    kind, text = _recs(_doc())["cpu"]
    # a drop of exactly 1.0 pt is within a 1-point budget; the faster pruned variant is not (−7 pt)
    assert kind == "ok" and text.startswith("ship int8: 2.00× faster than fp32") and "−1.0 pt" in text


def test_recommendation_when_nothing_beats_the_reference_or_the_reference_failed():
    d = _doc()
    d["results"][1]["metrics"]["accuracy"] = 0.95
    assert _recs(d)["cpu"][0] == "warn" and _recs(d)["cpu"][1].startswith("keep fp32")
    d["results"][0]["latency"] = {}
    assert "no variant met the budget" in _recs(d)["cpu"][1]
    d["results"][0] = {"variant": "fp32", "target": "cpu", "status": "failed", "reason": "compile error: op X"}
    kind, text = _recs(d)["cpu"]
    assert kind == "bad" and "reference fp32 failed here (compile error: op X)" in text


def test_inconsistent_results_are_reported_not_dropped(tmp_path):
    from edgekit.report import write_report

    d = _doc()
    d["variants"]["pruned"] = {"status": "failed", "reason": "prune: dependency graph broke"}  # yet it has an ok result
    d["results"].append({"variant": "ghost", "target": "cpu", "metrics": {"accuracy": 0.5}})
    save_results(d, tmp_path / "results.json")
    md = write_report(tmp_path)["md"].read_text()
    assert "variant 'ghost' is not listed under variants" in md and "| ghost |" in md
    assert "pruned on cpu has an ok result although variant failed: prune: dependency graph broke" in md
    assert "high variation" in md and "int8 on cpu at batch 1" in md  # CV 20% flagged


def test_baselines_block_is_rendered_generically(tmp_path):
    from edgekit.report import write_report

    save_results(_doc(baselines={"title": "Baselines", "note": "single-modality models",
                                 "rows": [{"name": "audio-only", "backend": "onnxruntime", "accuracy": 0.8, "latency_p50": 0.0004,
                                           "size_bytes": 120000, "speedup_vs_fp32": 5.0}]}), tmp_path / "results.json")
    md = write_report(tmp_path)["md"].read_text()
    assert "## Baselines" in md and "single-modality models" in md
    assert "| audio-only | onnxruntime | – | 80.0% | – | 0.400 ms | – | – | 0.12 MB | 5 |" in md


def test_results_round_trip(tmp_path):
    d = _doc()
    save_results(d, tmp_path / "results.json")
    first = load_results(tmp_path / "results.json")
    save_results(first, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads((tmp_path / "results.json").read_text())
    assert first.results[0].latency[1].median == 0.002


def test_latency_from_the_bench_in_milliseconds_is_stored_in_seconds():
    from edgekit.agent.measure import summarize

    stats = summarize([0.002, 0.003, 0.004])  # what `edgekit bench` records: milliseconds, unit "ms"
    res = Results.model_validate(_doc(results=[{"variant": "fp32", "target": "cpu", "latency": {"1": stats}}]))
    s = res.results[0].latency[1]
    assert s.unit == "s" and s.median == pytest.approx(0.003) and s.cv == pytest.approx(stats["cv"]) and s.n == 3


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ('{"schema": "edgekit-results/1", "results": [', "is not valid JSON"),
    ("[1, 2]", "not an object"),
    ('{"schema": "edgekit-results/9"}', "upgrade edgekit"),
    (json.dumps(_doc(results=[{"variant": "fp32", "target": "cpu", "latency": {"1": {"median": "fast"}}}])),
     "invalid at results[0].latency.1.median"),
    (json.dumps(_doc(results=[{"variant": "fp32", "target": "cpu", "status": "maybe"}])), "invalid at results[0].status"),
])
def test_corrupt_results_json_is_a_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    with pytest.raises(EdgekitError) as e:
        load_results(tmp_path)
    assert message in str(e.value) and "results.json" in e.value.message and e.value.hint


def test_cli_report_on_corrupt_results_is_one_line(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    r = run_cli("report", tmp_path)
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "report.html").exists()
