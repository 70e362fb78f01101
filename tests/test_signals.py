"""Ctrl-C means stop (issue 16, build item 3): SIGINT or SIGTERM sent to a busy `edgekit` command ends it with
exit 130 (143 for SIGTERM) and one line saying so, no traceback, within 3 s; it leaves no temp file, no file that
says "finished" without what it vouches for (artifact.json without its parity record, an export record beside
another graph), and input files unchanged (by hash). A writer killed with SIGKILL leaves temp files that the next
write into the same folder removes.

Real subprocesses of the `edgekit` console entry; the signal is sent when the command is seen busy (a file it
writes appears, a progress line, or the runtime library mapped into the process), not after a fixed sleep.
The model is an untrained tiny one saved with edgekit.checkpoint.save (as in test_bad_input)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekit import checkpoint

EXIT_SECONDS = 3.0  # the promise: a stopped command is gone within this long after the signal
pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="the busy checks read /proc (Linux)")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ck(tmp_path_factory, fsdd):
    from edgekit.data import avdigits
    from edgekit.models import build_model, preset_config
    from edgekit.train import reference_spec

    torch.manual_seed(0)
    cfg = preset_config("tiny", "attention")
    out = tmp_path_factory.mktemp("signals") / "ck"
    checkpoint.save(build_model(cfg).eval(), reference_spec(cfg, avdigits.preprocessing(fsdd)), out, cfg)
    return out


@pytest.fixture(scope="module")
def onnx_model(ck, fsdd):
    from edgekit import export
    from edgekit.data import avdigits

    model, spec, _ = checkpoint.load(ck)
    path = ck.parent / "onnx" / "model.onnx"
    test = avdigits.load("test", fsdd)
    export.to_onnx(model, spec, path, check_parity_on=test.subset(np.arange(min(256, len(test)))))
    return path


@pytest.fixture(scope="module")
def artifact(onnx_model):
    from edgekit.backends import compile_onnx

    return compile_onnx(onnx_model, "onnxruntime", onnx_model.parent.parent / "art").path.parent


# ---------------------------------------------------------------- helpers

def hashes(*roots: Path) -> dict:
    files = [p for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file()]
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def mapped(pid: int, lib: str) -> bool:
    """Is `lib` loaded into process `pid`? (edgekit imports runtimes inside the command, after its signal setup.)"""
    try:
        return lib in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def interrupt(args, busy, tmp_path: Path, sig=signal.SIGINT, env=None) -> tuple[int, str]:
    """Start `edgekit ARGS`, send `sig` once busy(proc, output) says it is working, return (exit code, output).
    Fails if it exits on its own first, or is not gone EXIT_SECONDS after the signal."""
    e = dict(os.environ, COLUMNS="200", **(env or {}))
    e.pop("EDGEKIT_DEBUG", None)
    log = tmp_path / f"out-{time.monotonic_ns()}.txt"
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "edgekit", *map(str, args)], stdout=f, stderr=subprocess.STDOUT, env=e)
    try:
        deadline = time.monotonic() + 300
        while not busy(p, log.read_text()):
            assert p.poll() is None, f"finished (exit {p.returncode}) before it was seen busy:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "never seen busy"
            time.sleep(0.002)
        p.send_signal(sig)
        try:
            code = p.wait(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_SECONDS} s after {signal.Signals(sig).name}:\n{log.read_text()[-3000:]}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return code, log.read_text()


def assert_stopped(code: int, out: str, expected: int = 130) -> None:
    assert code == expected, f"exit {code}, expected {expected}\n{out[-3000:]}"
    assert "Traceback" not in out and "internal error" not in out, out[-3000:]
    assert [line for line in out.splitlines() if "interrupted" in line] == ["interrupted; rerun the same command to resume"], out[-3000:]


def assert_complete(root: Path) -> None:
    """No temp file, and every file that vouches for others has them: artifact.json its model file and parity,
    an export record its graph and samples, a variant's metrics its graph, a stage stamp its outputs."""
    for p in root.rglob("*"):
        assert ".tmp" not in p.name, f"temp file {p} left behind"
        if p.name == "artifact.json":
            meta = json.loads(p.read_text())
            assert (p.parent / meta["path"]).is_file(), f"{p} without its model file"
            assert meta["meta"].get("parity"), f"{p} without its parity record"
        elif p.name.endswith(".export.json"):
            stem = p.name[: -len(".export.json")]
            assert (p.parent / f"{stem}.onnx").is_file() and (p.parent / f"{stem}.parity.npz").is_file(), f"{p} without its graph"
        elif p.name == "metrics.json" and json.loads(p.read_text()).get("status") == "ok":
            assert (p.parent / "model.onnx").is_file(), f"{p} without its graph"
        elif p.parent.name == ".stages":
            assert all(Path(o).exists() for o in json.loads(p.read_text())["outputs"]), f"stamp {p} without its outputs"


# ---------------------------------------------------------------- SIGINT in each command

def replaced(path: Path):
    """busy(): `path` has been replaced (atomic writes rename a new inode onto it)."""
    ino = path.stat().st_ino

    def check(p, _):
        try:
            return path.stat().st_ino != ino
        except FileNotFoundError:
            return False
    return check


def test_compile_interrupted_leaves_no_artifact_that_looks_finished(onnx_model, artifact, tmp_path):
    """Recompiling over a finished artifact, interrupted once the new graph is written, while its parity with the
    torch model is checked: artifact.json must not be there without its parity numbers (issue 16 finding 2), nor
    the old one beside the new graph."""
    import shutil

    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    inputs = hashes(onnx_model.parent)
    code, log = interrupt(["compile", onnx_model, "--backend", "onnxruntime", "--out", out], replaced(out / "model.onnx"), tmp_path)
    assert_stopped(code, log)
    assert_complete(out)
    assert hashes(onnx_model.parent) == inputs


def test_artifact_record_is_absent_while_parity_is_checked(onnx_model, artifact, tmp_path):
    """Where a Ctrl-C lands is chance; what it finds is not: from the start of a recompile until its parity check
    has passed, no artifact.json (old, or new without parity) vouches for the folder."""
    import shutil

    from edgekit.backends import compile_onnx
    from edgekit.backends.onnxruntime import OnnxRuntimeBackend

    seen = []

    class Watched(OnnxRuntimeBackend):  # the real backend; load() is where the parity check starts
        def load(self, art, **settings):
            seen.append((art.path.parent / "artifact.json").exists())
            return super().load(art, **settings)

    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    compile_onnx(onnx_model, Watched(), out)
    assert seen == [False]
    assert json.loads((out / "artifact.json").read_text())["meta"]["parity"]["passed"]


def test_evaluate_interrupted(ck, fsdd, tmp_path):
    inputs = hashes(ck)
    code, log = interrupt(["evaluate", ck] + (["--fsdd", fsdd] if fsdd else []), lambda p, _: mapped(p.pid, "libtorch_cpu"), tmp_path)
    assert_stopped(code, log)
    assert hashes(ck) == inputs


def test_bench_interrupted_in_the_timing_loop(artifact, tmp_path):
    """Inside the native timing loop (ONNX Runtime runs in C++ between the Python-level checks): nothing written."""
    inputs = hashes(artifact)
    out = tmp_path / "bench"
    code, log = interrupt(["bench", artifact, "--min-seconds", "60", "--batch", "8", "--out", out],
                          lambda p, _: mapped(p.pid, "onnxruntime_pybind11_state"), tmp_path)
    assert_stopped(code, log)
    assert not out.exists() or not any(out.iterdir())
    assert hashes(artifact) == inputs


def test_sigterm_exits_143(artifact, tmp_path):
    code, log = interrupt(["bench", artifact, "--min-seconds", "60", "--out", tmp_path / "bench"],
                          lambda p, _: mapped(p.pid, "onnxruntime_pybind11_state"), tmp_path, sig=signal.SIGTERM)
    assert_stopped(code, log, expected=143)


@pytest.mark.slow  # half a minute on a busy 2-core machine: the run loads its data before compressing
def test_run_interrupted_while_compressing(ck, fsdd, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "t", "data": {"dataset": "avdigits", "fsdd": fsdd, "seed": 0}, "calibration": {"size": 32},
        "variants": [{"name": "int8", "passes": [{"quantize": {}}]}], "targets": [{"backend": "onnxruntime"}],
        "bench": {"batch_sizes": [1], "warmup": 2, "min_iterations": 5, "min_seconds": 0.2}}))
    run_dir = tmp_path / "run"
    inputs = hashes(ck, recipe)
    code, log = interrupt(["run", recipe, "--checkpoint", ck, "--out", run_dir],
                          lambda p, out: "compress" in out and (run_dir / "recipe.resolved.yaml").exists(), tmp_path)
    assert_stopped(code, log)
    assert_complete(run_dir)
    assert not (run_dir / "compress.json").exists()
    assert hashes(ck, recipe) == inputs


# ---------------------------------------------------------------- SIGKILL: the next run cleans up

def killed_writer(folder: Path) -> list[Path]:
    """A real process killed with SIGKILL in the middle of an atomic write into `folder`; its temp files."""
    code = textwrap.dedent(f"""
        import os, signal
        from edgekit.io import atomic_path
        with atomic_path({str(folder / "bench-onnxruntime.json")!r}) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code], check=False)
    left = list(folder.glob(".*.tmp*"))
    assert left, "the killed writer left no temp file: nothing to test"
    return left


def test_temp_files_of_a_killed_writer_are_removed_by_the_next_write(artifact, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    left = killed_writer(out)
    alive = out / f".results.json.{os.getpid()}.abcd1234.tmp"  # a live writer's (this test process): kept
    alive.write_text("in progress")
    r = subprocess.run([sys.executable, "-m", "edgekit", "bench", artifact, "--iterations", "5", "--batch", "1", "--out", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(p.exists() for p in left), left
    assert alive.exists()
    assert json.loads((out / "bench-onnxruntime.json").read_text())["batches"]


def test_run_lock_removes_a_killed_runs_temp_files_anywhere_in_the_run(tmp_path):
    from edgekit.rundir import RunLock

    deep = tmp_path / "variants" / "int8"
    deep.mkdir(parents=True)
    left = killed_writer(deep)
    with RunLock(tmp_path):
        assert not any(p.exists() for p in left)
