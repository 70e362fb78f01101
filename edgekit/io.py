"""Atomic writes: a file either has its complete new content or is untouched (temp file + rename).
A failed write (disk full, file-size limit, no permission, a file where a folder should be) is one EdgekitError
naming the path, and the temp file is removed: nothing half-written is ever left under the final name."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgekit.errors import EdgekitError

_UMASK = os.umask(0o022)
os.umask(_UMASK)

_NO_SPACE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large: a file-size limit was reached"}
_NO_SPACE_HINT = "free some disk space (or raise the file-size limit, `ulimit -f`), or choose an output folder on another disk"
_LOW_SPACE = 1 << 20  # after a failed write, less than this free on the file system means it filled up


def write_error(path, e: OSError, what: str = "write") -> EdgekitError:
    """An OSError from writing `path` as the user's one-line error: disk full, permission, a file in the way."""
    path = Path(path)
    if e.errno in _NO_SPACE:
        return EdgekitError(f"disk full: cannot {what} {path} ({_NO_SPACE[e.errno]})", _NO_SPACE_HINT)
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((a for a in [path, *path.parents] if a.exists() and not a.is_dir()), None)
        if blocker is not None:
            return EdgekitError(f"cannot {what} {path}: {blocker} is a file, not a folder", "choose an output folder that is not inside a file")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EdgekitError(f"cannot {what} {path}: {e.strerror}", "choose an output folder you can write to")
    return EdgekitError(f"cannot {what} {path}: {e.strerror or e}", "check free disk space and permissions of the output folder")


def slug(text: str) -> str:
    """A file-name-safe form of a target's label or host ('ssh://jetson:2222' -> 'ssh-jetson-2222')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def ensure_dir(path) -> Path:
    """mkdir -p, with a one-line error (a file in the way, no permission, disk full) instead of an OSError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e, "create the folder") from e
    return path


def check_writable(path) -> None:
    """Fail early, before hours of work, if `path` (a file or folder to be written) cannot be created: the nearest
    existing ancestor must be a writable folder. Creates nothing."""
    p = Path(path).absolute()
    for parent in [p, *p.parents]:
        if parent.exists():
            break
    if parent == p and p.is_file():  # an existing output file is replaced: its folder must be writable
        parent = p.parent
    if not parent.is_dir():
        raise EdgekitError(f"cannot write {path}: {parent} is a file, not a folder", "choose an output path under a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgekitError(f"cannot write {path}: no permission to write in {parent}", "choose an output folder you can write to")


def _temp_files(tmp: Path) -> list[Path]:
    """The temp file and what a writer put beside it under the same unique temp name (OpenVINO's .bin of an .xml)."""
    stem = tmp.name[: tmp.name.rindex(".tmp") + 1]  # ".<name>.<random>." — unique to this write
    try:
        return [tmp.parent / n for n in os.listdir(tmp.parent) if n.startswith(stem)]
    except OSError:
        return [tmp]


# How native writers report a failed write without an errno: libstdc++ streams (OpenVINO), protobuf (ONNX
# Runtime, onnx), Rust's io::Error text (safetensors, "os error 28").
_IO_FAILURE = ("iostream error", "serialization failed", "no space left", "file too large", "os error 28", "os error 27",
               "disk quota", "ioerror", "failed to write", "write failed")


def _filled_up(tmp: Path, e: Exception) -> tuple[str, bool] | None:
    """(why, is the disk/limit the cause) for a write that failed with a library's own exception instead of an
    OSError, or None when it does not look like a failed write (then it is re-raised as is): the file system is
    (nearly) full, the temp file(s) reached this process's file-size limit (RLIMIT_FSIZE), or the library's
    message says its write failed."""
    text = f"{type(e).__name__}: {e}".lower()
    io_failure = any(p in text for p in _IO_FAILURE)
    try:
        if shutil.disk_usage(tmp.parent).free < _LOW_SPACE:
            return _NO_SPACE[errno.ENOSPC], True
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and (io_failure or any(f.is_file() and f.stat().st_size >= soft for f in _temp_files(tmp))):
            return f"file too large: the file-size limit of {soft} bytes (ulimit -f) was reached", True
    except (OSError, ImportError, ValueError):
        pass
    return ("the writer reported an I/O error", False) if io_failure else None


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yields a temp path in the same directory; renamed onto `path` only if the block succeeds."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except EdgekitError:
        raise
    except OSError as e:
        raise write_error(path, e) from e
    except Exception as e:  # noqa: BLE001 — only translated when the write is what failed; otherwise re-raised as is
        found = _filled_up(Path(tmp), e)
        if found is None:
            raise
        why, full = found
        first = str(e).splitlines()[0][:120] if str(e) else ""
        if full:
            raise EdgekitError(f"disk full: cannot write {path} ({why}; {type(e).__name__})", _NO_SPACE_HINT) from e
        raise EdgekitError(f"cannot write {path}: {why} ({type(e).__name__}: {first})",
                           "check free disk space (df), the file-size limit (ulimit -f) and permissions of the output folder") from e
    finally:
        for f in _temp_files(Path(tmp)):
            f.unlink(missing_ok=True)


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def atomic_write_npz(path, **arrays) -> None:
    import numpy as np

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _jsonable(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
