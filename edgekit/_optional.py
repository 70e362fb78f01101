"""Lazy imports of optional backends (a missing one is a clear error naming the extra to install), and
import-by-name of *trusted* code references ('package.module:function')."""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError

_EXTRAS = {"openvino": "openvino", "paramiko": "remote", "tensorrt": "tensorrt", "nncf": "", "torch_pruning": ""}


def require(module: str, feature: str = ""):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = _EXTRAS.get(module.split(".")[0], "")
        fix = f"pip install 'edgekit[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise EdgekitError(f"{feature or module} needs the Python package '{module}', which is not installed ({e})", fix) from e


def available(module: str) -> tuple[bool, str]:
    try:
        importlib.import_module(module)
        return True, ""
    except Exception as e:  # a broken install is as unavailable as a missing one
        return False, f"{module} not importable: {e}"


# ---------------------------------------------------------------- import noise
# What third-party libraries log on import that a user cannot act on: (logger, message pattern). The CLI hides
# exactly these unless -v; anything else they log still shows.
IMPORT_NOISE_LOGS = [
    ("torchao", r"Failed to load .*\.so"),  # its CUDA/mxfp8 kernels, on a CPU-only torch
    ("torchao.kernel.intmm", r".*Detected no triton"),
    ("torch.utils._pytree", r".*Enum subclass .*register_constant"),  # torchao registers enums the old way
]


class _DropMatching:
    """A logging filter that drops the records whose message matches `pattern`."""

    def __init__(self, pattern: str):
        self.pattern = re.compile(pattern)

    def filter(self, record) -> bool:
        return not self.pattern.match(record.getMessage())


def silence_import_noise() -> None:
    """Hide IMPORT_NOISE_LOGS for the rest of the process (idempotent)."""
    import logging

    for name, pattern in IMPORT_NOISE_LOGS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern for f in log.filters):
            log.addFilter(_DropMatching(pattern))


# ---------------------------------------------------------------- code references ('package.module:attr')
# A reference read from a file (a checkpoint's config.json `factory`, a recipe's `model.factory` or `data.loader`)
# names code to import and call. Importing a module runs it, so nothing is imported before the reference is
# trusted (README "Trust"): edgekit's own code always; the standard library and builtins never (a model factory
# is never os:system); anything else only when the user said so for this invocation (--trust-code, the recipe
# they ran) or for this machine (EDGEKIT_TRUSTED_CODE, ~/.config/edgekit/trusted-code.txt).

TRUST_ENV = "EDGEKIT_TRUSTED_CODE"
ALL = "*"  # trusted(ALL): every reference, for this invocation (--trust-code)
_REF = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_HOW_TO_TRUST = ("if you trust it, pass --trust-code (trust_code=True from Python, e.g. edgekit.checkpoint.load), "
                 f"or allow it on this machine: {TRUST_ENV}={{module}} or a line '{{module}}' in {{config}}")


@dataclass(frozen=True)
class Grant:
    """Why a reference may run: `origin` is where the user gave it (a recipe), `base_dir` a folder its module is
    imported from (the recipe's own folder), both optional."""
    origin: str = ""
    base_dir: Path | None = None


_trust_all = False           # --trust-code for this invocation
_granted: dict[str, Grant] = {}  # references trusted for this invocation (the recipe the user ran)


def trust_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgekit" / "trusted-code.txt"


@contextlib.contextmanager
def trusted(refs=ALL, *, origin: str = "", base_dir=None):
    """Trust `refs` (an iterable of 'pkg.mod:attr', or ALL) inside the block; nested blocks add to the outer ones
    and the previous state comes back on exit. `base_dir`: a folder to import these references' modules from."""
    global _trust_all
    saved_all, saved = _trust_all, dict(_granted)
    try:
        if refs == ALL:
            _trust_all = True
        else:
            grant = Grant(str(origin), Path(base_dir) if base_dir is not None else None)
            for r in refs:  # an outer grant (the recipe's folder) wins over a nested one that knows less
                if isinstance(r, str):
                    _granted.setdefault(r, grant)
        yield
    finally:
        _trust_all = saved_all
        _granted.clear()
        _granted.update(saved)


def granted_origin(ref: str) -> str:
    """The file that trusted `ref` for this invocation (the recipe), '' if none: for messages about it."""
    grant = _granted.get(ref)
    return grant.origin if grant else ""


# edgekit's own factories and loaders: trusted by name. Not every `edgekit.*` function: a hostile config.json could
# otherwise pick any of them to be called with its dict.
OWN_REFERENCES = frozenset({"edgekit.models:build_model", "edgekit.api:memory_model", "edgekit.api:memory_data"})


def is_own(ref: str) -> bool:
    """One of edgekit's own factories/loaders: always trusted."""
    return ref in OWN_REFERENCES


def _stdlib(mod: str) -> bool:
    top = mod.split(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__main__"


def _allow_list() -> tuple[list[str], str]:
    """The machine's allow-list (environment, then the user's config file) and where it came from, for messages."""
    entries = [e.strip() for e in os.environ.get(TRUST_ENV, "").split(",") if e.strip()]
    path = trust_config_path()
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    except OSError:  # an unreadable allow-list trusts nothing; the error message names the file
        lines = []
    entries += [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]
    return entries, str(path)


def _allowed(ref: str, entries: list[str]) -> bool:
    """An entry is an exact reference ('pkg.mod:build') or a module prefix ('pkg' allows pkg and pkg.*)."""
    mod = ref.partition(":")[0]
    return any(ref == e or mod == e or mod.startswith(e + ".") for e in entries)


def _grant_for(ref: str) -> Grant | None:
    """None when the reference is not trusted; otherwise how to import it."""
    if is_own(ref) or _trust_all:
        return _granted.get(ref, Grant())
    if ref in _granted:
        return _granted[ref]
    return Grant() if _allowed(ref, _allow_list()[0]) else None


def import_reference(ref, *, what: str, origin: str):
    """'package.module:attr' -> the object it names, only when trusted (see the module comment above); otherwise an
    EdgekitError naming the reference, the file it was read from (`origin`) and how to allow it. Nothing of an
    untrusted reference is imported."""
    grant = _granted.get(ref) if isinstance(ref, str) else None
    origin = str(origin or (grant.origin if grant else "") or "?")
    if not isinstance(ref, str) or not _REF.match(ref):
        raise EdgekitError(f"{what} {ref!r} in {origin} is not a reference 'package.module:function'",
                           "write it as 'package.module:function' (an importable module, a colon, a name in it)")
    mod, _, attr = ref.partition(":")
    if _stdlib(mod):
        raise EdgekitError(f"{what} '{ref}' in {origin} names the Python standard library, which is never run as a {what}",
                           f"a {what} is a function of your own package (e.g. 'mypkg.models:build'); a file naming this one was "
                           "altered or is hostile: do not use it")
    grant = _grant_for(ref)
    if grant is None:
        top = mod.split(".")[0]
        raise EdgekitError(f"{what} '{ref}' in {origin} is not trusted, so it was not imported or run (importing runs its code)",
                           _HOW_TO_TRUST.format(module=top, config=_allow_list()[1]))
    added = grant.base_dir is not None and str(grant.base_dir) not in sys.path
    saved = list(sys.path)
    if added:
        sys.path.insert(0, str(grant.base_dir))
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        where = f" (looked in {grant.base_dir} and the Python path)" if grant.base_dir else ""
        raise EdgekitError(f"cannot import {what} '{ref}' from {origin}: {e}{where}",
                           "make its module importable (pip install it, or put its folder on PYTHONPATH)") from e
    except Exception as e:  # noqa: BLE001 — the user's module failed while importing: their code, not ours
        raise user_code_error(e, ref=ref, what=what, origin=origin, stage="importing its module") from e
    finally:
        if added:
            sys.path[:] = saved
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise EdgekitError(f"cannot import {what} '{ref}' from {origin}: module '{mod}' has no '{attr}'",
                           f"check the name after the colon; '{mod}' is {getattr(module, '__file__', None) or 'built in'}") from e


def _culprit(exc: BaseException, fn=None) -> traceback.FrameSummary | None:
    """The innermost frame of the user's own code in the traceback (under the reference's package or module), else
    the innermost frame outside edgekit: where to look first."""
    frames = traceback.extract_tb(exc.__traceback__)
    home = None
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is not None and getattr(module, "__file__", None):
        top = sys.modules.get(module.__name__.split(".")[0])
        f = Path(getattr(top, "__file__", None) or module.__file__)
        home = str(f.parent if f.name == "__init__.py" else f)
    edgekit_dir = str(Path(__file__).resolve().parent)
    for fr in reversed(frames):
        if home and fr.filename.startswith(home):
            return fr
    for fr in reversed(frames):
        if not fr.filename.startswith(edgekit_dir):
            return fr
    return frames[-1] if frames else None


def user_code_error(exc: BaseException, *, ref: str, what: str, origin: str = "", fn=None, stage: str = "") -> EdgekitError:
    """An exception raised by a user's factory/loader, as a one-line EdgekitError naming its file and line (the
    traceback stays chained for EDGEKIT_DEBUG=1). Callers that consume a user's generator lazily use this too."""
    fr = _culprit(exc, fn)
    at = f" at {fr.filename}:{fr.lineno}" if fr else ""
    msg = " ".join(str(exc).split())[:200]
    src = f" (from {origin})" if origin else ""
    return EdgekitError(f"{what} '{ref}'{src} failed{' ' + stage if stage else ''}: {type(exc).__name__}: {msg}{at}",
                        "this is an error in that code, not in edgekit; fix it there (EDGEKIT_DEBUG=1 shows the traceback)")


def call_user_code(fn, args: tuple = (), kwargs: dict | None = None, *, ref: str, what: str, origin: str = "", called_as: str = ""):
    """fn(*args, **kwargs) for a user's factory/loader (its arguments apart from ours, so a loader option may be named
    like one of them): what it raises becomes a one-line error naming its file and line; a call that does not fit its
    signature says how edgekit calls it (`called_as`, e.g. 'build(config: dict)')."""
    try:
        return fn(*args, **(kwargs or {}))
    except EdgekitError:
        raise
    except TypeError as e:
        if len(traceback.extract_tb(e.__traceback__)) <= 1:  # raised at the call itself: the signature does not fit
            src = f" (from {origin})" if origin else ""
            raise EdgekitError(f"{what} '{ref}'{src} cannot be called the way edgekit calls it, {called_as or 'with the arguments given'}: {e}",
                               f"give it that signature: edgekit calls a {what} as {called_as}" if called_as else "check its signature") from e
        raise user_code_error(e, ref=ref, what=what, origin=origin, fn=fn) from e
    except Exception as e:  # noqa: BLE001 — anything the user's code raises is the user's to fix, reported as such
        raise user_code_error(e, ref=ref, what=what, origin=origin, fn=fn) from e
