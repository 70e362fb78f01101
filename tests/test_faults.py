"""`edgekit run` under faults: killed mid-stage and rerun, two runs on one directory, a failing target or
variant, an unreachable device. Every case runs the real pipeline (torch, NNCF, ONNX Runtime, OpenVINO) on the
tiny model, through the real CLI in a subprocess."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli, write_recipe

pytestmark = pytest.mark.slow


def recipe(tmp_path, fsdd, targets=None, variants=None, name="faults"):
    variants = variants or [{"name": "int8", "passes": [{"quantize": {}}]},
                            {"name": "pruned", "passes": [{"prune": {"ratio": 0.3}}], "budget": {"max_accuracy_drop": 50.0}}]
    return write_recipe(tmp_path, fsdd, variants, targets or [{"backend": "onnxruntime"}, {"backend": "openvino"}], name)


def accuracies(run_dir):
    """(variant, target) -> accuracy: what must not depend on whether the run was interrupted."""
    res = json.loads((run_dir / "results.json").read_text())
    return {(r["variant"], r["target"]): (r["status"], (r.get("metrics") or {}).get("accuracy")) for r in res["results"]}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_checkpoint, fsdd):
    """One uninterrupted run, the reference for the others."""
    d = tmp_path_factory.mktemp("clean")
    r = run_cli("run", recipe(d, fsdd), "--out", d / "run", "--checkpoint", tiny_checkpoint)
    assert r.returncode == 0, r.stderr[-2000:]
    return d / "run", r


def _recommendations(run):
    """Per target: (the report's sentence, the variant it recommends or None), from results.json."""
    from edgekit.report import analyse, recommend
    from edgekit.results import load_results

    res = load_results(run)
    return {t: (text, row.r.variant if row else None) for t, (_, text, row) in recommend(res, analyse(res)[0]).items()}


def test_run_writes_every_stage_and_the_report(clean_run):
    run, r = clean_run
    assert r.stdout.strip().endswith("report.html")
    for f in ("recipe.resolved.yaml", "compress.json", "results.json", "report.md", "report.html", "timings.json"):
        assert (run / f).exists(), f
    acc = accuracies(run)
    assert set(acc) == {(v, t) for v in ("fp32", "int8", "pruned") for t in ("onnxruntime", "openvino")}
    assert all(status == "ok" for status, _ in acc.values())
    res = json.loads((run / "results.json").read_text())
    for x in res["results"]:
        # the measure stage evaluates the artifact it compiled, on the same test split the compress stage judged the
        # exported graph on with the same runtime: the same accuracy (OpenVINO: within one sample of it)
        deployed = json.loads((run / "variants" / x["variant"] / "metrics.json").read_text())["deployed_metrics"][x["target"]]
        assert x["metrics"]["n"] == deployed["n"] and abs(x["metrics"]["accuracy"] - deployed["accuracy"]) <= 1 / deployed["n"] + 1e-9
        assert x["parity"]["passed"] and x["parity"]["min_top1"] == {"fp32": 0.99, "int8": 0.95}[x["precision"]]  # the default gate ran
        assert x["latency"]["4"]["median"] > 0
    assert res["variants"]["pruned"]["macs"] < res["variants"]["fp32"]["macs"]
    size = {(x["variant"], x["target"]): x["artifact_size_bytes"] for x in res["results"]}
    assert size[("int8", "onnxruntime")] < size[("fp32", "onnxruntime")]  # what the runtime loads, not also its ONNX source
    assert res["variants"]["pruned"]["budget"]["max_accuracy_drop"] == 0.5  # the recipe's 50 points, as a fraction
    printed = " ".join(r.stderr.split())
    for target, (text, _) in _recommendations(run).items():  # what the run prints is the report's recommendation
        assert " ".join(f"{target}: {text}".split()) in printed, target


def test_rerun_redoes_nothing_and_force_redoes_one_stage(clean_run, tiny_checkpoint, fsdd, tmp_path):
    run, _ = clean_run
    before = accuracies(run)
    stamps = {p.name: p.stat().st_mtime for p in (run / ".stages").iterdir()}
    rec = run / "recipe.resolved.yaml"
    r = run_cli("run", recipe(tmp_path, fsdd), "--out", run, "--checkpoint", tiny_checkpoint)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name: p.stat().st_mtime for p in (run / ".stages").iterdir()} == stamps  # nothing redone
    assert accuracies(run) == before and rec.exists()
    r = run_cli("run", recipe(tmp_path, fsdd), "--out", run, "--checkpoint", tiny_checkpoint, "--force", "measure")
    assert r.returncode == 0, r.stderr[-2000:]
    after = {p.name: p.stat().st_mtime for p in (run / ".stages").iterdir()}
    assert all(after[n] > stamps[n] for n in stamps if n.startswith("measure"))
    assert all(after[n] == stamps[n] for n in stamps if not n.startswith("measure"))
    assert accuracies(run) == before


def _start(args, **kw):
    e = dict(os.environ)
    e.pop("EDGEKIT_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "edgekit", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=e, **kw)


def _kill_when(proc, marker: str, timeout: float = 900) -> str:
    """Read the run's output until `marker` appears, then SIGKILL it; returns what it printed."""
    seen, t0 = [], time.time()
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            time.sleep(0.5)  # into the stage, not at its first line
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "".join(seen)
        if time.time() - t0 > timeout:
            break
    proc.kill()
    proc.wait()
    pytest.fail(f"the run never reached {marker!r}; it printed:\n{''.join(seen)[-2000:]}")


def test_sigkill_in_each_stage_then_rerun_gives_the_same_results(clean_run, tiny_checkpoint, fsdd, tmp_path):
    run = tmp_path / "run"
    args = ["run", recipe(tmp_path, fsdd), "--out", run, "--checkpoint", tiny_checkpoint]
    for marker in ("pass 1/1: quantize", "] compile", "] measure", "] report"):
        out = _kill_when(_start(args), marker)
        assert not (run / "report.html").exists() or marker == "] report", out[-1000:]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "unchanged since the last run" in r.stderr  # finished work was kept
    assert accuracies(run) == accuracies(clean_run[0])
    assert not list(run.rglob("*.tmp"))  # no temp file of a killed write is left looking like output


def test_two_runs_on_one_directory(tiny_checkpoint, fsdd, tmp_path):
    run = tmp_path / "run"
    args = ["run", recipe(tmp_path, fsdd), "--out", run, "--checkpoint", tiny_checkpoint]
    first = _start(args)
    try:
        for line in first.stderr:
            if "] compress" in line:  # the first run holds the lock by now
                break
        r = run_cli(*args)
        assert r.returncode == 2
        assert f"another edgekit run (PID {first.pid})" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    finally:
        first.kill()
        first.wait()
    r = run_cli("run", recipe(tmp_path, fsdd), "--out", run, "--checkpoint", tiny_checkpoint, "--force", "report")
    assert r.returncode == 0, r.stderr[-2000:]  # the killed holder's lock is gone with its process


def test_failing_target_and_unreachable_device_are_recorded_and_the_rest_goes_on(tiny_run):
    """TensorRT is not installed here: that target fails with the reason, the CPU targets are measured; an ssh://
    device nobody listens on fails with a one-line reason. Both appear in results.json, and neither gets a
    recommendation."""
    import html as h

    run, _, remote_label = tiny_run
    res = json.loads((run / "results.json").read_text())
    remote = res["targets"][remote_label]
    port = remote_label.rsplit(":", 1)[1]
    assert remote["status"] == "failed" and remote["reason"].startswith(f"cannot reach 127.0.0.1:{port} (")
    failed_targets = {remote_label} | ({"tensorrt"} if "tensorrt" in res["targets"] else set())
    if "tensorrt" in res["targets"]:
        assert res["targets"]["tensorrt"]["status"] == "failed" and "'tensorrt' is not available" in res["targets"]["tensorrt"]["reason"]
    for x in res["results"]:
        if x["target"] in failed_targets:
            assert x["status"] == "failed" and x["reason"], x
    ok = {(x["variant"], x["target"]) for x in res["results"] if x["status"] == "ok"}
    assert ok == {(v, t) for v in ("fp32", "int8", "pruned") for t in res["targets"] if t not in failed_targets}
    recs = _recommendations(run)
    for t in failed_targets:
        assert recs[t] == (f"no recommendation: target failed ({res['targets'][t]['reason']})", None)
    assert h.escape(remote["reason"][:40]) in (run / "report.html").read_text()


def test_failing_variant_is_recorded_and_the_rest_goes_on(tiny_run):
    # a real failing input: keep_float names a module the model does not have; the quantize pass refuses it
    run, r, _ = tiny_run
    res = json.loads((run / "results.json").read_text())
    broken = res["variants"]["broken"]
    assert broken["status"] == "failed" and "keep_float names 'radar', which is not a module of the model" in broken["reason"]
    assert "broken failed:" in r.stderr
    for cell in (x for x in res["results"] if x["variant"] == "broken"):  # on every target, with the variant's reason
        unavailable = cell["target"] == "tensorrt"  # (a backend that is not installed says so first)
        want = res["targets"]["tensorrt"]["reason"] if unavailable else f"variant failed: {broken['reason']}"
        assert cell["status"] == "failed" and cell["reason"] == want, cell
    assert all(accuracies(run)[("int8", t)][0] == "ok" for t in ("onnxruntime", "openvino") if t in res["targets"])
    assert "keep_float names 'radar'" in (run / "report.md").read_text()


def test_a_variant_over_its_budget_is_never_recommended(tiny_run):
    """pruned (half the channels, no fine-tuning) is held to half a point: over budget on every runtime, so no
    target recommends it, whatever the timings; each recommendation is the reference or a variant within budget."""
    from edgekit.report import analyse, recommend
    from edgekit.results import load_results

    run, r, _ = tiny_run
    pruned = json.loads((run / "variants" / "pruned" / "metrics.json").read_text())["judgement"]
    assert not pruned["met"] and "NOT within budget" in pruned["verdict"], pruned  # the premise of this test
    res = load_results(run)
    by_target, _ = analyse(res)
    for target, (_, text, chosen) in recommend(res, by_target).items():
        rows = {w.r.variant: w for w in by_target[target]}
        if "pruned" in rows and rows["pruned"].r.status == "ok":
            assert rows["pruned"].passes is False, (target, rows["pruned"])  # the report judges it over budget too
        assert not text.startswith("ship pruned"), (target, text)
        assert chosen is None or chosen.r.variant == "fp32" or chosen.passes, (target, text)
    assert "ship pruned" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--force", "everything"], "unknown stage"),
    (["--checkpoint", "/no/such/checkpoint"], "does not exist"),
])
def test_bad_run_arguments_are_one_line(tiny_checkpoint, fsdd, tmp_path, args, message):
    r = run_cli("run", recipe(tmp_path, fsdd), "--out", tmp_path / "run", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "results.json").exists()
