"""Never overwrite an input: an output path that is one of the command's inputs, or a folder the command fills that
holds one, is refused before anything is written (`compile X/model.onnx --out X` would replace the portable
model.onnx with an optimized graph; `export CK --out CK/model.safetensors` would replace the weights it reads).

Paths are compared resolved (symlinks, `..`, relative paths) and, for files that exist, with os.path.samefile (hard
links). Each command names what it writes (a file, or a folder it may fill or clear) and what it reads."""
from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import EdgekitError

HINT = "write the output somewhere else (a new folder, or another file name): edgekit never writes over the files it reads"


def _resolved(p) -> Path:
    return Path(p).expanduser().resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet: resolved paths decide
        return False


def clash(outputs, inputs) -> tuple[Path, Path, bool] | None:
    """(output, input, same) for the first output that is an input (same=True) or a folder holding one, else None.
    `outputs`: files the command writes and folders it fills; `inputs`: files (or folders) it reads. None entries
    are skipped."""
    outs = [(Path(o), _resolved(o)) for o in outputs if o is not None]
    for i in (Path(i) for i in inputs if i is not None):
        ri = _resolved(i)
        for o, ro in outs:
            if _same(ro, ri):
                return o, i, True
            if ro in ri.parents:
                return o, i, False
    return None


def refuse_overwrite(outputs, inputs, what: str = "the output", hint: str = HINT) -> None:
    """Raise a one-line EdgekitError naming both paths when an output would overwrite an input (see clash)."""
    found = clash(outputs, inputs)
    if found is None:
        return
    out, inp, same = found
    if same:
        raise EdgekitError(f"{what} {out} is the input {inp}: writing it would destroy what is being read", hint)
    raise EdgekitError(f"{what} {out} holds the input {inp}, which writing there would overwrite or remove", hint)
