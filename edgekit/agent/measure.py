"""The one measurement core: the latency protocol and its defaults, latency statistics, parity numbers,
classification metrics and the feeds that are timed. `edgekit bench`, `edgekit evaluate`, the parity checks and
the device agent all call this module, so a number measured here and one measured on a Jetson have the same
definition and the same shape.

Python 3.10 standard library and numpy only, no edgekit imports, no relative imports: it ships in the deploy
bundle with the rest of edgekit/agent and runs on a Jetson's system Python (numpy 1.21 there). numpy is
imported where used, so the timing loop works even before numpy is known to be importable.

Latency protocol: warm up (a number of calls and a minimum time, whichever is longer), then time every call
separately with a monotonic clock, either exactly N calls or until a minimum duration (and a minimum count)
is reached, capped by a maximum duration. The garbage collector is paused while timing (as timeit does), so
a collection is not charged to the model. Percentiles are nearest-rank (always an observed value, as MLPerf
and trtexec report)."""
from __future__ import annotations

import gc
import math
import statistics
import time

# ---- the latency protocol ------------------------------------------------------------------------------------

CV_LIMIT = 0.05  # a run whose coefficient of variation exceeds this is flagged as noisy
# The protocol's defaults, for `edgekit bench`, the deploy manifest and the agent alike (a manifest may override any).
PROTOCOL = {"batch_sizes": [1, 8], "warmup": 10, "warmup_seconds": 0.5, "iterations": None, "min_seconds": 2.0,
            "max_seconds": 60.0, "min_iterations": 10, "rounds": 5}
POWER_SECONDS = 5.0  # how long the agent samples board power (not part of the latency protocol)
# How the numbers were taken, recorded with every result.
PROTOCOL_NOTES = {"timer": "time.perf_counter per call", "percentiles": "nearest rank", "gc": "paused while timing",
                  "concurrency": "1 request at a time"}
MS = 1000.0


def measure(fn, warmup: int = PROTOCOL["warmup"], warmup_seconds: float = PROTOCOL["warmup_seconds"],
            iterations: int | None = PROTOCOL["iterations"], min_seconds: float = PROTOCOL["min_seconds"],
            max_seconds: float = PROTOCOL["max_seconds"], min_iterations: int = PROTOCOL["min_iterations"]) -> list:
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
    """Nearest-rank percentile (always an observed value)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(times: list, scale: float = MS) -> dict:
    """Statistics of per-call times (seconds in; milliseconds out with the default scale)."""
    v = sorted(float(t) * scale for t in times)
    if not v:
        raise ValueError("no timings to summarize")
    mean = statistics.fmean(v)
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    return {"n": len(v), "min": v[0], "mean": mean, "median": statistics.median(v), "p90": percentile(v, 90),
            "p95": percentile(v, 95), "p99": percentile(v, 99), "max": v[-1], "std": std, "cv": cv,
            "high_variance": cv > CV_LIMIT, "unit": "ms" if scale == MS else f"s*{scale:g}"}


def throughput(times: list, batch: int) -> float:
    """Samples per second over the timed calls (one request at a time)."""
    total = math.fsum(times)
    return batch * len(times) / total if total > 0 else float("nan")


def protocol(overrides: dict | None = None) -> dict:
    """The protocol's defaults with `overrides` (None values in the overrides are kept: iterations=None means timed)."""
    return {**PROTOCOL, **(overrides or {})}


def time_batch(call, batch: int, settings: dict | None = None) -> dict:
    """Time `call` (one inference of `batch` samples, inputs already bound) under the protocol: the per-batch
    entry of every bench result, local or remote."""
    p = protocol(settings)
    times = measure(call, warmup=int(p["warmup"]), warmup_seconds=float(p["warmup_seconds"]),
                    iterations=p["iterations"], min_seconds=float(p["min_seconds"]),
                    max_seconds=float(p["max_seconds"]), min_iterations=int(p["min_iterations"]))
    return {"batch": int(batch), "latency_ms": summarize(times), "throughput_per_s": throughput(times, int(batch)),
            "times_ms": [t * MS for t in times]}


# ---- several models compared: interleaved rounds, and the one speed verdict ------------------------------------

CONFIDENCE = 0.95  # of the speedup interval
BOOTSTRAP = 2000  # resamples of the rounds
SEED = 0  # the bootstrap's seed: the same rounds always give the same interval
MIN_ROUNDS = 3  # fewer paired rounds give no interval (and so no win)


def time_rounds(calls: dict, settings: dict | None = None, on_round=None) -> dict:
    """Time several models against each other: `calls` is {name: {batch: call}}; every model at each batch size,
    in order, `rounds` times, so a change in machine load hits every model alike. The protocol's budget
    (min_seconds, min_iterations, iterations, max_seconds) is split over the rounds, so the total time is that of
    one time_batch per model and batch; the first round warms up fully, later ones with a quarter of the calls.
    Returns {name: {str(batch): time_batch's entry over the pooled samples + round_medians_ms}}."""
    p = protocol(settings)
    rounds = max(1, int(p["rounds"]))
    per = lambda k: None if p[k] is None else max(1, math.ceil(int(p[k]) / rounds))  # noqa: E731
    times = {n: {b: [] for b in by} for n, by in calls.items()}
    medians = {n: {b: [] for b in by} for n, by in calls.items()}
    for k in range(rounds):
        for n, by in calls.items():
            for b, call in by.items():
                t = measure(call, warmup=int(p["warmup"]) if k == 0 else max(1, int(p["warmup"]) // 4),
                            warmup_seconds=float(p["warmup_seconds"]) if k == 0 else 0.0, iterations=per("iterations"),
                            min_seconds=float(p["min_seconds"]) / rounds, max_seconds=float(p["max_seconds"]) / rounds,
                            min_iterations=per("min_iterations"))
                times[n][b] += t
                medians[n][b].append(statistics.median(t) * MS)
        if on_round:
            on_round(k + 1, rounds)
    return {n: {str(b): {"batch": int(b), "latency_ms": summarize(ts), "throughput_per_s": throughput(ts, int(b)),
                         "times_ms": [t * MS for t in ts], "round_medians_ms": medians[n][b]} for b, ts in by.items()}
            for n, by in times.items()}


def _paired_ratios(ref_rounds, var_rounds):
    """ref / var per round (paired by round: same length, 1-D, all positive), or None."""
    import numpy as np

    ref, var = np.asarray(ref_rounds, np.float64), np.asarray(var_rounds, np.float64)
    if ref.shape != var.shape or ref.ndim != 1 or len(ref) == 0 or not (np.all(ref > 0) and np.all(var > 0)):
        return None
    return ref / var


def speedup_ci(ref_rounds, var_rounds, level: float = CONFIDENCE, resamples: int = BOOTSTRAP, seed: int = SEED):
    """(low, high): the `level` confidence interval of how many times faster a model is than the reference, from
    their per-round medians of the same interleaved rounds (paired by round): the percentile bootstrap over rounds
    of the median per-round ratio ref / var. None with fewer than MIN_ROUNDS pairs or unequal round counts."""
    import numpy as np

    ratios = _paired_ratios(ref_rounds, var_rounds)
    if ratios is None or len(ratios) < MIN_ROUNDS:
        return None
    idx = np.random.default_rng(seed).integers(0, len(ratios), size=(resamples, len(ratios)))
    boot = np.median(ratios[idx], axis=1)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def speedup_point(ref_rounds, var_rounds):
    """The speedup whose interval speedup_ci gives: the median per-round ratio ref / var (None when unpaired)."""
    import numpy as np

    ratios = _paired_ratios(ref_rounds, var_rounds)
    return None if ratios is None else float(np.median(ratios))


def wins(ci, over: float = 1.0) -> bool:
    """The rule: faster (than the reference, or than `over` times it) only when the interval's lower end is above."""
    return ci is not None and ci[0] > over


# ---- the feeds that are timed --------------------------------------------------------------------------------

MASK_INPUT = "modality_mask"


def random_feed(inputs: list, batch: int, seed: int = 0, vocab_size: int = 2) -> dict:
    """Random inputs for a spec's `inputs` (dicts with name, shape with None for the batch, dtype): all modalities
    present, token ids in [1, vocab_size), floats standard normal."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for i in inputs:
        shape = [batch if d is None else d for d in i["shape"]]
        dtype = i.get("dtype", "float32")
        if i["name"] == MASK_INPUT:
            out[i["name"]] = np.ones(shape, np.float32)
        elif dtype.startswith("int"):
            out[i["name"]] = rng.integers(1, vocab_size, size=shape).astype(dtype)
        else:
            out[i["name"]] = rng.standard_normal(shape).astype(dtype)
    return out


def sample_feed(spec: dict, samples: dict | None, batch: int, seed: int = 0) -> dict:
    """A feed of `batch` real samples (cycled), or random inputs of the spec's shapes when there are none.
    `spec` is a ModelSpec as a dict (inputs, preprocessing)."""
    import numpy as np

    if samples:
        n = len(samples["labels"])
        idx = np.arange(batch) % n
        return {i["name"]: samples[i["name"]][idx] for i in spec["inputs"]}
    return random_feed(spec["inputs"], batch, seed, int((spec.get("preprocessing") or {}).get("vocab_size", 2)))


# ---- parity --------------------------------------------------------------------------------------------------

def parity(reference, candidate, labels=None) -> dict:
    """How closely candidate logits [N, C] follow reference logits of the same samples: top-1 agreement, max/mean
    absolute difference, whether all are finite; with labels (all >= 0), both accuracies too."""
    import numpy as np

    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"reference logits have shape {ref.shape}, candidate {cand.shape}")
    diff = np.abs(ref - cand)
    out = {"n": int(len(ref)), "top1_agreement": float((ref.argmax(1) == cand.argmax(1)).mean()),
           "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
           "finite": bool(np.isfinite(cand).all())}
    if labels is not None:
        labels = np.asarray(labels)[: len(ref)]
        if labels.min() >= 0:
            out["reference_accuracy"] = float((ref.argmax(1) == labels).mean())
            out["candidate_accuracy"] = float((cand.argmax(1) == labels).mean())
    return out


def parity_passed(result: dict, min_top1: float) -> dict:
    """Record the threshold and the verdict (finite outputs and top-1 agreement at least `min_top1`) in `result`."""
    result["min_top1"] = min_top1
    result["passed"] = bool(result["finite"] and result["top1_agreement"] >= min_top1)
    return result


# ---- classification metrics ----------------------------------------------------------------------------------

def per_class_scores(y_true, y_pred, num_classes: int):
    """(precision, recall, f1) arrays over classes 0..num_classes-1; a score whose denominator is zero is 0.
    F1 is 2tp / (true + predicted), computed as scikit-learn computes it, so the numbers agree to the bit."""
    import numpy as np

    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)

    def counts(values):  # per class; values outside 0..num_classes-1 count for no class (as in scikit-learn)
        values = values[(values >= 0) & (values < num_classes)]
        return np.bincount(values, minlength=num_classes).astype(np.float64)

    tp, true_sum, pred_sum = counts(y_true[y_true == y_pred]), counts(y_true), counts(y_pred)

    def divide(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return divide(tp, pred_sum), divide(tp, true_sum), divide(2.0 * tp, true_sum + pred_sum)


def f1_macro(y_true, y_pred, num_classes: int) -> float:
    """Macro F1 over all classes (a class absent from both labels and predictions scores 0)."""
    return float(per_class_scores(y_true, y_pred, num_classes)[2].mean())


def classification(y_true, y_pred, class_names: list) -> dict:
    """Accuracy, macro precision/recall/F1 (over all classes) and per-class F1 by class name."""
    import numpy as np

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f = per_class_scores(y_true, y_pred, len(class_names))
    return {"n": int(len(y_true)), "accuracy": float((y_true == y_pred).mean()),
            "precision_macro": float(p.mean()), "recall_macro": float(r.mean()), "f1_macro": float(f.mean()),
            "per_class_f1": {str(n): float(v) for n, v in zip(class_names, f)}}
