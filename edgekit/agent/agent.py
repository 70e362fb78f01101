"""The device agent: for each variant of a bundle, build (or reuse) its engine and check accuracy and parity on
the bundle's samples; then time all of them against each other in interleaved rounds with edgekit's latency
protocol (measure.time_rounds) and sample board power while each runs.

    python3 -m edgekit_agent run --out results [--runtime tensorrt|onnxruntime|auto] [--only a,b] [--mode bench]
    python3 -m edgekit_agent fingerprint

Progress goes to stdout as JSON lines ({"event": ...}); each finished variant is written to
`<out>/<variant>.json` (temp + rename) once the rounds are timed; engines are cached, so a dropped connection
costs a rerun of the checks and the timing, not the builds."""
from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import time
import traceback

from . import measure

HERE = os.path.dirname(os.path.abspath(__file__))


def emit(event: str, **fields) -> None:
    try:
        sys.stdout.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=_jsonable) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the host went away: nobody will fetch more results, and a rerun starts afresh
        raise SystemExit(4) from None


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def write_json(path: str, obj) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)


# ---- data ---------------------------------------------------------------------------------------------------

def load_npz(path: str) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def predict_all(runner, spec: dict, samples: dict, batch: int):
    import numpy as np

    out_name = spec["outputs"][0]["name"]
    names = [i["name"] for i in spec["inputs"]]
    n = len(samples["labels"])
    logits = []
    for s in range(0, n, batch):
        logits.append(runner.run({k: samples[k][s : s + batch] for k in names})[out_name])
    return np.concatenate(logits).astype(np.float32)


# ---- one variant -------------------------------------------------------------------------------------------

def bench_settings(manifest: dict) -> dict:
    return {**measure.protocol(), "power_seconds": measure.POWER_SECONDS, **(manifest.get("bench") or {})}


def check_variant(bundle: str, manifest: dict, entry: dict, args, samples: dict | None) -> tuple:
    """Load (building the engine if needed), then accuracy and parity on the samples: (runner, result so far)."""
    from .predictor import open_runner

    name, spec = entry["name"], entry["spec"]
    build = manifest.get("build") or {}
    t0 = time.perf_counter()
    emit("variant_stage", variant=name, stage="load")
    runner, info = open_runner(bundle, entry, args.runtime, build=build, cache_dir=args.cache)
    result = {"variant": name, "onnx_sha256": entry["sha256"], "precision": entry.get("precision"), "runtime": info,
              "load_seconds": round(time.perf_counter() - t0, 3), "mode": args.mode}
    if info["runtime"] == "tensorrt":
        os.makedirs(os.path.join(bundle, "engines"), exist_ok=True)
        shipped = os.path.join(bundle, "engines", name + ".engine")
        if os.path.abspath(info["engine"]) != os.path.abspath(shipped):
            shutil.copyfile(info["engine"], shipped)  # fetched by the host; also what runtime.load() will use here
        result["engine"] = {"file": f"engines/{name}.engine", "bytes": os.path.getsize(shipped), **{k: v for k, v in (info.get("build") or {}).items() if k != "plan"}}
        result["build_plan"] = (info.get("build") or {}).get("plan")
        layers = runner.layer_info(measure.sample_feed(spec, samples, build.get("batch", {}).get("opt", 1)))
        write_json(os.path.join(args.out, f"{name}.layers.json"), layers)
        result["layer_precision_counts"] = layers["counts"]
        result["runtime_precision"] = layers.get("runtime_precision")  # share of MACs in INT8 (trt_plan.mac_summary)
    elif info["runtime"] == "onnxruntime":
        result["runtime_precision"] = ort_precision_map(os.path.join(bundle, entry["onnx"]), runner, spec, samples)
    eval_batch = max(1, int((build.get("batch") or {}).get("max", 8))) if info["runtime"] == "tensorrt" else 32
    if args.mode == "deploy" and samples:
        emit("variant_stage", variant=name, stage="accuracy")
        logits = predict_all(runner, spec, samples, eval_batch)
        class_names = spec.get("class_names") or [str(c) for c in range(logits.shape[1])]
        result["accuracy"] = measure.classification(samples["labels"], logits.argmax(1), class_names)
        ref_path = os.path.join(bundle, entry["reference"]) if entry.get("reference") else None
        if ref_path and os.path.exists(ref_path):
            ref = load_npz(ref_path)
            result["parity"] = dict(measure.parity(ref["logits"], logits), reference=entry.get("reference_source", "host reference"))
            measure.parity_passed(result["parity"], float(manifest.get("parity_min_top1", {}).get(entry.get("precision") or "fp32", 0.99)))
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return runner, result


def ort_precision_map(onnx: str, runner, spec: dict, samples: dict | None) -> dict:
    """ONNX Runtime's own precision map of the variant on this device (ort_profile); never fails the variant."""
    from .ort_profile import profile_map

    try:
        return profile_map(onnx, runner._feed(measure.sample_feed(spec, samples, 1)), runner.providers, runner.settings.get("intra_op_num_threads"))
    except Exception as e:  # noqa: BLE001 — a profiler problem must not lose the measurement
        return {"source": "", "error": f"{type(e).__name__}: {str(e)[:300]}"}


def time_variants(checked: dict, manifest: dict, samples: dict | None, session: str) -> None:
    """Every checked variant {name: (entry, runner, result)} timed against the others in interleaved rounds;
    each result gets its batches, the round medians and the session id shared by the variants timed together."""
    bench = bench_settings(manifest)
    calls = {n: {int(b): r.bind(measure.sample_feed(e["spec"], samples, int(b))) for b in bench["batch_sizes"]}
             for n, (e, r, _) in checked.items()}
    emit("timing", variants=list(calls), rounds=int(bench["rounds"]), session=session)
    timed = measure.time_rounds(calls, bench, on_round=lambda k, n: emit("timing_round", round=k, rounds=n))
    for n, (_, _, result) in checked.items():
        trt = result["runtime"]["runtime"] == "tensorrt"
        result["batches"] = timed[n]
        result["timing"] = {"session": session, "order": list(calls)}
        result["protocol"] = dict(bench, cv_limit=measure.CV_LIMIT, **measure.PROTOCOL_NOTES,
                                  interleaved="every variant at each batch size, in order, per round; min_seconds and min_iterations split over the rounds",
                                  inputs="the bundle's samples (cycled to the batch size)" if samples else "random from the spec (seed 0)",
                                  timed="h2d + execute + d2h + sync" if trt else "session.run on bound numpy inputs")


def finish_variant(entry: dict, runner, result: dict, manifest: dict, args, samples: dict | None, fp: dict) -> dict:
    """Board power while the variant runs (on a Jetson), then close it."""
    from . import power

    t0, name, spec, bench = time.perf_counter(), entry["name"], entry["spec"], bench_settings(manifest)
    if fp.get("tegrastats") or args.tegrastats:
        emit("variant_stage", variant=name, stage="power")
        b = int(bench["batch_sizes"][0])
        result["power"] = power.measure_energy(runner.bind(measure.sample_feed(spec, samples, b)), float(bench["power_seconds"]), b,
                                               command=args.tegrastats)
    else:
        result["power"] = {"available": False, "reason": "tegrastats not found (not a Jetson?)"}
    if hasattr(runner, "close"):
        runner.close()
    result["seconds"] = round(result.get("seconds", 0) + time.perf_counter() - t0, 3)
    return result


def _error_kind(e: BaseException) -> tuple[str, str, list[str]]:
    from .trt import BuildError
    from .trt_plan import PlanError

    if isinstance(e, PlanError):
        return "plan", e.hint, []
    if isinstance(e, BuildError):
        return "build", "read the TensorRT lines above; try a larger workspace_mb or another precision", e.key_lines
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "disk_full", "free space on the device or deploy with ?workdir= on a larger disk", []
    if isinstance(e, ImportError):
        return "runtime_missing", "install the runtime on the device or use --runtime onnxruntime", []
    return "error", "", traceback.format_exc().splitlines()[-6:]


def cmd_run(args) -> int:
    bundle = os.getcwd() if args.bundle is None else args.bundle
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    wanted = [v for v in manifest["variants"] if not args.only or v["name"] in args.only.split(",")]
    emit("start", variants=[v["name"] for v in wanted], pid=os.getpid(), bundle=bundle)
    from . import fingerprint

    fp = fingerprint.collect(args.out)
    write_json(os.path.join(args.out, "fingerprint.json"), fp)
    emit("fingerprint", file="fingerprint.json")
    samples_path = os.path.join(bundle, manifest["samples"]["file"]) if manifest.get("samples") else None
    samples = load_npz(samples_path) if samples_path and os.path.exists(samples_path) else None
    checked, failed = {}, 0

    def error(name, e) -> bool:  # one variant failing must not lose the others; True: give up (disk full)
        nonlocal failed
        kind, hint, lines = _error_kind(e)
        emit("variant_error", variant=name, kind=kind, message=str(getattr(e, "message", e)).splitlines()[0][:500], hint=hint, key_lines=lines)
        failed += 1
        if kind == "disk_full":
            emit("fatal", kind=kind, message=str(e), hint=hint)
        return kind == "disk_full"

    for entry in wanted:
        emit("variant_start", variant=entry["name"])
        try:
            runner, result = check_variant(bundle, manifest, entry, args, samples)
            checked[entry["name"]] = (entry, runner, result)
        except Exception as e:
            if error(entry["name"], e):
                return 3
    try:
        if checked:
            time_variants(checked, manifest, samples, f"{fp.get('hostname') or 'device'}-{os.getpid()}-{int(time.time())}")
    except Exception as e:  # a runner failing while timed: none of the rounds can be trusted
        for name in list(checked):
            if error(name, e):
                return 3
        checked = {}
    for name, (entry, runner, result) in checked.items():
        try:
            result = finish_variant(entry, runner, result, manifest, args, samples, fp)
            result["device"] = {k: fp.get(k) for k in ("hostname", "board", "tensorrt", "power_mode", "jetpack")}
            write_json(os.path.join(args.out, f"{name}.json"), result)
            emit("variant_done", variant=name, file=f"{name}.json",
                 engine=result.get("engine", {}).get("file"), layers=f"{name}.layers.json" if "engine" in result else None)
        except Exception as e:
            if error(name, e):
                return 3
    emit("done", failed=failed)
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="edgekit_agent")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--bundle", default=None)
    run.add_argument("--out", default="results")
    run.add_argument("--runtime", default="auto", choices=["auto", "tensorrt", "onnxruntime"])
    run.add_argument("--cache", default=None, help="engine cache folder (default ~/.cache/edgekit/engines)")
    run.add_argument("--only", default="", help="comma-separated variant names")
    run.add_argument("--mode", default="deploy", choices=["deploy", "bench"])
    run.add_argument("--tegrastats", default=None, help="tegrastats executable (default: from PATH)")
    sub.add_parser("fingerprint")
    args = ap.parse_args(argv)
    if args.cmd == "fingerprint":
        from . import fingerprint

        print(json.dumps(fingerprint.collect(), indent=2, default=_jsonable))
        return 0
    try:
        return cmd_run(args)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            emit("fatal", kind="disk_full", message=str(e), hint="free space on the device")
            return 3
        raise
