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

import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit.deploy.agent_results import print_summary
from edgekit.deploy.bundle import (
    DEFAULT_SAMPLES,
    VariantSource,
    build_options,
    eval_samples,
    make_bundle,
    variant_from_onnx,
    variants_in_run,
)
from edgekit.deploy.remote import TargetRun, raise_failures, run_targets
from edgekit.errors import EdgekitError
from edgekit.guard import refuse_overwrite
from edgekit.io import load_json
from edgekit.ssh import Target

__all__ = ["deploy", "bench_remote", "print_summary", "raise_failures"]
RUNTIMES = ("auto", "tensorrt", "onnxruntime")


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


def _same_inputs(sources) -> None:
    """Every variant of a run is a compression of one model, so they all take the reference's inputs (or, without
    one, those most of them take); a variant that does not (a foreign ONNX dropped into variants/) is named."""
    from collections import Counter

    from edgekit.recipe import REFERENCE_VARIANT

    names = [tuple(v.spec.input_names) for v in sources]
    ref = [n for v, n in zip(sources, names) if v.name == REFERENCE_VARIANT]
    usual = ref[0] if ref else Counter(names).most_common(1)[0][0]
    odd = [v for v, n in zip(sources, names) if n != usual]
    if odd:
        v = odd[0]
        raise EdgekitError(f"variant '{v.name}' ({v.onnx}) takes the inputs {list(v.spec.input_names)}, not the run's {list(usual)}",
                           "remove that folder from the run's variants/ (it is not a compression of the run's model) or pick variants with --variant")


def deploy(run_dir, targets: list[str], runtime: str = "auto", accept_new_host: bool = False, identity=None,
           known_hosts=None, samples: int = DEFAULT_SAMPLES, samples_path=None, bench: dict | None = None,
           build: dict | None = None, variants: list[str] | None = None, on_event=None, check: bool = True) -> list[dict]:
    """Build, check and benchmark every variant of a run on each target; results into RUN_DIR (see module doc)."""
    _check_runtime(runtime)
    parsed = _parse_targets(targets)
    run_dir = Path(run_dir)
    refuse_overwrite([run_dir / "bundle", run_dir / "targets"], [identity, known_hosts, samples_path], "deploy's output")
    sources = _chosen_variants(run_dir, variants)
    _same_inputs(sources)
    data = eval_samples(run_dir, sources[0].spec, samples, samples_path)
    recommended = _recommended(run_dir)
    bundle = run_dir / "bundle"
    make_bundle(bundle, sources, data, {**build_options(run_dir), **(build or {})}, bench,
                recommended if recommended in {v.name for v in sources} else None)

    def copy_to(name: str, slug: str) -> Path:
        return run_dir / "variants" / name / f"bench-{slug}.json"

    connect = _Reach(known_hosts, accept_new_host, identity)
    names = [v.name for v in sources]
    runs = [connect.run(t, bundle, names, run_dir / "targets" / t.slug, "deploy", runtime, copy_to, on_event)
            for t in parsed]
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
    home = onnx.parent
    refuse_overwrite([home / "targets", *(home / f"bench-{t.slug}.json" for t in parsed)], [onnx, identity, known_hosts], "the benchmark's output")
    source = variant_from_onnx(onnx)
    with tempfile.TemporaryDirectory(prefix="edgekit-bundle-") as tmp:
        make_bundle(Path(tmp), [source], None, build, bench)

        def copy_to(name: str, slug: str) -> Path:
            return home / f"bench-{slug}.json"

        connect = _Reach(known_hosts, accept_new_host, identity)
        runs = [connect.run(t, Path(tmp), [source.name], home / "targets" / t.slug, "bench", runtime, copy_to, on_event)
                for t in parsed]
        return run_targets(runs, check)


def _chosen_variants(run_dir: Path, names: list[str] | None) -> list[VariantSource]:
    sources = variants_in_run(run_dir)
    if not names:
        return sources
    unknown = sorted(set(names) - {v.name for v in sources})
    if unknown:
        raise EdgekitError(f"variants {unknown} are not in {run_dir}", f"choose from {[v.name for v in sources]}")
    return [v for v in sources if v.name in names]


def _recommended(run_dir: Path) -> str | None:
    """The variant the run's report recommends (the bundle's default for edgekit.runtime), if there is a report."""
    if (run_dir / "results.json").exists():
        try:
            return load_json(run_dir / "results.json", "results file").get("recommended")
        except (EdgekitError, AttributeError):  # a broken results.json is reported by `edgekit report`
            pass
    return None


@dataclass
class _Reach:
    """How to reach every target of one command (the same keys and host-key policy for all)."""

    known_hosts: object = None
    accept_new_host: bool = False
    identity: object = None

    def run(self, target: Target, bundle: Path, variants: list[str], results_dir: Path, mode: str, runtime: str,
            copy_to, on_event) -> TargetRun:
        return TargetRun(target, bundle, variants, results_dir, mode, runtime,
                         Path(self.known_hosts) if self.known_hosts else None, self.accept_new_host,
                         Path(self.identity) if self.identity else None, copy_to, on_event)
