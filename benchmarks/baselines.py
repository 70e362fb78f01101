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
whole avdigits test split (accuracy, macro-F1), and timed with edgekit's bench protocol (edgekit.agent.measure, inputs
bound once with Runner.bind) at batch 1 (p50, p99) and batch 8 (throughput). The timing runs in interleaved rounds —
B0, B1, B2, E, then again, --rounds times — and pools the per-round samples, so a change in machine load hits
every row alike; the ratios E/B0, E/B1, E/B2 (same backend) come from the same pooled run, each with a 95%
interval (bootstrap over the rounds) and the verdict of the rule `edgekit run` and its report apply
(edgekit.judge.SPEED_RULE): faster only when the interval's lower end is above 1.0. Then a per-layer
profile of E on each backend (edgekit.profile) shows where its time goes. The rows, the timing and the results
section are edgekit.baselines; this script is its command line.

Acceptance targets are not built in: give them with --target-speedup-vs-b2, --target-speedup-vs-b1 and
--target-max-drop-pt (the numbers the issue or the release asks for) to have each marked met / NOT met (a speed
target is met when the interval's lower end is above it); without them the script reports the ratios only.

    python benchmarks/baselines.py --checkpoint runs/ref/base-attention --run runs/cpu-openvino [--out DIR]
    python benchmarks/baselines.py --checkpoint CK --variant runs/cpu-openvino/variants/pruned-kd-int8 --out DIR

Writes OUT/baselines.json (every number, the per-round medians, where E stands and, with targets, whether they are
met), OUT/profile-<backend>.json, and, with --run, a `baselines` section in RUN_DIR/results.json, then re-renders
RUN_DIR/report.{md,html}. OUT defaults to RUN_DIR/baselines. Exit status 2 with one line on bad input."""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from edgekit.baselines import BACKENDS
from edgekit.errors import EdgekitError

SCHEMA = "edgekit-baselines/1"


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
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5; at least 3 for an interval)")
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
    ap.add_argument("--target-speedup-vs-b2", type=float, default=None, metavar="X", help="mark E met if B2's batch-1 p50 is at least X times E's (no default)")
    ap.add_argument("--target-speedup-vs-b1", type=float, default=None, metavar="X", help="mark E met if B1's batch-1 p50 is at least X times E's (no default)")
    ap.add_argument("--target-max-drop-pt", type=float, default=None, metavar="PT", help="mark E met if it loses at most PT accuracy points vs B1 (no default)")
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
    given = {"speedup_vs_B2": args.target_speedup_vs_b2, "speedup_vs_B1": args.target_speedup_vs_b1,
             "max_accuracy_drop_pt": args.target_max_drop_pt}
    args.targets = {k: v for k, v in given.items() if v is not None}
    return args


def _split(spec, name: str, fsdd):
    """A split of the built-in data the checkpoint was trained on (edgekit.data reads which from its spec)."""
    from edgekit.data.resolver import builtin_split

    data = builtin_split(spec, name, fsdd or os.environ.get("EDGEKIT_FSDD") or None)
    if data is None:
        raise EdgekitError("this checkpoint was not trained on the built-in dataset, or its recordings are not here",
                           "pass --fsdd PATH to the recordings it was trained on")
    return data


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


# ------------------------------------------------------------------------------------------------ output

def _verdict(entry: dict, unit: str) -> str:
    """` (met, target 1.6x)` where a target was given, else nothing: the ratio alone."""
    if "target" not in entry:
        return ""
    return f" ({'met' if entry['met'] else 'NOT met'}, target {entry['target']}{unit})"


def _ci(entry: dict) -> str:
    """` (95% CI 1.9–2.3x, faster)`: the interval and verdict of a speedup entry (standing or ratios)."""
    ci = entry.get("ci95") or entry.get("speedup_p50_b1_ci95")
    return f" (95% CI {ci[0]:.2f}-{ci[1]:.2f}x, {entry.get('verdict')})" if ci else f" ({entry.get('verdict') or 'not judged'})"


def note_text(doc: dict) -> str:
    m = doc["machine"]
    isa = ", ".join(k for k, v in m["cpu"]["isa"].items() if v) or "none recorded"
    parts = [f"One process on {m['cpu']['model']} ({m['cpu']['usable_cores']} usable cores; ISA: {isa}); "
             f"{doc['protocol']['rounds']} interleaved rounds (B0, B1, B2, E) of {doc['protocol']['seconds']:g} s per row and batch size, "
             f"samples pooled; load average {m['load_before'][0]:.2f} before, {m['load_after'][0]:.2f} after. "
             "p50/p99 at batch 1, throughput at batch 8 (samples/s); speedup_vs_X = X's p50 / this row's p50 (X on the same backend), "
             "with its 95% interval (bootstrap over the rounds): faster only when the interval's lower end is above 1.0. "
             f"Accuracy on {doc['test_samples']} test samples."]
    for backend, t in doc["standing"].items():
        def f(k):
            v = t[k]["value"]
            return "n/a" if v is None else f"{v:.2f}x{_ci(t[k])}{_verdict(t[k], 'x')}"
        acc = t["accuracy_drop_vs_fp32_pt"]
        int8 = "; ".join(f"{n} {v['speedup_vs_B1']:.2f}x vs FP32{_ci(v)}" for n, v in t["int8_faster_than_fp32"].items() if v["speedup_vs_B1"] is not None)
        b2u = f", vs B2u {t['speedup_vs_B2u']['value']:.2f}x" if "speedup_vs_B2u" in t else ""
        drop = "n/a" if acc["value"] is None else f"{acc['value']:.2f} pt"
        parts.append(f"{backend}: E = {t['E']}: vs B2 {f('speedup_vs_B2')}, vs B1 {f('speedup_vs_B1')}{b2u}, accuracy drop "
                     f"{drop} vs FP32{_verdict(acc, ' pt')}; INT8: {int8}.")
    return " ".join(parts)


def print_table(doc: dict) -> None:
    from rich.table import Table

    from edgekit.ui import console

    t = Table("row", "backend", "prec", "acc", "F1", "p50 ms", "p99 ms", "b8 /s", "size MB", "vs B0", "vs B1", "vs B2", "vs B2u", "CV b1",
              title=f"baselines vs edgekit ({doc['protocol']['rounds']} interleaved rounds, batch 1 latency, batch 8 throughput; speedup ~: no measurable difference, -: slower)")
    for r in doc["rows"]:
        ra = r["ratios"]
        sp = lambda k: f"{ra[k]['speedup_p50_b1']:.2f}x" + ("" if ra[k]["verdict"] == "faster" else " ~" if ra[k]["verdict"] != "slower" else " -") if k in ra else ""  # noqa: E731
        s1 = r["latency_ms"]["1"]
        t.add_row(r["name"], r["backend"], r["precision"], f"{100 * r['metrics']['accuracy']:.1f}", f"{100 * r['metrics']['f1_macro']:.1f}",
                  f"{s1['median']:.3f}", f"{s1['p99']:.3f}", f"{r['throughput']['8']:.0f}", f"{r['size_bytes'] / 1e6:.2f}",
                  sp("B0"), sp("B1"), sp("B2"), sp("B2u"), f"{s1['cv']:.0%}")
    console.print(t)
    mark = {True: " [green]met[/]", False: " [red]NOT met[/]", None: ""}
    for backend, tg in doc["standing"].items():
        for k in ("speedup_vs_B2", "speedup_vs_B1"):
            v = tg[k]
            if v["value"] is not None:
                target = f" (target >= {v['target']}x):" if "target" in v else ""
                console.print(f"{backend}: E ({tg['E']}) {k.replace('_', ' ')} = {v['value']:.2f}x{_ci(v)}{target}{mark[v.get('met')]}", highlight=False)
        if "speedup_vs_B2u" in tg:
            console.print(f"{backend}: E ({tg['E']}) speedup vs B2u = {tg['speedup_vs_B2u']['value']:.2f}x{_ci(tg['speedup_vs_B2u'])}", highlight=False)
        a = tg["accuracy_drop_vs_fp32_pt"]
        if a["value"] is not None:
            budget = f" (budget {a['target']} pt):" if "target" in a else ""
            console.print(f"{backend}: E accuracy drop vs FP32 = {a['value']:.2f} pt{budget}{mark[a.get('met')]}", highlight=False)
        for name, v in tg["int8_faster_than_fp32"].items():
            console.print(f"{backend}: {name} vs FP32 (B1) = {v['speedup_vs_B1']:.2f}x{_ci(v)}: "
                          + ("[green]INT8 faster[/]" if v["met"] else "[red]INT8 not measurably faster[/]"), highlight=False)


def _jsonable_row(r: dict) -> dict:
    keep = ("key", "name", "backend", "precision", "variant", "what", "source", "artifact", "size_bytes", "onnx_bytes", "settings",
            "metrics", "ratios", "build_seconds", "qdq_rewrite")
    out = {k: r[k] for k in keep if k in r}
    out["latency_ms"] = {str(b): v for b, v in r["latency_ms"].items()}
    out["throughput"] = {str(b): v for b, v in r["throughput"].items()}
    out["round_medians_ms"] = {str(b): v for b, v in r["round_medians_ms"].items()}
    return out


# ------------------------------------------------------------------------------------------------ main

def run(args) -> dict:
    from edgekit import baselines, checkpoint
    from edgekit.backends.base import get_backend
    from edgekit.env import fingerprint
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
    test = _split(spec, "test", args.fsdd)
    if args.eval_samples and args.eval_samples < len(test):  # a fixed random subset: the split is ordered by class
        test = test.subset(np.sort(np.random.default_rng(0).choice(len(test), args.eval_samples, replace=False)))
    train = _split(spec, "train", args.fsdd)
    calib = train.subset(np.random.default_rng(0).choice(len(train), min(args.calibration_size, len(train)), replace=False))
    items = baselines.calibration_items(calib, spec)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()

    rows = baselines.build_rows(model, spec, args.checkpoint, args.backends, items, out, threads=args.threads, b2u=not args.no_b2u, say=say)
    for backend in args.backends:
        e = chosen[backend]
        say(f"E on {backend}: {e['variant']} ({e['onnx']})")
        rows.append(baselines.edgekit_row(backend, e["variant"], e["onnx"], e["why"], out))
    baselines.load_and_evaluate(rows, test, spec.class_names, threads=args.threads, say=say)

    say(f"timing {len(rows)} rows: {args.rounds} interleaved rounds x {args.seconds:g} s per row and batch size")
    baselines.time_interleaved(rows, spec, args.rounds, args.seconds, args.min_iterations, args.warmup, say=say)
    baselines.add_ratios(rows)
    standing = baselines.standing(rows, args.targets)

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
                        "timer": "edgekit.agent.measure.measure per call (perf_counter), GC paused; inputs random from the spec, bound once (Runner.bind)",
                        "pooling": "per-round samples pooled per row and batch; p50/p99 nearest rank over the pool"},
           "rows": [_jsonable_row(r) for r in rows], "targets": args.targets, "standing": standing, "profiles": profiles}
    doc["note"] = note_text(doc)
    section = baselines.results_section(doc["rows"], doc["note"])
    doc["baselines"] = [r.model_dump() for r in section.rows]
    atomic_write_json(out / "baselines.json", doc)
    print_table(doc)
    console.print(doc["note"], highlight=False)
    say(f"wrote {out / 'baselines.json'}")
    if args.run is not None:
        rep = baselines.merge_into_run(args.run, section, render=not args.no_report)
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
