"""Budgets, speed verdicts and the variant table: which budget a variant is held to, whether its deployed graphs stay
within it, whether it is measurably faster than the reference, and the table `edgekit compress` prints."""
from __future__ import annotations

from edgekit.recipe import REFERENCE_VARIANT
from edgekit.ui import console, escape


def budget_of(variant_budget, run_budget):
    """The budget a variant is judged against: its own where the recipe gave one, else the run's. The one rule for
    recipes (points) and for results.json (fractions), so the compress stage and the report cannot disagree."""
    return variant_budget if variant_budget is not None else run_budget


# ---------------------------------------------------------------- speed: the verdict (interval and rule: edgekit.agent.measure)

FASTER, SLOWER, SAME, UNJUDGED = "faster", "slower", "no measurable difference", "not judged"
SPEED_RULE = ("A variant counts as faster only when the 95% confidence interval of its speedup (bootstrap over the "
              "interleaved timing rounds of the per-round p50 ratio, batch 1) lies entirely above 1.0; otherwise there is no "
              "measurable difference, and the simpler model is recommended: {ref}, or the least-changed variant within budget.")


def speed_verdict(ci) -> str:
    """faster / slower / no measurable difference for an interval (edgekit.agent.measure.speedup_ci); not judged without one."""
    from edgekit.agent.measure import wins

    if ci is None:
        return UNJUDGED
    return FASTER if wins(ci) else SLOWER if ci[1] < 1.0 else SAME


def speedup_record(ref_rounds, var_rounds, ref_p50, var_p50, vs: str, batch: int = 1) -> dict:
    """How much faster a row is than `vs` at `batch`: the median of the paired per-round ratios (the p50 ratio over
    the pooled samples when there are no rounds), its 95% interval from the same rounds, and the verdict; as
    results.json keeps it. The value and its interval are the same statistic, so the value lies inside it."""
    from edgekit.agent.measure import speedup_ci, speedup_point

    ci = speedup_ci(ref_rounds or [], var_rounds or [])
    point = speedup_point(ref_rounds or [], var_rounds or [])
    return {"vs": vs, "batch": batch, "value": point if point is not None else (ref_p50 / var_p50 if ref_p50 and var_p50 else None),
            "ci95": list(ci) if ci else None, "rounds": len(var_rounds or []), "verdict": speed_verdict(ci)}


def _paired_rounds(a, b):
    """Batch-1 round medians of results.json Result rows `a` and `b`, or None unless both were timed in the same
    interleaved rounds."""
    if a.timing_session is None or a.timing_session != b.timing_session:
        return None
    return a.round_medians.get(1) or [], b.round_medians.get(1) or []


def paired_ci(a, b):
    """95% interval of how many times faster result `b` is than `a` at batch 1, from their round medians."""
    from edgekit.agent.measure import speedup_ci

    rounds = _paired_rounds(a, b)
    return None if rounds is None else speedup_ci(*rounds)


def paired_speedup(a, b):
    """How many times faster `b` is than `a` at batch 1: the statistic paired_ci is the interval of."""
    from edgekit.agent.measure import speedup_point

    rounds = _paired_rounds(a, b)
    return None if rounds is None else speedup_point(*rounds)


def choose(ref, candidates: list):
    """The row to ship among `ref` and the `candidates` within budget (the report's rows, ordered simplest first):
    start from the reference and move to a candidate only when it wins (edgekit.agent.measure.wins) against the
    current choice: vs the reference its recorded interval `ci`, vs another variant their paired interval. So a
    more-changed variant is chosen only when it is measurably faster than every simpler one chosen before it."""
    from edgekit.agent.measure import wins

    chosen = ref
    for w in candidates:
        if wins(w.ci if chosen is ref else paired_ci(chosen.r, w.r)):
            chosen = w
    return chosen


def judge_variant(m: dict, ref: dict, budget) -> dict:
    """Drop vs the reference, per runtime on the same runtime (and for torch), in points; met only if every
    measured deployed graph is within budget."""
    metric, limit = budget.metric, budget.max_accuracy_drop
    drops = {"torch": (ref["torch_metrics"][metric] - m["torch_metrics"][metric]) * 100}
    for b, dm in m["deployed_metrics"].items():
        rm = ref["deployed_metrics"].get(b, {})
        if dm.get("status") == "ok" and rm.get("status") == "ok":
            drops[b] = (rm[metric] - dm[metric]) * 100
    deployed = {b: d for b, d in drops.items() if b != "torch"}
    met = bool(deployed) and all(d <= limit + 1e-9 for d in deployed.values())
    worst = max(deployed.values()) if deployed else float("nan")
    return {"metric": metric, "max_drop_points": limit, "drop_points": {k: round(v, 3) for k, v in drops.items()}, "met": met,
            "verdict": (f"within budget ({worst:.2f} <= {limit} points)" if met else
                        f"NOT within budget (drop {worst:.2f} > {limit} points)" if deployed else "not judged: no deployed graph was measured")}


def table_row(m: dict) -> dict:
    """One line of the variant table."""
    if m.get("status") != "ok":
        return {"variant": m["variant"], "status": m.get("status"), "reason": m.get("reason")}
    d = m["deployed_metrics"]
    row = {"variant": m["variant"], "precision": m["precision"], "params": m["params"], "macs": m["macs"], "size_bytes": m["size_bytes"],
           "openvino_ir_bytes": d.get("openvino", {}).get("artifact_size_bytes"),
           "torch_accuracy": m["torch_metrics"]["accuracy"], "torch_f1_macro": m["torch_metrics"]["f1_macro"]}
    for b, dm in d.items():
        if dm.get("status") == "ok":
            row[f"{b}_accuracy"], row[f"{b}_f1_macro"] = dm["accuracy"], dm["f1_macro"]
    row.update(drop_points=m["judgement"]["drop_points"], budget_points=m["judgement"]["max_drop_points"], met=m["judgement"]["met"])
    return row


def print_table(summary: dict) -> None:
    """The variant table: cost, then accuracy / macro-F1 of the torch model and of each deployed graph."""
    from rich.table import Table

    t = Table("variant", "prec", "params", "MMACs", "ONNX MB", "OV IR MB", "torch acc/F1", "ORT acc/F1", "OV acc/F1", "drop pt", "budget")
    for r in summary["table"]:
        if r.get("status"):
            t.add_row(escape(r["variant"]), "[red]failed[/]", "", "", "", "", "", "", "", "", escape((r.get("reason") or "")[:60]))
            continue
        pair = lambda k: f"{r[k + '_accuracy']:.4f}/{r[k + '_f1_macro']:.4f}" if k + "_accuracy" in r else "-"  # noqa: E731
        drop = max((v for k, v in r["drop_points"].items() if k != "torch"), default=float("nan"))
        ok = "[green]met[/]" if r["met"] else "[red]NOT met[/]"
        ir = r.get("openvino_ir_bytes")
        t.add_row(r["variant"], r["precision"], f"{r['params'] / 1e6:.2f}M", f"{r['macs'] / 1e6:.1f}", f"{r['size_bytes'] / 1e6:.2f}",
                  f"{ir / 1e6:.2f}" if ir else "-",
                  pair("torch"), pair("onnxruntime"), pair("openvino"), f"{drop:.2f}",
                  f"{r['budget_points']} {ok}" if r["variant"] != REFERENCE_VARIANT else "reference")
    console.print(t)
