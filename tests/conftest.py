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
