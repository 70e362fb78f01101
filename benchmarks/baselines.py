"""edgekit against what an engineer gets from the standard tools alone, in one process on one machine:

  B0  torch eager FP32 (the trained model as it is)
  B1  the model exported with a plain torch.onnx.export, FP32, on ONNX Runtime and on OpenVINO
  B2  the standard post-training INT8 of each runtime with its documented defaults:
        OpenVINO:     ov.convert_model(B1) -> nncf.quantize(model, nncf.Dataset(calibration, transform_fn)) (NNCF's
                      default settings: 300 samples, MinMax, performance preset)
        ONNX Runtime: quant_pre_process(B1) -> quantize_static(..., CalibrationDataReader) (QDQ, int8/int8,
                      per-tensor MinMax: its defaults)
  E   edgekit's recommended variant per backend: the one `edgekit report` recommends from RUN_DIR/results.json
      (RUN_DIR/variants/<variant>/model.onnx), or the ONNX given with --variant; compiled by edgekit's backends.

Every row is compiled/loaded with the same runtime settings (threads, the backends' defaults), evaluated on the
whole avdigits test split (accuracy, macro-F1), and timed with edgekit's bench protocol (edgekit.latency, inputs
bound once with Runner.bind) at batch 1 (p50, p99) and batch 8 (throughput). The timing runs in interleaved rounds —
B0, B1, B2, E, then again, --rounds times — and pools the per-round samples, so a change in machine load hits
every row alike; the ratios E/B0, E/B1, E/B2 (same backend) come from the same pooled run. Then a per-layer
profile of E on each backend (edgekit.profile) shows where its time goes.

    python benchmarks/baselines.py --checkpoint runs/ref/base-attention --run runs/cpu-openvino [--out DIR]
    python benchmarks/baselines.py --checkpoint CK --variant runs/cpu-openvino/variants/pruned-kd-int8 --out DIR

Writes OUT/baselines.json (every number, the per-round medians, the targets and whether they are met),
OUT/profile-<backend>.json, and, with --run, a `baselines` section in RUN_DIR/results.json, then re-renders
RUN_DIR/report.{md,html}. OUT defaults to RUN_DIR/baselines. Exit status 2 with one line on bad input."""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

BACKENDS = ("onnxruntime", "openvino")
SCHEMA = "edgekit-baselines/1"
# what the issue asks of E (per backend): speed-ups at batch 1 (p50) and the accuracy budget vs FP32
TARGETS = {"speedup_vs_B2": 1.6, "speedup_vs_B1": 3.0, "max_accuracy_drop_pt": 1.0}


# ------------------------------------------------------------------------------------------------ inputs

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/ref/base-attention"), help="the trained FP32 model (B0; B1/B2 are made from it)")
    ap.add_argument("--run", type=Path, default=None, help="run directory of `edgekit run`: E = its recommended variant per backend; results.json gets a baselines section")
    ap.add_argument("--variant", action="append", default=[], metavar="[BACKEND=]PATH",
                    help="E as a variant directory (with model.onnx) or an ONNX file, for every backend or for BACKEND only (repeatable); overrides --run's recommendation")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/baselines)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: onnxruntime,openvino (default both)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row, batch size and round (default 2)")
    ap.add_argument("--min-iterations", type=int, default=10, help="timed calls per row, batch size and round at least (default 10)")
    ap.add_argument("--warmup", type=int, default=20, help="warm-up calls before a row's first round (later rounds: a quarter)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: each runtime's default, the usable cores)")
    ap.add_argument("--calibration-size", type=int, default=300, help="calibration samples for B2, from the train split (default 300: NNCF's default subset size)")
    ap.add_argument("--eval-samples", type=int, default=None, help="evaluate on N test samples (a fixed random subset) only (default: the whole test split)")
    ap.add_argument("--profile-iterations", type=int, default=100, help="inferences per per-layer profile (0: no profiles)")
    ap.add_argument("--profile-baselines", action="store_true", help="also profile B1 and B2 (profile-<backend>-B1.json, ...)")
    ap.add_argument("--no-b2u", action="store_true", help="leave out B2u (ORT quantize_static with uint8 activations, ORT's advice for x86)")
    ap.add_argument("--fsdd", default=None, help="FSDD recordings (default: those the model was trained on, or $EDGEKIT_FSDD)")
    ap.add_argument("--no-report", action="store_true", help="with --run: merge into results.json but do not re-render the report")
    args = ap.parse_args(argv)
    for name in ("rounds", "min_iterations", "calibration_size"):
        if getattr(args, name) < 1:
            raise EdgekitError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}", "pass a positive number")
    if args.seconds <= 0:
        raise EdgekitError(f"--seconds must be positive, got {args.seconds}", "e.g. --seconds 2")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad or not args.backends:
        raise EdgekitError(f"unknown backend(s) {bad or args.backends}", f"choose from {', '.join(BACKENDS)}")
    if args.out is None:
        if args.run is None:
            raise EdgekitError("no output folder", "pass --out DIR, or --run RUN_DIR (output then goes to RUN_DIR/baselines)")
        args.out = args.run / "baselines"
    return args


def _fsdd_of(spec, given):
    """The recordings the model was trained on (named in its spec), unless given; None = synthesized speech."""
    if given:
        return given
    if os.environ.get("EDGEKIT_FSDD"):
        return os.environ["EDGEKIT_FSDD"]
    src = str(spec.preprocessing.get("source", ""))
    if src.startswith("fsdd:"):
        p = Path(src[5:].rsplit(":", 1)[0])
        if p.is_dir():
            return str(p)
        raise EdgekitError(f"the model was trained on FSDD recordings at {p}, which are not here", "pass --fsdd PATH to the same recordings")
    return None


def _variant_onnx(path: Path) -> Path:
    p = Path(path)
    onnx = p / "model.onnx" if p.is_dir() else p
    if not onnx.is_file() or onnx.suffix != ".onnx":
        raise EdgekitError(f"{path} is neither a variant directory with model.onnx nor an .onnx file", "pass RUN_DIR/variants/<variant> or a model.onnx")
    return onnx


def resolve_e(args) -> dict[str, dict]:
    """backend -> {variant, onnx, why}: from --variant, else from the run's recommendation per local target."""
    chosen: dict[str, dict] = {}
    for item in args.variant:
        backend, sep, path = item.partition("=")
        if sep and backend in BACKENDS:
            targets = [backend]
        else:
            targets, path = list(args.backends), item
        onnx = _variant_onnx(Path(path))
        name = onnx.parent.name if onnx.name == "model.onnx" else onnx.stem
        for b in targets:
            chosen[b] = {"variant": name, "onnx": onnx, "why": "given with --variant"}
    missing = [b for b in args.backends if b not in chosen]
    if missing and args.run is not None:
        from edgekit import report
        from edgekit.results import load_results

        if not (args.run / "results.json").exists():
            raise EdgekitError(f"{args.run / 'results.json'} does not exist (the run has not measured its variants yet)",
                               "finish `edgekit run` first, or pass --variant RUN_DIR/variants/<variant>")
        res = load_results(args.run / "results.json")
        by_target, _ = report.analyse(res)
        recs = report.recommend(res, by_target)
        for t, (kind, text, row) in recs.items():
            tgt = res.targets.get(t)
            if tgt is None or tgt.location != "local" or tgt.backend not in missing or tgt.backend in chosen or row is None:
                continue
            onnx = args.run / "variants" / row.r.variant / "model.onnx"
            if not onnx.exists():
                raise EdgekitError(f"the recommended variant's ONNX {onnx} is missing", "rerun `edgekit run` (it re-exports), or pass --variant")
            chosen[tgt.backend] = {"variant": row.r.variant, "onnx": onnx, "why": f"recommended for target {t}: {text}"}
        missing = [b for b in args.backends if b not in chosen]
        if missing:
            lines = "; ".join(f"{t}: {text}" for t, (_, text, _) in recs.items()) or "no targets"
            raise EdgekitError(f"{args.run} has no recommended variant for {', '.join(missing)} ({lines})",
                               "pass --variant BACKEND=PATH for it, or --backends without it")
    elif missing:
        raise EdgekitError("no edgekit variant (E) to compare", "pass --run RUN_DIR (its recommended variant) or --variant PATH")
    return chosen


# ------------------------------------------------------------------------------------------------ building the rows

def export_plain(model, spec, path: Path) -> Path:
    """B1: torch.onnx.export as a user would call it (TorchScript exporter, opset 17, dynamic batch), nothing else."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = tuple(torch.from_numpy(v) for v in spec.example_inputs(2).values())
    names = spec.input_names + spec.output_names

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(**dict(zip(spec.input_names, args)))

    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Positional().eval(), example, str(path), input_names=spec.input_names, output_names=spec.output_names,
                          opset_version=17, dynamic_axes={n: {0: "batch"} for n in names}, dynamo=False)
    _attach_spec(path, spec)
    return path


def _attach_spec(path: Path, spec) -> None:
    """So edgekit's backends know the inputs (the graph itself is untouched)."""
    import onnx

    from edgekit.export import SPEC_KEY

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {SPEC_KEY: spec.model_dump_json()})
    onnx.save(proto, str(path))


def _calibration_items(calib, spec) -> list[dict]:
    """One dict of batch-1 arrays per sample, as a DataLoader with batch_size=1 would give them."""
    return [{n: calib.inputs[n][i : i + 1] for n in spec.input_names} for i in range(len(calib))]


def nncf_openvino_int8(b1_onnx: Path, calib_items: list[dict], out_dir: Path, spec):
    """B2 for OpenVINO, as NNCF's documentation shows it: convert, nncf.quantize with an nncf.Dataset, defaults."""
    import logging

    import nncf
    import openvino as ov

    from edgekit.backends.base import Artifact

    logging.getLogger("nncf").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    model = ov.convert_model(str(b1_onnx))

    def transform_fn(data_item):
        return data_item  # the items are already {input name: array}

    quantized = nncf.quantize(model, nncf.Dataset(calib_items, transform_fn))
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / "model.xml"
    ov.save_model(quantized, str(xml))
    art = Artifact(backend="openvino", path=xml, spec=spec, precision="int8",
                   options={"device": "CPU", "hint": "LATENCY", "threads": None, "inference_precision": "f32", "compress_to_fp16": True},
                   meta={"source": str(b1_onnx), "how": "ov.convert_model -> nncf.quantize(model, nncf.Dataset(items, transform_fn)) defaults -> ov.save_model",
                         "calibration_samples": len(calib_items), "nncf": nncf.__version__, "openvino": ov.get_version(),
                         "compile_seconds": round(time.perf_counter() - t0, 3), "size_bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size})
    art.save()
    return art


def ort_quantize_static_int8(b1_onnx: Path, calib_items: list[dict], out_dir: Path, uint8: bool = False):
    """B2 for ONNX Runtime, as its documentation shows it: pre-process, then quantize_static with a
    CalibrationDataReader and the defaults (QDQ format, int8 activations and weights, per-tensor, MinMax).
    uint8=True: the same with activation_type=QUInt8, which ORT's performance notes advise for x86 (B2u)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, items):
            self.it = iter(items)

        def get_next(self):
            return next(self.it, None)

    out_dir.mkdir(parents=True, exist_ok=True)
    pre, q = out_dir / "b1-preprocessed.onnx", out_dir / "model.int8.onnx"
    quant_pre_process(str(b1_onnx), str(pre))
    quantize_static(str(pre), str(q), Reader(calib_items), **({"activation_type": QuantType.QUInt8} if uint8 else {}))
    return q


def compile_plain(backend: str, onnx_path: Path, spec, out_dir: Path, options: dict | None = None):
    """Compile with edgekit's backend (same runtime settings for every row), without a parity gate: a baseline that
    loses accuracy is a result to report, not an error."""
    from edgekit.backends.base import get_backend

    return get_backend(backend).compile(onnx_path, spec, options or {}, out_dir)


# ------------------------------------------------------------------------------------------------ timing

def time_rows(rows: list[dict], spec, args, say) -> None:
    """Interleaved rounds: every row at batch 1 and 8, in order, `rounds` times; samples pooled per row and batch."""
    from edgekit import latency

    for r in rows:
        r["calls"] = {b: r["runner"].bind(spec.example_inputs(b, 0)) for b in (1, 8)}
        r["times"] = {1: [], 8: []}
        r["round_medians_ms"] = {1: [], 8: []}
    for k in range(args.rounds):
        t0 = time.perf_counter()
        for r in rows:
            for b in (1, 8):
                warm = args.warmup if k == 0 else max(1, args.warmup // 4)
                t = latency.measure(r["calls"][b], warmup=warm, warmup_seconds=0.5 if k == 0 else 0.1, min_seconds=args.seconds,
                                    min_iterations=args.min_iterations, max_seconds=max(10 * args.seconds, 5.0))
                r["times"][b] += t
                r["round_medians_ms"][b].append(statistics.median(t) * 1000)
        say(f"round {k + 1}/{args.rounds} done in {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f}")
    for r in rows:
        r["latency_ms"] = {b: latency.summarize(r["times"][b]) for b in (1, 8)}
        r["throughput"] = {b: latency.throughput(r["times"][b], b) for b in (1, 8)}
        del r["calls"]


def ratios(rows: list[dict]) -> None:
    """speedup_vs_X = X's p50 / this row's p50 at batch 1 (> 1: this row is faster); X on the same backend for B1/B2.
    Also the throughput ratio at batch 8, the p99 ratio, and the per-round range of the p50 ratio."""
    by = {(r["key"], r["backend"]): r for r in rows}
    b0 = by[("B0", "torch")]
    for r in rows:
        r["ratios"] = {}
        refs = {"B0": b0} if r["key"] != "B0" else {}
        if r["key"] in ("B2", "B2u", "E"):
            refs["B1"] = by.get(("B1", r["backend"]))
        if r["key"] == "E":
            refs["B2"] = by.get(("B2", r["backend"]))
            refs["B2u"] = by.get(("B2u", r["backend"]))
        for name, ref in refs.items():
            if ref is None:
                continue
            per_round = [a / b for a, b in zip(ref["round_medians_ms"][1], r["round_medians_ms"][1])]
            r["ratios"][name] = {"speedup_p50_b1": ref["latency_ms"][1]["median"] / r["latency_ms"][1]["median"],
                                 "speedup_p99_b1": ref["latency_ms"][1]["p99"] / r["latency_ms"][1]["p99"],
                                 "throughput_ratio_b8": r["throughput"][8] / ref["throughput"][8],
                                 "speedup_p50_b1_per_round": [min(per_round), max(per_round)],
                                 "accuracy_delta_pt": (r["metrics"]["accuracy"] - ref["metrics"]["accuracy"]) * 100}


def judge(rows: list[dict]) -> dict:
    """Where each target stands, per backend, with the numbers."""
    by = {(r["key"], r["backend"]): r for r in rows}
    out = {}
    for (key, backend), e in by.items():
        if key != "E":
            continue
        b1, b2 = by.get(("B1", backend)), by.get(("B2", backend))
        drop_b1 = (b1["metrics"]["accuracy"] - e["metrics"]["accuracy"]) * 100 if b1 else None
        drop_b0 = (by[("B0", "torch")]["metrics"]["accuracy"] - e["metrics"]["accuracy"]) * 100
        t = {"E": e["variant"],
             "speedup_vs_B2": {"value": e["ratios"].get("B2", {}).get("speedup_p50_b1"), "target": TARGETS["speedup_vs_B2"]},
             "speedup_vs_B1": {"value": e["ratios"].get("B1", {}).get("speedup_p50_b1"), "target": TARGETS["speedup_vs_B1"]},
             "accuracy_drop_vs_fp32_pt": {"value": drop_b1, "vs_torch_fp32": drop_b0, "target": TARGETS["max_accuracy_drop_pt"],
                                          "note": "E's accuracy vs B1 (the FP32 model on the same backend), in points"}}
        for k in ("speedup_vs_B2", "speedup_vs_B1"):
            v = t[k]["value"]
            t[k]["met"] = None if v is None else bool(v >= t[k]["target"])
        if "B2u" in e["ratios"]:
            t["speedup_vs_B2u"] = {"value": e["ratios"]["B2u"]["speedup_p50_b1"], "note": "not a target: B2u is not a default setting"}
        t["accuracy_drop_vs_fp32_pt"]["met"] = None if drop_b1 is None else bool(drop_b1 <= TARGETS["max_accuracy_drop_pt"] + 1e-9)
        int8_rows = [r for r in (b2, by.get(("B2u", backend)), e) if r is not None and r["precision"] == "int8"]
        t["int8_faster_than_fp32"] = {r["name"]: {"speedup_vs_B1": r["ratios"].get("B1", {}).get("speedup_p50_b1"),
                                                  "met": bool(r["ratios"].get("B1", {}).get("speedup_p50_b1", 0) > 1.0)} for r in int8_rows}
        out[backend] = t
    return out


# ------------------------------------------------------------------------------------------------ output

def baseline_rows(rows: list[dict]) -> list[dict]:
    """The rows for results.json's `baselines` section (SI units; extra numeric fields become report columns)."""
    out = []
    for r in rows:
        ra, s1 = r["ratios"], r["latency_ms"]["1"]
        row = {"name": r["name"], "backend": r["backend"], "target": "local", "accuracy": r["metrics"]["accuracy"],
               "f1_macro": r["metrics"]["f1_macro"], "latency_p50": s1["median"] / 1000,
               "latency_p99": s1["p99"] / 1000, "throughput": r["throughput"]["8"], "size_bytes": r["size_bytes"],
               "precision": r["precision"]}
        for ref in ("B0", "B1", "B2", "B2u"):
            row[f"speedup_vs_{ref}"] = ra[ref]["speedup_p50_b1"] if ref in ra else None
        out.append(row)
    return out


def note_text(doc: dict) -> str:
    m = doc["machine"]
    isa = ", ".join(k for k, v in m["cpu"]["isa"].items() if v) or "none recorded"
    parts = [f"One process on {m['cpu']['model']} ({m['cpu']['usable_cores']} usable cores; ISA: {isa}); "
             f"{doc['protocol']['rounds']} interleaved rounds (B0, B1, B2, E) of {doc['protocol']['seconds']:g} s per row and batch size, "
             f"samples pooled; load average {m['load_before'][0]:.2f} before, {m['load_after'][0]:.2f} after. "
             "p50/p99 at batch 1, throughput at batch 8 (samples/s); speedup_vs_X = X's p50 / this row's p50 (X on the same backend). "
             f"Accuracy on {doc['test_samples']} test samples."]
    for backend, t in doc["targets"].items():
        def f(k):
            v = t[k]["value"]
            return "n/a" if v is None else f"{v:.2f}x ({'met' if t[k]['met'] else 'NOT met'}, target {t[k]['target']}x)"
        acc = t["accuracy_drop_vs_fp32_pt"]
        int8 = "; ".join(f"{n} {v['speedup_vs_B1']:.2f}x vs FP32" for n, v in t["int8_faster_than_fp32"].items() if v["speedup_vs_B1"] is not None)
        b2u = f", vs B2u {t['speedup_vs_B2u']['value']:.2f}x" if "speedup_vs_B2u" in t else ""
        parts.append(f"{backend}: E = {t['E']}: vs B2 {f('speedup_vs_B2')}, vs B1 {f('speedup_vs_B1')}{b2u}, accuracy drop "
                     f"{acc['value']:.2f} pt vs FP32 ({'met' if acc['met'] else 'NOT met'}, budget {acc['target']} pt); INT8: {int8}.")
    return " ".join(parts)


def print_table(doc: dict) -> None:
    from rich.table import Table

    from edgekit.ui import console

    t = Table("row", "backend", "prec", "acc", "F1", "p50 ms", "p99 ms", "b8 /s", "size MB", "vs B0", "vs B1", "vs B2", "vs B2u", "CV b1",
              title=f"baselines vs edgekit ({doc['protocol']['rounds']} interleaved rounds, batch 1 latency, batch 8 throughput)")
    for r in doc["rows"]:
        ra = r["ratios"]
        sp = lambda k: f"{ra[k]['speedup_p50_b1']:.2f}x" if k in ra else ""  # noqa: E731
        s1 = r["latency_ms"]["1"]
        t.add_row(r["name"], r["backend"], r["precision"], f"{100 * r['metrics']['accuracy']:.1f}", f"{100 * r['metrics']['f1_macro']:.1f}",
                  f"{s1['median']:.3f}", f"{s1['p99']:.3f}", f"{r['throughput']['8']:.0f}", f"{r['size_bytes'] / 1e6:.2f}",
                  sp("B0"), sp("B1"), sp("B2"), sp("B2u"), f"{s1['cv']:.0%}")
    console.print(t)
    for backend, tg in doc["targets"].items():
        for k in ("speedup_vs_B2", "speedup_vs_B1"):
            v = tg[k]
            if v["value"] is not None:
                console.print(f"{backend}: E ({tg['E']}) {k.replace('_', ' ')} = {v['value']:.2f}x (target >= {v['target']}x): "
                              + ("[green]met[/]" if v["met"] else "[red]NOT met[/]"), highlight=False)
        if "speedup_vs_B2u" in tg:
            console.print(f"{backend}: E ({tg['E']}) speedup vs B2u = {tg['speedup_vs_B2u']['value']:.2f}x (no target)", highlight=False)
        a = tg["accuracy_drop_vs_fp32_pt"]
        console.print(f"{backend}: E accuracy drop vs FP32 = {a['value']:.2f} pt (budget {a['target']} pt): " + ("[green]met[/]" if a["met"] else "[red]NOT met[/]"), highlight=False)
        for name, v in tg["int8_faster_than_fp32"].items():
            console.print(f"{backend}: {name} vs FP32 (B1) = {v['speedup_vs_B1']:.2f}x: " + ("[green]INT8 faster[/]" if v["met"] else "[red]INT8 NOT faster[/]"), highlight=False)


def _jsonable_row(r: dict) -> dict:
    keep = ("key", "name", "backend", "precision", "variant", "what", "source", "artifact", "size_bytes", "onnx_bytes", "settings",
            "metrics", "ratios", "build_seconds", "qdq_rewrite")
    out = {k: r[k] for k in keep if k in r}
    out["latency_ms"] = {str(b): v for b, v in r["latency_ms"].items()}
    out["throughput"] = {str(b): v for b, v in r["throughput"].items()}
    out["round_medians_ms"] = {str(b): v for b, v in r["round_medians_ms"].items()}
    return out


def merge_into_run(run_dir: Path, doc: dict, render: bool) -> dict | None:
    """results.json gets (or replaces) its `baselines` section, under the run lock; then the report is re-rendered."""
    from edgekit.results import Baselines, BaselineRow, load_results, save_results
    from edgekit.rundir import RunLock

    with RunLock(run_dir):
        res = load_results(run_dir / "results.json")
        res.baselines = Baselines(title="Baselines: the standard tools vs edgekit", note=doc["note"],
                                  rows=[BaselineRow.model_validate(r) for r in doc["baselines"]])
        save_results(res, run_dir / "results.json")
        if render:
            from edgekit.report import write_report

            return write_report(run_dir)
    return None


# ------------------------------------------------------------------------------------------------ main

def run(args) -> dict:
    from edgekit import checkpoint
    from edgekit.backends.base import get_backend
    from edgekit.bench import TorchRunner
    from edgekit.data import avdigits
    from edgekit.env import fingerprint
    from edgekit.evaluate import evaluate
    from edgekit.export import spec_for_onnx
    from edgekit.io import atomic_write_json
    from edgekit.ui import console

    if not console.is_terminal:  # a log file: wide enough for the table's columns
        console.width = max(console.width, 200)

    def say(msg):
        console.print(f"[dim]{datetime.datetime.now():%H:%M:%S}[/] {msg}", highlight=False)

    for b in args.backends:
        ok, why = get_backend(b).available()
        if not ok:
            raise EdgekitError(f"backend {b} is not available: {why}", f"{get_backend(b).install_hint}, or leave it out with --backends")
    chosen = resolve_e(args)
    model, spec, cfg = checkpoint.load(args.checkpoint)
    model.eval()
    fsdd = _fsdd_of(spec, args.fsdd)
    seed = spec.preprocessing.get("seed", 0)
    test = avdigits.load("test", fsdd, seed)
    if args.eval_samples and args.eval_samples < len(test):  # a fixed random subset: the split is ordered by class
        test = test.subset(np.sort(np.random.default_rng(0).choice(len(test), args.eval_samples, replace=False)))
    train = avdigits.load("train", fsdd, seed)
    calib = train.subset(np.random.default_rng(0).choice(len(train), min(args.calibration_size, len(train)), replace=False))
    items = _calibration_items(calib, spec)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()

    rows: list[dict] = []
    weights = Path(args.checkpoint) / "model.safetensors"
    rows.append({"key": "B0", "name": "B0 torch eager FP32", "backend": "torch", "precision": "fp32", "what": "the checkpoint in torch, inference_mode",
                 "runner": TorchRunner(model, spec, args.threads), "size_bytes": weights.stat().st_size, "source": str(args.checkpoint)})
    say("B1: torch.onnx.export")
    b1_onnx = export_plain(model, spec, out / "B1" / "model.onnx")
    b2_ort_onnx = None
    for backend in args.backends:
        say(f"B1 on {backend}")
        art = compile_plain(backend, b1_onnx, spec, out / "B1" / backend)
        rows.append({"key": "B1", "name": f"B1 ONNX FP32 ({backend})", "backend": backend, "precision": "fp32", "artifact": str(art.path),
                     "what": "plain torch.onnx.export, compiled by edgekit's backend", "source": str(b1_onnx), "art": art})
    for backend in args.backends:
        if backend == "openvino":
            say("B2: NNCF post-training INT8 (defaults) on OpenVINO")
            art = nncf_openvino_int8(b1_onnx, items, out / "B2" / "openvino", spec)
            what = "ov.convert_model + nncf.quantize(defaults, nncf.Dataset) + ov.save_model"
        else:
            say("B2: ONNX Runtime quantize_static (defaults)")
            b2_ort_onnx = ort_quantize_static_int8(b1_onnx, items, out / "B2" / "onnxruntime")
            _attach_spec(b2_ort_onnx, spec)
            # the ONNX as quantize_static wrote it: no edgekit Q/DQ rewrite (that is part of E, not of the baseline)
            art = compile_plain(backend, b2_ort_onnx, spec, out / "B2" / "onnxruntime", {"qdq_rewrite": False})
            what = "quant_pre_process + quantize_static(defaults: QDQ, int8/int8, per-tensor MinMax), ORT graph optimization 'all'"
        rows.append({"key": "B2", "name": f"B2 {'NNCF PTQ' if backend == 'openvino' else 'ORT quantize_static'} INT8 ({backend})",
                     "backend": backend, "precision": "int8", "artifact": str(art.path), "what": what,
                     "source": str(b2_ort_onnx if backend == "onnxruntime" else b1_onnx), "art": art})
        if backend == "onnxruntime" and not args.no_b2u:
            say("B2u: ONNX Runtime quantize_static with uint8 activations (ORT's advice for x86)")
            q = ort_quantize_static_int8(b1_onnx, items, out / "B2u" / "onnxruntime", uint8=True)
            _attach_spec(q, spec)
            art = compile_plain(backend, q, spec, out / "B2u" / "onnxruntime", {"qdq_rewrite": False})
            rows.append({"key": "B2u", "name": "B2u ORT quantize_static uint8-act INT8 (onnxruntime)", "backend": backend, "precision": "int8",
                         "artifact": str(art.path), "source": str(q), "art": art,
                         "what": "as B2 but activation_type=QUInt8 (U8S8, what ORT's quantization docs advise for x86): not a default"})
    for backend in args.backends:
        e = chosen[backend]
        say(f"E on {backend}: {e['variant']} ({e['onnx']})")
        art = compile_plain(backend, e["onnx"], spec_for_onnx(e["onnx"]), out / "E" / backend)
        rows.append({"key": "E", "name": f"E edgekit {e['variant']} ({backend})", "backend": backend, "precision": art.precision,
                     "variant": e["variant"], "artifact": str(art.path), "what": e["why"], "source": str(e["onnx"]),
                     "onnx_bytes": Path(e["onnx"]).stat().st_size, "qdq_rewrite": art.meta.get("qdq_rewrite"), "art": art})
    for r in rows:
        if "art" in r:
            art = r.pop("art")
            r["runner"] = get_backend(r["backend"]).load(art, threads=args.threads)
            r["art_obj"] = art
            r["size_bytes"] = art.size_bytes()
        r["settings"] = {k: v for k, v in r["runner"].settings.items() if k in ("threads", "providers", "config", "graph_optimization", "mode")}
        say(f"evaluating {r['name']} on {len(test)} test samples")
        r["metrics"] = {k: v for k, v in evaluate(r["runner"], test, spec.class_names, missing=False).items() if k != "per_class_f1"}

    say(f"timing {len(rows)} rows: {args.rounds} interleaved rounds x {args.seconds:g} s per row and batch size")
    time_rows(rows, spec, args, say)
    ratios(rows)
    targets = judge(rows)

    profiles = {}
    if args.profile_iterations:
        from edgekit.profile import print_profile, profile_artifact

        feed = spec.example_inputs(1, 0)
        for r in rows:
            if r["key"] == "E" or (args.profile_baselines and r["key"] in ("B1", "B2", "B2u")):
                say(f"per-layer profile of {r['name']}")
                prof = profile_artifact(r["art_obj"], feed, iterations=args.profile_iterations, threads=args.threads)
                prof["row"] = r["name"]
                name = f"profile-{r['backend']}.json" if r["key"] == "E" else f"profile-{r['backend']}-{r['key']}.json"
                atomic_write_json(out / name, prof)
                profiles[r["name"]] = str(out / name)
                print_profile(prof, title=f"{r['name']}: ten most expensive layers (batch 1, {prof['iterations']} inferences)")
    for r in rows:
        r.pop("runner", None), r.pop("art_obj", None), r.pop("times", None)

    doc = {"schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": shlex.join([sys.executable, *sys.argv]) if sys.argv else "",
           "checkpoint": str(args.checkpoint), "run": str(args.run) if args.run else None,
           "e_variants": {b: {k: str(v) for k, v in e.items()} for b, e in chosen.items()},
           "test_samples": len(test), "calibration_samples": len(items),
           "machine": {**fingerprint(), "load_before": list(load_before), "load_after": list(os.getloadavg())},
           "protocol": {"rounds": args.rounds, "seconds": args.seconds, "min_iterations": args.min_iterations, "warmup": args.warmup,
                        "threads": args.threads, "batch_latency": 1, "batch_throughput": 8, "order": [r["name"] for r in rows],
                        "timer": "edgekit.latency.measure per call (perf_counter), GC paused; inputs random from the spec, bound once (Runner.bind)",
                        "pooling": "per-round samples pooled per row and batch; p50/p99 nearest rank over the pool"},
           "rows": [_jsonable_row(r) for r in rows], "targets": targets, "profiles": profiles}
    doc["note"] = note_text(doc)
    doc["baselines"] = baseline_rows(doc["rows"])
    atomic_write_json(out / "baselines.json", doc)
    print_table(doc)
    console.print(doc["note"], highlight=False)
    say(f"wrote {out / 'baselines.json'}")
    if args.run is not None:
        rep = merge_into_run(args.run, doc, not args.no_report)
        say(f"merged the baselines into {args.run / 'results.json'}" + (f"; report {rep['html']}" if rep else ""))
    return doc


def main(argv=None) -> int:
    from edgekit.ui import console

    try:
        run(parse_args(argv))
    except EdgekitError as e:
        if os.environ.get("EDGEKIT_DEBUG") == "1":
            raise
        console.print(f"[red]error:[/] {e.message}" + (f"\n[yellow]hint:[/] {e.hint}" if e.hint else ""), highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: nothing was merged into the run")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
