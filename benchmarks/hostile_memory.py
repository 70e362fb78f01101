"""Peak memory of every hostile-input row (tests/hostile_table.py), sorted, worst first.

Each row's command runs as `python -m edgekit ...` in a subprocess on its own copy of a small workspace; its peak
resident memory is ru_maxrss from os.wait4 on that process (the command and any child it waited for), taken by a
small launcher that forks it (so the measuring process's own size does not leak in); its thread count is the most
a 50 ms watchdog saw. Issue 16 asks the worst case to stay under 2 GB.

    python benchmarks/hostile_memory.py [--workers 3] [--json out.json] [ROW ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hostile_table import CASES, RSS_BOUND, build_workspace, run_all  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="*", help=f"rows to run (default: all {len(CASES)})")
    ap.add_argument("--workers", type=int, default=3, help="commands at a time")
    ap.add_argument("--json", type=Path, help="also write {row: {peak_rss_bytes, peak_threads, exit, seconds}} here")
    args = ap.parse_args()
    unknown = sorted(set(args.rows) - set(CASES))
    if unknown:
        ap.error(f"unknown rows {unknown}")
    with tempfile.TemporaryDirectory(prefix="edgekit-hostile-") as tmp:
        base = build_workspace(Path(tmp) / "base")
        done = run_all(base, Path(tmp) / "rows", args.rows or None, args.workers)
    rows = sorted(done.items(), key=lambda kv: -kv[1][1].peak_rss)
    print(f"{'row':52} {'peak RSS':>10} {'threads':>8} {'exit':>5} {'seconds':>8}")
    for name, (_, o) in rows:
        print(f"{name:52} {o.peak_rss / 2**20:7.0f} MiB {o.peak_threads:8d} {o.returncode:5d} {o.seconds:8.1f}"
              + (f"  killed: {o.killed}" if o.killed else ""))
    worst_name, (_, worst) = rows[0]
    print(f"worst case: {worst_name}, {worst.peak_rss / 2**20:.0f} MiB "
          f"({'under' if worst.peak_rss < RSS_BOUND else 'OVER'} the 2 GB bound); {len(rows)} rows")
    if args.json:
        args.json.write_text(json.dumps({n: {"peak_rss_bytes": o.peak_rss, "peak_threads": o.peak_threads, "exit": o.returncode,
                                             "seconds": round(o.seconds, 2), "killed": o.killed} for n, (_, o) in rows}, indent=2))
    return 0 if worst.peak_rss < RSS_BOUND else 1


if __name__ == "__main__":
    sys.exit(main())
