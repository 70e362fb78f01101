"""Train the `base` reference models (every fusion type, plus one single-modality model per modality) on
avdigits and print: parameters, MACs, test accuracy, macro-F1, and fusion's margin over the best single
modality. Checkpoints go to runs/ref/base-<name>/ and are reused on a rerun (delete one to retrain it).

    python benchmarks/train_reference.py --fsdd ../shared/data/fsdd [--preset base] [--epochs 10] [--jobs 3]

The criterion it checks: every fusion model reaches at least the best single-modality model + 3 accuracy points.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from edgekit.checkpoint import read_config
from edgekit.io import atomic_write_json
from edgekit.train import train_reference

FUSIONS = ["attention", "early", "late", "hierarchical"]
SINGLE = ["image", "audio", "text"]
MARGIN = 0.03  # fusion must beat the best single modality by this much accuracy


def _train(preset: str, fusion: str, out: Path, fsdd, epochs, only, threads: int | None) -> str:
    if threads:
        import torch

        torch.set_num_threads(threads)
    t = time.time()
    train_reference(preset, fusion, out, fsdd=fsdd, epochs=epochs, only_modality=only)
    return f"trained {out} in {time.time() - t:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fsdd", default=None)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default="runs/ref")
    ap.add_argument("--only", nargs="*", default=None, help="subset of names to train, e.g. attention image")
    ap.add_argument("--jobs", type=int, default=1, help="models trained at once, each in its own process (threads split between them)")
    args = ap.parse_args()
    jobs = [(f, f, None) for f in FUSIONS[:1]] + [(f"only-{m}", "early", m) for m in SINGLE] + [(f, f, None) for f in FUSIONS[1:]]
    jobs = [j for j in jobs if args.only is None or j[0].removeprefix("only-") in args.only]
    outs = {name: Path(args.out) / f"{args.preset}-{name}" for name, _, _ in jobs}
    todo = [(args.preset, fusion, outs[name], args.fsdd, args.epochs, only) for name, fusion, only in jobs
            if not (outs[name] / "config.json").exists()]
    if args.jobs > 1 and len(todo) > 1:
        from edgekit.data import avdigits

        avdigits.load("test", args.fsdd)  # build the data cache once, before the workers read it
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(args.jobs) as pool:  # submitted in table order: attention starts first
            for fut in [pool.submit(_train, *job, threads) for job in todo]:
                print(fut.result(), flush=True)
    else:
        for job in todo:
            print(_train(*job, None), flush=True)
    rows = {}
    for name, _, _ in jobs:
        out = outs[name]
        cfg = read_config(out)
        m = cfg["metrics"]["test"]
        rows[name] = {"params": cfg["stats"]["params"], "macs": cfg["stats"]["macs"], "accuracy": m["accuracy"],
                      "f1_macro": m["f1_macro"], "missing": m.get("missing_modality_accuracy", {}),
                      "train_seconds": sum(h["seconds"] for h in cfg["training"]["history"])}
    best_single = max((rows[f"only-{m}"]["accuracy"] for m in SINGLE if f"only-{m}" in rows), default=None)
    print(f"\n{'model':<16}{'params':>10}{'MMACs':>9}{'acc':>8}{'F1':>8}{'vs best single':>16}  acc without image/audio/text")
    for name, r in rows.items():
        margin = f"{100 * (r['accuracy'] - best_single):+.1f} pt" if best_single is not None and not name.startswith("only-") else ""
        miss = " / ".join(f"{100 * r['missing'][m]:.1f}" for m in SINGLE) if r["missing"] else ""
        print(f"{name:<16}{r['params'] / 1e6:>9.2f}M{r['macs'] / 1e6:>9.0f}{100 * r['accuracy']:>7.1f}%{100 * r['f1_macro']:>7.1f}%{margin:>16}  {miss}")
    fusions = [f for f in FUSIONS if f in rows]
    if best_single is not None and fusions:
        worst = min(rows[f]["accuracy"] for f in fusions)
        ok = worst >= best_single + MARGIN - 1e-9
        print(f"\ncriterion (every fusion >= best single + {100 * MARGIN:.0f} pt): {'met' if ok else 'NOT met'} "
              f"(worst fusion {100 * worst:.1f}%, best single {100 * best_single:.1f}%)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out) / f"{args.preset}-summary.json", rows)


if __name__ == "__main__":
    main()
