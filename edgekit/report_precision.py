"""The report's precision section: the share of MACs each target's runtime executes in INT8, read from the runtime
(results.json `results[].runtime_precision`, written by edgekit.runtime_precision), and, apart from it, where NNCF
inserted quantizers in the torch graph (`variants[].precision_map`): a quantizer in torch is not an INT8 kernel."""
from __future__ import annotations

from edgekit.report_render import C
from edgekit.results import Results

_SHORT = {"int8": "INT8", "fp32": "FP32", "fp16": "FP16", "bf16": "BF16", "qdq": "Q/DQ"}


def _macs(n: int) -> str:
    return f"{n / 1e6:.3g} M" if n >= 1e5 else f"{n / 1e3:.3g} k" if n >= 1e3 else str(n)


def _share(x) -> str:
    """A share to one decimal, never rounded to 0% or 100% when something is on the other side."""
    return "–" if x is None else ">99.9%" if 0.999 < x < 1 else "<0.1%" if 0 < x < 0.001 else f"{100 * x:.1f}%"


def precision_section(res: Results, by_target) -> list:
    rows, details = [], []
    for w in (w for rows_ in by_target.values() for w in rows_ if w.r.status == "ok" and w.r.runtime_precision):
        rp, r = w.r.runtime_precision, w.r
        if rp.error:
            rows.append([C(r.variant, "txt"), C(r.target, "txt"), C(f"no map: {rp.error}", "warn txt", 4)])
            continue
        total = sum(rp.macs.values())
        float_layers = [lay for lay in rp.mac_layers if lay.get("precision") != "int8"]
        rows.append([C(r.variant, "txt", sub=r.precision or ""), C(r.target, "txt"),
                     C(_share(rp.int8_mac_share), "pass" if (rp.int8_mac_share or 0) > 0.5 else ""),
                     C(", ".join(f"{_SHORT.get(p, p)} {_macs(m)}" for p, m in sorted(rp.macs.items(), key=lambda kv: -kv[1])) or "–", "txt",
                       sub=f"{len(rp.mac_layers)} layers with MACs, {len(float_layers)} not INT8"),
                     C(rp.source.split(":")[0], "muted txt")])
        if r.precision == "int8" and rp.mac_layers:
            table = [[C(lay.get("name", ""), "txt"), C(lay.get("type") or "", "txt"), C(lay.get("kernel") or "", "txt"),
                      C(_SHORT.get(lay.get("precision"), lay.get("precision") or "")), _macs(lay.get("macs") or 0),
                      _share((lay.get("macs") or 0) / total) if total else "–"]
                     for lay in sorted(rp.mac_layers, key=lambda x: (x.get("precision") == "int8", -(x.get("macs") or 0)))]  # float ones first
            details.append(("details", f"{r.variant} on {r.target}: {len(rp.mac_layers)} executed layers with MACs"
                                       + (f", {len(float_layers)} of them not in INT8" if float_layers else ", all INT8"),
                            [("table", ["Executed layer", "Type", "Kernel", "Precision", "MACs", "Share"], table)]))
    B = [("h3", "INT8 as each runtime executes it"),
         ("p", "Share of the MACs (multiply-accumulates of one sample) that the target's runtime runs in INT8 kernels, read from "
               "the runtime itself: OpenVINO's executed graph (runtime precision per layer), ONNX Runtime's profiler (QLinearConv, "
               "QGemm, MatMulInteger… vs float operators), TensorRT's engine inspector. Q/DQ conversions and reformats count as "
               "no INT8 compute.")]
    B.append(("table", ["Variant", "Target", "INT8 share of MACs", "MACs by executed precision", "Read from"], rows) if rows
             else ("p", "No runtime precision map was recorded (targets measured before this was recorded, or a device without it)."))
    B += details
    for n, v in res.variants.items():
        if not v.precision_map:
            continue
        kept = [(k, lp) for k, lp in v.precision_map.items() if lp.precision != "int8"]
        quantized = len(v.precision_map) - len(kept)
        table = lambda items: [[C(k, "txt"), C(lp.precision, "txt"), C(lp.why or "–", "txt")] for k, lp in items]  # noqa: E731
        B += [("h3", f"Quantizers inserted by NNCF in {n} (torch graph)"),
              ("p", f"NNCF put quantizers on {quantized} torch operations and kept {len(kept)} in float. This is where quantizers sit "
                    "in the torch graph before export, not what a runtime executes (see the table above)."),
              *([("table", ["Operation kept in float", "Precision", "Why"], table(kept))] if kept else []),
              ("details", f"all {len(v.precision_map)} operations of {n}", [("table", ["Operation", "Placement", "Why"], table(v.precision_map.items()))])]
    return B
