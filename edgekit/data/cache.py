"""Decoded arrays on disk, keyed by content: the sha256 of every source file's bytes plus the settings that
decoded them, so a second run reads .npy files (memory-mapped) instead of decoding again, and any change of a
file or a setting decodes afresh. Lives under $EDGEKIT_CACHE or ~/.cache/edgekit (decoded/<key>/)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

# bump when a decoding step changes its output for the same settings (2: images at their own precision; 16-bit
# PNGs were clipped at 255 before)
VERSION = 2


def cache_root(cache_dir=None) -> Path:
    return Path(cache_dir or os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")


def key_of(*parts) -> str:
    """A short stable key from JSON-able parts (settings, file digests, strings)."""
    h = hashlib.sha256(json.dumps([VERSION, *parts], sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def load(key: str, cache_dir=None) -> tuple[dict[str, np.ndarray], dict] | None:
    """The arrays (memory-mapped, read-only) and metadata stored under `key`, or None when not cached."""
    folder = cache_root(cache_dir) / "decoded" / key
    meta_path = folder / "meta.json"
    if not meta_path.is_file():  # written last: its presence marks a complete entry
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in meta["arrays"]}
    except (OSError, ValueError, KeyError):  # a damaged entry is decoded again
        return None
    return arrays, meta.get("info", {})


def store(key: str, arrays: dict[str, np.ndarray], info: dict | None = None, cache_dir=None) -> dict[str, np.ndarray]:
    """Write arrays under `key` (into a temp folder renamed into place, so readers never see half an entry) and
    return them memory-mapped. A cache that cannot be written is skipped: the arrays come back as they are."""
    root = cache_root(cache_dir) / "decoded"
    final = root / key
    tmp = root / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir(parents=True)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps({"arrays": list(arrays), "info": info or {}}))
        try:
            tmp.rename(final)
        except OSError:  # another process stored the same entry first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return arrays
    got = load(key, cache_dir)
    return got[0] if got else arrays
