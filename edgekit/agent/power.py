"""Board power from `tegrastats` while a model runs: average power and energy per inference.

tegrastats prints one line per interval; power rails appear as `NAME current/average`, in mW with a unit
on Orin (`VDD_IN 5000mW/4980mW`) and without one on older Jetsons (`POM_5V_IN 2490/2490` on Nano,
`GPU 0/0 CPU 620/620 SOC 1240/1240 ...` on AGX Xavier). The "average" is since tegrastats started, so only
the current value of each line is used and averaged over the window we care about."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time

# A rail is NAME then two integers, optionally in mW; RAM/SWAP/IRAM carry MB/kB units and never match.
_RAIL = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
# Rails that measure the whole module input; when none is present the rails are summed (AGX Xavier/Orin).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN", "VDDIN")


def parse_line(line: str) -> dict[str, int]:
    """{rail: current mW} from one tegrastats line ({} when it has no power rails)."""
    return {m.group(1): int(m.group(2)) for m in _RAIL.finditer(line)}


def board_power_mw(rails: dict[str, int]) -> tuple[float | None, str]:
    """Total module power of one sample and how it was obtained."""
    for name in INPUT_RAILS:
        if name in rails:
            return float(rails[name]), name
    if rails:
        return float(sum(rails.values())), "sum of " + "+".join(sorted(rails))
    return None, ""


def summarize(samples: list[tuple[float, dict[str, int]]], inferences: int = 0, seconds: float = 0.0,
              batch: int = 1) -> dict:
    """Average power over the samples; energy per inference = average power x time / inferences."""
    powers = [(board_power_mw(r)) for _, r in samples]
    values = [p for p, _ in powers if p is not None]
    if not values:
        return {"available": False, "reason": "tegrastats printed no power rails"}
    avg_w = sum(values) / len(values) / 1000.0
    out = {"available": True, "samples": len(values), "rail": powers[-1][1], "average_power_w": round(avg_w, 4),
           "max_power_w": round(max(values) / 1000.0, 4),
           "rails_average_mw": {k: round(sum(r.get(k, 0) for _, r in samples) / len(samples), 1) for k in samples[-1][1]}}
    if inferences and seconds > 0:
        per_inf_j = avg_w * seconds / inferences
        out.update(inferences=inferences, seconds=round(seconds, 4),
                   energy_per_inference_mj=round(per_inf_j * 1000.0, 6),
                   energy_per_sample_mj=round(per_inf_j * 1000.0 / max(batch, 1), 6))
    return out


class PowerSampler:
    """Runs `tegrastats --interval MS` in the background and keeps (time, rails) for each line.

    Use as a context manager; `samples` then holds what was printed while the block ran."""

    def __init__(self, interval_ms: int = 100, command: str | None = None):
        self.interval_ms = interval_ms
        self.command = command or shutil.which("tegrastats") or next((p for p in ("/usr/bin/tegrastats",) if os.path.exists(p)), None)
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._proc = None
        self._thread = None

    @property
    def available(self) -> bool:
        return self.command is not None

    def __enter__(self):
        if not self.available:
            return self
        self._proc = subprocess.Popen([self.command, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            rails = parse_line(line)
            if rails:
                self.samples.append((time.monotonic(), rails))

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._thread.join(timeout=5)
        return False

    def window(self, start: float, end: float) -> list[tuple[float, dict[str, int]]]:
        return [s for s in self.samples if start <= s[0] <= end]


def measure_energy(fn, seconds: float = 2.0, batch: int = 1, interval_ms: int = 100, command: str | None = None) -> dict:
    """Call fn() back to back for `seconds` while tegrastats samples power; the idle second before is the baseline."""
    sampler = PowerSampler(interval_ms, command)
    if not sampler.available:
        return {"available": False, "reason": "tegrastats not found (not a Jetson?)"}
    with sampler:
        time.sleep(max(1.0, 3 * interval_ms / 1000.0))
        idle_end = start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            fn()
            n += 1
        end = time.monotonic()
        time.sleep(interval_ms / 1000.0)  # the line covering the last interval arrives after it
    out = summarize(sampler.window(start, end + interval_ms / 1000.0), n, end - start, batch)
    idle = summarize(sampler.window(0, idle_end))
    if out.get("available") and idle.get("available"):
        out["idle_power_w"] = idle["average_power_w"]
        if n:
            dyn = (out["average_power_w"] - idle["average_power_w"]) * (end - start) / n
            out["dynamic_energy_per_inference_mj"] = round(dyn * 1000.0, 6)
    out["interval_ms"] = interval_ms
    return out
