import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FSDD = REPO.parent / "shared" / "data" / "fsdd"


@pytest.fixture(scope="session")
def fsdd():
    """The real FSDD recordings when they sit beside the repo (CI), else None: speech is synthesized."""
    env = os.environ.get("EDGEKIT_FSDD")
    if env:
        return env
    return str(SHARED_FSDD) if SHARED_FSDD.is_dir() else None


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, fsdd):
    """A tiny attention-fusion model trained for a few epochs (~10 s), shared by tests that need weights."""
    from edgekit.train import train_reference

    out = tmp_path_factory.mktemp("ck") / "tiny-attention"
    train_reference("tiny", "attention", out, fsdd=fsdd, epochs=4)
    return out


def run_cli(*args, env=None, cwd=None):
    """Runs the real `edgekit` console entry in a subprocess; returns CompletedProcess."""
    import subprocess
    import sys

    e = dict(os.environ, **(env or {}))
    e.pop("EDGEKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd, timeout=600)


FAST_BENCH = {"batch_sizes": [1, 4], "warmup": 2, "min_iterations": 5, "min_seconds": 0.05}


def write_recipe(folder, fsdd, variants, targets, name, **extra):
    """A recipe file on the built-in data with a quick benchmark; returns its path."""
    import yaml

    d = {"name": name, "data": {"dataset": "avdigits", "fsdd": fsdd, "seed": 0}, "calibration": {"size": 32},
         "budget": {"max_accuracy_drop": 3.0}, "variants": variants, "targets": targets, "bench": FAST_BENCH, **extra}
    p = Path(folder) / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def closed_port() -> int:
    """A local TCP port nobody listens on: an ssh:// device that does not answer."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY_RUN_VARIANTS = [
    {"name": "int8", "passes": [{"quantize": {}}]},
    # half the channels and no fine-tuning, held to half a point: over budget, so it may never be recommended
    {"name": "pruned", "passes": [{"prune": {"ratio": 0.5}}], "budget": {"max_accuracy_drop": 0.5}},
    # a real failing input: keep_float names a module the model does not have, so the quantize pass refuses
    {"name": "broken", "passes": [{"quantize": {"keep_float": ["radar"]}}]},
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_checkpoint, fsdd):
    """One `edgekit run` through the real CLI, shared by the tests that read a run: fp32, int8 (NNCF PTQ), pruned
    (over its budget) and broken (fails in compress) on ONNX Runtime and OpenVINO (where installed), plus a
    TensorRT target that is not installed here and an ssh:// device nobody listens on. Returns (run dir, the
    CompletedProcess, the unreachable target's label). A test that changes the run works on a copy (copy_run)."""
    from edgekit.backends.base import get_backend

    d = tmp_path_factory.mktemp("tiny-run")
    port = closed_port()
    targets = [{"backend": "onnxruntime"}] + ([{"backend": "openvino"}] if get_backend("openvino").available()[0] else [])
    targets += [] if get_backend("tensorrt").available()[0] else [{"backend": "tensorrt"}]  # a target that fails here
    targets += [{"backend": "tensorrt", "host": f"ssh://nvidia@127.0.0.1:{port}"}]
    r = run_cli("run", write_recipe(d, fsdd, TINY_RUN_VARIANTS, targets, "tiny-run"), "--out", d / "run", "--checkpoint", tiny_checkpoint)
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "run", r, f"tensorrt@nvidia@127.0.0.1:{port}"


def copy_run(run, dest):
    """A private copy of a run directory (the shared one stays as `edgekit run` left it)."""
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return Path(dest)
