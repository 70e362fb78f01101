"""`edgekit deploy RUN_DIR --target ssh://...`: pack a bundle, run the agent on each device, bring results back.

A bundle (RUN_DIR/bundle/) is self-contained: each variant's portable ONNX, a manifest (spec, preprocessing,
hashes, build and benchmark settings), an evaluation sample set with reference logits, and the agent package
(stdlib + numpy). The device builds its own TensorRT engines, because engines are specific to the GPU and the
TensorRT version; they come back with the results.

Per target, results land in RUN_DIR/targets/<slug>/ (results.json, fingerprint.json, <variant>.json,
<variant>.layers.json, engines/, agent.log) and in RUN_DIR/variants/<name>/bench-<slug>.json. Each variant is
fetched as soon as the device finishes it, so a dropped connection keeps what was done and a rerun of the same
command only runs what is missing (or what changed: ONNX, settings, samples, TensorRT/L4T/power mode)."""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.backends.remote import Connection, Target
from edgekit.errors import EdgekitError
from edgekit.io import atomic_write_json, atomic_write_text, file_sha256
from edgekit.spec import ModelSpec
from edgekit.ui import console

BUNDLE_FORMAT = "edgekit-bundle/1"
AGENT_PACKAGE = "edgekit_agent"
RUNTIMES = ("auto", "tensorrt", "onnxruntime")
# edgekit bench's protocol (edgekit/bench.py defaults), plus how long to sample power
DEFAULT_BENCH = {"batch_sizes": [1, 8], "warmup": 10, "warmup_seconds": 0.5, "iterations": None, "min_seconds": 2.0,
                 "max_seconds": 60.0, "power_seconds": 5.0}
DEFAULT_SAMPLES = 200
REMOTE_BASE = "~/.cache/edgekit"
MIN_FREE_BYTES = 64 << 20

# Run by the device's Python before anything is copied: finds a missing Python, numpy or runtime, and a full
# disk, with nothing but the standard library (and syntax old Pythons can still parse, to say they are too old).
PREFLIGHT = r"""
import json, os, platform, shutil, subprocess, sys
out = {"python": platform.python_version(), "executable": sys.executable}
try:
    import numpy
    out["numpy"] = numpy.__version__
except Exception as e:
    out["numpy_error"] = "%s: %s" % (type(e).__name__, e)
for mod in ("tensorrt", "onnxruntime"):
    try:
        out[mod] = __import__(mod).__version__
    except Exception as e:
        out[mod + "_error"] = "%s: %s" % (type(e).__name__, e)
base = os.path.abspath(os.path.expanduser(sys.argv[1]))
try:
    os.makedirs(base, exist_ok=True)
    out["base"] = base
    out["disk_free"] = shutil.disk_usage(base).free
except OSError as e:
    out["base_error"] = "%s: %s" % (base, e)
try:
    out["l4t"] = open("/etc/nv_tegra_release").readline().strip()
except OSError:
    out["l4t"] = None
try:
    out["power_mode"] = subprocess.run(["nvpmodel", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=10).stdout.strip()
except Exception:
    out["power_mode"] = None
print(json.dumps(out))
"""


# ---- what goes into a bundle -----------------------------------------------------------------------------

@dataclass
class VariantSource:
    name: str
    onnx: Path
    spec: ModelSpec
    precision: str
    graph: dict = field(default_factory=dict)


def graph_info(onnx_path) -> dict:
    """Whether the ONNX carries its own precision: Q/DQ nodes (INT8) and float16 tensors (FP16)."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute) for n in proto.graph.node)
    return {"qdq": qdq, "float16": fp16}


def variant_from_onnx(onnx_path, name: str | None = None) -> VariantSource:
    from edgekit.export import spec_for_onnx

    onnx_path = Path(onnx_path)
    g = graph_info(onnx_path)
    return VariantSource(name or (onnx_path.parent.name if onnx_path.stem == "model" else onnx_path.stem), onnx_path,
                         spec_for_onnx(onnx_path), "int8" if g["qdq"] else ("fp16" if g["float16"] else "fp32"), g)


def variants_in_run(run_dir) -> list[VariantSource]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EdgekitError(f"run directory {run_dir} does not exist", "pass the folder written by `edgekit compress` or `edgekit run`")
    found = sorted((run_dir / "variants").glob("*/model.onnx"))
    if not found:
        raise EdgekitError(f"{run_dir} has no variants/*/model.onnx", "run `edgekit compress` first; deploy ships the exported ONNX of each variant")
    return [variant_from_onnx(p) for p in found]


def build_options(run_dir) -> dict:
    """TensorRT build options from the run's resolved recipe: the `options` of its first `backend: tensorrt` target
    (or a `tensorrt:` mapping at the top level), else none (the agent's defaults)."""
    from edgekit.agent.trt import DEFAULT_OPTIONS

    import yaml

    for name in ("recipe.resolved.yaml", "recipe.yaml"):
        p = Path(run_dir) / name
        if not p.exists():
            continue
        doc = yaml.safe_load(p.read_text()) or {}
        targets = doc.get("targets") if isinstance(doc.get("targets"), list) else []
        found = next((t.get("options") or {} for t in targets if isinstance(t, dict) and t.get("backend") == "tensorrt"), None)
        if found is None and isinstance(doc.get("tensorrt"), dict):
            found = doc["tensorrt"].get("options") or doc["tensorrt"]
        if isinstance(found, dict):
            return {k: v for k, v in found.items() if k in DEFAULT_OPTIONS}
    return {}


def eval_samples(run_dir, spec: ModelSpec, n: int = DEFAULT_SAMPLES, samples_path=None):
    """The samples accuracy and parity are checked on: an ArrayDataset npz given or saved in the run
    (eval_samples.npz), else the test split of the dataset named by the spec's preprocessing; None if neither."""
    from edgekit.data import ArrayDataset

    candidates = [Path(samples_path)] if samples_path else [Path(run_dir) / "eval_samples.npz"] if run_dir else []
    data = None
    for p in candidates:
        if p.exists():
            data = ArrayDataset.load(p)
            break
        if samples_path:
            raise EdgekitError(f"samples file {p} does not exist", "pass an ArrayDataset .npz (inputs by name + labels)")
    pre = spec.preprocessing or {}
    if data is None and pre.get("dataset") == "avdigits":
        from edgekit.data import avdigits

        source = str(pre.get("source", ""))
        fsdd = source[5:].rsplit(":", 1)[0] if source.startswith("fsdd:") else None
        if fsdd and not Path(fsdd).is_dir():
            return None
        data = avdigits.load("test", fsdd, pre.get("seed", 0))
    if data is None or n <= 0:
        return None
    if set(spec.input_names) - set(data.inputs):
        raise EdgekitError(f"the sample set lacks inputs {sorted(set(spec.input_names) - set(data.inputs))} of the model",
                           "pass a sample set whose arrays are named like the model's inputs")
    idx = np.sort(np.random.default_rng(0).permutation(len(data))[: min(n, len(data))])
    sub = data.subset(idx)
    return type(sub)({k: sub.inputs[k] for k in spec.input_names}, sub.labels, sub.modalities)


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size and file_sha256(dst) == file_sha256(src):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:6]}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def agent_files() -> dict[str, Path]:
    """Files of the agent package as they go into the bundle: edgekit/agent/*.py plus edgekit/latency.py."""
    import edgekit

    root = Path(edgekit.__file__).parent
    files = {f"{AGENT_PACKAGE}/{p.name}": p for p in sorted((root / "agent").glob("*.py"))}
    latency = root / "latency.py"
    if not latency.exists():
        raise EdgekitError("edgekit/latency.py is missing from this installation", "reinstall edgekit")
    files[f"{AGENT_PACKAGE}/latency.py"] = latency
    return files


def make_bundle(out_dir, variants: list[VariantSource], samples=None, build: dict | None = None, bench: dict | None = None,
                default_variant: str | None = None) -> dict:
    """Write (or refresh) a bundle folder; files whose content did not change are left alone. Returns the manifest."""
    from edgekit.agent.trt import DEFAULT_OPTIONS
    from edgekit.export import MIN_TOP1, ort_predict

    out = Path(out_dir)
    build_opts = {**DEFAULT_OPTIONS, **(build or {}), "precision": None}
    bench_opts = {**DEFAULT_BENCH, **(bench or {})}
    max_batch = {**DEFAULT_OPTIONS["batch"], **(build_opts.get("batch") or {})}["max"]
    if max(bench_opts["batch_sizes"]) > max_batch:
        raise EdgekitError(f"benchmark batch {max(bench_opts['batch_sizes'])} is larger than the TensorRT profile's max batch {max_batch}",
                           "benchmark smaller batches, or raise tensorrt.batch.max in the recipe")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": BUNDLE_FORMAT, "edgekit_version": __import__("edgekit").__version__, "created": time.time(),
                "build": build_opts, "bench": bench_opts, "parity_min_top1": dict(MIN_TOP1),
                "default_variant": default_variant or variants[0].name, "variants": [], "samples": None, "files": {}}
    if samples is not None:
        samples.save(out / "samples.npz")
        manifest["samples"] = {"file": "samples.npz", "n": len(samples), "sha256": file_sha256(out / "samples.npz")}
    for v in variants:
        onnx_rel = f"variants/{v.name}/model.onnx"
        _copy_if_changed(v.onnx, out / onnx_rel)
        entry = {"name": v.name, "onnx": onnx_rel, "sha256": file_sha256(out / onnx_rel), "precision": v.precision,
                 "graph": v.graph, "spec": v.spec.model_dump(), "reference": None}
        if samples is not None:
            ref_rel = f"variants/{v.name}/reference.npz"
            key = hashlib.sha256((entry["sha256"] + manifest["samples"]["sha256"]).encode()).hexdigest()
            ref = out / ref_rel
            if not ref.exists() or _npz_key(ref) != key:
                from edgekit.evaluate import predict
                from edgekit.io import atomic_write_npz

                logits = predict(ort_predict(out / onnx_rel, v.spec.output_names[0]), samples, 64)
                atomic_write_npz(ref, logits=logits.astype(np.float32), key=np.array(key))
            entry["reference"] = ref_rel
            entry["reference_source"] = "onnxruntime CPU on the same ONNX (host)"
        manifest["variants"].append(entry)
    for rel, src in agent_files().items():
        _copy_if_changed(src, out / rel)
    manifest["files"] = {str(p.relative_to(out)): file_sha256(p) for p in sorted(out.rglob("*"))
                         if p.is_file() and p.name != "manifest.json" and not p.name.startswith(".") and "engines" not in p.parts}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _npz_key(path: Path) -> str | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["key"]) if "key" in z.files else None
    except (OSError, ValueError):
        return None


# ---- one target --------------------------------------------------------------------------------------------

@dataclass
class TargetRun:
    """Everything about running one bundle on one device: where results go and how to reach it."""

    target: Target
    bundle: Path
    variants: list[str]
    results_dir: Path
    mode: str = "deploy"
    runtime: str = "auto"
    known_hosts: Path | None = None
    accept_new_host: bool = False
    identity: Path | None = None
    copy_result_to: object = None  # callable(variant, slug) -> Path | None
    on_event: object = None  # callable(slug, event dict)
    summary: dict = field(default_factory=dict)

    def say(self, text: str) -> None:
        console.print(f"[bold]{self.target.slug}[/]: {text}", highlight=False, soft_wrap=True)

    def event(self, ev: dict) -> None:
        if self.on_event:
            self.on_event(self.target.slug, ev)


def _preflight(conn: Connection, run: TargetRun, bundle_bytes: int) -> dict:
    t = run.target
    code, out, err = conn.run([t.python, "-c", PREFLIGHT, t.workdir or REMOTE_BASE], timeout=120)
    if code == 127 or "not found" in err or "No such file" in err:
        raise EdgekitError(f"no Python at '{t.python}' on {t.address}",
                           "install it (sudo apt install python3 python3-numpy) or name it: ssh://...?python=/usr/bin/python3")
    try:
        info = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        first = (err.strip().splitlines() or ["no output"])[-1]
        raise EdgekitError(f"'{t.python}' on {t.address} could not run the preflight check ({first[:200]})",
                           "edgekit's agent needs Python 3.8+ (JetPack 6 has 3.10); point ?python= at it") from None
    if tuple(int(x) for x in info["python"].split(".")[:2]) < (3, 8):
        raise EdgekitError(f"Python {info['python']} on {t.address} is too old", "the agent needs Python 3.8+; point ?python= at a newer one")
    if "numpy" not in info:
        raise EdgekitError(f"the device's Python ({t.python}, {info['python']}) has no numpy: {info.get('numpy_error', '')}",
                           "install it on the device: sudo apt install python3-numpy (or pip install numpy)")
    has_trt, has_ort = "tensorrt" in info, "onnxruntime" in info
    if run.runtime == "tensorrt" and not has_trt:
        raise EdgekitError(f"TensorRT's Python bindings are not importable on {t.address} ({info.get('tensorrt_error', '')})",
                           "on a Jetson install JetPack's python3-libnvinfer; or use the ONNX Runtime fallback with --runtime onnxruntime")
    if run.runtime == "onnxruntime" and not has_ort:
        raise EdgekitError(f"ONNX Runtime is not importable on {t.address} ({info.get('onnxruntime_error', '')})",
                           "install it on the device (pip install onnxruntime) or use --runtime tensorrt")
    if run.runtime == "auto" and not (has_trt or has_ort):
        raise EdgekitError(f"neither TensorRT nor ONNX Runtime is importable by {t.python} on {t.address}",
                           "install JetPack's python3-libnvinfer (TensorRT) or pip install onnxruntime on the device")
    if "base_error" in info:
        raise EdgekitError(f"cannot use the remote folder {info['base_error']}", "pass a writable folder with ?workdir=/path")
    need = 3 * bundle_bytes + MIN_FREE_BYTES  # the bundle, engines of a similar size, results and logs
    if info["disk_free"] < need:
        raise EdgekitError(f"the device's disk is full: {info['disk_free'] >> 20} MiB free in {info['base']}, need about {need >> 20} MiB",
                           "free space on the device, or use another disk with ?workdir=/path")
    info["runtime"] = run.runtime if run.runtime != "auto" else ("tensorrt" if has_trt else "onnxruntime")
    return info


def _resume_key(manifest: dict, entry: dict, run: TargetRun, device: dict) -> str:
    ident = {"onnx": entry["sha256"], "mode": run.mode, "runtime": device["runtime"], "build": manifest["build"],
             "bench": manifest["bench"], "samples": (manifest.get("samples") or {}).get("sha256"),
             "device": {k: device.get(k) for k in ("l4t", "tensorrt", "onnxruntime", "power_mode", "python")}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _done_locally(path: Path, key: str) -> bool:
    try:
        return json.loads(path.read_text()).get("resume_key") == key
    except (OSError, ValueError):
        return False


def run_target(run: TargetRun) -> dict:
    """Connect, preflight, upload what is needed, run the agent, fetch each result as it finishes, clean up.
    Returns a summary; raises EdgekitError (after saving whatever finished) when something failed."""
    t = run.target
    out = run.results_dir
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((run.bundle / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["variants"]}
    summary = run.summary
    summary.update(target=t.url, slug=t.slug, results_dir=str(out), status="running", variants={}, skipped=[], errors={})
    needed = [rel for rel in manifest["files"] if not rel.startswith("variants/")]
    with Connection(t, run.known_hosts, run.accept_new_host, run.identity) as conn:
        run.say(f"connected to {t.address}")
        bundle_bytes = sum((run.bundle / rel).stat().st_size for rel in manifest["files"])
        device = _preflight(conn, run, bundle_bytes)
        summary["device"] = device
        todo = []
        for name in run.variants:
            key = _resume_key(manifest, entries[name], run, device)
            entries[name]["_key"] = key
            if _done_locally(out / f"{name}.json", key):
                summary["skipped"].append(name)
                summary["variants"][name] = json.loads((out / f"{name}.json").read_text())
            else:
                todo.append(name)
        if summary["skipped"]:
            run.say(f"{len(summary['skipped'])} variant(s) already done here, skipped: {', '.join(summary['skipped'])}")
        if not todo:
            summary["status"] = "ok"
            _write_summary(run, manifest)
            return summary
        base = device["base"]
        remote = f"{base}/runs/{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        summary["remote_dir"] = remote
        for name in todo:
            e = entries[name]
            needed += [e["onnx"]] + ([e["reference"]] if e.get("reference") else [])
        for rel in sorted(set(needed)):
            conn.makedirs(f"{remote}/{rel}".rsplit("/", 1)[0])
            conn.put(run.bundle / rel, f"{remote}/{rel}")
        conn.put(run.bundle / "manifest.json", f"{remote}/manifest.json")
        run.say(f"bundle copied to {remote}; running {len(todo)} variant(s) with {device['runtime']}")
        argv = [t.python, "-B", "-m", AGENT_PACKAGE, "run", "--out", "results", "--runtime", device["runtime"],
                "--cache", f"{base}/engines", "--only", ",".join(todo), "--mode", run.mode]
        state = {"done": False, "fatal": None}

        def on_line(line: str) -> None:
            if not line.startswith("{"):
                return
            try:
                ev = json.loads(line)
            except ValueError:
                return
            kind = ev.get("event")
            if kind == "fingerprint":
                conn.get(f"{remote}/results/fingerprint.json", out / "fingerprint.json")
            elif kind == "variant_start":
                run.say(f"{ev['variant']}: started")
            elif kind == "variant_done":
                _fetch_variant(conn, run, remote, ev, entries[ev["variant"]]["_key"], manifest)
                r = summary["variants"][ev["variant"]]
                run.say(f"{ev['variant']}: done ({_one_line(r)})")
            elif kind == "variant_error":
                lines = ev.get("key_lines") or []
                msg = ev["message"] + (": " + " | ".join(lines[-3:]) if lines and ev["kind"] == "build" else "")
                summary["errors"][ev["variant"]] = {"kind": ev["kind"], "message": msg, "hint": ev.get("hint", ""), "key_lines": lines}
                run.say(f"[red]{ev['variant']}: failed[/] ({ev['kind']}): {msg}")
            elif kind == "fatal":
                state["fatal"] = ev
            elif kind == "done":
                state["done"] = True
            run.event(ev)

        with open(out / "agent.log", "a") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {remote}\n")
            code = conn.stream(argv, on_line, cwd=remote, stderr_to=log)
        if code is None or (not state["done"] and not state["fatal"] and code not in (0, 1)):
            finished = len(summary["variants"])
            summary["status"] = "failed"
            _write_summary(run, manifest)
            tail = _log_tail(out / "agent.log")
            why = "the connection dropped" if code is None else f"the agent exited with code {code}" + (f" ({tail})" if tail else "")
            raise EdgekitError(f"{t.address}: {why} during the run; {finished} of {len(run.variants)} variant(s) saved in {out}",
                               f"rerun the same command to resume; the device keeps {remote} for inspection")
        if state["fatal"]:
            f = state["fatal"]
            summary["status"] = "failed"
            _write_summary(run, manifest)
            raise EdgekitError(f"{t.address}: {f['kind'].replace('_', ' ')}: {f['message']}", f.get("hint", "") + f"; the device keeps {remote}")
        if summary["errors"]:
            summary["status"] = "failed"
            summary["remote_dir_kept"] = remote
            _write_summary(run, manifest)
            name, err = next(iter(summary["errors"].items()))
            what = {"build": f"engine build failed for variant {name}", "plan": f"variant {name} cannot be built with this TensorRT",
                    "runtime_missing": f"the runtime for variant {name} is missing"}.get(err["kind"], f"variant {name} failed on the device")
            more = f" (and {len(summary['errors']) - 1} more)" if len(summary["errors"]) > 1 else ""
            raise EdgekitError(f"{t.address}: {what}{more}: {err['message']}",
                               (err["hint"] + "; " if err["hint"] else "") + f"the device keeps {remote} for inspection")
        if remote.startswith(f"{base}/runs/"):  # never anything but the folder this run created
            conn.run(["rm", "-rf", "--", remote], timeout=120)
        summary["status"] = "ok"
        _write_summary(run, manifest)
        return summary


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("---")]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _fetch_variant(conn: Connection, run: TargetRun, remote: str, ev: dict, key: str, manifest: dict) -> None:
    name, out = ev["variant"], run.results_dir
    if ev.get("engine"):
        conn.get(f"{remote}/{ev['engine']}", out / "engines" / f"{name}.engine")
    if ev.get("layers"):
        conn.get(f"{remote}/results/{ev['layers']}", out / f"{name}.layers.json")
    tmp = out / f".{name}.remote.json"
    conn.get(f"{remote}/results/{ev['file']}", tmp)
    raw = json.loads(tmp.read_text())
    tmp.unlink()
    raw.update(resume_key=key, target=run.target.url, result=to_result(raw, run.target.url))
    if "engine" in raw:
        raw["engine"]["local_file"] = str(out / "engines" / f"{name}.engine")
    atomic_write_json(out / f"{name}.json", raw)  # written last: its resume_key marks the variant complete
    dest = run.copy_result_to(name, run.target.slug) if run.copy_result_to else None
    if dest is not None:
        atomic_write_json(dest, raw)
    run.summary["variants"][name] = raw
    _write_summary(run, manifest)


def _write_summary(run: TargetRun, manifest: dict) -> None:
    s = run.summary
    fp = run.results_dir / "fingerprint.json"
    atomic_write_json(run.results_dir / "results.json", {
        "target": s.get("target"), "status": s.get("status"), "mode": run.mode, "runtime": (s.get("device") or {}).get("runtime"),
        "fingerprint": json.loads(fp.read_text()) if fp.exists() else None, "preflight": s.get("device"),
        "variants": s.get("variants", {}), "errors": s.get("errors", {}),
        "complete": all(v in s.get("variants", {}) for v in run.variants), "bench_protocol": manifest.get("bench")})


_LAT_KEYS = ("median", "p90", "p99", "mean", "std", "cv", "min", "max", "n", "high_variance")
_MS_KEYS = ("median", "p90", "p99", "mean", "std", "min", "max")


def to_result(raw: dict, target: str) -> dict:
    """The agent's record of one variant in edgekit-results/1 shape (SI units: seconds, watts, joules)."""
    lat, thr = {}, {}
    for b, entry in (raw.get("batches") or {}).items():
        ms = entry["latency_ms"]
        lat[int(b)] = {k: (ms[k] / 1000.0 if k in _MS_KEYS else ms[k]) for k in _LAT_KEYS if k in ms}
        thr[int(b)] = entry.get("throughput_per_s")
    power = raw.get("power") or {}
    acc, par = raw.get("accuracy"), raw.get("parity")
    return {"variant": raw["variant"], "target": target, "status": "ok", "precision": raw.get("precision"),
            "metrics": {k: acc[k] for k in ("n", "accuracy", "f1_macro") if k in acc} if acc else None,
            "parity": {k: par[k] for k in ("top1_agreement", "max_abs_diff", "mean_abs_diff", "n") if k in par} if par else None,
            "latency": lat, "throughput": thr, "build_seconds": (raw.get("engine") or {}).get("build_seconds"),
            "artifact_size_bytes": (raw.get("engine") or {}).get("bytes"),
            "power": {"avg_watts": power.get("average_power_w"),
                      "energy_per_inference_j": power["energy_per_inference_mj"] / 1000.0 if power.get("energy_per_inference_mj") is not None else None}
            if power.get("available") else None}


def _one_line(r: dict) -> str:
    parts = []
    if r.get("accuracy"):
        parts.append(f"accuracy {r['accuracy']['accuracy']:.3f}")
    if r.get("parity"):
        parts.append(f"top-1 agreement {r['parity']['top1_agreement']:.3f}")
    first = next(iter((r.get("batches") or {}).values()), None)
    if first:
        parts.append(f"batch {first['batch']} median {first['latency_ms']['median']:.3f} ms")
    if (r.get("power") or {}).get("available"):
        parts.append(f"{r['power']['average_power_w']:.2f} W")
    return ", ".join(parts) or "no measurements"


# ---- several targets ---------------------------------------------------------------------------------------

def run_targets(runs: list[TargetRun], check: bool = True) -> list[dict]:
    """Run several targets at once (one thread and one SSH connection each); every target's results are saved
    whatever the others do. With check, a failure is raised after all have finished."""

    def one(run: TargetRun) -> dict:
        try:
            return run_target(run)
        except EdgekitError as e:
            run.summary.update(status="failed", reason=e.message, hint=e.hint)
            if len(runs) > 1:  # a single target's error is printed once, by the caller
                run.say(f"[red]failed:[/] {e.message}")
            return run.summary

    if len(runs) == 1:
        summaries = [one(runs[0])]
    else:
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            summaries = list(pool.map(one, runs))
    if check:
        raise_failures(summaries)
    return summaries


def raise_failures(summaries: list[dict]) -> None:
    failed = [s for s in summaries if s.get("status") != "ok"]
    if len(failed) == 1:
        raise EdgekitError(failed[0].get("reason", "failed"), failed[0].get("hint", ""))
    if failed:
        raise EdgekitError(f"{len(failed)} of {len(summaries)} targets failed: " + "; ".join(f"{s['slug']}: {s.get('reason')}" for s in failed),
                           failed[0].get("hint", ""))


def print_summary(summaries: list[dict]) -> None:
    """One table per target: accuracy, parity, latency, power of each variant."""
    from rich.table import Table

    for s in summaries:
        if not s.get("variants"):
            continue
        t = Table("variant", "runtime", "accuracy", "top-1 agree", "median ms (batch)", "p90 ms", "power W", "mJ/inference",
                  title=f"{s['slug']}: {s.get('status')}  ({s['results_dir']})")
        for name, r in sorted(s["variants"].items()):
            b = next(iter((r.get("batches") or {}).values()), None)
            pw = r.get("power") or {}
            t.add_row(name, (r.get("runtime") or {}).get("runtime", ""),
                      f"{r['accuracy']['accuracy']:.4f}" if r.get("accuracy") else "-",
                      f"{r['parity']['top1_agreement']:.3f}" if r.get("parity") else "-",
                      f"{b['latency_ms']['median']:.3f} ({b['batch']})" if b else "-", f"{b['latency_ms']['p90']:.3f}" if b else "-",
                      f"{pw['average_power_w']:.2f}" if pw.get("available") else "-",
                      f"{pw['energy_per_inference_mj']:.3f}" if pw.get("energy_per_inference_mj") is not None else "-")
        console.print(t)


def _parse_targets(targets) -> list[Target]:
    if not targets:
        raise EdgekitError("no --target given", "name the device: --target ssh://user@host[:port]")
    parsed = [Target.parse(t) for t in targets]
    slugs = [t.slug for t in parsed]
    if len(set(slugs)) != len(slugs):
        raise EdgekitError(f"the same device is named twice: {slugs}", "give each --target once")
    return parsed


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise EdgekitError(f"unknown runtime '{runtime}'", f"choose one of {', '.join(RUNTIMES)}")


def deploy(run_dir, targets: list[str], runtime: str = "auto", accept_new_host: bool = False, identity=None,
           known_hosts=None, samples: int = DEFAULT_SAMPLES, samples_path=None, bench: dict | None = None,
           build: dict | None = None, variants: list[str] | None = None, on_event=None, check: bool = True) -> list[dict]:
    """Build, check and benchmark every variant of a run on each target; results into RUN_DIR (see module doc)."""
    _check_runtime(runtime)
    parsed = _parse_targets(targets)
    run_dir = Path(run_dir)
    sources = variants_in_run(run_dir)
    if variants:
        unknown = sorted(set(variants) - {v.name for v in sources})
        if unknown:
            raise EdgekitError(f"variants {unknown} are not in {run_dir}", f"choose from {[v.name for v in sources]}")
        sources = [v for v in sources if v.name in variants]
    data = eval_samples(run_dir, sources[0].spec, samples, samples_path)
    recommended = None
    if (run_dir / "results.json").exists():
        try:
            recommended = json.loads((run_dir / "results.json").read_text()).get("recommended")
        except ValueError:
            pass
    bundle = run_dir / "bundle"
    make_bundle(bundle, sources, data, {**build_options(run_dir), **(build or {})}, bench,
                recommended if recommended in {v.name for v in sources} else None)

    def copy_to(name: str, slug: str) -> Path:
        return run_dir / "variants" / name / f"bench-{slug}.json"

    runs = [TargetRun(t, bundle, [v.name for v in sources], run_dir / "targets" / t.slug, "deploy", runtime,
                      Path(known_hosts) if known_hosts else None, accept_new_host, Path(identity) if identity else None,
                      copy_to, on_event) for t in parsed]
    return run_targets(runs, check)


def bench_remote(artifact, targets: list[str], runtime: str = "auto", accept_new_host: bool = False, identity=None,
                 known_hosts=None, bench: dict | None = None, build: dict | None = None, on_event=None, check: bool = True) -> list[dict]:
    """Benchmark one ONNX model on each target (engine built there); writes <dir>/bench-<slug>.json beside it."""
    _check_runtime(runtime)
    parsed = _parse_targets(targets)
    p = Path(artifact)
    onnx = p / "model.onnx" if p.is_dir() else p
    if not onnx.exists() or onnx.suffix != ".onnx":
        raise EdgekitError(f"{artifact} is not an ONNX file or a folder holding model.onnx",
                           "remote benchmarks start from the portable ONNX (engines are built on the device)")
    source = variant_from_onnx(onnx)
    home = onnx.parent
    with tempfile.TemporaryDirectory(prefix="edgekit-bundle-") as tmp:
        make_bundle(Path(tmp), [source], None, build, bench)

        def copy_to(name: str, slug: str) -> Path:
            return home / f"bench-{slug}.json"

        runs = [TargetRun(t, Path(tmp), [source.name], home / "targets" / t.slug, "bench", runtime,
                          Path(known_hosts) if known_hosts else None, accept_new_host, Path(identity) if identity else None,
                          copy_to, on_event) for t in parsed]
        return run_targets(runs, check)
