"""results.json -> report.md, a self-contained report.html (plots inline as SVG, no network) and the plots as PNG.

The report is built once as a list of blocks (headings, boxes, tables, figures) and written twice, as Markdown and
as HTML (report_render.py), so both always say the same; report_plots.py draws the figures. This module holds what
the report says: the analysis, the recommendation and the sections. Every (variant, target) pair appears: what
failed shows its reason."""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from edgekit.bench import RUNTIME_PEAK_NOTE
from edgekit.io import atomic_write_text
from edgekit.judge import SPEED_RULE, budget_of, choose, paired_ci, paired_speedup, speed_verdict
from edgekit.report_plots import write_figures
from edgekit.report_precision import precision_section
from edgekit.report_render import C, to_html, to_markdown
from edgekit.results import Result, Results, load_results

CV_WARN = 0.05  # latency spread above which a number should not be trusted to the last digit
MODALITIES = ("image", "audio", "text")


def _na(f):
    return lambda x, *a: "–" if x is None else f(x, *a)


pct = _na(lambda x: f"{100 * x:.1f}%")
pts = _na(lambda d: f"{100 * d:+.1f} pt".replace("-", "−"))
ms = _na(lambda s: f"{s * 1e3:.3f} ms" if s < 1e-2 else f"{s * 1e3:.1f} ms")
mb = _na(lambda b: f"{b / 1e6:.3g} MB")
mmacs = _na(lambda n: f"{n / 1e6:.3g} MMACs")
times = _na(lambda x: f"{x:.2f}×")
secs = _na(lambda s: f"{s:.2f} s" if s < 10 else f"{s:.0f} s")
per_s = _na(lambda x: f"{x:,.0f}/s")
count = _na(lambda n: f"{n / 1e6:.3g} M" if n >= 1e6 else (f"{n / 1e3:.3g} k" if n >= 1e3 else str(n)))
change = _na(lambda a, b: f"{100 * (b - a) / a:+.0f}%".replace("-", "−") if a else "–")


def ci(x, interval, mark="") -> C:
    return C(pct(x) + (mark if x is not None else ""), sub=f"{100 * interval[0]:.1f}–{100 * interval[1]:.1f}" if x is not None and interval else "")


# ------------------------------------------------------------------------------------------------ analysis

class Row(NamedTuple):
    """One (variant, target) pair and what the report derives from it."""
    r: Result
    metric: float | None  # the budget metric, on the target (or torch's, see torch_only)
    torch_only: bool
    delta: float | None  # vs the reference on the same target
    passes: bool | None
    p50: float | None
    speedup: float | None
    size: int | None  # bytes on disk: the target's artifact, else the variant's own size
    ci: tuple[float, float] | None = None  # 95% interval of the speedup (edgekit.agent.measure.speedup_ci)
    verdict: str = ""  # faster / slower / no measurable difference / not judged (edgekit.judge.speed_verdict); "" for the reference


def _metrics(res: Results, r: Result):
    """The target's metrics, else the torch model's (flagged): a device agent may only check parity and latency."""
    if r.metrics is not None and getattr(r.metrics, res.budget.metric) is not None:
        return r.metrics, False
    v = res.variants.get(r.variant)
    return (v.torch_metrics, True) if r.status == "ok" and v and v.torch_metrics else (None, False)


def _budget(res: Results, variant: str):
    """The budget `variant` is held to (edgekit.judge.budget_of; the metric is always the run's)."""
    v = res.variants.get(variant)
    return budget_of(v.budget if v is not None else None, res.budget)


def _size(res: Results, r: Result):
    v = res.variants.get(r.variant)
    return r.artifact_size_bytes or (v.size_bytes if v else None)


def analyse(res: Results) -> tuple[dict[str, list[Row]], list[str]]:
    cells, problems = res.cells()
    by_target: dict[str, list[Row]] = {}
    for c in cells:
        by_target.setdefault(c.target, [])
    for t, rows in by_target.items():
        mine = [c for c in cells if c.target == t]
        ref = next((c for c in mine if c.variant == res.reference_variant and c.status == "ok"), None)
        ref_m = _metrics(res, ref)[0] if ref else None
        ref_v = getattr(ref_m, res.budget.metric) if ref_m else None
        ref_p50 = ref.latency[1].median if ref and 1 in ref.latency else None
        for c in mine:
            m, torch_only = _metrics(res, c)
            val = getattr(m, res.budget.metric) if m else None
            delta = val - ref_v if val is not None and ref_v is not None else None
            p50 = c.latency[1].median if c.status == "ok" and 1 in c.latency else None
            limit = _budget(res, c.variant).max_accuracy_drop
            sp = c.speedup if c.status == "ok" and c is not ref else None
            ci = (tuple(sp.ci95) if sp.ci95 else None) if sp else (paired_ci(ref, c) if ref and c is not ref and p50 else None)
            rows.append(Row(c, val, torch_only, delta, None if delta is None else delta >= -limit - 1e-12,
                            p50, _speedup(sp, ref, c) or (ref_p50 / p50 if ref_p50 and p50 else None), _size(res, c), ci,
                            "" if c is ref or not p50 else speed_verdict(ci)))
    return by_target, problems


def _speedup(sp, ref, c) -> float | None:
    """The recorded speedup (median per-round ratio, the statistic its interval is of); for rows without a record,
    the same from their paired rounds; None when unpaired."""
    if sp is not None and sp.value:
        return sp.value
    return None if ref is None or c is ref else paired_speedup(ref, c)


def _interval(w: Row) -> str:
    return f"95% CI {w.ci[0]:.2f}–{w.ci[1]:.2f}×" if w.ci else "not judged: no paired timing rounds"


def _cv_note(rows: list[Row]) -> str:
    """The latency spread of the rows a verdict compares, when it is high: said next to the verdict."""
    noisy = [(w.r.variant, s.cv) for w in rows if w and (s := w.r.latency.get(1)) and (s.high_variance or (s.cv or 0) > CV_WARN)]
    return (f"; ⚠ high variation at batch 1 (CV {', '.join(f'{n} {pct(cv)}' for n, cv in noisy)}): the interval accounts for it, "
            "but rerun on a quieter machine before trusting the latencies to the last digit") if noisy else ""


def recommend(res: Results, by_target: dict[str, list[Row]]) -> dict[str, tuple[str, str, Row | None]]:
    """Per target: (ok|warn|bad, sentence, chosen row), by the speed rule (edgekit.judge.SPEED_RULE, choose): among
    the variants within budget, simplest first (fewest passes), a variant replaces the current choice (at first the
    reference) only when it is measurably faster than it."""
    out, ref_name = {}, res.reference_variant
    for t, rows in by_target.items():
        tgt = res.targets.get(t)
        ref = next((w for w in rows if w.r.variant == ref_name), None)
        ok = [w for w in rows if w.passes and w.p50]
        if tgt is not None and tgt.status == "failed":
            out[t] = ("bad", f"no recommendation: target failed ({tgt.reason or 'no reason given'})", None)
        elif ref is None or ref.r.status != "ok":
            out[t] = ("bad", f"no recommendation: the reference {ref_name} failed here ({ref.r.reason if ref else 'no result'}), "
                             "so the accuracy budget cannot be checked", None)
        elif not ok:
            out[t] = ("bad", f"no variant met the budget (≤ {100 * res.budget.max_accuracy_drop:.1f} pt {res.budget.metric} drop "
                             f"vs {ref_name}) with a latency measurement", None)
        else:
            order = list(res.variants)
            cands = sorted((w for w in ok if w is not ref), key=lambda w: (len(getattr(res.variants.get(w.r.variant), "passes", None) or []),
                                                                           order.index(w.r.variant) if w.r.variant in order else len(order)))
            best = choose(ref, cands)
            faster = max((w for w in cands if w is not best and w.p50 < best.p50), key=lambda w: w.speedup, default=None)
            if best is ref:
                near = max(cands, key=lambda w: w.speedup or 0, default=None)
                text = (f"keep {ref_name}: no compressed variant is within the budget ({ms(ref.p50)} p50 at batch 1)" if near is None else
                        f"keep {ref_name}: every variant within the budget is slower" if near.verdict == "slower" else
                        f"keep {ref_name}: no measurable difference — no variant within the budget is faster with 95% confidence")
                text += f" (closest: {near.r.variant} {times(near.speedup)}, {_interval(near)})" if near else ""
                out[t] = ("warn", text + _cv_note([ref, near]), ref)
            else:
                also = (f"; {faster.r.variant} ({times(faster.speedup)}) is not measurably faster than {best.r.variant}, "
                        f"so the simpler {best.r.variant} is recommended" if faster else "")
                out[t] = ("ok", f"ship {best.r.variant}: {times(best.speedup)} faster than {ref_name} ({_interval(best)}; {ms(best.p50)} vs "
                                f"{ms(ref.p50)} p50 at batch 1), {res.budget.metric} {pts(best.delta)} ({pct(best.metric)} vs {pct(ref.metric)})"
                                + (" †" if best.torch_only else "") + also + _cv_note([ref, best]), best)
    return out


# ------------------------------------------------------------------------------------------------ sections

def build(res: Results):
    """-> (blocks, recommendations, rows per target)."""
    by_target, problems = analyse(res)
    recs = recommend(res, by_target)
    ref, budget = res.reference_variant, res.budget
    B = [("h2", "Recommendation", "recommendation"),
         ("p", f"Budget: at most {100 * budget.max_accuracy_drop:.1f} pt {budget.metric} drop vs {ref} on the same target; "
               "among the variants within it, the fastest at batch 1 by the speed rule. "
               + SPEED_RULE.format(ref=ref) + f" ({_rounds(res)})"
               + "".join(f" {n} has its own budget: {100 * v.budget.max_accuracy_drop:.1f} pt." for n, v in res.variants.items()
                         if v.budget is not None and v.budget.max_accuracy_drop != budget.max_accuracy_drop))]
    B += [("box", kind, f"{t} ({_where(res, t)})", text) for t, (kind, text, _) in recs.items()]
    if res.data is not None:
        d = res.data
        B += [("p", f"Data: {d.source or 'not recorded'}; accuracies are on the test split ({d.test_size} samples, {d.classes} classes)"
                    + (f"; chance level (always the most common class) is {pct(d.chance)}." if d.chance is not None else "."))]

    failed = [(f"variant {n}", v.reason) for n, v in res.variants.items() if v.status == "failed"]
    failed += [(f"target {n}", t.reason) for n, t in res.targets.items() if t.status == "failed"]
    failed += [(f"{w.r.variant} on {w.r.target}", w.r.reason) for rows in by_target.values() for w in rows
               if w.r.status == "failed" and not w.r.reason.startswith(("variant failed", "target failed"))]
    if failed or problems:
        B += [("h2", "Failed", "failed"), ("table", ["What", "Reason"],
               [[C(a, "txt"), C(why or "no reason given", "fail txt")] for a, why in failed] + [[C("inconsistent results", "txt"), C(p, "warn txt")] for p in problems])]

    B.append(("h2", "Variants per target", "variants"))
    power = any(w.r.power for rows in by_target.values() for w in rows)
    for t, rows in by_target.items():
        tgt = res.targets.get(t)
        B.append(("h3", f"{t} — {_where(res, t)}"))
        if tgt is not None and tgt.status == "failed":
            B.append(("box", "bad", "target failed", f"{tgt.reason or 'no reason given'}; nothing was measured here ({', '.join(w.r.variant for w in rows)})"))
            continue
        big = max((b for w in rows for b in w.r.throughput), default=None)
        head = ["Variant", C("Accuracy", sub="95% CI"), C(f"Δ vs {ref}", sub="budget"), C("Macro-F1", sub="95% CI"),
                *(C(q, sub="batch 1") for q in ("p50", "p90", "p99")), C("Throughput", sub=f"batch {big}" if big else ""),
                C("Speedup", sub=f"vs {ref}, 95% CI"), C("Size", sub="on disk"), "Params", "MACs", C("Peak mem", sub="runtime alone"), "Build"] + (["Power", "Energy/inf"] if power else [])
        body = []
        for w in rows:
            r, v = w.r, res.variants.get(w.r.variant)
            name = C(r.variant, "txt", sub=", ".join(x for x in (r.precision or (v and v.precision), "reference" if r.variant == ref else "") if x))
            if r.status == "failed":
                body.append([name, C(r.reason or "failed, no reason given", "fail txt", len(head) - 1)])
                continue
            m, torch_only = _metrics(res, r)
            mark, lat = " †" if torch_only else "", r.latency.get(1)
            lim = f"{100 * _budget(res, r.variant).max_accuracy_drop:.1f} pt"
            verdict = C(pts(w.delta), *(("pass", 1, f"within {lim}") if w.passes else ("fail", 1, f"over {lim}"))) if w.passes is not None else C("–", "muted")
            body.append([name, ci(m and m.accuracy, m and m.accuracy_ci95, mark), verdict,
                         ci(m and m.f1_macro, m and m.f1_macro_ci95, mark), *(ms(lat and getattr(lat, k)) for k in ("median", "p90", "p99")),
                         per_s(r.throughput.get(big)) if big else "–", _speed_cell(w), mb(w.size), count(v and v.params),
                         mmacs(v and v.macs), _peak(r), secs(r.build_seconds)]
                        + ([_unit(r.power and r.power.avg_watts, 1, "W"), _unit(r.power and r.power.energy_per_inference_j, 1e3, "mJ")] if power else []))
        B.append(("table", head, body))
    B.append(("note", f"Latency at batch 1. Speedup = {ref} p50 / variant p50 on the same target (95% CI and verdict: the speed rule above). Δ and the budget use {budget.metric}. "
                      "† = torch model's metric (the target measured none). Peak mem = " + RUNTIME_PEAK_NOTE
                      + "; ‡ = the whole measuring process's peak instead (an older run, or torch was loaded)."))
    B += [("h2", "Accuracy vs latency and size", "plots"), ("figure", "pareto", "Accuracy vs p50 latency at batch 1, one series per target"),
          ("figure", "size_accuracy", "Accuracy vs model size on disk")]
    B += _multimodal(res, by_target, recs) + _trust(res, by_target)
    if res.baselines and res.baselines.rows:
        B += _baselines(res)
    return B + _reproduce(res), recs, by_target


def _speed_cell(w: Row) -> C:
    kind = {"faster": "pass", "slower": "fail"}.get(w.verdict, "")
    return C(times(w.speedup), kind, sub=(f"{w.ci[0]:.2f}–{w.ci[1]:.2f}, " if w.ci else "") + w.verdict if w.verdict else "")


def _rounds(res: Results) -> str:
    n = sorted({len(r.round_medians.get(1) or []) for r in res.results if r.status == "ok" and r.latency})
    return f"{'/'.join(map(str, n))} rounds per target" if n != [0] and n else "no interleaved timing rounds were recorded: speed is not judged"


def _peak(r: Result) -> str:
    return "–" if r.peak_rss_bytes is None else mb(r.peak_rss_bytes) + ("" if getattr(r, "peak_rss_scope", None) == "runtime" else " ‡")


def _unit(x, scale, unit):
    return "–" if x is None else f"{x * scale:.2f} {unit}"


def _where(res: Results, t: str) -> str:
    tg = res.targets.get(t)
    return f"{tg.backend}, {tg.location}" if tg else "not listed under targets"


def _modality_metrics(res: Results, by_target, variant: str):
    for w in (w for rows in by_target.values() for w in rows if w.r.variant == variant):
        if w.r.status == "ok" and w.r.metrics and w.r.metrics.missing_modality_accuracy:
            return w.r.metrics, f"on {w.r.target}"
    v = res.variants.get(variant)
    return (v.torch_metrics, "torch") if v and v.torch_metrics else (None, "")


def _multimodal(res: Results, by_target, recs) -> list:
    ref = res.reference_variant
    mm = {n: _modality_metrics(res, by_target, n) for n in res.variants}
    ref_m = mm.get(ref, (None, ""))[0]
    mods = list(dict.fromkeys(k for m, _ in mm.values() if m for k in m.missing_modality_accuracy)) or list(MODALITIES)
    body, notes = [], []
    for n, v in res.variants.items():
        m, src = mm[n]
        if v.status == "failed" or m is None:
            body.append([C(n, "txt"), C(v.reason if v.status == "failed" else "no metrics", "fail txt" if v.status == "failed" else "muted txt", len(mods) + 2)])
            continue
        cells, extra = [pct(m.accuracy)], []
        for mod in mods:
            a = m.missing_modality_accuracy.get(mod)
            r = ref_m.missing_modality_accuracy.get(mod) if ref_m and n != ref else None
            cells.append(C(pct(a), sub=f"{pts(a - r)} vs {ref}" if a is not None and r is not None else ""))
            if a is not None and r is not None and m.accuracy is not None and ref_m.accuracy is not None:
                extra.append(((a - r) - (m.accuracy - ref_m.accuracy), mod))  # lost beyond the variant's overall change
        if extra and min(extra)[0] < -0.01:
            notes.append(f"{n} loses most without {min(extra)[1]}: {pts(min(extra)[0])} beyond its overall change vs {ref}.")
        body.append([C(n, "txt"), *cells, C(src, "muted txt")])
    B = [("h2", "Multimodal view", "multimodal"), ("h3", "Accuracy with each modality missing"),
         ("table", ["Variant", "All inputs", *[f"without {m}" for m in mods], "Measured"], body),
         ("note", " ".join(notes) or "No variant loses more than 1 pt beyond its overall change when a modality is missing.")]
    rows = [[C(n, "txt"), C(br, "txt"), count(b.params), count(a and a.params), change(b.params, a and a.params),
             mmacs(b.macs), mmacs(a and a.macs), change(b.macs, a and a.macs)]
            for n, v in res.variants.items() if v.branch_stats for br, b in v.branch_stats.before.items() for a in [v.branch_stats.after.get(br)]]
    if rows:
        B += [("h3", "Per-branch cost before and after the passes"),
              ("table", ["Variant", "Branch", "Params before", "Params after", "Δ", "MACs before", "MACs after", "Δ"], rows)]
    return B + _pruned_structure(res) + _per_class(res, by_target, recs)


def _per_class(res: Results, by_target, recs) -> list:
    """Per-class F1 of each target's recommended variant, measured on that target, next to the reference there."""
    ref, lines, cls = res.reference_variant, [], []
    for t, (_, _, w) in recs.items():
        ref_row = next((x for x in by_target.get(t, []) if x.r.variant == ref), None)
        cm, rm = (_metrics(res, w.r) if w else (None, False)), (_metrics(res, ref_row.r)[0] if ref_row else None)
        if not (cm[0] and cm[0].per_class_f1):
            continue
        f1, where = cm[0].per_class_f1, "torch †" if cm[1] else t
        cls = cls or list(f1)
        lines.append([C(f"{w.r.variant} on {where}", "txt", sub="chosen, the reference kept" if w.r.variant == ref else "chosen"),
                      *(pct(f1.get(c)) for c in cls)])
        if rm and rm.per_class_f1 and w.r.variant != ref:
            lines += [[C(f"{ref} on {t}", "txt"), *(pct(rm.per_class_f1.get(c)) for c in cls)],
                      [C("Δ", "txt"), *(pts(f1[c] - rm.per_class_f1[c]) if c in f1 and c in rm.per_class_f1 else "–" for c in cls)]]
    return [("h3", "Per-class F1 of the chosen variant on each target"), ("table", ["Variant", *cls], lines)] if lines else []


def _pruned_structure(res: Results) -> list:
    """Per layer, the attention heads and feed-forward width each prune pass removed (from its record)."""
    rows = []
    for n, v in res.variants.items():
        for p in (p for p in v.passes if p.get("pass") == "prune"):
            layers = dict.fromkeys([*(p.get("heads_removed") or {}), *(p.get("ffn_widths") or {})])
            for layer in layers:
                h, f = (p.get("heads_removed") or {}).get(layer), (p.get("ffn_widths") or {}).get(layer)
                rows.append([C(n, "txt"), C(layer, "txt"),
                             f"{h['before']} → {h['after']}" if h else "–", C(", ".join(map(str, h["removed"])), "txt") if h else "–",
                             f"{f['before']} → {f['after']}" if f else "–"])
    return [("h3", "Attention heads and FFN widths removed, per layer"),
            ("table", ["Variant", "Layer", "Heads", "Heads removed (index)", "FFN width"], rows)] if rows else []


def _trust(res: Results, by_target) -> list:
    from edgekit.parity import threshold  # the gate the compile applied (recorded), else the default one

    B = [("h2", "Trust", "trust"), ("h3", "Parity of each deployed artifact vs its torch model")]
    rows = []
    for w in (w for rows_ in by_target.values() for w in rows_ if w.r.parity):
        p = w.r.parity
        need = threshold(w.r.precision, getattr(p, "min_top1", None))
        rows.append([C(w.r.variant, "txt"), C(w.r.target, "txt"), C(pct(p.top1_agreement), "pass" if (p.top1_agreement or 0) >= need else "fail", sub=f"need ≥ {pct(need)}"),
                     *(f"{x:.3g}" if x is not None else "–" for x in (p.max_abs_diff, p.mean_abs_diff)), str(p.n or "–")])
    B.append(("table", ["Variant", "Target", "Top-1 agreement", "Max |Δlogit|", "Mean |Δlogit|", "Samples"], rows) if rows else ("p", "No parity was recorded."))
    cal = res.calibration
    B.append(("h3", "Calibration set"))
    if cal:
        B.append(("p", f"{cal.name or 'unnamed'}: {cal.size if cal.size is not None else '?'} samples. Per class: "
                       + (", ".join(f"{c}: {n}" for c, n in cal.class_counts.items()) or "not recorded") + ". Modality present in: "
                       + (", ".join(f"{m} {pct(f)}" for m, f in cal.modality_coverage.items()) or "not recorded") + "."))
        empty = [c for c, n in cal.class_counts.items() if not n] + [f"{m} (never present)" for m, f in cal.modality_coverage.items() if not f]
        if empty:
            B.append(("box", "warn", "calibration gaps", f"no calibration samples for: {', '.join(empty)}"))
    else:
        B.append(("p", "None recorded (no INT8 variant, or the run did not record it)."))
    B += precision_section(res, by_target)
    B.append(("h3", "Benchmark variation"))
    measured = [w.r for rows_ in by_target.values() for w in rows_ if w.r.latency]
    batches = sorted({b for r in measured for b in r.latency})
    noisy = [(s.cv or 0, f"{r.variant} on {r.target} at batch {b}") for r in measured for b, s in r.latency.items() if s.high_variance or (s.cv or 0) > CV_WARN]
    if noisy:
        B.append(("box", "warn", "high variation", f"latency CV above {100 * CV_WARN:.0f}% in {len(noisy)} of {sum(len(r.latency) for r in measured)} "
                  f"measurements (worst: {max(noisy)[1]}, {pct(max(noisy)[0])}): treat those latencies as approximate; "
                  "other load on the machine, throttling or too few iterations cause this"))
    cv = lambda s: C("–") if s is None or s.cv is None else C(pct(s.cv), "warn" if s.high_variance or s.cv > CV_WARN else "", sub=f"n={s.n or '?'}")  # noqa: E731
    B.append(("table", ["Variant", "Target", *[f"CV batch {b}" for b in batches]], [[C(r.variant, "txt"), C(r.target, "txt"), *(cv(r.latency.get(b)) for b in batches)]
                                                                                    for r in measured]) if measured else ("p", "No latency was measured."))
    return B


def _baselines(res: Results) -> list:
    bl, fmt = res.baselines, {"accuracy": pct, "f1_macro": pct, "latency_p50": ms, "latency_p99": ms, "throughput": per_s, "size_bytes": mb}
    extra = list(dict.fromkeys(k for r in bl.rows for k in (r.model_extra or {})))
    body = [[C(str(getattr(r, k) or "–"), "txt") for k in ("name", "backend", "target")] + [f(getattr(r, k)) for k, f in fmt.items()]
            + [_generic((r.model_extra or {}).get(k)) for k in extra] for r in bl.rows]
    head = ["Name", "Backend", "Target", "Accuracy", "Macro-F1", "p50", "p99", "Throughput", "Size", *extra]
    return [("h2", bl.title, "baselines")] + ([("p", bl.note)] if bl.note else []) + [("table", head, body)]


def _generic(x) -> str:
    return "–" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        elif v not in (None, "", [], {}):
            yield f"{prefix}{k}", json.dumps(v) if isinstance(v, (list, bool)) else str(v)


def _reproduce(res: Results) -> list:
    import yaml

    fps = {t: dict(_flatten(tg.fingerprint)) for t, tg in res.targets.items()}
    keys = list(dict.fromkeys(k for fp in fps.values() for k in fp))
    head = ["", *(f"{t} ({res.targets[t].location})" for t in fps)]
    return [("h2", "Reproduce", "reproduce"), ("h3", "Environment of each target"),
            ("table", head, [[C(k, "txt"), *(C(fp.get(k, "–"), "txt") for fp in fps.values())] for k in keys]) if keys else ("p", "No environment was recorded."),
            ("h3", "Commands"), ("pre", "\n".join(res.run.commands) or "not recorded"),
            ("h3", "Resolved recipe"), ("pre", yaml.safe_dump(res.run.recipe, sort_keys=False).strip() if res.run.recipe else "not recorded")]


def write_report(run_dir) -> dict:
    """Read RUN_DIR/results.json; write report.md, report.html, pareto.png and size_accuracy.png beside it.
    Returns their paths (keys results, md, html, pareto_png, size_png) and `recommendation`: one line per target."""
    run_dir = Path(run_dir)
    res = load_results(run_dir / "results.json")
    blocks, recs, by_target = build(res)
    svgs = write_figures(res, by_target, recs, run_dir)
    paths = {"results": run_dir / "results.json", "md": run_dir / "report.md", "html": run_dir / "report.html",
             "pareto_png": run_dir / "pareto.png", "size_png": run_dir / "size_accuracy.png"}
    atomic_write_text(paths["md"], to_markdown(res, blocks))
    atomic_write_text(paths["html"], to_html(res, blocks, svgs))
    return {**paths, "recommendation": [f"{t}: {text}" for t, (_, text, _) in recs.items()]}
