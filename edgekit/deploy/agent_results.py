"""The device agent's per-variant records, read on the host: converted to edgekit-results/1 rows (SI units) and
shown as one table per target."""
from __future__ import annotations

from edgekit.ui import console, escape

_LAT_KEYS = ("median", "p90", "p99", "mean", "std", "cv", "min", "max", "n", "high_variance")
_MS_KEYS = ("median", "p90", "p99", "mean", "std", "min", "max")
# edgekit.agent.measure.classification's keys: the metrics a local evaluate reports too (it adds bootstrap intervals)
_METRIC_KEYS = ("n", "accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class_f1")


def to_result(raw: dict, target: str) -> dict:
    """The agent's record of one variant in edgekit-results/1 shape (SI units: seconds, watts, joules)."""
    lat, thr, rounds = {}, {}, {}
    for b, entry in (raw.get("batches") or {}).items():
        ms = entry["latency_ms"]
        lat[int(b)] = {k: (ms[k] / 1000.0 if k in _MS_KEYS else ms[k]) for k in _LAT_KEYS if k in ms}
        thr[int(b)] = entry.get("throughput_per_s")
        if entry.get("round_medians_ms"):  # interleaved rounds (edgekit.agent.measure.time_rounds)
            rounds[int(b)] = [m / 1000.0 for m in entry["round_medians_ms"]]
    power = raw.get("power") or {}
    acc, par = raw.get("accuracy"), raw.get("parity")
    return {"variant": raw["variant"], "target": target, "status": "ok", "precision": raw.get("precision"),
            "metrics": {k: acc[k] for k in _METRIC_KEYS if k in acc} if acc else None,
            "parity": {k: par[k] for k in ("top1_agreement", "max_abs_diff", "mean_abs_diff", "n") if k in par} if par else None,
            "latency": lat, "throughput": thr, "round_medians": rounds, "timing_session": (raw.get("timing") or {}).get("session"),
            "build_seconds": (raw.get("engine") or {}).get("build_seconds"),
            "artifact_size_bytes": (raw.get("engine") or {}).get("bytes"), "runtime_precision": raw.get("runtime_precision"),
            "power": {"avg_watts": power.get("average_power_w"),
                      "energy_per_inference_j": power["energy_per_inference_mj"] / 1000.0 if power.get("energy_per_inference_mj") is not None else None}
            if power.get("available") else None}


def one_line(r: dict) -> str:
    """A finished variant's headline numbers, for the progress output."""
    parts = []
    if r.get("accuracy"):
        parts.append(f"accuracy {r['accuracy']['accuracy']:.3f}")
    if r.get("parity"):
        parts.append(f"top-1 agreement {r['parity']['top1_agreement']:.3f}")
    first = next(iter((r.get("batches") or {}).values()), None)
    if first:
        parts.append(f"batch {first['batch']} median {first['latency_ms']['median']:.3f} ms")
    if (r.get("power") or {}).get("available"):
        parts.append(f"{r['power']['average_power_w']:.2f} W")
    return ", ".join(parts) or "no measurements"


def print_summary(summaries: list[dict]) -> None:
    """One table per target: accuracy, parity, latency, power of each variant."""
    from rich.table import Table

    for s in summaries:
        if not s.get("variants"):
            continue
        t = Table("variant", "runtime", "accuracy", "top-1 agree", "median ms (batch)", "p90 ms", "power W", "mJ/inference",
                  title=escape(f"{s['slug']}: {s.get('status')}  ({s['results_dir']})"))
        for name, r in sorted(s["variants"].items()):
            b = next(iter((r.get("batches") or {}).values()), None)
            pw = r.get("power") or {}
            t.add_row(escape(name), (r.get("runtime") or {}).get("runtime", ""),
                      f"{r['accuracy']['accuracy']:.4f}" if r.get("accuracy") else "-",
                      f"{r['parity']['top1_agreement']:.3f}" if r.get("parity") else "-",
                      f"{b['latency_ms']['median']:.3f} ({b['batch']})" if b else "-", f"{b['latency_ms']['p90']:.3f}" if b else "-",
                      f"{pw['average_power_w']:.2f}" if pw.get("available") else "-",
                      f"{pw['energy_per_inference_mj']:.3f}" if pw.get("energy_per_inference_mj") is not None else "-")
        console.print(t)
