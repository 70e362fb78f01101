"""The latency protocol and its statistics. Python 3.10 standard library and numpy only, no edgekit imports:
this file is copied verbatim into the device agent that runs on a Jetson's system Python (numpy 1.21 there).

Protocol: warm up (a number of calls and a minimum time, whichever is longer), then time every call
separately with a monotonic clock, either exactly N calls or until a minimum duration (and a minimum count)
is reached, capped by a maximum duration. The garbage collector is paused while timing (as timeit does), so
a collection is not charged to the model."""
from __future__ import annotations

import gc
import math
import statistics
import time

CV_LIMIT = 0.05  # a run whose coefficient of variation exceeds this is flagged as noisy


def measure(fn, warmup: int = 10, warmup_seconds: float = 0.5, iterations: int | None = None,
            min_seconds: float = 2.0, max_seconds: float = 60.0, min_iterations: int = 10) -> list:
    """Per-call times of `fn()` in seconds."""
    clock = time.perf_counter
    start, n = clock(), 0
    while n < warmup or clock() - start < warmup_seconds:
        fn()
        n += 1
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        begin = clock()
        while True:
            t0 = clock()
            fn()
            t1 = clock()
            times.append(t1 - t0)
            if iterations is not None:
                if len(times) >= iterations:
                    break
            elif (t1 - begin >= min_seconds and len(times) >= min_iterations) or t1 - begin >= max_seconds:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def percentile(sorted_values: list, q: float) -> float:
    """Nearest-rank percentile (always an observed value, as MLPerf and trtexec report)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(times: list, scale: float = 1000.0) -> dict:
    """Statistics of per-call times (seconds in; milliseconds out with the default scale)."""
    v = sorted(float(t) * scale for t in times)
    if not v:
        raise ValueError("no timings to summarize")
    mean = statistics.fmean(v)
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    return {"n": len(v), "min": v[0], "mean": mean, "median": statistics.median(v), "p90": percentile(v, 90),
            "p95": percentile(v, 95), "p99": percentile(v, 99), "max": v[-1], "std": std, "cv": cv,
            "high_variance": cv > CV_LIMIT, "unit": "ms" if scale == 1000.0 else f"s*{scale:g}"}


def throughput(times: list, batch: int) -> float:
    """Samples per second over the timed calls (one request at a time)."""
    total = math.fsum(times)
    return batch * len(times) / total if total > 0 else float("nan")
