"""Atomic writes: a file either has its complete new content or is untouched (temp file + rename).
A failed write (disk full, file-size limit, no permission, a file where a folder should be) is one EdgekitError
naming the path, and the temp file is removed: nothing half-written is ever left under the final name."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

from edgekit.errors import EdgekitError

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


_ACTIVE: set[Path] = set()  # temp files of the atomic writes in progress in this process
_ACTIVE_LOCK = threading.Lock()  # a temp file is made and registered before another thread may clean the folder
# atomic_path's temp names: ".<final name>.<writer's PID>.<random>.tmp<suffix>" (and what a writer put beside one)
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}\.tmp")


def remove_active_temp_files() -> None:
    """Remove the temp files of the writes in progress (edgekit.signals, when a signal ends the process at once)."""
    for tmp in list(_ACTIVE):
        for f in _temp_files(tmp):
            f.unlink(missing_ok=True)


def remove_stale_temp_files(folder, recursive: bool = False) -> list[Path]:
    """Remove the temp files that writers killed mid-write (SIGKILL, power loss) left in `folder`: those whose
    writer's PID is no longer running (or is this process, which is not writing them). Returns what was removed."""
    removed = []
    try:
        with _ACTIVE_LOCK:
            entries = Path(folder).rglob(".*.tmp*") if recursive else Path(folder).glob(".*.tmp*")
            for f in list(entries):
                m = _TEMP_NAME.match(f.name)
                if m and f.is_file() and not _writer_alive(int(m.group(1)), f):
                    f.unlink(missing_ok=True)
                    removed.append(f)
    except OSError:  # cleaning up is a courtesy: a folder we cannot list or a file we cannot remove is left
        pass
    return removed


def _writer_alive(pid: int, f: Path) -> bool:
    if pid == os.getpid():
        return any(f.name.startswith(t.name[: t.name.rindex(".tmp") + 1]) for t in _ACTIVE)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        pass
    return True


def _temp_files(tmp: Path) -> list[Path]:
    """The temp file and what a writer put beside it under the same unique temp name (OpenVINO's .bin of an .xml)."""
    stem = tmp.name[: tmp.name.rindex(".tmp") + 1]  # ".<name>.<pid>.<random>." — unique to this write
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
    remove_stale_temp_files(path.parent)
    with _ACTIVE_LOCK:  # registered before it exists: a Ctrl-C at any point leaves no temp file unaccounted for
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}"
        _ACTIVE.add(tmp)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the usual permissions (umask applies)
        yield tmp
        os.replace(tmp, path)
    except EdgekitError:
        raise
    except OSError as e:
        raise write_error(path, e) from e
    except Exception as e:  # noqa: BLE001 — only translated when the write is what failed; otherwise re-raised as is
        found = _filled_up(tmp, e)
        if found is None:
            raise
        why, full = found
        first = str(e).splitlines()[0][:120] if str(e) else ""
        if full:
            raise EdgekitError(f"disk full: cannot write {path} ({why}; {type(e).__name__})", _NO_SPACE_HINT) from e
        raise EdgekitError(f"cannot write {path}: {why} ({type(e).__name__}: {first})",
                           "check free disk space (df), the file-size limit (ulimit -f) and permissions of the output folder") from e
    finally:
        for f in _temp_files(tmp):
            f.unlink(missing_ok=True)
        with _ACTIVE_LOCK:
            _ACTIVE.discard(tmp)


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


# ---------------------------------------------------------------- reading the user's YAML and JSON safely

YAML_MAX_BYTES = 4 << 20  # a recipe, data section or calibration file is a few KB
JSON_MAX_BYTES = 64 << 20  # a results.json holds every timed call's latency
MAX_DEPTH = 32  # nesting of mappings/lists; edgekit's own files use fewer than 10 levels


def _read_text(path, what: str, max_bytes: int, kind: str) -> str:
    """A file's text, decoded as UTF-8: one-line errors for a missing file, a folder, an oversized file, bad bytes."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise EdgekitError(f"cannot read {what} {p}: it is a folder, not a file", f"pass the {what} file itself")
        if size > max_bytes:
            raise EdgekitError(f"{what} {p} is {size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:g} MiB a {what} may have",
                               f"check that {p} is the right file")
        data = p.read_bytes()[: max_bytes + 1]  # a file that grew since stat() is still read bounded
    except FileNotFoundError:
        raise EdgekitError(f"{what} {p} does not exist", "check the path") from None
    except OSError as e:
        raise EdgekitError(f"cannot read {what} {p}: {e.strerror or e}", "check that it is a readable file") from e
    if len(data) > max_bytes:
        raise EdgekitError(f"{what} {p} is larger than the {max_bytes / 2**20:g} MiB a {what} may have", f"check that {p} is the right file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise EdgekitError(f"{what} {p} is not valid {kind}: it is not UTF-8 text (byte 0x{data[e.start]:02x} at line {line})",
                           "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _yaml_loader():
    import yaml

    class Refused(yaml.MarkedYAMLError):
        def __init__(self, problem, mark, hint):
            super().__init__(None, None, problem, mark)
            self.hint = hint

    class SafeLoader(yaml.SafeLoader):
        """yaml.safe_load's loader, minus what turns a small file into a huge or ambiguous one: aliases (`*name`,
        the "billion laughs"), duplicate keys (the last one would silently win) and deep nesting."""

        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                ev = self.peek_event()
                raise Refused(f"alias *{ev.anchor} (YAML aliases are not allowed)", ev.start_mark, "write the value out instead of referring to an &anchor")
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark, "flatten the file: edgekit's files need far fewer levels")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise Refused(f"duplicate key {str(key)!r} (given twice in one mapping)", key_node.start_mark, "keep one of them: YAML would silently use the last")
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return SafeLoader


def parse_yaml(text: str, name: str = "YAML"):
    """yaml.safe_load of `text`, refusing aliases, duplicate keys and nesting deeper than MAX_DEPTH; errors are one
    line naming `name` (the file) and the line."""
    import yaml

    if len(text) > YAML_MAX_BYTES:
        raise EdgekitError(f"{name} is larger than {YAML_MAX_BYTES / 2**20:g} MiB", f"check that {name} is the right file")
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 — a yaml.SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise EdgekitError(f"{name} is not valid YAML{where}: {problem}", getattr(e, "hint", "check indentation and quoting")) from None
    except (ValueError, OverflowError, RecursionError) as e:  # e.g. a date such as 2024-13-45
        raise EdgekitError(f"{name} has a value YAML cannot read ({type(e).__name__}: {str(e)[:120]})", "quote the value to keep it a string") from None


def load_yaml(path, what: str = "YAML file"):
    """The YAML file `path` read with parse_yaml (UTF-8, at most YAML_MAX_BYTES)."""
    return parse_yaml(_read_text(path, what, YAML_MAX_BYTES, "YAML"), str(path))


def _depth(obj) -> int:
    """Nesting depth of parsed JSON (iterative: no recursion limit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def _unique_keys(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r}")
    return d


def parse_json(text: str, name: str = "JSON"):
    """json.loads of `text`, refusing duplicate keys and nesting deeper than MAX_DEPTH; errors name `name`."""
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise EdgekitError(f"{name} is not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                           "the file is corrupt or truncated: restore it or re-run what wrote it") from None
    except ValueError as e:  # a duplicate key
        raise EdgekitError(f"{name}: {e}: the same key is given twice in one object", "keep one of them") from None
    except RecursionError:
        raise EdgekitError(f"{name} is nested more than {MAX_DEPTH} levels deep", "it is not a file edgekit wrote") from None
    if _depth(obj) > MAX_DEPTH:
        raise EdgekitError(f"{name} is nested more than {MAX_DEPTH} levels deep", "it is not a file edgekit wrote")
    return obj


def load_json(path, what: str = "JSON file", max_bytes: int = JSON_MAX_BYTES):
    """The JSON file `path` read with parse_json (UTF-8, at most `max_bytes`)."""
    return parse_json(_read_text(path, what, max_bytes, "JSON"), str(path))
