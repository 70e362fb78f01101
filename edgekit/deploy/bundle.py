"""What goes into a deploy bundle, and writing it: each variant's portable ONNX with its spec and graph facts, the
evaluation samples with host reference logits, the build and benchmark settings, and the agent package (stdlib +
numpy) that runs it on the device. A bundle is refreshed in place: files whose content did not change are left
alone, so a rerun uploads and rebuilds only what changed."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.agent import measure
from edgekit.agent.trt_plan import DEFAULT_OPTIONS
from edgekit.errors import EdgekitError, reading
from edgekit.evaluate import predict
from edgekit.io import atomic_write_npz, atomic_write_text, file_sha256
from edgekit.onnxgraph.info import graph_info, precision_of, spec_for_onnx
from edgekit.parity import MIN_TOP1, ort_predict
from edgekit.spec import ModelSpec

BUNDLE_FORMAT = "edgekit-bundle/1"
AGENT_PACKAGE = "edgekit_agent"
# The measurement core's latency protocol, plus how long the agent samples power.
DEFAULT_BENCH = {**measure.PROTOCOL, "power_seconds": measure.POWER_SECONDS}
DEFAULT_SAMPLES = 200


@dataclass
class VariantSource:
    name: str
    onnx: Path
    spec: ModelSpec
    precision: str
    graph: dict = field(default_factory=dict)


def variant_from_onnx(onnx_path, name: str | None = None) -> VariantSource:
    onnx_path = Path(onnx_path)
    with reading(onnx_path, "ONNX model", "re-export it (edgekit compress / edgekit export)"):
        g = graph_info(onnx_path)
    return VariantSource(name or (onnx_path.parent.name if onnx_path.stem == "model" else onnx_path.stem), onnx_path,
                         spec_for_onnx(onnx_path), precision_of(g), g)


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
    from edgekit.io import load_yaml

    for name in ("recipe.resolved.yaml", "recipe.yaml"):
        p = Path(run_dir) / name
        if not p.exists():
            continue
        doc = load_yaml(p, "resolved recipe") or {}
        if not isinstance(doc, dict):
            raise EdgekitError(f"{p} is not a YAML mapping", "rerun `edgekit compress` to rewrite it")
        targets = doc.get("targets") if isinstance(doc.get("targets"), list) else []
        found = next((t.get("options") or {} for t in targets if isinstance(t, dict) and t.get("backend") == "tensorrt"), None)
        if found is None and isinstance(doc.get("tensorrt"), dict):
            found = doc["tensorrt"].get("options") or doc["tensorrt"]
        if isinstance(found, dict):
            return {k: v for k, v in found.items() if k in DEFAULT_OPTIONS}
    return {}


def eval_samples(run_dir, spec: ModelSpec, n: int = DEFAULT_SAMPLES, samples_path=None):
    """The samples accuracy and parity are checked on: an ArrayDataset npz given or saved in the run
    (eval_samples.npz, the resolved test split), else the built-in dataset's test split for a model trained on it (older
    runs); None if neither."""
    from edgekit.data import ArrayDataset

    candidates = [Path(samples_path)] if samples_path else [Path(run_dir) / "eval_samples.npz"] if run_dir else []
    data = None
    for p in candidates:
        if p.exists():
            with reading(p, "sample set", "pass an ArrayDataset .npz, or rerun `edgekit compress` to rewrite the run's eval_samples.npz"):
                data = ArrayDataset.load(p)
            break
        if samples_path:
            raise EdgekitError(f"samples file {p} does not exist", "pass an ArrayDataset .npz (inputs by name + labels)")
    if data is None:  # a run from before compress wrote eval_samples.npz: the built-in dataset's test split, if any
        from edgekit.data.resolver import builtin_split

        data = builtin_split(spec, "test")
    if data is None or n <= 0:
        return None
    if set(spec.input_names) - set(data.inputs):
        raise EdgekitError(f"the sample set lacks inputs {sorted(set(spec.input_names) - set(data.inputs))} of the model",
                           "pass a sample set whose arrays are named like the model's inputs")
    idx = np.sort(np.random.default_rng(0).permutation(len(data))[: min(n, len(data))])
    sub = data.subset(idx)
    return type(sub)({k: sub.inputs[k] for k in spec.input_names}, sub.labels, sub.modalities)


def agent_files() -> dict[str, Path]:
    """Files of the agent package as they go into the bundle: edgekit/agent/*.py (the measurement core included)."""
    root = Path(__file__).resolve().parents[1] / "agent"
    files = {f"{AGENT_PACKAGE}/{p.name}": p for p in sorted(root.glob("*.py"))}
    if f"{AGENT_PACKAGE}/measure.py" not in files:
        raise EdgekitError("edgekit/agent/measure.py is missing from this installation", "reinstall edgekit")
    return files


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size and file_sha256(dst) == file_sha256(src):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:6]}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def _npz_key(path: Path) -> str | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["key"]) if "key" in z.files else None
    except (OSError, ValueError):
        return None


def _write_reference(out: Path, v: VariantSource, onnx_rel: str, onnx_sha: str, samples, samples_sha: str) -> str:
    """Host reference logits of one variant on the samples (ONNX Runtime CPU on the same ONNX), recomputed only
    when the ONNX or the samples changed. Returns the bundle-relative path."""
    ref_rel = f"variants/{v.name}/reference.npz"
    key = hashlib.sha256((onnx_sha + samples_sha).encode()).hexdigest()
    ref = out / ref_rel
    if not ref.exists() or _npz_key(ref) != key:
        foreign = sorted(set(v.spec.input_names) - set(samples.inputs))
        if foreign:
            raise EdgekitError(f"variant '{v.name}' ({v.onnx}) takes inputs {foreign} that the samples lack ({sorted(samples.inputs)}): "
                               "it is not a model of this run", "put the variant's own exported model.onnx back (rerun `edgekit compress`)")
        with reading(v.onnx, "ONNX model", "re-export it (edgekit compress / edgekit export)"):
            logits = predict(ort_predict(out / onnx_rel, v.spec.output_names[0]), samples, 64)
        atomic_write_npz(ref, logits=logits.astype(np.float32), key=np.array(key))
    return ref_rel


def make_bundle(out_dir, variants: list[VariantSource], samples=None, build: dict | None = None, bench: dict | None = None,
                default_variant: str | None = None) -> dict:
    """Write (or refresh) a bundle folder; files whose content did not change are left alone. Returns the manifest."""
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
            entry["reference"] = _write_reference(out, v, onnx_rel, entry["sha256"], samples, manifest["samples"]["sha256"])
            entry["reference_source"] = "onnxruntime CPU on the same ONNX (host)"
        manifest["variants"].append(entry)
    agent = agent_files()
    for rel, src in agent.items():
        _copy_if_changed(src, out / rel)
    for stale in (out / AGENT_PACKAGE).glob("*.py"):  # e.g. latency.py, which bundles carried before measure.py
        if f"{AGENT_PACKAGE}/{stale.name}" not in agent:
            stale.unlink()
    manifest["files"] = {str(p.relative_to(out)): file_sha256(p) for p in sorted(out.rglob("*"))
                         if p.is_file() and p.name != "manifest.json" and not p.name.startswith(".") and "engines" not in p.parts}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
