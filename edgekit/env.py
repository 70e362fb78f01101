"""What this machine is and can do: CPU model and ISA, library versions, GPUs, backends.
Recorded with every benchmark result (INT8 speed-ups depend on the ISA) and printed by `edgekit doctor`."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess

ISA_FLAGS = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "neon", "asimddp"]
LIBRARIES = ["edgekit", "torch", "numpy", "onnx", "onnxruntime", "openvino", "nncf", "torch-pruning", "onnxslim", "tensorrt", "paramiko"]


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and model in ("", platform.machine(), platform.processor()):
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    return {"model": model, "arch": platform.machine(), "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "isa": {f: f in flags for f in ISA_FLAGS}}


def library_versions() -> dict:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = None
    return out


def gpus() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [[c.strip() for c in line.split(",")] for line in res.stdout.strip().splitlines() if line.strip()]
    return [dict(zip(["name", "memory", "driver", "compute_capability"], r)) for r in rows]


def backends_status() -> dict:
    from edgekit.backends.base import backend_names, get_backend
    from edgekit.errors import EdgekitError

    out = {}
    for name in backend_names():
        try:
            b = get_backend(name)
            (ok, why), hint = b.available(), b.install_hint
        except EdgekitError as e:
            ok, why, hint = False, e.message, e.hint
        out[name] = {"available": ok, "reason": why, "install": "" if ok else hint}
    return out


def fingerprint() -> dict:
    """Enough to tell two benchmark environments apart: OS, CPU/ISA, library versions, GPUs."""
    return {"os": f"{platform.system()} {platform.release()}", "python": platform.python_version(), "hostname": platform.node(),
            "cpu": cpu_info(), "libraries": library_versions(), "gpus": gpus(),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE") if k in os.environ}}
