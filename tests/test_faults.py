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
import yaml

from conftest import run_cli

pytestmark = pytest.mark.slow

FAST_BENCH = {"batch_sizes": [1, 4], "warmup": 2, "min_iterations": 5, "min_seconds": 0.05}


def recipe(tmp_path, fsdd, targets=None, variants=None, name="faults"):
    d = {"name": name, "data": {"dataset": "avdigits", "fsdd": fsdd, "seed": 0}, "calibration": {"size": 32},
         "budget": {"max_accuracy_drop": 3.0},
         "variants": variants or [{"name": "int8", "passes": [{"quantize": {}}]},
                                  {"name": "pruned", "passes": [{"prune": {"ratio": 0.3}}], "budget": {"max_accuracy_drop": 50.0}}],
         "targets": targets or [{"backend": "onnxruntime"}, {"backend": "openvino"}], "bench": FAST_BENCH}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


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


def test_run_writes_every_stage_and_the_report(clean_run):
    run, r = clean_run
    assert r.stdout.strip().endswith("report.html")
    for f in ("recipe.resolved.yaml", "compress.json", "results.json", "report.md", "report.html", "timings.json"):
        assert (run / f).exists(), f
    acc = accuracies(run)
    assert set(acc) == {(v, t) for v in ("fp32", "int8", "pruned") for t in ("onnxruntime", "openvino")}
    assert all(status == "ok" and 0.1 < a <= 1 for status, a in acc.values())
    res = json.loads((run / "results.json").read_text())
    row = next(x for x in res["results"] if x["variant"] == "int8" and x["target"] == "openvino")
    assert row["precision"] == "int8" and row["parity"]["top1_agreement"] > 0.8 and row["latency"]["4"]["median"] > 0
    assert res["variants"]["pruned"]["macs"] < res["variants"]["fp32"]["macs"]
    size = {(x["variant"], x["target"]): x["artifact_size_bytes"] for x in res["results"]}
    assert size[("int8", "onnxruntime")] < size[("fp32", "onnxruntime")]  # what the runtime loads, not also its ONNX source
    assert res["variants"]["pruned"]["budget"]["max_accuracy_drop"] == 0.5  # the recipe's 50 points, as a fraction
    assert "ship" in r.stderr or "keep" in r.stderr or "no variant" in r.stderr  # the recommendation is printed


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


def test_failing_target_and_unreachable_device_are_recorded_and_the_rest_goes_on(tiny_checkpoint, fsdd, tmp_path):
    """TensorRT is not installed here: that target fails with the reason, the ORT target is measured; an ssh://
    device nobody listens on fails with a one-line reason. Both appear in results.json and the report."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    targets = [{"backend": "onnxruntime"}, {"backend": "tensorrt"}, {"backend": "tensorrt", "host": f"ssh://nvidia@127.0.0.1:{port}"}]
    variants = [{"name": "int8", "passes": [{"quantize": {}}]}]
    run = tmp_path / "run"
    r = run_cli("run", recipe(tmp_path, fsdd, targets, variants), "--out", run, "--checkpoint", tiny_checkpoint)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((run / "results.json").read_text())
    assert res["targets"]["tensorrt"]["status"] == "failed" and "'tensorrt' is not available" in res["targets"]["tensorrt"]["reason"]
    remote = res["targets"][f"tensorrt@nvidia@127.0.0.1:{port}"]
    assert remote["status"] == "failed" and ("refused" in remote["reason"] or "unreachable" in remote["reason"] or "connect" in remote["reason"])
    ok = [(x["variant"], x["target"]) for x in res["results"] if x["status"] == "ok"]
    assert sorted(ok) == [("fp32", "onnxruntime"), ("int8", "onnxruntime")]
    html = (run / "report.html").read_text()
    import html as h

    assert "is not available on this machine" in html and h.escape(remote["reason"][:40]) in html


def test_failing_variant_is_recorded_and_the_rest_goes_on(tiny_checkpoint, fsdd, tmp_path):
    # a prune target the tiny model cannot reach with whole channels: the pass refuses, the other variant is built
    variants = [{"name": "int8", "passes": [{"quantize": {}}]},
                {"name": "impossible", "passes": [{"prune": {"target_macs": 0.001}}]}]
    run = tmp_path / "run"
    r = run_cli("run", recipe(tmp_path, fsdd, [{"backend": "onnxruntime"}], variants), "--out", run, "--checkpoint", tiny_checkpoint)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((run / "results.json").read_text())
    if res["variants"]["impossible"]["status"] == "ok":
        pytest.skip("pruning reached 0.1% of the MACs; this case needs a variant that fails")
    assert res["variants"]["impossible"]["reason"]
    cell = next(x for x in res["results"] if x["variant"] == "impossible")
    assert cell["status"] == "failed" and "variant failed" in cell["reason"]
    assert accuracies(run)[("int8", "onnxruntime")][0] == "ok"


@pytest.mark.parametrize("args, message", [
    (["--force", "everything"], "unknown stage"),
    (["--checkpoint", "/no/such/checkpoint"], "does not exist"),
])
def test_bad_run_arguments_are_one_line(tiny_checkpoint, fsdd, tmp_path, args, message):
    r = run_cli("run", recipe(tmp_path, fsdd), "--out", tmp_path / "run", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "results.json").exists()
