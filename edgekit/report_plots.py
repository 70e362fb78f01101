"""The report's two figures, drawn with matplotlib from report.analyse's rows: accuracy vs p50 latency (the Pareto
plot, with each target's budget line and chosen variant) and accuracy vs size on disk."""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.io import atomic_path
from edgekit.results import Results

if TYPE_CHECKING:
    from edgekit.report import Row


def write_figures(res: Results, by_target: dict[str, list[Row]], recs: dict, out_dir: Path) -> dict[str, str]:
    """Pareto (accuracy vs p50) and accuracy vs size: PNG files beside the report, inline SVG strings returned."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    colors, svgs = matplotlib.colormaps["tab10"].colors, {}
    plots = {"pareto": ("p50 latency at batch 1 (ms)", lambda w: w.p50 and w.p50 * 1e3, "accuracy vs latency (line: Pareto frontier, dashed: budget, ring: chosen)"),
             "size_accuracy": ("size on disk (MB)", lambda w: w.size and w.size / 1e6, "accuracy vs size (line: Pareto frontier)")}
    for name, (xlabel, xof, title) in plots.items():
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name, "font.size": 9}):
            fig = Figure(figsize=(6.4, 4.0), layout="constrained")
            ax, xs = fig.add_subplot(), []
            for i, (t, rows) in enumerate(by_target.items()):
                p = sorted(((xof(w), 100 * w.metric, w) for w in rows if w.metric is not None and xof(w)), key=lambda q: q[:2])
                if not p:
                    continue
                c, xs = colors[i % len(colors)], xs + [q[0] for q in p]
                ax.scatter([q[0] for q in p], [q[1] for q in p], color=c, label=t, zorder=3, s=26)
                for x, y, w in p:
                    ax.annotate(w.r.variant, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color=c)
                    if name == "pareto" and recs[t][2] is w:
                        ax.scatter([x], [y], s=170, facecolors="none", edgecolors=c, lw=1.5, zorder=4)
                front = [q for j, q in enumerate(p) if all(q[1] > o[1] for o in p[:j])]  # nothing cheaper is as accurate
                ax.step([q[0] for q in front], [q[1] for q in front], where="post", color=c, alpha=0.6, lw=1.3)
                ref = next((w for w in rows if w.r.variant == res.reference_variant and w.metric is not None), None)
                if ref and name == "pareto":
                    ax.axhline(100 * (ref.metric - res.budget.max_accuracy_drop), color=c, ls="--", lw=0.9, alpha=0.7)
            if xs and max(xs) / min(xs) > 10:
                ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
            ax.set(xlabel=xlabel, ylabel=f"{res.budget.metric} (%)")
            ax.set_title(title, fontsize=9.5)
            ax.grid(True, alpha=0.3)
            if xs:
                ax.legend(title="target", fontsize=8)
            else:
                ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
            with atomic_path(out_dir / f"{name}.png", suffix=".png") as tmp:
                fig.savefig(tmp, format="png", dpi=150)
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})
        svgs[name] = buf.getvalue()[buf.getvalue().index("<svg"):]
    return svgs
