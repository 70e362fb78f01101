"""What the device is: board, L4T/JetPack, TensorRT/CUDA versions, GPU, power mode and clocks.

Every benchmark result carries this, because an engine and its latency depend on all of it. Each probe
is allowed to fail (a plain Linux box has no nvpmodel): the failure is recorded, never raised."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess


def _run(cmd: list[str], timeout: float = 10.0) -> tuple[int, str]:
    exe = shutil.which(cmd[0]) or (cmd[0] if os.path.exists(cmd[0]) else None)
    if exe is None:
        return 127, f"{cmd[0]}: not found"
    try:
        res = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, str(e)
    return res.returncode, (res.stdout + res.stderr).strip()


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def parse_tegra_release(text: str) -> dict:
    """'# R36 (release), REVISION: 4.0, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ...' -> {l4t: '36.4.0', ...}"""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    out = {"raw": text.splitlines()[0] if text else ""}
    if m:
        out["l4t"] = f"{m.group(1)}.{m.group(2)}"
    for key in ("BOARD", "EABI", "DATE"):
        km = re.search(rf"{key}:\s*([^,]+)", text)
        if km:
            out[key.lower()] = km.group(1).strip()
    return out


def parse_nvpmodel(text: str) -> dict:
    """`nvpmodel -q` prints 'NV Power Mode: MAXN' and the mode id on the next line."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    ids = re.findall(r"^\s*(\d+)\s*$", text, re.M)
    return {"name": m.group(1) if m else None, "id": int(ids[0]) if ids else None, "raw": text}


def _dpkg_version(package: str) -> str | None:
    rc, out = _run(["dpkg-query", "-W", "-f=${Version}", package])
    return out if rc == 0 and out else None


def cuda_info() -> dict:
    """CUDA toolkit version from its version.json, runtime/driver and GPU from libcudart (no extra packages)."""
    out: dict = {}
    text = _read("/usr/local/cuda/version.json")
    if text:
        try:
            out["toolkit"] = json.loads(text).get("cuda", {}).get("version")
        except ValueError:
            pass
    try:
        from .cudart import CudaRuntime

        cuda = CudaRuntime()
        out.update(runtime=cuda.runtime_version(), driver=cuda.driver_version(), gpus=cuda.devices())
    except Exception as e:  # no libcudart or no GPU: a CPU-only target
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def tensorrt_version() -> str | None:
    try:
        import tensorrt

        return tensorrt.__version__
    except Exception:
        return _dpkg_version("tensorrt")


def onnxruntime_info() -> dict | None:
    try:
        import onnxruntime

        return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    except Exception:
        return None


def quick() -> dict:
    """The few facts that decide whether earlier results on this device are still valid (cheap to collect)."""
    tegra = _read("/etc/nv_tegra_release")
    rc, mode = _run(["nvpmodel", "-q"])
    return {"l4t": parse_tegra_release(tegra).get("l4t") if tegra else None, "tensorrt": tensorrt_version(),
            "power_mode": parse_nvpmodel(mode).get("name") if rc == 0 else None,
            "onnxruntime": (onnxruntime_info() or {}).get("version"), "python": platform.python_version()}


def collect(workdir: str = ".") -> dict:
    import numpy

    tegra = _read("/etc/nv_tegra_release")
    rc_mode, mode = _run(["nvpmodel", "-q"])
    rc_clk, clocks = _run(["jetson_clocks", "--show"])
    if rc_clk != 0 and shutil.which("sudo"):  # --show reads root-only files on most releases
        rc_sudo, out = _run(["sudo", "-n", "jetson_clocks", "--show"])
        if rc_sudo == 0:
            rc_clk, clocks = rc_sudo, out
    disk = shutil.disk_usage(workdir)
    mem = _read("/proc/meminfo") or ""
    mem_kb = re.search(r"MemTotal:\s*(\d+)", mem)
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "board": _read("/proc/device-tree/model"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_mb": int(mem_kb.group(1)) // 1024 if mem_kb else None,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "l4t": parse_tegra_release(tegra) if tegra else None,
        "jetpack": _dpkg_version("nvidia-jetpack"),
        "tensorrt": tensorrt_version(),
        "tensorrt_deb": _dpkg_version("tensorrt"),
        "cuda": cuda_info(),
        "onnxruntime": onnxruntime_info(),
        "power_mode": parse_nvpmodel(mode) if rc_mode == 0 else {"error": mode},
        "clocks": clocks if rc_clk == 0 else {"error": clocks},
        "trtexec": shutil.which("trtexec") or ("/usr/src/tensorrt/bin/trtexec" if os.path.exists("/usr/src/tensorrt/bin/trtexec") else None),
        "tegrastats": shutil.which("tegrastats") or ("/usr/bin/tegrastats" if os.path.exists("/usr/bin/tegrastats") else None),
        "disk_free_mb": disk.free // (1 << 20),
    }


def _cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()
