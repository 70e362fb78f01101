"""Train the `base` reference models (every fusion type, plus one single-modality model per modality) on
avdigits and print: parameters, MACs, test accuracy, macro-F1, and fusion's margin over the best single
modality. Checkpoints go to runs/ref/base-<name>/ and are reused on a rerun (delete one to retrain it).

    python benchmarks/train_reference.py --fsdd ../shared/data/fsdd [--preset base] [--epochs 10]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgekit.checkpoint import read_config
from edgekit.train import train_reference

FUSIONS = ["attention", "early", "late", "hierarchical"]
SINGLE = ["image", "audio", "text"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fsdd", default=None)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default="runs/ref")
    ap.add_argument("--only", nargs="*", default=None, help="subset of names to train, e.g. attention image")
    args = ap.parse_args()
    jobs = [(f, f, None) for f in FUSIONS[:1]] + [(f"only-{m}", "early", m) for m in SINGLE] + [(f, f, None) for f in FUSIONS[1:]]
    rows = {}
    for name, fusion, only in jobs:
        if args.only is not None and name.removeprefix("only-") not in args.only:
            continue
        out = Path(args.out) / f"{args.preset}-{name}"
        if not (out / "config.json").exists():
            t = time.time()
            train_reference(args.preset, fusion, out, fsdd=args.fsdd, epochs=args.epochs, only_modality=only)
            print(f"trained {out} in {time.time() - t:.0f} s", flush=True)
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
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.preset}-summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
