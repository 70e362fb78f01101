"""results.json: everything a run measured, in one versioned file (schema "edgekit-results/1").

The pipeline writes it, `edgekit report` reads it. Units are SI throughout: latencies in seconds, sizes in
bytes, accuracies as fractions (0.97, not 97), power in watts. Every measurement is optional, because real runs
are messy (a target was unreachable, a benchmark was skipped); anything that did not work says so with
`status: "failed"` and a `reason` instead of being left out. Unknown extra fields are kept, so a newer stage
can add a field without breaking an older report; changing the meaning of a field needs a new schema id.

Shape (one line per block; see the models below for every field)::

    {"schema": "edgekit-results/1",
     "run": {name, created, edgekit_version, commands, recipe},
     "budget": {max_accuracy_drop, metric},
     "reference_variant": "fp32",
     "calibration": {name, size, class_counts, modality_coverage},
     "variants": {NAME: {status, reason, passes, params, macs, size_bytes, branch_stats, precision_map, torch_metrics, budget}},
     "targets": {NAME: {backend, location, status, reason, fingerprint}},
     "results": [{variant, target, status, reason, precision, metrics, parity, latency: {BATCH: stats},
                  throughput: {BATCH: samples/s}, peak_rss_bytes, build_seconds, artifact_size_bytes, power,
                  round_medians: {BATCH: [s per round]}, timing_session, speedup: {vs, value, ci95, rounds, verdict},
                  runtime_precision: {source, int8_mac_share, macs, mac_layers, layers_by_kind}}],
     "baselines": {title, note, rows: [{name, backend, accuracy, f1_macro, latency_p50, ...}]}   # optional
    }
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.errors import EdgekitError
from edgekit.io import atomic_write_json, load_json

SCHEMA = "edgekit-results/1"
# What a recommendation is computed from is finite and never negative: a NaN or negative latency in a hand-edited or
# damaged file is refused on load, naming the field, instead of ranking first.
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # a time, rate or power
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]  # an accuracy or F1
Count = Annotated[int, Field(ge=0)]  # samples, bytes, parameters
Status = Literal["ok", "failed"]


class _Open(BaseModel):
    # extra="allow": producers may add fields (kept on load and save) without a schema bump
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class RunInfo(_Open):
    name: str = Field("", description="run name (the run directory's name by default)")
    created: Optional[str] = Field(None, description="ISO-8601 time the run started")
    edgekit_version: Optional[str] = None
    commands: list[str] = Field(default_factory=list, description="the exact commands that reproduce the run")
    recipe: dict = Field(default_factory=dict, description="the resolved recipe (every default filled in)")


class Budget(_Open):
    max_accuracy_drop: float = Field(0.01, ge=0, description="largest allowed drop vs the reference, as a fraction (0.01 = 1 point)")
    metric: Literal["accuracy", "f1_macro"] = Field("accuracy", description="metric the budget applies to")


class Calibration(_Open):
    name: str = Field("", description="calibration-set definition used for INT8")
    size: Optional[int] = Field(None, description="number of samples")
    class_counts: dict[str, int] = Field(default_factory=dict, description="samples per class")
    modality_coverage: dict[str, float] = Field(default_factory=dict, description="fraction of samples in which each modality is present")


class DataInfo(_Open):
    """What the accuracies were measured on, so a reader can tell a good number from a bad one."""
    source: str = Field("", description="where the samples came from (e.g. avdigits with FSDD recordings, or synthesized speech)")
    classes: Count = Field(0, description="number of classes")
    test_size: Count = Field(0, description="samples in the test split the accuracies are measured on")
    chance: Optional[float] = Field(None, ge=0, le=1, description="accuracy of always answering the test split's most common class")


class Metrics(_Open):
    """As returned by edgekit.evaluate.evaluate (fractions in [0, 1])."""
    n: Optional[Count] = Field(None, description="number of evaluated samples")
    accuracy: Optional[Fraction] = None
    f1_macro: Optional[Fraction] = None
    accuracy_ci95: Optional[tuple[float, float]] = Field(None, description="95% bootstrap interval of accuracy")
    f1_macro_ci95: Optional[tuple[float, float]] = Field(None, description="95% bootstrap interval of macro-F1")
    per_class_f1: dict[str, float] = Field(default_factory=dict)
    missing_modality_accuracy: dict[str, float] = Field(default_factory=dict, description="accuracy with that modality missing (zeros + mask 0)")


class Cost(_Open):
    params: Optional[int] = None
    macs: Optional[int] = Field(None, description="multiply-accumulates of one sample's forward pass")


class BranchStats(_Open):
    before: dict[str, Cost] = Field(default_factory=dict, description="per branch (image/audio/text/head) before the passes")
    after: dict[str, Cost] = Field(default_factory=dict, description="per branch after the passes")


class LayerPrecision(_Open):
    precision: str = Field(description="int8 | fp16 | fp32")
    why: str = Field("", description="why the layer has this precision (e.g. 'sensitive: +0.8 pt drop when quantized')")


class Variant(_Open):
    status: Status = "ok"
    reason: str = Field("", description="why it failed (required in practice when status is failed)")
    precision: Optional[str] = Field(None, description="fp32 | fp16 | int8")
    passes: list[dict] = Field(default_factory=list, description="the record of each pass, in order: {'pass': 'prune'|'distill'|'quantize', ...}")
    params: Optional[Count] = None
    macs: Optional[Count] = None
    size_bytes: Optional[Count] = Field(None, description="size of the variant's ONNX file")
    branch_stats: Optional[BranchStats] = None
    precision_map: Optional[dict[str, LayerPrecision]] = Field(None, description="per layer, for quantized variants")
    torch_metrics: Optional[Metrics] = Field(None, description="metrics of the torch model (before compiling)")
    budget: Optional[Budget] = Field(None, description="this variant's own budget, where the recipe gives one (else the run's)")


class Target(_Open):
    backend: str = Field(description="onnxruntime | openvino | tensorrt")
    location: str = Field("local", description="'local' or 'ssh://user@host[:port]'")
    status: Status = "ok"
    reason: str = ""
    fingerprint: dict = Field(default_factory=dict, description="free-form: CPU model/ISA or Jetson model, power mode, library versions")


class LatencyStats(_Open):
    """Seconds per batch, over the timed iterations. Stats in milliseconds marked `unit: "ms"` (as
    edgekit.agent.measure.summarize writes them) are converted to seconds on load."""
    unit: Literal["s"] = "s"
    median: Optional[NonNeg] = None
    p90: Optional[NonNeg] = None
    p95: Optional[NonNeg] = None
    p99: Optional[NonNeg] = None
    mean: Optional[NonNeg] = None
    std: Optional[NonNeg] = None
    cv: Optional[NonNeg] = Field(None, description="std / mean")
    min: Optional[NonNeg] = None
    max: Optional[NonNeg] = None
    n: Optional[Count] = Field(None, description="timed iterations")
    high_variance: Optional[bool] = Field(None, description="the benchmark's own verdict that the numbers are unstable")

    @model_validator(mode="before")
    @classmethod
    def _to_seconds(cls, d):
        if isinstance(d, dict) and d.get("unit") == "ms":
            d = {k: v / 1e3 if k in _TIMES and isinstance(v, (int, float)) else v for k, v in d.items()} | {"unit": "s"}
        return d


_TIMES = {"median", "p90", "p95", "p99", "mean", "std", "min", "max"}


class Parity(_Open):
    top1_agreement: Optional[float] = Field(None, description="fraction of samples whose top-1 class matches the torch model")
    max_abs_diff: Optional[float] = Field(None, description="largest absolute logit difference")
    mean_abs_diff: Optional[float] = None
    n: Optional[int] = None


class Power(_Open):
    avg_watts: Optional[NonNeg] = None
    energy_per_inference_j: Optional[NonNeg] = None


class Speedup(_Open):
    """How much faster than the reference on the same target (edgekit.judge.speedup_record)."""
    vs: str = Field(description="the variant compared with (the reference)")
    batch: int = 1
    value: Optional[float] = Field(None, description="median over the paired rounds of reference p50 / this p50 (the pooled p50 ratio without rounds)")
    ci95: Optional[tuple[float, float]] = Field(None, description="95% bootstrap interval over the interleaved rounds")
    rounds: int = Field(0, description="paired timing rounds behind the interval")
    verdict: str = Field("not judged", description="faster | slower | no measurable difference | not judged")


class RuntimePrecision(_Open):
    """What the target's runtime executes in INT8, read from the runtime (edgekit.runtime_precision)."""
    source: str = Field("", description="where the map comes from (OpenVINO executed graph, ORT profiler, TensorRT inspector)")
    int8_mac_share: Optional[float] = Field(None, ge=0, le=1, description="share of the MACs executed by INT8 kernels")
    macs: dict[str, int] = Field(default_factory=dict, description="MACs of one sample per executed precision")
    mac_layers: list[dict] = Field(default_factory=list, description="executed layers that carry MACs: name, type, kernel, precision, macs")
    layers_by_kind: dict[str, int] = Field(default_factory=dict, description="executed layers per 'type [precision]'")
    error: str = Field("", description="why there is no map")


class Result(_Open):
    """One variant on one target."""
    variant: str
    target: str
    status: Status = "ok"
    reason: str = ""
    precision: Optional[str] = None
    metrics: Optional[Metrics] = Field(None, description="measured on the target's artifact")
    parity: Optional[Parity] = None
    latency: dict[int, LatencyStats] = Field(default_factory=dict, description="per batch size")
    throughput: dict[int, NonNeg] = Field(default_factory=dict, description="samples per second, per batch size")
    peak_rss_bytes: Optional[Count] = None
    build_seconds: Optional[NonNeg] = Field(None, description="compile time of the artifact")
    artifact_size_bytes: Optional[Count] = None
    power: Optional[Power] = None
    round_medians: dict[int, list[NonNeg]] = Field(default_factory=dict, description="per batch size, the p50 of each interleaved timing round, seconds")
    timing_session: Optional[str] = Field(None, description="rows timed in the same interleaved rounds share it")
    speedup: Optional[Speedup] = Field(None, description="vs the reference on the same target, batch 1")
    runtime_precision: Optional[RuntimePrecision] = None


class BaselineRow(_Open):
    """A comparison point (another tool or a single-modality model); extra numeric fields (ratios) become columns."""
    name: str
    backend: Optional[str] = None
    target: Optional[str] = None
    accuracy: Optional[Fraction] = None
    f1_macro: Optional[Fraction] = None
    latency_p50: Optional[NonNeg] = Field(None, description="seconds at batch 1")
    latency_p99: Optional[NonNeg] = None
    throughput: Optional[NonNeg] = Field(None, description="samples per second")
    size_bytes: Optional[Count] = None


class Baselines(_Open):
    title: str = "Baselines"
    note: str = ""
    rows: list[BaselineRow] = Field(default_factory=list)


class Results(_Open):
    schema_id: Literal["edgekit-results/1"] = Field(SCHEMA, alias="schema")
    run: RunInfo = Field(default_factory=RunInfo)
    budget: Budget = Field(default_factory=Budget)
    reference_variant: str = Field("fp32", description="the variant every other one is compared with, on the same target")
    calibration: Optional[Calibration] = None
    data: Optional[DataInfo] = None
    variants: dict[str, Variant] = Field(default_factory=dict)
    targets: dict[str, Target] = Field(default_factory=dict)
    results: list[Result] = Field(default_factory=list)
    baselines: Optional[Baselines] = None

    def cells(self) -> tuple[list[Result], list[str]]:
        """Every (variant, target) pair exactly once, plus what was inconsistent. A pair with no row, a failed
        variant or an unreachable target becomes a failed Result with the reason, so nothing is silently dropped."""
        problems, seen = [], {}
        for r in self.results:
            for kind, name, known in (("variant", r.variant, self.variants), ("target", r.target, self.targets)):
                if name not in known:
                    problems.append(f"result for {r.variant} on {r.target}: {kind} '{name}' is not listed under {kind}s")
            if (r.variant, r.target) in seen:
                problems.append(f"two results for {r.variant} on {r.target}: the last one is used")
            seen[(r.variant, r.target)] = r
        if self.reference_variant not in self.variants:
            problems.append(f"reference variant '{self.reference_variant}' is not listed under variants")
        variants = list(dict.fromkeys([*self.variants, *(v for v, _ in seen)]))
        targets = list(dict.fromkeys([*self.targets, *(t for _, t in seen)]))
        out = []
        for t in targets:
            for v in variants:
                r = seen.get((v, t))
                why = _upstream_failure(self.variants.get(v), self.targets.get(t))
                if r is None:
                    r = Result(variant=v, target=t, status="failed", reason=why or "no result recorded")
                elif r.status == "ok" and why:
                    r = r.model_copy(update={"status": "failed", "reason": why + " (but a result was recorded)"})
                    problems.append(f"{v} on {t} has an ok result although {why}")
                out.append(r)
        return out, problems


def _upstream_failure(variant: Variant | None, target: Target | None) -> str:
    if variant is not None and variant.status == "failed":
        return f"variant failed: {variant.reason or 'no reason given'}"
    if target is not None and target.status == "failed":
        return f"target failed: {target.reason or 'no reason given'}"
    return ""


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_results(path) -> Results:
    """Read and validate a results.json; EdgekitError naming the file and the first invalid field otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise EdgekitError(f"{path} does not exist", "pass a run directory written by `edgekit run` (it holds results.json)")
    data = load_json(path, "results file")  # bounded size and nesting, no duplicate keys (edgekit.io)
    if not isinstance(data, dict):
        raise EdgekitError(f"{path} holds a JSON {type(data).__name__}, not an object", "it is not an edgekit results file")
    if data.get("schema") != SCHEMA:
        raise EdgekitError(f"{path} has schema {data.get('schema')!r}; this edgekit reads {SCHEMA!r}",
                           "a newer edgekit wrote it: upgrade edgekit" if str(data.get("schema", "")).startswith("edgekit-results/") else "it is not an edgekit results file")
    try:
        return Results.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        got = repr(err.get("input"))[:60]
        raise EdgekitError(f"{path} is invalid at {_field_path(err['loc'])}: {err['msg']} (got {got})"
                           + (f"; {e.error_count() - 1} more problem(s)" if e.error_count() > 1 else ""),
                           "fix that field or re-run the stage that wrote it") from e


def save_results(results: Results | dict, path) -> Path:
    """Validate (a dict is accepted) and write atomically; returns the path.

    An invalid dict is an EdgekitError (exit 2), not an InternalError: the pipeline assembles it from records it reads
    back from disk or a device (a variant's metrics.json, a target's result.json reused on resume, a device agent's
    record fetched over SSH), so a damaged or hand-edited record fails here, not only a bug in edgekit."""
    if isinstance(results, dict):
        try:
            results = Results.model_validate(results)
        except ValidationError as e:
            err = e.errors()[0]
            raise EdgekitError(f"results to save are invalid at {_field_path(err['loc'])}: {err['msg']}",
                               "a record of this run (a variant's metrics.json, a target's result.json or a device's record) is "
                               "damaged or hand-edited: rerun `edgekit run` with --force compress or --force measure (--force "
                               "deploy for a device); if those files are untouched, it is a bug in edgekit") from e
    path = Path(path)
    atomic_write_json(path, results.model_dump(by_alias=True))  # python mode + edgekit's encoder: numpy values in extra fields are fine
    return path


# ---------------------------------------------------------------- building a document (the producers' side)

# what results.json keeps of a compress-stage variant record (RUN/variants/NAME/metrics.json)
VARIANT_FIELDS = ("status", "reason", "precision", "passes", "params", "macs", "size_bytes", "branch_stats",
                  "precision_map", "torch_metrics", "precision_summary", "seconds")


def budget_record(points: float, metric: str) -> dict:
    """A recipe budget (accuracy points) as results.json holds it: a fraction, 1 point = 0.01."""
    return {"max_accuracy_drop": points / 100, "metric": metric}


def variant_record(metrics: dict, budget: dict) -> dict:
    """One entry of results.json "variants" from the variant's metrics.json and its budget_record."""
    return {**{k: metrics[k] for k in VARIANT_FIELDS if metrics.get(k) is not None}, "budget": budget}


def results_document(run: dict, budget: dict, reference_variant: str, calibration: dict, variants: dict, targets: dict,
                     rows: list, data: dict | None = None) -> dict:
    """A whole results.json document in this schema (validated by save_results when written)."""
    return {"schema": SCHEMA, "run": run, "budget": budget, "reference_variant": reference_variant,
            "calibration": calibration, "data": data, "variants": variants, "targets": targets, "results": rows}


def _source_phrase(source: str) -> str:
    """avdigits' source ids ("avdigits (fsdd:PATH:N, seed 0)", "avdigits (espeak-ng, seed 0)") in words; any other
    source as it is."""
    import re

    if not source.startswith("avdigits"):
        return source
    fsdd = re.search(r"fsdd:(.+):(\d+)", source)
    if fsdd:
        return f"avdigits with {fsdd.group(2)} real FSDD spoken-digit recordings ({fsdd.group(1)})"
    return "avdigits with speech synthesized by espeak-ng (no FSDD folder given)" if "espeak-ng" in source else source


def data_record(described: dict) -> dict | None:
    """DataInfo from a resolved dataset's describe() (compress.json's `data`): source, classes, test size, chance."""
    test = (described or {}).get("splits", {}).get("test")
    if not test:
        return None
    counts = list(test.get("classes", {}).values())
    size = int(test.get("size", 0))
    return {"source": _source_phrase(str(described.get("source", ""))), "classes": len(described.get("classes", [])), "test_size": size,
            "chance": round(max(counts) / size, 4) if size and counts else None}


def baseline_row(name: str, backend: str, precision: str, metrics: dict, latency_b1_ms: dict, throughput_b8: float,
                 size_bytes: int, speedups: dict) -> BaselineRow:
    """One row of the `baselines` section in this schema's units: `latency_b1_ms` is a batch-1 latency summary in
    milliseconds (median, p99), stored in seconds; `speedups` {REF: p50 ratio or None} become speedup_vs_REF columns."""
    return BaselineRow.model_validate({
        "name": name, "backend": backend, "target": "local", "accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"],
        "latency_p50": latency_b1_ms["median"] / 1000, "latency_p99": latency_b1_ms["p99"] / 1000, "throughput": throughput_b8,
        "size_bytes": size_bytes, "precision": precision, **{f"speedup_vs_{ref}": v for ref, v in speedups.items()}})
