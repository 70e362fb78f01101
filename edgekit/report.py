"""results.json -> report.md, a self-contained report.html (plots inline as SVG, no network) and the plots as PNG.

The report is built once as a list of blocks (headings, boxes, tables, figures) and written twice, as Markdown and
as HTML (report_render.py), so both always say the same; report_plots.py draws the figures. This module holds what
the report says: the analysis, the recommendation and the sections. Every (variant, target) pair appears: what
failed shows its reason."""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from edgekit.io import atomic_write_text
from edgekit.judge import budget_of
from edgekit.report_plots import write_figures
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
            rows.append(Row(c, val, torch_only, delta, None if delta is None else delta >= -limit - 1e-12,
                            p50, ref_p50 / p50 if ref_p50 and p50 else None, _size(res, c)))
    return by_target, problems


def recommend(res: Results, by_target: dict[str, list[Row]]) -> dict[str, tuple[str, str, Row | None]]:
    """Per target: (ok|warn|bad, sentence, chosen row): the fastest p50 at batch 1 among the variants within budget."""
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
            best = min(ok, key=lambda w: w.p50)
            if best.r.variant == ref_name:
                out[t] = ("warn", f"keep {ref_name}: no compressed variant within the budget is faster ({ms(best.p50)} p50 at batch 1)", best)
            else:
                out[t] = ("ok", f"ship {best.r.variant}: {times(best.speedup)} faster than {ref_name} ({ms(best.p50)} vs {ms(ref.p50)} "
                                f"p50 at batch 1), {res.budget.metric} {pts(best.delta)} ({pct(best.metric)} vs {pct(ref.metric)})"
                                + (" †" if best.torch_only else ""), best)
    return out


# ------------------------------------------------------------------------------------------------ sections

def build(res: Results):
    """-> (blocks, recommendations, rows per target)."""
    by_target, problems = analyse(res)
    recs = recommend(res, by_target)
    ref, budget = res.reference_variant, res.budget
    B = [("h2", "Recommendation", "recommendation"),
         ("p", f"Budget: at most {100 * budget.max_accuracy_drop:.1f} pt {budget.metric} drop vs {ref} on the same target; "
               "among the variants within it, the one with the lowest p50 latency at batch 1."
               + "".join(f" {n} has its own budget: {100 * v.budget.max_accuracy_drop:.1f} pt." for n, v in res.variants.items()
                         if v.budget is not None and v.budget.max_accuracy_drop != budget.max_accuracy_drop))]
    B += [("box", kind, f"{t} ({_where(res, t)})", text) for t, (kind, text, _) in recs.items()]

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
                C("Speedup", sub=f"vs {ref}"), C("Size", sub="on disk"), "Params", "MACs", "Peak mem", "Build"] + (["Power", "Energy/inf"] if power else [])
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
                         per_s(r.throughput.get(big)) if big else "–", times(w.speedup), mb(w.size), count(v and v.params),
                         mmacs(v and v.macs), mb(r.peak_rss_bytes), secs(r.build_seconds)]
                        + ([_unit(r.power and r.power.avg_watts, 1, "W"), _unit(r.power and r.power.energy_per_inference_j, 1e3, "mJ")] if power else []))
        B.append(("table", head, body))
    B.append(("note", f"Latency at batch 1. Speedup = {ref} p50 / variant p50 on the same target. Δ and the budget use {budget.metric}. "
                      "† = torch model's metric (the target measured none). Peak mem = peak resident memory of the benchmark process."))
    B += [("h2", "Accuracy vs latency and size", "plots"), ("figure", "pareto", "Accuracy vs p50 latency at batch 1, one series per target"),
          ("figure", "size_accuracy", "Accuracy vs model size on disk")]
    B += _multimodal(res, by_target, recs) + _trust(res, by_target)
    if res.baselines and res.baselines.rows:
        B += _baselines(res)
    return B + _reproduce(res), recs, by_target


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
    B += _pruned_structure(res)
    t, w = next(((t, rec[2]) for t, rec in recs.items() if rec[2] is not None), (None, None))
    ref_row = next((x for x in by_target.get(t, []) if x.r.variant == ref), None)
    cm, rm = (_metrics(res, w.r)[0] if w else None), (_metrics(res, ref_row.r)[0] if ref_row else None)
    if cm and cm.per_class_f1:
        cls = list(cm.per_class_f1)
        lines = [[C(f"{w.r.variant} (chosen)", "txt"), *(pct(cm.per_class_f1[c]) for c in cls)]]
        if rm and w.r.variant != ref:
            lines += [[C(ref, "txt"), *(pct(rm.per_class_f1.get(c)) for c in cls)],
                      [C("Δ", "txt"), *(pts(cm.per_class_f1[c] - rm.per_class_f1[c]) if c in rm.per_class_f1 else "–" for c in cls)]]
        B += [("h3", f"Per-class F1 of the chosen variant ({w.r.variant} on {t})"), ("table", ["Class", *cls], lines)]
    return B


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
    from edgekit.parity import MIN_TOP1  # the same thresholds as the export's parity check

    B = [("h2", "Trust", "trust"), ("h3", "Parity of each deployed artifact vs its torch model")]
    rows = []
    for w in (w for rows_ in by_target.values() for w in rows_ if w.r.parity):
        p, need = w.r.parity, MIN_TOP1.get(w.r.precision or "fp32", 0.99)
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
    for n, v in res.variants.items():
        if v.precision_map:
            kinds: dict[str, int] = {}
            for lp in v.precision_map.values():
                kinds[lp.precision] = kinds.get(lp.precision, 0) + 1
            table = lambda items: [[C(k, "txt"), C(lp.precision, "txt"), C(lp.why or "–", "txt")] for k, lp in items]  # noqa: E731
            kept = [(k, lp) for k, lp in v.precision_map.items() if lp.precision != "int8"]
            B += [("h3", f"Precision map of {n}: " + ", ".join(f"{c} {k}" for k, c in kinds.items()) + " layers"),
                  ("table", ["Layer kept in float", "Precision", "Why"], table(kept)) if kept else ("p", "Every layer runs in INT8."),
                  ("details", f"all {len(v.precision_map)} layers of {n}", [("table", ["Layer", "Precision", "Why"], table(v.precision_map.items()))])]
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
