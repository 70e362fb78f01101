"""edgekit next to what an engineer gets from the standard tools alone, measured in one process on one machine:

  B0  torch eager FP32 (the trained model as it is)
  B1  the model exported with a plain torch.onnx.export, FP32, on ONNX Runtime and on OpenVINO
  B2  the standard post-training INT8 of each runtime with its documented defaults (NNCF on OpenVINO,
      quantize_static on ONNX Runtime); B2u: ONNX Runtime with uint8 activations (its advice for x86, not a default)
  E   an edgekit variant's ONNX, compiled by edgekit's backends

A row is a dict (key, name, backend, precision, ...) that gains a runner, metrics, pooled latencies and ratios as
it goes through `build_rows` / `edgekit_row` -> `load_and_evaluate` -> `time_interleaved` -> `add_ratios`;
`standing` says where E stands per backend (against targets only where the caller gives them: acceptance numbers
belong to whoever asks, not to this module), and `results_section` / `merge_into_run` put the rows into a run's
results.json `baselines` section (its schema: edgekit.results). benchmarks/baselines.py is the command line.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

BACKENDS = ("onnxruntime", "openvino")
REFERENCES = ("B0", "B1", "B2", "B2u")  # the rows an E row is compared with (B1/B2/B2u: on the same backend)


# ---------------------------------------------------------------- building the rows

def export_plain(model, spec, path: Path) -> Path:
    """B1: torch.onnx.export as a user would call it (TorchScript exporter, opset 17, dynamic batch), nothing else."""
    import warnings

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

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Positional().eval(), example, str(path), input_names=spec.input_names, output_names=spec.output_names,
                          opset_version=17, dynamic_axes={n: {0: "batch"} for n in names}, dynamo=False)
    attach_spec(path, spec)
    return path


def attach_spec(path: Path, spec) -> None:
    """So edgekit's backends know the inputs (the graph itself is untouched)."""
    import onnx

    from edgekit.onnxgraph.info import SPEC_KEY

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {SPEC_KEY: spec.model_dump_json()})
    onnx.save(proto, str(path))


def calibration_items(calib, spec) -> list[dict]:
    """One dict of batch-1 arrays per sample, as a DataLoader with batch_size=1 would give them."""
    return [{n: calib.inputs[n][i : i + 1] for n in spec.input_names} for i in range(len(calib))]


def nncf_openvino_int8(b1_onnx: Path, calib_items: list[dict], out_dir: Path, spec):
    """B2 for OpenVINO, as NNCF's documentation shows it: convert, nncf.quantize with an nncf.Dataset, defaults
    (300 samples, MinMax, performance preset)."""
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

    art = get_backend(backend).compile(onnx_path, spec, options or {}, out_dir)
    art.save()
    return art


def build_rows(model, spec, checkpoint: Path, backends: list[str], calib_items: list[dict], out: Path, threads: int | None = None,
               b2u: bool = True, say=print) -> list[dict]:
    """B0, then B1 on each backend, then B2 (and B2u on ONNX Runtime) on each backend; artifacts under `out`."""
    from edgekit.bench import TorchRunner

    rows: list[dict] = []
    weights = Path(checkpoint) / "model.safetensors"
    rows.append({"key": "B0", "name": "B0 torch eager FP32", "backend": "torch", "precision": "fp32", "what": "the checkpoint in torch, inference_mode",
                 "runner": TorchRunner(model, spec, threads), "size_bytes": weights.stat().st_size, "source": str(checkpoint)})
    say("B1: torch.onnx.export")
    b1_onnx = export_plain(model, spec, out / "B1" / "model.onnx")
    b2_ort_onnx = None
    for backend in backends:
        say(f"B1 on {backend}")
        art = compile_plain(backend, b1_onnx, spec, out / "B1" / backend)
        rows.append({"key": "B1", "name": f"B1 ONNX FP32 ({backend})", "backend": backend, "precision": "fp32", "artifact": str(art.path),
                     "what": "plain torch.onnx.export, compiled by edgekit's backend", "source": str(b1_onnx), "art": art})
    for backend in backends:
        if backend == "openvino":
            say("B2: NNCF post-training INT8 (defaults) on OpenVINO")
            art = nncf_openvino_int8(b1_onnx, calib_items, out / "B2" / "openvino", spec)
            what = "ov.convert_model + nncf.quantize(defaults, nncf.Dataset) + ov.save_model"
        else:
            say("B2: ONNX Runtime quantize_static (defaults)")
            b2_ort_onnx = ort_quantize_static_int8(b1_onnx, calib_items, out / "B2" / "onnxruntime")
            attach_spec(b2_ort_onnx, spec)
            # the ONNX as quantize_static wrote it: no edgekit Q/DQ rewrite (that is part of E, not of the baseline)
            art = compile_plain(backend, b2_ort_onnx, spec, out / "B2" / "onnxruntime", {"qdq_rewrite": False})
            what = "quant_pre_process + quantize_static(defaults: QDQ, int8/int8, per-tensor MinMax), ORT graph optimization 'all'"
        rows.append({"key": "B2", "name": f"B2 {'NNCF PTQ' if backend == 'openvino' else 'ORT quantize_static'} INT8 ({backend})",
                     "backend": backend, "precision": "int8", "artifact": str(art.path), "what": what,
                     "source": str(b2_ort_onnx if backend == "onnxruntime" else b1_onnx), "art": art})
        if backend == "onnxruntime" and b2u:
            say("B2u: ONNX Runtime quantize_static with uint8 activations (ORT's advice for x86)")
            q = ort_quantize_static_int8(b1_onnx, calib_items, out / "B2u" / "onnxruntime", uint8=True)
            attach_spec(q, spec)
            art = compile_plain(backend, q, spec, out / "B2u" / "onnxruntime", {"qdq_rewrite": False})
            rows.append({"key": "B2u", "name": "B2u ORT quantize_static uint8-act INT8 (onnxruntime)", "backend": backend, "precision": "int8",
                         "artifact": str(art.path), "source": str(q), "art": art,
                         "what": "as B2 but activation_type=QUInt8 (U8S8, what ORT's quantization docs advise for x86): not a default"})
    return rows


def edgekit_row(backend: str, variant: str, onnx: Path, why: str, out: Path) -> dict:
    """E on `backend`: an edgekit variant's ONNX compiled by edgekit's backend (its Q/DQ rewrite included)."""
    from edgekit.onnxgraph.info import spec_for_onnx

    art = compile_plain(backend, onnx, spec_for_onnx(onnx), out / "E" / backend)
    return {"key": "E", "name": f"E edgekit {variant} ({backend})", "backend": backend, "precision": art.precision,
            "variant": variant, "artifact": str(art.path), "what": why, "source": str(onnx),
            "onnx_bytes": Path(onnx).stat().st_size, "qdq_rewrite": art.meta.get("qdq_rewrite"), "art": art}


def load_and_evaluate(rows: list[dict], test, class_names, threads: int | None = None, say=print) -> None:
    """Load every compiled row with the same runtime settings, then accuracy / macro-F1 on `test` (no ablation)."""
    from edgekit.backends.base import get_backend
    from edgekit.evaluate import evaluate

    for r in rows:
        if "art" in r:
            art = r.pop("art")
            r["runner"] = get_backend(r["backend"]).load(art, threads=threads)
            r["art_obj"] = art
            r["size_bytes"] = art.size_bytes()
        r["settings"] = {k: v for k, v in r["runner"].settings.items() if k in ("threads", "providers", "config", "graph_optimization", "mode")}
        say(f"evaluating {r['name']} on {len(test)} test samples")
        r["metrics"] = {k: v for k, v in evaluate(r["runner"], test, class_names, missing=False).items() if k != "per_class_f1"}


# ---------------------------------------------------------------- timing and ratios

def time_interleaved(rows: list[dict], spec, rounds: int, seconds: float, min_iterations: int, warmup: int, say=print) -> None:
    """Interleaved rounds (edgekit.agent.measure.time_rounds, as `edgekit run` times a target's variants): every row
    at batch 1 and 8, in order, `rounds` times; samples pooled per row and batch, so a change in machine load hits
    every row alike. `seconds` and `min_iterations` are per row, batch size and round."""
    from edgekit.agent import measure

    calls = {i: {b: r["runner"].bind(spec.example_inputs(b, 0)) for b in (1, 8)} for i, r in enumerate(rows)}
    settings = {"rounds": rounds, "min_seconds": seconds * rounds, "min_iterations": min_iterations * rounds, "warmup": warmup,
                "max_seconds": max(10 * seconds, 5.0) * rounds}
    t0 = [time.perf_counter()]

    def done(k, n):
        say(f"round {k}/{n} done in {time.perf_counter() - t0[0]:.0f} s, load {os.getloadavg()[0]:.2f}")
        t0[0] = time.perf_counter()

    timed = measure.time_rounds(calls, settings, on_round=done)
    for i, r in enumerate(rows):
        r["times"] = {b: [t / 1000 for t in timed[i][str(b)]["times_ms"]] for b in (1, 8)}
        r["round_medians_ms"] = {b: timed[i][str(b)]["round_medians_ms"] for b in (1, 8)}
        r["latency_ms"] = {b: timed[i][str(b)]["latency_ms"] for b in (1, 8)}
        r["throughput"] = {b: timed[i][str(b)]["throughput_per_s"] for b in (1, 8)}


def add_ratios(rows: list[dict]) -> None:
    """speedup_vs_X = X's p50 / this row's p50 at batch 1 (> 1: this row is faster; the median of the paired per-round
    ratios, the statistic its interval is of); X on the same backend for B1/B2,
    with its 95% interval and verdict by the rule `edgekit run` and the report apply (edgekit.judge.speedup_record).
    Also the throughput ratio at batch 8, the p99 ratio, and the per-round range of the p50 ratio."""
    from edgekit.judge import speedup_record

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
            sp = speedup_record(ref["round_medians_ms"][1], r["round_medians_ms"][1], ref["latency_ms"][1]["median"],
                                r["latency_ms"][1]["median"], name)
            r["ratios"][name] = {"speedup_p50_b1": sp["value"], "speedup_p50_b1_ci95": sp["ci95"], "verdict": sp["verdict"],
                                 "speedup_p99_b1": ref["latency_ms"][1]["p99"] / r["latency_ms"][1]["p99"],
                                 "throughput_ratio_b8": r["throughput"][8] / ref["throughput"][8],
                                 "speedup_p50_b1_per_round": [min(per_round), max(per_round)],
                                 "accuracy_delta_pt": (r["metrics"]["accuracy"] - ref["metrics"]["accuracy"]) * 100}


def standing(rows: list[dict], targets: dict | None = None) -> dict:
    """Where E stands per backend: speed-up vs B2 and B1 at batch 1 (p50, with its 95% interval and verdict),
    accuracy drop vs FP32 in points, and whether each INT8 row beats FP32 by the speed rule (the interval's lower
    end above 1.0). `targets` (speedup_vs_B2, speedup_vs_B1, max_accuracy_drop_pt; any may be missing) adds `target`
    and `met` to those entries (a speed target is met when the interval's lower end is above it); without a target
    an entry has the value only."""
    from edgekit.agent.measure import wins

    targets = {k: v for k, v in (targets or {}).items() if v is not None}
    by = {(r["key"], r["backend"]): r for r in rows}
    out = {}
    for (key, backend), e in by.items():
        if key != "E":
            continue
        b1, b2 = by.get(("B1", backend)), by.get(("B2", backend))
        drop_b1 = (b1["metrics"]["accuracy"] - e["metrics"]["accuracy"]) * 100 if b1 else None
        drop_b0 = (by[("B0", "torch")]["metrics"]["accuracy"] - e["metrics"]["accuracy"]) * 100
        speed = lambda ref: {"value": e["ratios"].get(ref, {}).get("speedup_p50_b1"), "ci95": e["ratios"].get(ref, {}).get("speedup_p50_b1_ci95"),  # noqa: E731
                             "verdict": e["ratios"].get(ref, {}).get("verdict")}
        t = {"E": e["variant"], "speedup_vs_B2": speed("B2"), "speedup_vs_B1": speed("B1"),
             "accuracy_drop_vs_fp32_pt": {"value": drop_b1, "vs_torch_fp32": drop_b0,
                                          "note": "E's accuracy vs B1 (the FP32 model on the same backend), in points"}}
        for k in ("speedup_vs_B2", "speedup_vs_B1"):
            if k in targets:
                v = t[k]["value"]
                t[k].update(target=targets[k], met=None if v is None else wins(t[k]["ci95"], targets[k]))
        if "max_accuracy_drop_pt" in targets:
            limit = targets["max_accuracy_drop_pt"]
            t["accuracy_drop_vs_fp32_pt"].update(target=limit, met=None if drop_b1 is None else bool(drop_b1 <= limit + 1e-9))
        if "B2u" in e["ratios"]:
            t["speedup_vs_B2u"] = {**speed("B2u"), "note": "B2u is not a default setting"}
        int8_rows = [r for r in (b2, by.get(("B2u", backend)), e) if r is not None and r["precision"] == "int8"]
        t["int8_faster_than_fp32"] = {r["name"]: {"speedup_vs_B1": r["ratios"].get("B1", {}).get("speedup_p50_b1"),
                                                  "ci95": r["ratios"].get("B1", {}).get("speedup_p50_b1_ci95"),
                                                  "verdict": r["ratios"].get("B1", {}).get("verdict"),
                                                  "met": wins(r["ratios"].get("B1", {}).get("speedup_p50_b1_ci95"))} for r in int8_rows}
        out[backend] = t
    return out


# ---------------------------------------------------------------- into a run's results.json

def results_section(rows: list[dict], note: str = "", title: str = "Baselines: the standard tools vs edgekit"):
    """The results.json `baselines` section (edgekit.results.Baselines) for timed rows with ratios."""
    from edgekit.results import Baselines, baseline_row

    out = []
    for r in rows:
        lat, thr = _by_batch(r["latency_ms"]), _by_batch(r["throughput"])
        speedups = {ref: r["ratios"][ref]["speedup_p50_b1"] if ref in r["ratios"] else None for ref in REFERENCES}
        out.append(baseline_row(r["name"], r["backend"], r["precision"], r["metrics"], lat[1], thr[8], r["size_bytes"], speedups))
    return Baselines(title=title, note=note, rows=out)


def _by_batch(d: dict) -> dict:
    return {int(b): v for b, v in d.items()}  # batch sizes are str keys once written to JSON


def merge_into_run(run_dir: Path, section, render: bool = True) -> dict | None:
    """results.json gets (or replaces) its `baselines` section, under the run lock; then the report is re-rendered
    (returns write_report's paths) unless `render` is False."""
    from edgekit.results import load_results, save_results
    from edgekit.rundir import RunLock

    with RunLock(run_dir):
        res = load_results(run_dir / "results.json")
        res.baselines = section
        save_results(res, run_dir / "results.json")
        if render:
            from edgekit.report import write_report

            return write_report(run_dir)
    return None
