"""The accuracy-vs-latency report, built from a real run: `edgekit run` on the tiny model (conftest.tiny_run)
builds fp32, an NNCF INT8 variant, a pruned variant over its budget and a variant that fails on a real bad input,
compiles and measures them on ONNX Runtime and OpenVINO, and records a TensorRT target that is not installed
and an ssh:// device that does not answer; the report is written from that results.json."""
import json
import shutil
import subprocess

import pytest

from conftest import copy_run, run_cli
from edgekit.errors import EdgekitError
from edgekit.results import SCHEMA, Results, load_results, save_results


@pytest.fixture(scope="module")
def real_run(tiny_run, tmp_path_factory):
    """A private copy of the shared run (the report is rewritten in it) and the unreachable device's label."""
    run, _, remote = tiny_run
    return copy_run(run, tmp_path_factory.mktemp("report") / "run"), remote


@pytest.fixture(scope="module")
def report(real_run):
    from edgekit.report import write_report

    out = write_report(real_run[0])
    return out, out["md"].read_text(), out["html"].read_text()


def test_report_of_a_real_run_has_all_six_parts(report, real_run):
    out, md, page = report
    for title in ("## Recommendation", "## Variants per target", "## Accuracy vs latency and size", "## Multimodal view",
                  "### Accuracy with each modality missing", "### Per-branch cost before and after the passes",
                  "### Per-class F1 of the chosen variant", "## Trust", "### Parity of each deployed artifact",
                  "### Calibration set", "### Benchmark variation", "## Reproduce", "### Resolved recipe"):
        assert title in md, title
    res = load_results(real_run[0])
    ort_fp32 = next(r for r in res.results if r.variant == "fp32" and r.target == "onnxruntime")
    assert f"{ort_fp32.latency[1].median * 1e3:.3f} ms" in md  # real numbers with units
    assert f"{100 * ort_fp32.metrics.accuracy:.1f}%" in md and "MMACs" in md and " MB" in md
    cal = json.loads((real_run[0] / "compress.json").read_text())["calibration"]
    assert cal["size"] == 32 and ", ".join(f"{c}: {n}" for c, n in cal["class_counts"].items()) in md  # the set the passes saw
    assert "avx2" in md  # the CPU ISA in the environment fingerprint
    assert len(out["recommendation"]) == len(res.targets) and out["recommendation"][0].startswith("onnxruntime: ")
    assert out["pareto_png"].stat().st_size > 10_000 and out["size_png"].stat().st_size > 10_000
    assert "<svg" in page and "pareto" in page


def test_remote_targets_appear_beside_local_ones(report, real_run):
    _, md, _ = report
    remote = real_run[1]
    assert f"### {remote} — tensorrt, ssh://{remote.split('@', 1)[1]}" in md
    assert "### onnxruntime — onnxruntime, local" in md


def test_failures_are_shown_with_reasons_never_dropped(report, real_run):
    """Every failure of the run is in the report with its reason: the variant the quantize pass refused, the
    device that did not answer (and the backend that is not installed), and the pairs they left unmeasured."""
    _, md, _ = report
    res = load_results(real_run[0])
    assert "## Failed" in md
    broken = res.variants["broken"].reason
    assert "keep_float names 'radar'" in broken and broken in md
    for name, t in res.targets.items():
        if t.status == "failed":
            assert t.reason and f"no recommendation: target failed ({t.reason})" in md, name
    assert res.targets[real_run[1]].status == "failed"
    for r in res.results:  # no pair is dropped: each failed one shows its reason in its target's table
        if r.status == "failed":
            assert r.reason[:60] in md, (r.variant, r.target)


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
    r = run_cli("report", real_run[0])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("report.html") and "onnxruntime:" in r.stderr


# ------------------------------------------------------------------------------------------------ synthetic

def _doc(**over):
    lat = lambda s, cv=0.01: {"1": {"median": s, "p90": s * 1.1, "p99": s * 1.2, "cv": cv, "n": 100}}  # noqa: E731
    # timed in the same 5 interleaved rounds, each round's drift shared by all variants: every ratio is exact
    rounds = lambda s: {"round_medians": {"1": [s * k for k in (0.99, 1.0, 1.01, 1.0, 1.02)]}, "timing_session": "t1"}  # noqa: E731
    doc = {"schema": SCHEMA, "run": {"name": "synthetic"}, "budget": {"max_accuracy_drop": 0.01},
           "variants": {"fp32": {}, "int8": {"precision": "int8"}, "pruned": {}},
           "targets": {"cpu": {"backend": "onnxruntime"}},
           "results": [{"variant": "fp32", "target": "cpu", "metrics": {"accuracy": 0.97}, "latency": lat(0.002), **rounds(0.002)},
                       {"variant": "int8", "target": "cpu", "metrics": {"accuracy": 0.96}, "latency": lat(0.001, cv=0.2), **rounds(0.001)},
                       {"variant": "pruned", "target": "cpu", "metrics": {"accuracy": 0.90}, "latency": lat(0.0005), **rounds(0.0005)}]}
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


def test_report_names_the_data_and_its_chance_level(tmp_path):
    from edgekit.report import write_report
    from edgekit.results import data_record

    described = {"source": "avdigits (fsdd:/data/fsdd/recordings:3000, seed 0)", "classes": [str(i) for i in range(10)],
                 "splits": {"test": {"size": 600, "classes": {str(i): 114 if i == 3 else 54 for i in range(10)}}}}  # one class over-represented
    rec = data_record(described)
    assert rec["chance"] == pytest.approx(114 / 600) and rec["test_size"] == 600 and rec["classes"] == 10
    save_results(_doc(data=rec), tmp_path / "results.json")
    md = write_report(tmp_path)["md"].read_text()
    assert "avdigits with 3000 real FSDD spoken-digit recordings" in md and "(600 samples, 10 classes)" in md
    assert "chance level (always the most common class) is 19.0%" in md
    save_results(_doc(), tmp_path / "results.json")  # an older results.json without the record: no line, no error
    assert "chance level" not in write_report(tmp_path)["md"].read_text()
