"""The only module that knows every stage: recipe -> run directory. Each stage reads the previous stage's files and
writes its own, so a run can be resumed, inspected or continued elsewhere. The stages themselves live in their own
modules (source: the model to compress, compress: the variants, backends/bench/evaluate: compile and measure on this
machine, deploy: build and measure on an ssh:// device); this one runs them in order and assembles results.json.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.compress import compress, read_json
from edgekit.errors import EdgekitError
from edgekit.io import atomic_write_json, slug
from edgekit.judge import budget_of
from edgekit.recipe import REFERENCE_VARIANT, Recipe, load_recipe, trust_recipe_code
from edgekit.source import source_checkpoint
from edgekit.spec import ModelSpec
from edgekit.ui import console, escape

# ---------------------------------------------------------------- the whole run: edgekit run RECIPE

STAGES = ("train", "compress", "compile", "measure", "deploy", "report")


@dataclass
class Steps:
    """The run's one progress line per step: stage, variant, target, elapsed, and how many steps are left."""

    total: int
    done: int = 0
    start: float = field(default_factory=time.time)

    def begin(self, stage: str, what: str = "") -> None:
        self.done += 1
        el = int(time.time() - self.start)
        console.print(f"[bold cyan][{self.done}/{self.total}] {stage}[/] {escape(what)}  [dim](elapsed {el // 60}:{el % 60:02d}, "
                      f"{self.total - self.done} step(s) left)[/]", highlight=False)


def run(recipe_path, out=None, checkpoint=None, force=(), ssh: dict | None = None, progress: bool = True) -> dict:
    """Every stage of a recipe into one run directory (layout in README "Run directory"): train or load the model,
    compress it into the variants, compile each for every local target, evaluate and benchmark it there, deploy to
    ssh:// targets, then results.json and the report. A stage whose inputs and settings are unchanged is skipped, so
    rerunning after a crash continues where it stopped; `force` names stages to redo. A variant or target that fails
    is recorded as failed with its reason and the rest goes on. The recipe's own code references are trusted while
    it runs (README "Trust")."""
    recipe = load_recipe(recipe_path)
    with trust_recipe_code(recipe, recipe_path):
        return _run(recipe_path, recipe, out, checkpoint, force, ssh, progress)


def _run(recipe_path, recipe: Recipe, out, checkpoint, force, ssh: dict | None, progress: bool) -> dict:
    from edgekit.rundir import RunLock

    unknown = sorted(set(force) - set(STAGES))
    if unknown:
        raise EdgekitError(f"unknown stage(s) {unknown} for --force", f"stages: {', '.join(STAGES)}")
    out = Path(out) if out else Path("runs") / (recipe.name or Path(recipe_path).stem)
    from edgekit.io import check_writable

    check_writable(out)
    if checkpoint is not None:
        from edgekit.checkpoint import read_config

        read_config(checkpoint)  # a wrong path fails before anything is written
    from edgekit.compress import refuse_run_over_inputs

    written = [out / n for n in ("targets", "bundle", "results.json", "report.md", "report.html", "pareto.png", "size_accuracy.png", "timings.json")]
    refuse_run_over_inputs(out, recipe, recipe_path, checkpoint, written, [(ssh or {}).get("identity"), (ssh or {}).get("known_hosts")])
    locals_ = [t for t in recipe.targets if not t.host]
    remotes = [t for t in recipe.targets if t.host]
    steps = Steps(total=2 + len(locals_) * (3 + 2 * len(recipe.variants)) + len(remotes) + 1)
    seconds: dict[str, float] = {}
    with RunLock(out):
        steps.begin("train", "the recipe's model" if checkpoint is None else f"(given: {checkpoint})")
        t0 = time.time()
        source = source_checkpoint(checkpoint, recipe, out, retrain="train" in force, recipe_path=recipe_path)
        seconds["train"] = time.time() - t0
        steps.begin("compress", f"{len(recipe.variants)} variant(s) + {REFERENCE_VARIANT}")
        t0 = time.time()
        summary = compress(source, recipe, out, progress=progress, force="compress" in force, recipe_path=recipe_path)
        seconds["compress"] = time.time() - t0
        from edgekit import checkpoint as ck

        spec = ModelSpec.model_validate(ck.read_config(source)["spec"])
        from edgekit.data.resolver import read_eval_samples

        test = read_eval_samples(out / "eval_samples.npz", spec, (summary.get("eval_samples") or {}).get("sha256"))
        rows, targets = [], {}
        names = list(summary["variants"])
        for stage, group in (("compile+measure", locals_), ("deploy", remotes)):
            t0 = time.time()
            for t in group:
                where = _RemoteTarget(t, recipe, out, ssh or {}, steps) if t.host else _LocalTarget(t, recipe, test, out, force, steps)
                targets[t.label], got = _measure_target(where, names, summary)
                rows += got
            if group or stage == "compile+measure":
                seconds[stage] = time.time() - t0
        steps.begin("report")
        t0 = time.time()
        results = _assemble(recipe, summary, targets, rows, out, recipe_path, checkpoint)
        from edgekit.report import write_report
        from edgekit.results import save_results

        save_results(results, out / "results.json")
        paths = write_report(out)
        seconds["report"] = time.time() - t0
    seconds["total"] = time.time() - steps.start
    timing = {k: round(v, 1) for k, v in seconds.items()}
    atomic_write_json(out / "timings.json", timing)
    return {**paths, "run_dir": out, "seconds": timing}


# ---------------------------------------------------------------- targets: one measure path, local or ssh://

def _measure_target(where, names: list[str], summary: dict) -> tuple[dict, list]:
    """Every variant on one target, in variant order, as (targets[label], results rows). Where the variants run
    (this machine or an ssh:// device) only changes how a variant's row is obtained and timed (interleaved rounds
    over the target's variants, here or by the device agent); the target record, the order, the rows of variants
    that failed to compress and the speedup verdicts vs the reference are the same for both."""
    ok_names = [n for n in names if summary["variants"][n].get("status") == "ok"]
    info = where.start(names, ok_names)
    rows = []
    for name in names:
        m = summary["variants"][name]
        compress_failure = None if m.get("status") == "ok" else f"variant failed: {m.get('reason', '')}"
        rows.append(where.row(name, compress_failure))
    return info, _with_speedups(where.timed(rows))


def _with_speedups(rows: list) -> list:
    """Each ok row gets its speedup vs the reference at batch 1 with a 95% interval and the verdict
    (edgekit.judge.speedup_record), when both were timed in the same interleaved rounds."""
    from edgekit.judge import speedup_record

    def at1(r, key):
        d = r.get(key) or {}
        return d.get(1, d.get("1"))

    ref = next((r for r in rows if r["variant"] == REFERENCE_VARIANT and r.get("status") == "ok" and at1(r, "latency")), None)
    for r in rows:
        if ref is None or r is ref or r.get("status") != "ok" or not at1(r, "latency"):
            continue
        paired = r.get("timing_session") is not None and r.get("timing_session") == ref.get("timing_session")
        r["speedup"] = speedup_record(at1(ref, "round_medians") if paired else None, at1(r, "round_medians") if paired else None,
                                      at1(ref, "latency")["median"], at1(r, "latency")["median"], REFERENCE_VARIANT)
    return rows


def _target_info(t, location: str, fingerprint: dict) -> dict:
    return {"backend": t.backend, "location": location, "status": "ok", "reason": "", "options": t.options, "fingerprint": fingerprint}


def _failed_row(name: str, t, reason: str) -> dict:
    return {"variant": name, "target": t.label, "status": "failed", "reason": reason}


class _LocalTarget:
    """A backend on this machine: compile and evaluate every variant (one step each), then time them all against
    each other in interleaved rounds (one step)."""

    def __init__(self, t, recipe: Recipe, test, out: Path, force, steps: Steps):
        self.t, self.recipe, self.test, self.out, self.force, self.steps = t, recipe, test, out, force, steps

    def start(self, names: list[str], ok_names: list[str]) -> dict:
        from edgekit.backends.base import get_backend
        from edgekit.env import fingerprint
        from edgekit.rundir import Stages

        t = self.t
        backend = get_backend(t.backend)
        self.ok, why = backend.available()
        self.why = "" if self.ok else f"backend '{t.backend}' is not available on this machine: {why} ({backend.install_hint})"
        self.stages = Stages(self.out, force=self.force)
        return {**_target_info(t, "local", fingerprint()), "status": "ok" if self.ok else "failed", "reason": self.why}

    def row(self, name: str, compress_failure: str | None) -> dict:
        from edgekit.rundir import stage_key

        t, steps, stages = self.t, self.steps, self.stages
        tdir = self.out / "targets" / slug(t.label) / name
        onnx = self.out / "variants" / name / "model.onnx"
        measuring = False
        if not self.ok or compress_failure:
            steps.begin("compile", f"{name} on {t.label}: skipped ({'backend unavailable' if not self.ok else 'variant failed'})")
            steps.begin("measure", f"{name} on {t.label}: skipped")
            return _failed_row(name, t, self.why if not self.ok else compress_failure)
        try:
            steps.begin("compile", f"{name} on {t.label}")
            min_top1 = self.recipe.parity.min_top1.model_dump()
            ckey = stage_key({"backend": t.backend, "options": t.options, "parity": min_top1}, onnx)
            if not stages.done(f"compile/{t.label}/{name}", ckey):
                _compile(t, onnx, tdir / "artifact", min_top1)
                stages.mark(f"compile/{t.label}/{name}", ckey, [tdir / "artifact" / "artifact.json"])
            steps.begin("measure", f"{name} on {t.label}")
            measuring = True
            b = self.recipe.bench
            mkey = stage_key({"threads": b.threads, "batch_sizes": b.batch_sizes, "data": self.recipe.data.model_dump()},
                             tdir / "artifact" / "artifact.json")
            if not stages.done(f"measure/{t.label}/{name}", mkey):
                atomic_write_json(tdir / "result.json", _measure_local(t, tdir / "artifact", name, self.recipe, self.test))
                stages.mark(f"measure/{t.label}/{name}", mkey, [tdir / "result.json"])
            else:
                reused = escape(f"{name} on {t.label}: unchanged since the last run, reusing {tdir / 'result.json'}")
                console.print(f"[dim]  {reused}[/]")
            return read_json(tdir / "result.json")
        except EdgekitError as e:
            reason = f"{e.message} ({e.hint})" if e.hint else e.message
            console.print(f"[red]  {escape(f'{name} on {t.label}')} failed:[/] {escape(reason)}", highlight=False)
            if not measuring:  # the compile failed: its measure step is skipped, not left uncounted
                steps.begin("measure", f"{name} on {t.label}: skipped (compile failed)")
            return _failed_row(name, t, reason)

    def timed(self, rows: list) -> list:
        """Latency of every ok variant on this target, timed together in interleaved rounds (a stage of its own:
        redone when any variant's artifact or the bench settings change), merged into the rows."""
        from edgekit.rundir import stage_key

        t, b = self.t, self.recipe.bench
        ok = [r["variant"] for r in rows if r.get("status") == "ok"]
        self.steps.begin("measure", f"latency of {len(ok)} variant(s) on {t.label}: {b.rounds} interleaved rounds"
                         if ok else f"latency on {t.label}: skipped (nothing to time)")
        if not ok:
            return rows
        tdir = self.out / "targets" / slug(t.label)
        arts = {n: tdir / n / "artifact" for n in ok}
        key = stage_key({"bench": b.model_dump(), "variants": ok}, *(a / "artifact.json" for a in arts.values()))
        try:
            if not self.stages.done(f"measure/{t.label}", key):
                atomic_write_json(tdir / "timing.json", _time_local(t, arts, b))
                self.stages.mark(f"measure/{t.label}", key, [tdir / "timing.json"])
            timing = read_json(tdir / "timing.json")
        except EdgekitError as e:
            reason = f"timing failed: {e.message}" + (f" ({e.hint})" if e.hint else "")
            console.print(f"[red]  {escape(reason)}[/]", highlight=False)
            return [_failed_row(r["variant"], t, reason) if r.get("status") == "ok" else r for r in rows]
        for r in rows:
            got = timing["variants"].get(r["variant"]) if r.get("status") == "ok" else None
            if got:
                r.update(latency={int(k): v["latency_ms"] for k, v in got.items()},
                         throughput={int(k): v["throughput_per_s"] for k, v in got.items()},
                         round_medians={int(k): [m / 1000 for m in v["round_medians_ms"]] for k, v in got.items()},
                         high_variance=any(v["latency_ms"]["high_variance"] for v in got.values()),
                         timing_session=timing["session"], protocol=timing["protocol"])
        return rows


class _RemoteTarget:
    """An ssh:// device: edgekit.deploy builds and benchmarks every variant there in one session (it resumes by
    itself); each variant's row is then read from what came back."""

    def __init__(self, t, recipe: Recipe, out: Path, ssh: dict, steps: Steps):
        self.t, self.recipe, self.out, self.ssh, self.steps = t, recipe, out, ssh, steps

    def start(self, names: list[str], ok_names: list[str]) -> dict:
        from edgekit.deploy import deploy

        t, b = self.t, self.recipe.bench
        self.steps.begin("deploy", f"{len(names)} variant(s) on {t.host}")
        options = dict(t.options)
        runtime = options.pop("runtime", "tensorrt" if t.backend == "tensorrt" else "onnxruntime")
        info = _target_info(t, t.host, {})
        bench = {"batch_sizes": b.batch_sizes, "warmup": b.warmup, "min_seconds": b.min_seconds, "min_iterations": b.min_iterations,
                 "rounds": b.rounds}
        try:
            (s,) = deploy(self.out, [t.host], runtime=runtime, build=options, bench=bench, variants=ok_names, check=False, **self.ssh)
        except EdgekitError as e:
            s = {"status": "failed", "reason": e.message, "variants": {}}
        if s.get("results_dir") and (Path(s["results_dir"]) / "fingerprint.json").exists():
            info["fingerprint"] = read_json(Path(s["results_dir"]) / "fingerprint.json")
        if s.get("status") != "ok" and not s.get("variants"):
            info.update(status="failed", reason=s.get("reason") or "failed")
        self.summary = s
        return info

    def row(self, name: str, compress_failure: str | None) -> dict:
        s, t = self.summary, self.t
        raw = s.get("variants", {}).get(name)
        if raw and raw.get("result"):
            return {**raw["result"], "variant": name, "target": t.label}
        if compress_failure:
            return _failed_row(name, t, compress_failure)
        err = s.get("errors", {}).get(name)
        return _failed_row(name, t, (err or {}).get("message") or s.get("reason") or "no result came back from the device")

    def timed(self, rows: list) -> list:
        return rows  # the agent timed the variants against each other in interleaved rounds


def _compile(t, onnx: Path, adir: Path, min_top1: dict | None = None) -> None:
    """compile_onnx into a fresh folder (a half-built artifact from a killed run is removed first)."""
    import shutil

    from edgekit.backends import compile_onnx

    if adir.exists():
        shutil.rmtree(adir)
    t0 = time.time()
    art = compile_onnx(onnx, t.backend, adir, dict(t.options), min_top1=min_top1)
    art.meta["build_seconds"] = round(time.time() - t0, 3)
    art.save()


def _measure_local(t, adir: Path, name: str, recipe: Recipe, test) -> dict:
    """Accuracy on the test split of the artifact as the target runs it (its latency: _time_local, with the others)."""
    from edgekit.backends.base import Artifact
    from edgekit.bench import RUNTIME_PEAK_NOTE, load_runner, runtime_peak_rss
    from edgekit.evaluate import evaluate

    art = Artifact.load(adir)
    peak = runtime_peak_rss(adir, recipe.bench.batch_sizes, recipe.bench.threads)  # not this process: it holds torch
    runner, facts = load_runner(adir, t.backend, recipe.bench.threads)  # facts: size of what the runtime loads (not its ONNX source)
    metrics = evaluate(runner, test, art.spec.class_names)
    return {"variant": name, "target": t.label, "status": "ok", "reason": "", "precision": art.precision, "metrics": metrics,
            "parity": art.meta.get("parity"),
            "peak_rss_bytes": peak["peak_rss_bytes"], "peak_rss_note": RUNTIME_PEAK_NOTE,
            "peak_rss_scope": "runtime" if peak["torch_loaded"] is False else "unknown",
            "build_seconds": art.meta.get("build_seconds"), "artifact_size_bytes": facts["size_bytes"],
            "runner_settings": runner.settings, "runtime_precision": _runtime_precision(art)}


def _runtime_precision(art) -> dict:
    """What the runtime executes in INT8, from the runtime itself (edgekit.runtime_precision; never fails the row)."""
    from edgekit.runtime_precision import measure_record

    return measure_record(art)


def _time_local(t, arts: dict[str, Path], b) -> dict:
    """Latency of the artifacts {variant: folder} on one target, timed against each other in interleaved rounds
    (edgekit.agent.measure.time_rounds: every variant at each batch size, in order, `rounds` times)."""
    import uuid

    from edgekit.agent import measure
    from edgekit.bench import load_runner

    runners = {n: load_runner(a, t.backend, b.threads)[0] for n, a in arts.items()}
    calls = {n: {bs: r.bind(r.spec.example_inputs(bs, 0)) for bs in b.batch_sizes} for n, r in runners.items()}
    settings = {"warmup": b.warmup, "min_seconds": b.min_seconds, "min_iterations": b.min_iterations, "rounds": b.rounds}
    timed = measure.time_rounds(calls, settings, on_round=lambda k, n: console.print(f"[dim]  round {k}/{n} on {escape(t.label)}[/]"))
    return {"session": f"{slug(t.label)}-{uuid.uuid4().hex[:12]}", "order": list(calls),
            "protocol": {**measure.protocol(settings), "cv_limit": measure.CV_LIMIT, **measure.PROTOCOL_NOTES,
                         "interleaved": "every variant at each batch size, in order, per round; min_seconds and min_iterations split over the rounds",
                         "inputs": "random from the ModelSpec (seed 0), bound once with Runner.bind"},
            "variants": {n: {b_: {k: v for k, v in e.items() if k != "times_ms"} for b_, e in by.items()} for n, by in timed.items()}}


# ---------------------------------------------------------------- results.json

def _assemble(recipe: Recipe, summary: dict, targets: dict, rows: list, out: Path, recipe_path, checkpoint) -> dict:
    """results.json (schema and units: edgekit.results) from the stages' files."""
    import datetime
    import shlex

    import edgekit
    from edgekit.results import budget_record, data_record, results_document, variant_record

    cal = summary.get("calibration") or {}
    variants = {}
    for name, m in summary["variants"].items():
        vs = next((v for v in recipe.variants if v.name == name), None)
        b = budget_of(vs.budget if vs is not None else None, recipe.budget)
        variants[name] = variant_record(m, budget_record(b.max_accuracy_drop, b.metric))
    cmd = ["edgekit", "run", str(recipe_path), "--out", str(out)] + (["--checkpoint", str(checkpoint)] if checkpoint else [])
    created = datetime.datetime.fromtimestamp((out / ".lock").stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds") \
        if (out / ".lock").exists() else None
    run = {"name": recipe.name or out.name, "created": created, "edgekit_version": edgekit.__version__,
           "commands": [shlex.join(cmd)], "recipe": _read_yaml(out / "recipe.resolved.yaml")}
    return results_document(run, budget_record(recipe.budget.max_accuracy_drop, recipe.budget.metric), REFERENCE_VARIANT,
                            {"name": recipe.calibration.name or "", **cal}, variants, targets, rows, data_record(summary.get("data")))


def _read_yaml(p: Path) -> dict:
    from edgekit.io import load_yaml

    return load_yaml(p, "resolved recipe") if p.exists() else {}
