"""Latency benchmark of any Runner, with the protocol in edgekit.agent.measure (shared with the device agent): inputs bound once (Runner.bind), warm-up,
every call timed, statistics per batch size, cold start, memory, artifact size, and the environment and command
that reproduce the numbers. `bench_artifact` is what `edgekit bench` runs; the result is one JSON document."""
from __future__ import annotations

import datetime
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.agent import measure
from edgekit.agent.measure import PROTOCOL
from edgekit.backends.base import Artifact, Runner
from edgekit.errors import EdgekitError
from edgekit.io import atomic_write_json
from edgekit.limits import check_batch, check_protocol

SCHEMA = "edgekit-bench/1"


class TorchRunner(Runner):
    """Torch eager (inference mode) as a Runner: the baseline every backend is compared with."""

    def __init__(self, model, spec, threads: int | None = None):
        import torch

        if threads:
            from edgekit.limits import check_threads

            torch.set_num_threads(check_threads(threads))
        super().__init__(spec, {"backend": "torch", "threads": torch.get_num_threads(), "mode": "eager, torch.inference_mode",
                                "torch": torch.__version__})
        self.model = model.eval()

    def _tensors(self, feed):
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}

    def _run(self, feed):
        import torch

        with torch.inference_mode():
            out = self.model(**self._tensors(feed))
        return {self.spec.output_names[0]: out.numpy()}

    def bind(self, feed):
        import torch

        self.spec.check_feed(feed)
        tensors = self._tensors(feed)

        def call():
            with torch.inference_mode():
                self.model(**tensors)
        return call


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process (Linux VmHWM; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


RUNTIME_PEAK_NOTE = ("peak resident memory of a separate process that imports only numpy, the runtime and edgekit's runner "
                     "(no torch), loads this artifact and runs it at each benchmarked batch size")


def runtime_peak_rss(artifact_dir, batch_sizes=(1,), threads: int | None = None, calls: int = 20) -> dict:
    """What the runtime alone needs: {peak_rss_bytes, torch_loaded} measured in a child process (RUNTIME_PEAK_NOTE),
    not in this one, which holds torch and the training data. peak_rss_bytes is None where it cannot be measured."""
    import json
    import os
    import subprocess

    import edgekit

    args = json.dumps({"dir": str(artifact_dir), "batch_sizes": [int(b) for b in batch_sizes], "threads": threads, "calls": calls})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(edgekit.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; from edgekit.bench import _runtime_peak_child; _runtime_peak_child(sys.argv[1])", args],
                              capture_output=True, text=True, timeout=300, env=env)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return {"peak_rss_bytes": None, "torch_loaded": None}


def _runtime_peak_child(args: str) -> None:
    import json

    a = json.loads(args)
    runner, _ = load_runner(a["dir"], None, a["threads"])
    for b in a["batch_sizes"]:
        call = runner.bind(runner.spec.example_inputs(b))
        for _ in range(a["calls"]):
            call()
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "torch_loaded": "torch" in sys.modules}))


def load_runner(path, backend: str | None = None, threads: int | None = None) -> tuple[Runner, dict]:
    """(runner, artifact facts) for a compiled artifact, or for a checkpoint folder with backend 'torch'."""
    path = Path(path)
    if backend == "torch":
        from edgekit import checkpoint

        model, spec, _ = checkpoint.load(path)
        weights = path / "model.safetensors" if path.is_dir() else path
        return TorchRunner(model, spec, threads), {"path": str(path), "dir": str(path if path.is_dir() else path.parent),
                                                   "backend": "torch", "precision": "fp32",
                                                   "size_bytes": weights.stat().st_size if weights.exists() else None}
    from edgekit.backends.base import get_backend

    art = Artifact.load(path)
    if backend and backend != art.backend:
        raise EdgekitError(f"{path} is an artifact for {art.backend}, not {backend}", f"use --backend {art.backend}, or compile for {backend} first")
    settings = {"threads": threads} if threads else {}
    runner = get_backend(art.backend).load(art, **settings)
    return runner, {"path": str(art.path), "dir": str(art.path.parent), "backend": art.backend, "precision": art.precision,
                    "size_bytes": art.size_bytes(), "options": art.options}


def benchmark(runner: Runner, batch_sizes=tuple(PROTOCOL["batch_sizes"]), warmup: int = PROTOCOL["warmup"],
              warmup_seconds: float = PROTOCOL["warmup_seconds"], iterations: int | None = PROTOCOL["iterations"],
              min_seconds: float = PROTOCOL["min_seconds"], max_seconds: float = PROTOCOL["max_seconds"], seed: int = 0,
              min_iterations: int = PROTOCOL["min_iterations"]) -> dict:
    """Time `runner` at each batch size (inputs generated from its spec, bound once). Returns the bench JSON
    without the artifact/cold-start parts (see bench_artifact)."""
    from edgekit.env import fingerprint

    check_protocol(list(batch_sizes), warmup, iterations, min_seconds)
    for b in batch_sizes:  # before any input is allocated
        check_batch(b, runner.spec.sample_bytes, "the model")
    rss0 = _rss_mb()
    settings = {"warmup": warmup, "warmup_seconds": warmup_seconds, "iterations": iterations, "min_seconds": min_seconds,
                "min_iterations": min_iterations, "max_seconds": max_seconds}
    batches = {str(b): measure.time_batch(runner.bind(runner.spec.example_inputs(int(b), seed)), int(b), settings)
               for b in batch_sizes}
    return {"schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": runner.settings.get("backend", type(runner).__name__), "threads": runner.settings.get("threads"),
            "settings": runner.settings, "batches": batches,
            "high_variance": any(v["latency_ms"]["high_variance"] for v in batches.values()),
            "memory": {"peak_rss_mb": _peak_rss_mb(), "rss_mb": _rss_mb(), "rss_at_start_mb": rss0,
                       "note": "peak_rss_mb is the whole process's peak (ru_maxrss)"},
            "protocol": {**settings, "cv_limit": measure.CV_LIMIT, **measure.PROTOCOL_NOTES,
                         "inputs": "random from the ModelSpec (seed %d), bound once with Runner.bind" % seed},
            "environment": fingerprint()}


def bench_command(path, backend: str, batch_sizes, warmup: int, iterations: int | None, min_seconds: float,
                  threads: int | None) -> str:
    args = ["edgekit", "bench", str(path), "--backend", backend] + [a for b in batch_sizes for a in ("--batch", str(b))]
    args += ["--warmup", str(warmup)] + (["--iterations", str(iterations)] if iterations else ["--min-seconds", f"{min_seconds:g}"])
    args += ["--threads", str(threads)] if threads else []
    return shlex.join(args)


def bench_artifact(path, backend: str | None = None, batch_sizes=tuple(PROTOCOL["batch_sizes"]), warmup: int = PROTOCOL["warmup"],
                   warmup_seconds: float = PROTOCOL["warmup_seconds"], iterations: int | None = PROTOCOL["iterations"],
                   min_seconds: float = PROTOCOL["min_seconds"], max_seconds: float = PROTOCOL["max_seconds"],
                   threads: int | None = None) -> dict:
    """Load (timed: cold start = load + first inference), then benchmark. `backend='torch'` takes a checkpoint."""
    check_protocol(list(batch_sizes), warmup, iterations, min_seconds, threads)  # before any thread starts
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    runner, facts = load_runner(path, backend, threads)
    for b in batch_sizes:
        check_batch(b, runner.spec.sample_bytes, str(path))
    t1 = time.perf_counter()
    runner.run(runner.spec.example_inputs(int(batch_sizes[0])))
    t2 = time.perf_counter()
    result = benchmark(runner, batch_sizes, warmup, warmup_seconds, iterations, min_seconds, max_seconds)
    result["memory"]["rss_before_load_mb"] = rss0
    result["artifact"] = facts
    result["precision"] = facts["precision"]
    result["cold_start_s"] = {"load": t1 - t0, "first_inference": t2 - t1, "total": t2 - t0,
                              "note": "library import excluded" + ("; OpenVINO model cache hit" if runner.settings.get("model_cache_hit") else "")}
    result["command"] = bench_command(path, facts["backend"], batch_sizes, warmup, iterations, min_seconds, threads)
    return result


def save(result: dict, out_dir=None) -> Path:
    """bench-<backend>.json in `out_dir` (default: beside the artifact), written atomically."""
    art = result.get("artifact", {})
    out = Path(out_dir or art.get("dir") or Path(art.get("path", ".")))
    path = out / f"bench-{result['backend']}.json"
    from edgekit.guard import refuse_overwrite

    refuse_overwrite([path], [art.get("path")], "the benchmark file")
    atomic_write_json(path, result)
    return path


def print_result(result: dict) -> None:
    from rich.table import Table

    from edgekit.ui import console, escape

    art = result.get("artifact", {})
    t = Table("batch", "median ms", "p90", "p99", "max", "CV", "samples/s", "n",
              title=escape(f"{result['backend']} {result.get('precision', '')}  {art.get('path', '')}"))
    for b in result["batches"].values():
        s = b["latency_ms"]
        cv = f"{s['cv']:.1%}" + (" [yellow](noisy)[/]" if s["high_variance"] else "")
        t.add_row(str(b["batch"]), f"{s['median']:.3f}", f"{s['p90']:.3f}", f"{s['p99']:.3f}", f"{s['max']:.3f}", cv,
                  f"{b['throughput_per_s']:.1f}", str(s["n"]))
    console.print(t)
    cs, mem = result.get("cold_start_s"), result["memory"]
    if cs:
        console.print(f"cold start {cs['total'] * 1000:.0f} ms (load {cs['load'] * 1000:.0f} + first inference {cs['first_inference'] * 1000:.0f})")
    size = art.get("size_bytes")
    console.print(f"threads {result['threads']}  peak RSS {mem['peak_rss_mb']:.0f} MiB" + (f"  artifact {size / 2**20:.2f} MiB" if size else ""))
    if result["high_variance"]:
        console.print(f"[yellow]CV above {measure.CV_LIMIT:.0%}: the machine was busy or the clock unstable; rerun before trusting the numbers[/]")
    if result.get("command"):
        console.print(escape(f"reproduce: {result['command']}"), highlight=False, soft_wrap=True)
