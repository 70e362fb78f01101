"""Lazy imports of optional backends: a missing one is a clear error naming the extra to install."""
from __future__ import annotations

import importlib

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
