"""Torch eager vs ONNX Runtime vs OpenVINO on the `base` model, FP32 and INT8, in one run: median and p99 latency
at batch 1 and throughput at batch 8, with ratios to torch eager FP32.

Each configuration is measured in its own process by `edgekit bench` (the same protocol everywhere; separate
memory and thread pools). Then the same artifact is timed at batch 1 by the backend's own tool, alternating
with `edgekit bench` for --rounds rounds so that a change in machine load hits both: OpenVINO's
`benchmark_app -api sync -hint latency` (with -data_shape on the same dynamic-batch IR, -inference_only), and
for ONNX Runtime a minimal `sess.run` loop (the pip wheel ships no onnxruntime_perf_test, and its
`onnxruntime_test` feeds random token ids up to 1000, which our 64-word vocabulary rejects).

    python benchmarks/backends.py --fsdd ../shared/data/fsdd [--checkpoint runs/ref/base-attention] [--out runs/bench-backends] [--min-seconds 10]

INT8 is NNCF post-training quantization (300 calibration samples) of the model with BatchNorm folded into the
convolutions first, exported as Q/DQ. Writes <out>/backends.json and every bench-*.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgekit import checkpoint, export
from edgekit.backends import compile_onnx
from edgekit.backends.base import get_backend
from edgekit.data import avdigits
from edgekit.io import atomic_write_json

BACKENDS = ["onnxruntime", "openvino"]


def ensure_checkpoint(ck: Path, fsdd: str | None) -> None:
    if (ck / "config.json").exists():
        return
    print(f"no checkpoint at {ck}: training base/attention (about 10 min on 2 cores, niced)", flush=True)
    subprocess.run(["nice", "-n", "10", sys.executable, "-m", "edgekit", "train", "--preset", "base", "--fusion", "attention",
                    "--out", str(ck)] + (["--fsdd", fsdd] if fsdd else []), check=True)


def fold_batchnorm(model):
    """Fold every BatchNorm that directly follows a convolution into it (in place; the pairs are found by
    tracing with torch.fx, the module tree itself is kept, so NNCF's torch backend still applies)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    mods = dict(model.named_modules())
    for node in torch.fx.symbolic_trace(model).graph.nodes:
        src = node.args[0] if node.args else None
        if (node.op == "call_module" and isinstance(mods[node.target], torch.nn.BatchNorm2d) and getattr(src, "op", None) == "call_module"
                and isinstance(mods[src.target], torch.nn.Conv2d) and len(src.users) == 1):
            model.set_submodule(src.target, fuse_conv_bn_eval(mods[src.target], mods[node.target]))
            model.set_submodule(node.target, torch.nn.Identity())
    return model


def quantize_int8(model, calib):
    """NNCF PTQ. BatchNorm is folded first: otherwise it sits between the int8 Conv and the next Q/DQ and ONNX
    Runtime cannot fuse the pattern into QLinearConv."""
    import copy

    import nncf
    import torch

    items = [{k: torch.from_numpy(v[i : i + 1]) for k, v in calib.inputs.items()} for i in range(len(calib))]
    return nncf.quantize(fold_batchnorm(copy.deepcopy(model)), nncf.Dataset(items), subset_size=len(items))


def edgekit_bench(path: Path, backend: str, out: Path, min_seconds: float, batches=(1, 8)) -> dict:
    cmd = [sys.executable, "-m", "edgekit", "bench", str(path), "--backend", backend, "--min-seconds", str(min_seconds),
           "--out", str(out), "--json"] + [a for b in batches for a in ("--batch", str(b))]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout)


def benchmark_app_median(xml: Path, spec, seconds: float) -> tuple[float, str]:
    shapes = ",".join(f"{i.name}[{','.join(str(1 if d is None else d) for d in i.shape)}]" for i in spec.inputs)
    tool = Path(sys.executable).parent / "benchmark_app"
    cmd = [str(tool), "-m", str(xml), "-d", "CPU", "-hint", "latency", "-api", "sync", "-data_shape", shapes,
           "-infer_precision", "f32", "-inference_only", "true", "-t", str(int(seconds))]
    res = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"Median:\s+([\d.]+)\s*(ms|us)", res.stdout)
    if res.returncode != 0 or not m:
        raise SystemExit(f"benchmark_app failed:\n{res.stdout[-1500:]}{res.stderr[-1500:]}")
    return float(m.group(1)) / (1000 if m.group(2) == "us" else 1), " ".join(cmd)


def ort_loop_median(model_path: Path, spec, threads: int, seconds: float) -> float:
    """The plainest ONNX Runtime timing: one session, sess.run on a feed dict, perf_counter around each call."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the artifact is the optimized model
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    feed = spec.example_inputs(1)
    for _ in range(20):
        sess.run(None, feed)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def agree(art, backend: str, spec, threads: int, seconds: float, rounds: int, scratch: Path) -> dict:
    """Our batch-1 median vs the backend's own tool on the same artifact, alternating in rounds so that a change
    in machine load hits both alike; the medians of the round medians are compared."""
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(edgekit_bench(art.path.parent, backend, scratch, seconds, batches=(1,))["batches"]["1"]["latency_ms"]["median"])
        if backend == "openvino":
            median, how = benchmark_app_median(art.path, spec, seconds)
            tool = "benchmark_app -api sync -hint latency"
        else:
            median, how = ort_loop_median(art.path, spec, threads, seconds), "plain sess.run loop, same file and threads"
            tool = "minimal sess.run loop"
        theirs.append(median)
    a, b = statistics.median(ours), statistics.median(theirs)
    return {"backend": backend, "precision": art.precision, "edgekit_median_ms": a, "tool": tool, "tool_median_ms": b,
            "difference": a / b - 1, "within_10pct": abs(a / b - 1) <= 0.10, "rounds": {"edgekit": ours, "tool": theirs}, "tool_command": how}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/ref/base-attention")
    ap.add_argument("--out", default="runs/bench-backends")
    ap.add_argument("--fsdd", default=None)
    ap.add_argument("--min-seconds", type=float, default=10.0, help="timed seconds per batch size")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of edgekit vs the backend's tool (each --min-seconds / 2)")
    args = ap.parse_args()
    ck, out = Path(args.checkpoint), Path(args.out)
    ensure_checkpoint(ck, args.fsdd)
    model, spec, cfg = checkpoint.load(ck)
    seed = spec.preprocessing.get("seed", 0)
    test = avdigits.load("test", args.fsdd, seed)
    calib = avdigits.load("train", args.fsdd, seed)
    calib = calib.subset(np.random.default_rng(0).choice(len(calib), 300, replace=False))

    onnx = {"fp32": out / "fp32" / "model.onnx", "int8": out / "int8" / "model.onnx"}
    reports = {"fp32": export.to_onnx(model, spec, onnx["fp32"], check_parity_on=test)}
    reports["int8"] = export.to_onnx(quantize_int8(model, calib), spec, onnx["int8"], check_parity_on=test)
    backends = []
    for b in BACKENDS:
        ok, why = get_backend(b).available()
        if ok:
            backends.append(b)
        else:
            print(f"skipping {b}: {why} ({get_backend(b).install_hint})", flush=True)
    arts = {(b, p): compile_onnx(onnx[p], b, out / p / b) for p in onnx for b in backends}

    rows, agreement = [], []
    load_before = os.getloadavg()
    torch_res = edgekit_bench(ck, "torch", out / "torch", args.min_seconds)
    rows.append(("torch eager", "fp32", torch_res, reports["fp32"]["parity"]["reference_accuracy"]))
    for p in onnx:
        for b in backends:
            art = arts[(b, p)]
            res = edgekit_bench(art.path.parent, b, art.path.parent, args.min_seconds)
            rows.append((b, p, res, art.meta["parity"].get("candidate_accuracy")))
            agreement.append(agree(art, b, spec, res["threads"], args.min_seconds / 2, args.rounds, out / "agreement"))
    base = torch_res["batches"]
    summary = []
    for name, p, res, acc in rows:
        b1, b8 = res["batches"]["1"], res["batches"]["8"]
        summary.append({"backend": name, "precision": p, "accuracy_256": acc,
                        "b1_median_ms": b1["latency_ms"]["median"], "b1_p99_ms": b1["latency_ms"]["p99"], "b1_cv": b1["latency_ms"]["cv"],
                        "b8_throughput": b8["throughput_per_s"], "b8_cv": b8["latency_ms"]["cv"],
                        "speedup_median": base["1"]["latency_ms"]["median"] / b1["latency_ms"]["median"],
                        "speedup_p99": base["1"]["latency_ms"]["p99"] / b1["latency_ms"]["p99"],
                        "throughput_ratio": b8["throughput_per_s"] / base["8"]["throughput_per_s"],
                        "cold_start_ms": res["cold_start_s"]["total"] * 1000, "peak_rss_mb": res["memory"]["peak_rss_mb"],
                        "size_mb": (res["artifact"]["size_bytes"] or 0) / 2**20, "threads": res["threads"], "command": res["command"]})
    doc = {"checkpoint": str(ck), "load_average": {"before": load_before, "after": os.getloadavg()}, "stats": json.loads((ck / "config.json").read_text()).get("stats"), "min_seconds": args.min_seconds,
           "environment": torch_res["environment"], "rows": summary, "agreement": agreement,
           "int8_export": {k: reports["int8"][k] for k in ("nodes", "size_bytes", "qdq_unsigned_to_signed", "parity")}}
    atomic_write_json(out / "backends.json", doc)
    show(doc)


def show(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(width=160)
    cpu = doc["environment"]["cpu"]
    isa = " ".join(k for k, v in cpu["isa"].items() if v)
    c.print(f"{doc['checkpoint']}: {doc['stats']}  |  {cpu['model']}, {cpu['usable_cores']} cores, ISA: {isa}")
    la = doc["load_average"]
    c.print(f"load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in la['before'])}, after {' '.join(f'{x:.2f}' for x in la['after'])}"
            + ("  [yellow]— other processes were running: expect noisy numbers (torch's OpenMP suffers most)[/]" if max(la["before"][0], la["after"][0]) > 0.5 else ""))
    t = Table("backend", "precision", "acc (256 test)", "b1 median ms", "vs torch", "b1 p99 ms", "vs torch", "b8 samples/s", "vs torch",
              "CV b1/b8", "cold start ms", "peak RSS MiB", "size MiB", title="base model: latency (batch 1) and throughput (batch 8), one run")
    for r in doc["rows"]:
        flag = " !" if max(r["b1_cv"], r["b8_cv"]) > 0.05 else ""
        t.add_row(r["backend"], r["precision"], f"{r['accuracy_256']:.3f}" if r["accuracy_256"] is not None else "-",
                  f"{r['b1_median_ms']:.3f}", f"{r['speedup_median']:.2f}x", f"{r['b1_p99_ms']:.3f}", f"{r['speedup_p99']:.2f}x",
                  f"{r['b8_throughput']:.0f}", f"{r['throughput_ratio']:.2f}x", f"{r['b1_cv']:.1%}/{r['b8_cv']:.1%}{flag}",
                  f"{r['cold_start_ms']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['size_mb']:.2f}")
    c.print(t)
    c.print("'vs torch' = torch eager FP32 / backend for latency, backend / torch for throughput (higher is better); ! = CV over 5%")
    t = Table("backend", "precision", "edgekit median ms", "tool", "tool median ms", "difference", "within 10%", "rounds: edgekit / tool",
              title="our protocol vs the backends' own tools (batch 1, same artifact, alternating rounds)")
    for a in doc["agreement"]:
        rounds = " ".join(f"{x:.2f}" for x in a["rounds"]["edgekit"]) + " / " + " ".join(f"{x:.2f}" for x in a["rounds"]["tool"])
        t.add_row(a["backend"], a["precision"], f"{a['edgekit_median_ms']:.3f}", a["tool"], f"{a['tool_median_ms']:.3f}",
                  f"{a['difference']:+.1%}", "yes" if a["within_10pct"] else "[red]no[/]", rounds)
    c.print(t)


if __name__ == "__main__":
    main()
