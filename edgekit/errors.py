"""User errors vs. bugs: an EdgekitError is the user's to fix and is shown as one line plus a hint."""
from __future__ import annotations

import re
import sys
from contextlib import contextmanager


class EdgekitError(Exception):
    """A problem with the user's input or environment; `hint` says how to fix it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


ISSUES_URL = "https://github.com/edgekit/edgekit/issues"


class InternalError(Exception):
    """A bug in edgekit, not the user's mistake: the CLI says so, asks for a report and exits 1 (NNCF's split of
    user-facing errors from internal ones)."""


# ---------------------------------------------------------------- the last-resort contract for input files

# What reading a damaged, truncated, foreign or hostile file raises, in Python and in the libraries that parse files
# for edgekit. Built-ins here; a library's types are looked up only if that library is already imported (if it is
# not, it cannot have raised). RuntimeError covers OpenVINO ("Exception from src/...") and torch's loaders.
_BUILTIN = (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError, MemoryError, OSError, EOFError,
            OverflowError, RuntimeError, UnicodeError)
_LIBRARY = {"onnxruntime.capi.onnxruntime_pybind11_state": None,  # Fail, InvalidArgument, InvalidGraph, NoSuchFile, ...: all
            "google.protobuf.message": ("Error",), "onnx.onnx_cpp2py_export.checker": ("ValidationError",),
            "onnx.onnx_cpp2py_export.shape_inference": ("InferenceError",), "onnx.onnx_cpp2py_export.parser": ("ParseError",),
            "safetensors": ("SafetensorError",), "yaml": ("YAMLError",), "zipfile": ("BadZipFile",), "struct": ("error",),
            "paramiko.ssh_exception": ("SSHException",), "paramiko.hostkeys": ("InvalidHostKey",), "openvino.exceptions": ("OVError",)}
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed: ?)?")


def input_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "this file is not what it should be" (see reading)."""
    found = list(_BUILTIN)
    for module, names in _LIBRARY.items():
        mod = sys.modules.get(module)
        if mod is None:
            continue
        for name in names or [n for n, v in vars(mod).items() if isinstance(v, type) and issubclass(v, Exception)]:
            t = getattr(mod, name, None)
            if isinstance(t, type) and issubclass(t, Exception):
                found.append(t)
    return tuple(found)


def short_reason(e: BaseException, limit: int = 200) -> str:
    """One line saying why a file could not be read: the library's message without its boilerplate."""
    if isinstance(e, MemoryError):
        return "not enough memory to load it (MemoryError)"
    if isinstance(e, RecursionError):
        return "it is nested too deeply (RecursionError)"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = _ORT_PREFIX.sub("", " ".join(str(e).split()))
    if isinstance(e, KeyError) and e.args:
        text = f"missing key {e.args[0]!r}"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{text} ({type(e).__name__})" if text else type(e).__name__


READ_HINT = "check that it is the right file and complete (not truncated or damaged); re-create it with the edgekit command that wrote it"


@contextmanager
def reading(path, what: str, hint: str = READ_HINT):
    """Around code that reads or parses the user's file `path` (a checkpoint, an ONNX, a results file, a key file):
    whatever the parser raises because the file is damaged, foreign or hostile becomes one EdgekitError naming the
    file (`cannot read {what} {path}: {why}`). Wrap only the reading itself, never a whole command: anything raised
    outside such a block (or not an input error, e.g. ZeroDivisionError) stays a bug and is reported as one."""
    try:
        yield
    except EdgekitError:
        raise
    except input_errors() as e:
        raise EdgekitError(f"cannot read {what} {path}: {short_reason(e)}", hint) from e
