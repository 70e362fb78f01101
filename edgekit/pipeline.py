"""The only module that knows every stage: recipe -> run directory. One function per stage; each reads the
previous stage's files and writes its own, so a run can be resumed, inspected or continued elsewhere.

compress:  CHECKPOINT + recipe -> RUN/recipe.resolved.yaml, RUN/compress.json,
           RUN/variants/<name>/{model.safetensors, config.json, model.onnx, metrics.json[, precision_map.json]}
           for the uncompressed reference (`fp32`) and every variant of the recipe. A variant is judged on its
           deployed graph: the exported ONNX run by ONNX Runtime (and OpenVINO where installed), next to the
           torch model's metrics. metrics.json lists every pass from the original model, a `from` variant's
           passes included.
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from edgekit.errors import EdgekitError
from edgekit.io import atomic_write_json, atomic_write_text, slug
from edgekit.recipe import REFERENCE_VARIANT, Recipe, VariantSettings, dump_recipe, load_recipe, resolve_calibration
from edgekit.spec import ModelSpec
from edgekit.ui import console, progress as progress_bar

EVAL_BACKENDS = ("onnxruntime", "openvino")


@dataclass
class Variant:
    """A model on its way through the passes, with what it takes to rebuild it from disk."""

    model: nn.Module
    config: dict
    factory: str
    plan: list = field(default_factory=list)
    passes: list = field(default_factory=list)
    stats_before: dict | None = None


@dataclass
class Context:
    spec: ModelSpec
    teacher: nn.Module
    train: object
    val: object
    test: object
    calibration: object
    recipe: Recipe
    show_progress: bool = True


# ---------------------------------------------------------------- stage: compress

def compress(checkpoint_path, recipe, out_dir, progress: bool = True, only: list[str] | None = None, force: bool = False) -> dict:
    """Turn one trained model into the recipe's variants in `out_dir` (see module docstring); returns the
    summary also written to RUN/compress.json. Variants whose inputs and settings are unchanged since a
    previous run are reused, unless `force` (which redoes only the `only` variants when those are given)."""
    from edgekit.data.calibration import check as check_calibration
    from edgekit.data.calibration import describe
    from edgekit.rundir import RunLock, Stages, stage_key

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    recipe = recipe.model_copy(update={"calibration": resolve_calibration(recipe.calibration)})
    out = Path(out_dir)
    if only:
        unknown = set(only) - {v.name for v in recipe.variants}
        if unknown:
            raise EdgekitError(f"no variant named {sorted(unknown)} in the recipe", f"choose among: {', '.join(v.name for v in recipe.variants)}")
    if checkpoint_path is not None:
        from edgekit.checkpoint import read_config

        read_config(checkpoint_path)  # a wrong path fails before anything is written
    with RunLock(out):
        atomic_write_text(out / "recipe.resolved.yaml", dump_recipe(recipe))
        source = _source_checkpoint(checkpoint_path, recipe, out)
        from edgekit import checkpoint

        model, spec, cfg = checkpoint.load(source)
        train, val, test = _data(recipe, spec)
        cal = recipe.calibration
        from edgekit.data.calibration import sample

        required = tuple(i.modality for i in spec.inputs if i.modality and not i.optional)
        calibration = sample({"train": train, "val": val}[cal.split], cal.size, cal.stratify, cal.missing, cal.seed, required)
        check_calibration(calibration, spec)
        ctx = Context(spec, model, train, val, test, calibration, recipe, progress)
        stages = Stages(out, force=([f"compress/{n}" for n in only] if only else ["compress"]) if force else [])
        src_files = [p for p in (Path(source) / "model.safetensors", Path(source) / "config.json") if p.exists()]
        common = {"recipe_data": recipe.data.model_dump(), "calibration": cal.model_dump(), "targets": [t.model_dump() for t in recipe.targets]}

        results: dict[str, dict] = {}
        variants: dict[str, Variant] = {}
        reference = Variant(model, cfg["model"], cfg.get("factory", checkpoint.DEFAULT_FACTORY), list(cfg.get("pruning_plan") or []))
        todo = [(REFERENCE_VARIANT, None)] + [(v.name, v) for v in recipe.variants if not only or v.name in only or _needed_by(v.name, only, recipe)]
        for name, vs in todo:
            vdir = out / "variants" / name
            start = vs.start_from if vs is not None else None
            key = stage_key({**common, "variant": vs.model_dump(by_alias=True) if vs else None,
                             "start": results.get(start, {}).get("key")}, *src_files)
            if stages.done(f"compress/{name}", key):
                console.print(f"[dim]{name}: unchanged since the last run, reusing {vdir}[/]")
                results[name] = _read_json(vdir / "metrics.json")
                variants[name] = None  # loaded lazily if a later variant starts from it
                continue
            t0 = time.time()
            console.print(f"[bold]{name}[/]: " + (" -> ".join(p.name for p in vs.passes) if vs else "the uncompressed model"))
            try:
                if vs is None:
                    v = reference
                else:
                    base = variants.get(start) if start else reference
                    if start and base is None:
                        base = _reload(out / "variants" / start)
                    v = _run_passes(vs, base, ctx)
                metrics = _measure(name, v, vs, ctx, vdir, results.get(REFERENCE_VARIANT))
                metrics["seconds"] = round(time.time() - t0, 1)
                variants[name] = v
            except Exception as e:  # noqa: BLE001 — one failed variant must not cost the others; the reason is recorded
                if vs is None:
                    raise
                if isinstance(e, EdgekitError):
                    reason = f"{e.message} ({e.hint})" if e.hint else e.message
                else:  # a bug, not the user's: keep the traceback beside the variant
                    import traceback

                    atomic_write_text(vdir / "error.log", traceback.format_exc())
                    reason = f"internal error {type(e).__name__}: {str(e)[:200]} (traceback in {vdir / 'error.log'})"
                metrics = {"variant": name, "status": "failed", "reason": reason, "passes": [], "seconds": round(time.time() - t0, 1)}
                console.print(f"[red]{name} failed:[/] {reason}", highlight=False)
                variants[name] = None
            metrics["key"] = key
            atomic_write_json(vdir / "metrics.json", metrics)
            if metrics["status"] == "ok":
                stages.mark(f"compress/{name}", key, [vdir / "model.onnx", vdir / "metrics.json"])
            results[name] = metrics
        for name in [REFERENCE_VARIANT] + [v.name for v in recipe.variants]:  # variants not redone this time (--variant)
            if name not in results and (out / "variants" / name / "metrics.json").exists():
                results[name] = _read_json(out / "variants" / name / "metrics.json")
        order = [REFERENCE_VARIANT] + [v.name for v in recipe.variants]
        results = {n: results[n] for n in order if n in results}
        summary = {"stage": "compress", "source": str(source), "recipe": recipe.name, "calibration": describe(calibration, spec.class_names),
                   "reference_variant": REFERENCE_VARIANT, "budget_unit": "accuracy points", "variants": results,
                   "table": [_row(m) for m in results.values()]}
        atomic_write_json(out / "compress.json", summary)
    return summary


def _needed_by(name: str, only: list[str], recipe: Recipe) -> bool:
    """A variant others in `only` start from (it must exist first)."""
    by_name = {v.name: v for v in recipe.variants}
    for o in only:
        v = by_name.get(o)
        while v is not None and v.start_from:
            if v.start_from == name:
                return True
            v = by_name.get(v.start_from)
    return False


def _read_json(p: Path) -> dict:
    import json

    return json.loads(p.read_text())


def _reload(vdir: Path) -> Variant:
    from edgekit import checkpoint

    model, _, cfg = checkpoint.load(vdir)
    return Variant(model, cfg["model"], cfg.get("factory", checkpoint.DEFAULT_FACTORY), list(cfg.get("pruning_plan") or []),
                   list(cfg.get("passes") or []))


# ---------------------------------------------------------------- inputs of the stage

def _source_checkpoint(checkpoint_path, recipe: Recipe, out: Path, retrain: bool = False) -> Path:
    """The checkpoint to compress: the argument, else recipe.model.checkpoint, else one trained per recipe.model.train
    (into RUN/source, reused while its preset, fusion, epochs and data match unless `retrain`)."""
    src = recipe.model
    if checkpoint_path is not None:
        return Path(checkpoint_path)
    if src is None:
        raise EdgekitError("no model to compress", "pass a CHECKPOINT folder, or give `model: {checkpoint: PATH}` or `model: {train: {...}}` in the recipe")
    if src.checkpoint:
        return _user_checkpoint(src, out, recipe) if (src.factory or src.inputs) else Path(src.checkpoint)
    from edgekit.train import train_reference
    from edgekit.checkpoint import read_config

    target = out / "source"
    t = src.train
    if (target / "config.json").exists() and not retrain:
        cfg = read_config(target)
        had = cfg.get("training", {})
        if (had.get("preset"), had.get("fusion")) == (t.preset, t.fusion) and t.epochs in (None, had.get("epochs")):
            return target
    console.print(f"training a {t.preset}/{t.fusion} reference model into {target}")
    with progress_bar(f"training {t.preset}/{t.fusion}") as advance:
        train_reference(t.preset, t.fusion, target, fsdd=recipe.data.fsdd, seed=recipe.data.seed, epochs=t.epochs, text_kind=t.text,
                        progress=lambda n, loss: advance(n, info=f"loss {loss:.3f}"))
    return target


def _user_checkpoint(src, out: Path, recipe: Recipe) -> Path:
    """A user model (factory + weights [+ inputs]) written as an edgekit checkpoint, so every stage reads one format."""
    import os

    from edgekit import checkpoint
    from edgekit.data.avdigits import preprocessing
    from edgekit.spec import OutputSpec

    path = Path(src.checkpoint)
    if path.is_dir() and (path / "config.json").exists():
        cfg = checkpoint.read_config(path)
        if not src.factory or cfg.get("factory") == src.factory:
            return path
        cfg_model, spec = cfg["model"], ModelSpec.model_validate(cfg["spec"])
        weights = path / "model.safetensors"
    else:
        if not src.inputs:
            raise EdgekitError(f"{path} is bare weights, so the recipe must say what the model takes",
                               "add model.inputs: [{name, shape, dtype, modality, optional}, ...] (see edgekit.spec.InputSpec)")
        names = src.class_names or [str(i) for i in range(10)]
        spec = ModelSpec(inputs=src.inputs, outputs=[OutputSpec(name="logits", shape=[None, len(names)])], class_names=names,
                         modalities=[i.modality for i in src.inputs if i.modality],
                         preprocessing=preprocessing(recipe.data.fsdd or os.environ.get("EDGEKIT_FSDD"), recipe.data.seed))
        cfg_model, weights = src.config or {}, path
    model = checkpoint.resolve_factory(src.factory or checkpoint.DEFAULT_FACTORY)(cfg_model)
    try:
        model.load_state_dict(checkpoint.read_state(weights), strict=True)
    except RuntimeError as e:
        raise EdgekitError(f"weights {weights} do not fit {src.factory}(config): {str(e).splitlines()[0][:200]}", "check model.factory and model.config") from e
    target = out / "source"
    checkpoint.save(model, spec, target, cfg_model, factory=src.factory or checkpoint.DEFAULT_FACTORY, imported_from=str(path))
    return target


def _data(recipe: Recipe, spec: ModelSpec):
    """train/val/test of the recipe's dataset; with no FSDD path given, the recordings the model was trained on
    (named in its spec) are used, so the model is never judged on different data than it learned from."""
    import os

    from edgekit.data import avdigits

    d = recipe.data
    fsdd = d.fsdd or os.environ.get("EDGEKIT_FSDD")
    trained_on = str(spec.preprocessing.get("source", ""))
    if fsdd is None and trained_on.startswith("fsdd:"):
        recorded = Path(trained_on[5:].rsplit(":", 1)[0])
        fsdd = str(recorded) if recorded.is_dir() else None
    splits = [avdigits.load(s, fsdd, d.seed) for s in ("train", "val", "test")]
    source = avdigits.preprocessing(fsdd, d.seed)["source"]
    if trained_on and source != trained_on:
        console.print(f"[yellow]warning:[/] the model was trained on avdigits from {trained_on}, these variants are judged on {source}; "
                      "set data.fsdd in the recipe to the same recordings", highlight=False)
    feed, _ = next(splits[0].batches(2))
    missing = [n for n in spec.input_names if n not in feed]
    if missing:
        raise EdgekitError(f"the model needs input(s) {missing} that dataset '{d.dataset}' does not have",
                           f"the dataset provides {', '.join(feed)}; give the model inputs with these names")
    if any(n not in spec.input_names for n in feed):  # keep only what the model takes, paired as they are
        from edgekit.data import ArrayDataset

        splits = [ArrayDataset({n: s.inputs[n] for n in spec.input_names}, s.labels, s.modalities) for s in splits]
    return splits


# ---------------------------------------------------------------- passes

def _run_passes(vs: VariantSettings, base: Variant, ctx: Context) -> Variant:
    from edgekit.passes.quantize import nncf_config

    v = Variant(copy.deepcopy(base.model), copy.deepcopy(base.config), base.factory, list(base.plan), list(base.passes))
    for i, step in enumerate(vs.passes):
        settings = step.settings.model_dump()
        if step.name in ("prune", "quantize") and nncf_config(v.model) is not None:
            raise EdgekitError(f"variant '{vs.name}': {step.name} after quantize", "put prune and quantize before any quantize (distill may follow as QAT)")
        console.print(f"  pass {i + 1}/{len(vs.passes)}: {step.name} {_brief(settings)}")
        if step.name == "prune":
            from edgekit.passes.prune import prune

            v.model, rec = prune(v.model, ctx.spec, calibration=ctx.calibration, **settings)
            config, plan = rec.pop("config"), rec.pop("plan")
            if config is not None and not v.plan:
                v.config = config
            else:
                v.plan.append(plan)
            rec["rebuild"] = "config" if config is not None and not v.plan else "plan"
            console.print(f"    MACs {rec['before']['macs']:,} -> {rec['after']['macs']:,} ({rec['macs_reduction']:.2f}x fewer), "
                          f"params {rec['before']['params']:,} -> {rec['after']['params']:,}")
        elif step.name == "distill":
            from edgekit.passes.distill import distill

            total = settings["epochs"] * len(ctx.train)
            with progress_bar("  distilling", total=total if ctx.show_progress else None) as advance:
                v.model, rec = distill(v.model, ctx.teacher, ctx.train, ctx.val, progress=lambda n, info: advance(n, info=info), **settings)
            console.print(f"    best validation accuracy {rec['best_val_accuracy']:.4f} after {rec['epochs_run']} epoch(s)")
        else:
            from edgekit.passes.quantize import quantize

            with progress_bar("  quantizing") as advance:
                v.model, rec = quantize(v.model, ctx.spec, ctx.calibration, validation=ctx.val, progress=lambda n, info: advance(n, info=info), **settings)
            aa = rec.get("accuracy_aware")
            if aa:
                console.print(f"    accuracy-aware: {aa['note']}", highlight=False)
        v.passes.append(rec)
    return v


def _brief(settings: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in settings.items() if v not in (None, [], {}, "")) + "}"


# ---------------------------------------------------------------- save, export, judge

def _measure(name: str, v: Variant, vs: VariantSettings | None, ctx: Context, vdir: Path, reference: dict | None) -> dict:
    """Save the variant, reload it from disk (what is measured is what was saved), export it, evaluate the
    torch model and the deployed ONNX graph on the test split, and judge it against the budget."""
    from edgekit import checkpoint, export
    from edgekit.evaluate import evaluate
    from edgekit.passes.prune import example_inputs, model_stats
    from edgekit.passes.quantize import nncf_config

    qcfg = nncf_config(v.model)
    quant = {"nncf": qcfg, "nncf_version": _version("nncf")} if qcfg else None
    passes = [_slim(p) for p in v.passes]
    checkpoint.save(v.model, ctx.spec, vdir, v.config, factory=v.factory, pruning_plan=v.plan or None, quantization=quant,
                    passes=passes, variant=name)
    model, spec, _ = checkpoint.load(vdir)
    stats = model_stats(model, example_inputs(spec))
    first = next((p for p in v.passes if p.get("pass") == "prune"), None)
    report = export.to_onnx(model, spec, vdir / "model.onnx", check_parity_on=ctx.val)
    torch_metrics = evaluate(model, ctx.test, spec.class_names)
    deployed = _deployed_metrics(vdir / "model.onnx", spec, ctx.test)
    budget = ctx.recipe.budget_of(vs) if vs is not None else ctx.recipe.budget
    out = {"variant": name, "status": "ok", "reason": "", "precision": report["precision"],
           "passes": passes, "params": stats["params"], "macs": stats["macs"], "size_bytes": report["size_bytes"],
           "weights_bytes": (vdir / "model.safetensors").stat().st_size,
           "branch_stats": {"before": (first or {}).get("before", stats)["branches"], "after": stats["branches"]},
           "precision_map": next((p["precision_map"] for p in reversed(v.passes) if "precision_map" in p), None),
           "torch_metrics": torch_metrics, "deployed_metrics": deployed,
           "export": {k: report[k] for k in ("opset", "nodes", "has_qdq", "op_counts", "parity")},
           "budget": budget.model_dump()}
    if out["precision_map"]:
        atomic_write_json(vdir / "precision_map.json", out["precision_map"])
        kinds = [e["precision"] for e in out["precision_map"].values()]
        out["precision_summary"] = {p: kinds.count(p) for p in sorted(set(kinds))}  # ops per precision: "int8" may be mostly float
    out["judgement"] = _judge(out, reference or out, budget)
    verdict = out["judgement"]["verdict"]
    console.print(f"  {name}: " + ", ".join(f"{b} acc {m['accuracy']:.4f}" for b, m in deployed.items() if "accuracy" in m)
                  + f" (torch {torch_metrics['accuracy']:.4f}); {verdict}", highlight=False)
    return out


def _slim(record: dict) -> dict:
    """A pass record for metrics.json: long per-op rankings and per-epoch details kept short."""
    r = copy.deepcopy(record)
    aa = r.get("accuracy_aware")
    if aa and len(aa.get("ranking", [])) > 20:
        aa["ranking"] = aa["ranking"][:20] + [{"op": f"... {len(aa['ranking']) - 20} more", "kl_alone": None}]
    r.pop("precision_map", None)
    return r


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _deployed_metrics(onnx_path: Path, spec: ModelSpec, test) -> dict:
    """Metrics of the exported graph on each local runtime (ONNX Runtime always, OpenVINO where installed)."""
    from edgekit.backends.base import get_backend
    from edgekit.evaluate import evaluate

    out = {}
    for name in EVAL_BACKENDS:
        backend = get_backend(name)
        ok, why = backend.available()
        if not ok:
            out[name] = {"status": "skipped", "reason": why}
            continue
        with tempfile.TemporaryDirectory(prefix=f"edgekit-{name}-") as d:
            try:
                artifact = backend.compile(onnx_path, spec, {}, Path(d))
                runner = backend.load(artifact)
                out[name] = {"status": "ok", "artifact_size_bytes": artifact.meta.get("size_bytes"), **evaluate(runner, test, spec.class_names)}
            except EdgekitError as e:
                out[name] = {"status": "failed", "reason": e.message}
    return out


def _judge(m: dict, ref: dict, budget) -> dict:
    """Drop vs the reference, per runtime on the same runtime (and for torch), in points; met only if every
    measured deployed graph is within budget."""
    metric, limit = budget.metric, budget.max_accuracy_drop
    drops = {"torch": (ref["torch_metrics"][metric] - m["torch_metrics"][metric]) * 100}
    for b, dm in m["deployed_metrics"].items():
        rm = ref["deployed_metrics"].get(b, {})
        if dm.get("status") == "ok" and rm.get("status") == "ok":
            drops[b] = (rm[metric] - dm[metric]) * 100
    deployed = {b: d for b, d in drops.items() if b != "torch"}
    met = bool(deployed) and all(d <= limit + 1e-9 for d in deployed.values())
    worst = max(deployed.values()) if deployed else float("nan")
    return {"metric": metric, "max_drop_points": limit, "drop_points": {k: round(v, 3) for k, v in drops.items()}, "met": met,
            "verdict": (f"within budget ({worst:.2f} <= {limit} points)" if met else
                        f"NOT within budget (drop {worst:.2f} > {limit} points)" if deployed else "not judged: no deployed graph was measured")}


def _row(m: dict) -> dict:
    """One line of the variant table."""
    if m.get("status") != "ok":
        return {"variant": m["variant"], "status": m.get("status"), "reason": m.get("reason")}
    d = m["deployed_metrics"]
    row = {"variant": m["variant"], "precision": m["precision"], "params": m["params"], "macs": m["macs"], "size_bytes": m["size_bytes"],
           "openvino_ir_bytes": d.get("openvino", {}).get("artifact_size_bytes"),
           "torch_accuracy": m["torch_metrics"]["accuracy"], "torch_f1_macro": m["torch_metrics"]["f1_macro"]}
    for b, dm in d.items():
        if dm.get("status") == "ok":
            row[f"{b}_accuracy"], row[f"{b}_f1_macro"] = dm["accuracy"], dm["f1_macro"]
    row.update(drop_points=m["judgement"]["drop_points"], budget_points=m["judgement"]["max_drop_points"], met=m["judgement"]["met"])
    return row


def print_table(summary: dict) -> None:
    """The variant table: cost, then accuracy / macro-F1 of the torch model and of each deployed graph."""
    from rich.table import Table

    t = Table("variant", "prec", "params", "MMACs", "ONNX MB", "OV IR MB", "torch acc/F1", "ORT acc/F1", "OV acc/F1", "drop pt", "budget")
    for r in summary["table"]:
        if r.get("status"):
            t.add_row(r["variant"], "[red]failed[/]", "", "", "", "", "", "", "", "", (r.get("reason") or "")[:60])
            continue
        pair = lambda k: f"{r[k + '_accuracy']:.4f}/{r[k + '_f1_macro']:.4f}" if k + "_accuracy" in r else "-"  # noqa: E731
        drop = max((v for k, v in r["drop_points"].items() if k != "torch"), default=float("nan"))
        ok = "[green]met[/]" if r["met"] else "[red]NOT met[/]"
        ir = r.get("openvino_ir_bytes")
        t.add_row(r["variant"], r["precision"], f"{r['params'] / 1e6:.2f}M", f"{r['macs'] / 1e6:.1f}", f"{r['size_bytes'] / 1e6:.2f}",
                  f"{ir / 1e6:.2f}" if ir else "-",
                  pair("torch"), pair("onnxruntime"), pair("openvino"), f"{drop:.2f}",
                  f"{r['budget_points']} {ok}" if r["variant"] != REFERENCE_VARIANT else "reference")
    console.print(t)


# ================================================================ the whole run: edgekit run RECIPE

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
        console.print(f"[bold cyan][{self.done}/{self.total}] {stage}[/] {what}  [dim](elapsed {el // 60}:{el % 60:02d}, "
                      f"{self.total - self.done} step(s) left)[/]", highlight=False)


def run(recipe_path, out=None, checkpoint=None, force=(), ssh: dict | None = None, progress: bool = True) -> dict:
    """Every stage of a recipe into one run directory (layout in README "Run directory"): train or load the model,
    compress it into the variants, compile each for every local target, evaluate and benchmark it there, deploy to
    ssh:// targets, then results.json and the report. A stage whose inputs and settings are unchanged is skipped, so
    rerunning after a crash continues where it stopped; `force` names stages to redo. A variant or target that fails
    is recorded as failed with its reason and the rest goes on."""
    from edgekit.rundir import RunLock

    recipe = load_recipe(recipe_path)
    unknown = sorted(set(force) - set(STAGES))
    if unknown:
        raise EdgekitError(f"unknown stage(s) {unknown} for --force", f"stages: {', '.join(STAGES)}")
    out = Path(out) if out else Path("runs") / (recipe.name or Path(recipe_path).stem)
    from edgekit.io import check_writable

    check_writable(out)
    if checkpoint is not None:
        from edgekit.checkpoint import read_config

        read_config(checkpoint)  # a wrong path fails before anything is written
    locals_ = [t for t in recipe.targets if not t.host]
    remotes = [t for t in recipe.targets if t.host]
    steps = Steps(total=2 + 2 * len(locals_) * (1 + len(recipe.variants)) + len(remotes) + 1)
    seconds: dict[str, float] = {}
    with RunLock(out):
        steps.begin("train", "the recipe's model" if checkpoint is None else f"(given: {checkpoint})")
        t0 = time.time()
        source = _source_checkpoint(checkpoint, recipe, out, retrain="train" in force)
        seconds["train"] = time.time() - t0
        steps.begin("compress", f"{len(recipe.variants)} variant(s) + {REFERENCE_VARIANT}")
        t0 = time.time()
        summary = compress(source, recipe, out, progress=progress, force="compress" in force)
        seconds["compress"] = time.time() - t0
        from edgekit import checkpoint as ck

        spec = ModelSpec.model_validate(ck.read_config(source)["spec"])
        test = _data(recipe, spec)[2]
        rows, targets = [], {}
        names = list(summary["variants"])
        t0 = time.time()
        for t in locals_:
            targets[t.label], got = _local_target(t, names, summary, recipe, test, out, force, steps)
            rows += got
        seconds["compile+measure"] = time.time() - t0
        t0 = time.time()
        for t in remotes:
            steps.begin("deploy", f"{len(names)} variant(s) on {t.host}")
            targets[t.label], got = _remote_target(t, names, summary, recipe, out, ssh or {})
            rows += got
        if remotes:
            seconds["deploy"] = time.time() - t0
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


def _local_target(t, names: list[str], summary: dict, recipe: Recipe, test, out: Path, force, steps: Steps) -> tuple[dict, list]:
    """Compile every variant for a backend on this machine, then evaluate and benchmark each artifact."""
    from edgekit.backends.base import get_backend
    from edgekit.env import fingerprint
    from edgekit.rundir import Stages, stage_key

    backend = get_backend(t.backend)
    ok, why = backend.available()
    if not ok:
        why = f"backend '{t.backend}' is not available on this machine: {why} ({backend.install_hint})"
    info = {"backend": t.backend, "location": "local", "status": "ok" if ok else "failed", "reason": "" if ok else why,
            "options": t.options, "fingerprint": fingerprint()}
    rows = []
    stages = Stages(out, force=force)
    for name in names:
        m = summary["variants"][name]
        tdir = out / "targets" / slug(t.label) / name
        onnx = out / "variants" / name / "model.onnx"
        measuring = False
        if not ok or m.get("status") != "ok":
            steps.begin("compile", f"{name} on {t.label}: skipped ({'backend unavailable' if not ok else 'variant failed'})")
            steps.begin("measure", f"{name} on {t.label}: skipped")
            rows.append({"variant": name, "target": t.label, "status": "failed",
                         "reason": why if not ok else f"variant failed: {m.get('reason', '')}"})
            continue
        try:
            steps.begin("compile", f"{name} on {t.label}")
            ckey = stage_key({"backend": t.backend, "options": t.options}, onnx)
            if not stages.done(f"compile/{t.label}/{name}", ckey):
                _compile(t, onnx, tdir / "artifact")
                stages.mark(f"compile/{t.label}/{name}", ckey, [tdir / "artifact" / "artifact.json"])
            steps.begin("measure", f"{name} on {t.label}")
            measuring = True
            mkey = stage_key({"bench": recipe.bench.model_dump(), "data": recipe.data.model_dump()}, tdir / "artifact" / "artifact.json")
            if not stages.done(f"measure/{t.label}/{name}", mkey):
                atomic_write_json(tdir / "result.json", _measure_local(t, tdir / "artifact", name, recipe, test))
                stages.mark(f"measure/{t.label}/{name}", mkey, [tdir / "result.json"])
            else:
                console.print(f"[dim]  {name} on {t.label}: unchanged since the last run, reusing {tdir / 'result.json'}[/]")
            rows.append(_read_json(tdir / "result.json"))
        except EdgekitError as e:
            reason = f"{e.message} ({e.hint})" if e.hint else e.message
            console.print(f"[red]  {name} on {t.label} failed:[/] {reason}", highlight=False)
            if not measuring:  # the compile failed: its measure step is skipped, not left uncounted
                steps.begin("measure", f"{name} on {t.label}: skipped (compile failed)")
            rows.append({"variant": name, "target": t.label, "status": "failed", "reason": reason})
    return info, rows


def _compile(t, onnx: Path, adir: Path) -> None:
    """compile_onnx into a fresh folder (a half-built artifact from a killed run is removed first)."""
    import shutil

    from edgekit.backends import compile_onnx

    if adir.exists():
        shutil.rmtree(adir)
    t0 = time.time()
    art = compile_onnx(onnx, t.backend, adir, dict(t.options))
    art.meta["build_seconds"] = round(time.time() - t0, 3)
    art.save()


def _measure_local(t, adir: Path, name: str, recipe: Recipe, test) -> dict:
    """Accuracy on the test split and latency per batch size, of the artifact as the target runs it."""
    from edgekit.backends.base import Artifact
    from edgekit.bench import benchmark, load_runner, peak_rss_bytes, reset_peak_rss
    from edgekit.evaluate import evaluate

    art = Artifact.load(adir)
    b = recipe.bench
    reset_peak_rss()
    runner, facts = load_runner(adir, t.backend, b.threads)  # facts: size of what the runtime loads (not its ONNX source)
    metrics = evaluate(runner, test, art.spec.class_names)
    bench = benchmark(runner, b.batch_sizes, warmup=b.warmup, min_seconds=b.min_seconds, min_iterations=b.min_iterations)
    return {"variant": name, "target": t.label, "status": "ok", "reason": "", "precision": art.precision, "metrics": metrics,
            "parity": art.meta.get("parity"),
            "latency": {int(k): v["latency_ms"] for k, v in bench["batches"].items()},
            "throughput": {int(k): v["throughput_per_s"] for k, v in bench["batches"].items()},
            "peak_rss_bytes": peak_rss_bytes(), "peak_rss_note": "process peak while this variant was loaded, evaluated and timed",
            "build_seconds": art.meta.get("build_seconds"), "artifact_size_bytes": facts["size_bytes"],
            "runner_settings": runner.settings, "high_variance": bench["high_variance"], "protocol": bench["protocol"]}


def _remote_target(t, names: list[str], summary: dict, recipe: Recipe, out: Path, ssh: dict) -> tuple[dict, list]:
    """Build and benchmark on an ssh:// device (edgekit.deploy; it resumes by itself), as results rows."""
    from edgekit.deploy import deploy

    options = dict(t.options)
    runtime = options.pop("runtime", "tensorrt" if t.backend == "tensorrt" else "onnxruntime")
    ok_names = [n for n in names if summary["variants"][n].get("status") == "ok"]
    info = {"backend": t.backend, "location": t.host, "status": "ok", "reason": "", "options": t.options, "fingerprint": {}}
    bench = {"batch_sizes": recipe.bench.batch_sizes, "warmup": recipe.bench.warmup, "min_seconds": recipe.bench.min_seconds}
    try:
        (s,) = deploy(out, [t.host], runtime=runtime, build=options, bench=bench, variants=ok_names, check=False, **ssh)
    except EdgekitError as e:
        s = {"status": "failed", "reason": e.message, "variants": {}}
    if s.get("results_dir") and (Path(s["results_dir"]) / "fingerprint.json").exists():
        info["fingerprint"] = _read_json(Path(s["results_dir"]) / "fingerprint.json")
    if s.get("status") != "ok" and not s.get("variants"):
        info.update(status="failed", reason=s.get("reason") or "failed")
    rows = []
    for n in names:
        raw = s.get("variants", {}).get(n)
        err = s.get("errors", {}).get(n)
        if raw and raw.get("result"):
            rows.append({**raw["result"], "variant": n, "target": t.label})
        elif summary["variants"][n].get("status") != "ok":
            rows.append({"variant": n, "target": t.label, "status": "failed", "reason": f"variant failed: {summary['variants'][n].get('reason', '')}"})
        else:
            rows.append({"variant": n, "target": t.label, "status": "failed",
                         "reason": (err or {}).get("message") or s.get("reason") or "no result came back from the device"})
    return info, rows


def _assemble(recipe: Recipe, summary: dict, targets: dict, rows: list, out: Path, recipe_path, checkpoint) -> dict:
    """results.json (edgekit-results/1) from the stages' files."""
    import datetime
    import shlex

    import edgekit

    cal = summary.get("calibration") or {}
    variants = {}
    for name, m in summary["variants"].items():
        vs = next((v for v in recipe.variants if v.name == name), None)
        b = recipe.budget_of(vs) if vs is not None else recipe.budget
        variants[name] = {k: m[k] for k in ("status", "reason", "precision", "passes", "params", "macs", "size_bytes", "branch_stats",
                                             "precision_map", "torch_metrics", "precision_summary", "seconds") if m.get(k) is not None}
        variants[name]["budget"] = {"max_accuracy_drop": b.max_accuracy_drop / 100, "metric": b.metric}
    cmd = ["edgekit", "run", str(recipe_path), "--out", str(out)] + (["--checkpoint", str(checkpoint)] if checkpoint else [])
    created = datetime.datetime.fromtimestamp((out / ".lock").stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds") \
        if (out / ".lock").exists() else None
    return {"schema": "edgekit-results/1",
            "run": {"name": recipe.name or out.name, "created": created, "edgekit_version": edgekit.__version__,
                    "commands": [shlex.join(cmd)], "recipe": _read_yaml(out / "recipe.resolved.yaml")},
            "budget": {"max_accuracy_drop": recipe.budget.max_accuracy_drop / 100, "metric": recipe.budget.metric},
            "reference_variant": REFERENCE_VARIANT,
            "calibration": {"name": recipe.calibration.name or "", **cal},
            "variants": variants, "targets": targets, "results": rows}


def _read_yaml(p: Path) -> dict:
    import yaml

    return yaml.safe_load(p.read_text()) if p.exists() else {}
