"""What makes a run directory safe to interrupt: one writer at a time (a lock naming its PID), and stage
stamps — a stage whose inputs and settings hash to its recorded key, and whose outputs still exist, is done."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.io import atomic_write_json, ensure_dir, file_sha256, load_json, remove_stale_temp_files, write_error

_HELD: dict[str, int] = {}  # lock path -> depth: a stage inside `edgekit run` takes the lock its caller holds


class RunLock:
    """An flock on RUN_DIR/.lock: released by the kernel even on SIGKILL, so a crashed run never blocks the next,
    which removes the temp files the crashed one left. Re-entrant within one process (the run holds it while its
    stages take it again)."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / ".lock"
        self.fd = None

    def __enter__(self):
        key = str(self.path.resolve())
        if _HELD.get(key):
            _HELD[key] += 1
            return self
        ensure_dir(self.path.parent)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.path, e) from e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise EdgekitError(f"another edgekit run (PID {other}) is writing {self.path.parent}",
                               "wait for it to finish, stop it, or use a different --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        _HELD[key] = 1
        remove_stale_temp_files(self.path.parent, recursive=True)  # what a killed run's writes left, anywhere in the run
        return self

    def __exit__(self, *exc):
        key = str(self.path.resolve())
        _HELD[key] -= 1
        if _HELD[key]:
            return
        del _HELD[key]
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def stage_key(settings, *files) -> str:
    """Hash of a stage's settings (JSON-able) and the content of its input files."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for f in files:
        h.update(file_sha256(f).encode() if Path(f).exists() else b"missing")
    return h.hexdigest()


class Stages:
    """Stamps in RUN_DIR/.stages/<stage>.json; `force` names stages to redo whatever their stamp says."""

    def __init__(self, run_dir, force=()):
        self.dir = Path(run_dir) / ".stages"
        self.force = set(force)

    def _stamp(self, stage: str) -> Path:
        return self.dir / f"{stage.replace('/', '__')}.json"

    def done(self, stage: str, key: str) -> bool:
        if stage.split("/")[0] in self.force or stage in self.force:
            return False
        try:
            stamp = load_json(self._stamp(stage), "stage record")
        except EdgekitError:  # missing or damaged: the stage is redone
            return False
        if not isinstance(stamp, dict):
            return False
        return stamp.get("key") == key and all(Path(p).exists() for p in stamp.get("outputs", []))

    def redo(self, stage: str, *records) -> None:
        """Before a stage's outputs change: remove its stamp and the `records` that vouch for them (written again
        last), so an interrupted redo never leaves an old record beside new files."""
        for p in (self._stamp(stage), *records):
            Path(p).unlink(missing_ok=True)

    def mark(self, stage: str, key: str, outputs=()) -> None:
        atomic_write_json(self._stamp(stage), {"key": key, "outputs": [str(p) for p in outputs], "finished": time.time()})
