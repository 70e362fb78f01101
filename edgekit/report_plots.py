"""The report's two figures, drawn with matplotlib from report.analyse's rows: accuracy vs p50 latency (the Pareto
plot) and accuracy vs size on disk. Colour = target, marker = variant, both named in a legend under the axes (no
text on the points, so nothing overprints); error bars are 95% intervals; each distinct accuracy budget is a line
of its own style, per target (the reference's metric minus that budget)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.agent.measure import BOOTSTRAP, CONFIDENCE, MIN_ROUNDS, SEED
from edgekit.io import atomic_path
from edgekit.results import Results

if TYPE_CHECKING:
    from edgekit.report import Row

MARKERS = "osD^vP*X<>hpd"
BUDGET_STYLES = ["--", ":", "-.", (0, (6, 2, 1, 2, 1, 2)), (0, (1, 3))]


def p50_interval(round_medians) -> tuple[float, float] | None:
    """The CONFIDENCE interval of the p50 (seconds): the percentile bootstrap over the interleaved rounds' medians,
    as for the speedup (edgekit.agent.measure.speedup_ci); None with fewer than MIN_ROUNDS rounds."""
    import numpy as np

    v = np.asarray(round_medians or [], np.float64)
    if v.ndim != 1 or len(v) < MIN_ROUNDS:
        return None
    boot = np.median(v[np.random.default_rng(SEED).integers(0, len(v), size=(BOOTSTRAP, len(v)))], axis=1)
    low, high = np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def _metric_interval(res: Results, w: Row):
    m = res.variants[w.r.variant].torch_metrics if w.torch_only and w.r.variant in res.variants else w.r.metrics
    return getattr(m, f"{res.budget.metric}_ci95", None) if m is not None else None


def _budgets(res: Results, names) -> dict[float, list[str]]:
    """{allowed drop: the variants held to it}, for the variants in `names` (the reference: the run's budget)."""
    out: dict[float, list[str]] = {}
    for n in names:
        v = res.variants.get(n)
        drop = v.budget.max_accuracy_drop if v is not None and v.budget is not None else res.budget.max_accuracy_drop
        out.setdefault(drop, []).append(n)
    return dict(sorted(out.items()))


def write_figures(res: Results, by_target: dict[str, list[Row]], recs: dict, out_dir: Path) -> dict[str, str]:
    """Pareto (accuracy vs p50) and accuracy vs size: PNG files beside the report, inline SVG strings returned."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    colors, svgs = matplotlib.colormaps["tab10"].colors, {}
    names = list(dict.fromkeys([*res.variants, *(w.r.variant for rows in by_target.values() for w in rows)]))
    marker = {n: MARKERS[i % len(MARKERS)] for i, n in enumerate(names)}
    budgets = _budgets(res, [n for n in names if any(w.r.variant == n and w.metric is not None for rows in by_target.values() for w in rows)])
    style = {drop: BUDGET_STYLES[i % len(BUDGET_STYLES)] for i, drop in enumerate(budgets)}
    plots = {"pareto": ("p50 latency at batch 1 (ms)", lambda w: w.p50 and w.p50 * 1e3, "accuracy vs latency (step: Pareto frontier, ring: chosen)"),
             "size_accuracy": ("size on disk (MB)", lambda w: w.size and w.size / 1e6, "accuracy vs size (step: Pareto frontier)")}
    for name, (xlabel, xof, title) in plots.items():
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name, "font.size": 9}):
            fig = Figure(figsize=(6.4, 4.8), layout="constrained")
            ax, xs, targets, shown = fig.add_subplot(), [], [], set()
            for i, (t, rows) in enumerate(by_target.items()):
                p = sorted(((xof(w), 100 * w.metric, w) for w in rows if w.metric is not None and xof(w)), key=lambda q: q[:2])
                if not p:
                    continue
                c, xs = colors[i % len(colors)], xs + [q[0] for q in p]
                targets.append((t, c))
                for x, y, w in p:
                    shown.add(w.r.variant)
                    xci = p50_interval(w.r.round_medians.get(1)) if name == "pareto" else None
                    yci = _metric_interval(res, w)
                    ax.errorbar([x], [y], xerr=[[max(0.0, x - 1e3 * xci[0])], [max(0.0, 1e3 * xci[1] - x)]] if xci else None,
                                yerr=[[max(0.0, y - 100 * yci[0])], [max(0.0, 100 * yci[1] - y)]] if yci else None,
                                fmt=marker[w.r.variant], color=c, ms=6, lw=0.8, capsize=2, zorder=3)
                    if name == "pareto" and recs.get(t, (None, None, None))[2] is w:
                        ax.scatter([x], [y], s=200, facecolors="none", edgecolors=c, lw=1.5, zorder=4)
                front = [q for j, q in enumerate(p) if all(q[1] > o[1] for o in p[:j])]  # nothing cheaper is as accurate
                ax.step([q[0] for q in front], [q[1] for q in front], where="post", color=c, alpha=0.5, lw=1.2)
                ref = next((w for w in rows if w.r.variant == res.reference_variant and w.metric is not None), None)
                if ref and name == "pareto":
                    for drop in budgets:
                        ax.axhline(100 * (ref.metric - drop), color=c, ls=style[drop], lw=0.9, alpha=0.8)
            if xs and max(xs) / min(xs) > 10:
                ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
            ax.set(xlabel=xlabel, ylabel=f"{res.budget.metric} (%)")
            ax.set_title(title + "; bars: 95% CI", fontsize=9)
            ax.grid(True, alpha=0.3)
            if not xs:
                ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
            else:
                handles = [Line2D([], [], color=c, marker="s", ls="", label=f"target: {t}") for t, c in targets]
                handles += [Line2D([], [], color="0.3", marker=marker[n], ls="", label=n) for n in names if n in shown]
                if name == "pareto":
                    handles += [Line2D([], [], color="0.3", ls=style[d], lw=0.9, label=f"budget −{100 * d:g} pt: {', '.join(v)}")
                                for d, v in budgets.items()]
                fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=7.5, frameon=False)
            with atomic_path(out_dir / f"{name}.png", suffix=".png") as tmp:
                fig.savefig(tmp, format="png", dpi=150)
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})
        svgs[name] = buf.getvalue()[buf.getvalue().index("<svg"):]
    return svgs
