"""The compress stage: one trained model -> the recipe's variants, each saved, exported and judged.

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
from edgekit.guard import refuse_overwrite
from edgekit.io import atomic_write_json, atomic_write_text
from edgekit.judge import budget_of, judge_variant, table_row
from edgekit.recipe import (
    REFERENCE_VARIANT,
    Recipe,
    VariantSettings,
    dump_recipe,
    load_recipe,
    resolve_calibration,
    trust_recipe_code,
)
from edgekit.source import source_checkpoint
from edgekit.spec import ModelSpec
from edgekit.ui import console, escape, progress as progress_bar

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

def compress(checkpoint_path, recipe, out_dir, progress: bool = True, only: list[str] | None = None, force: bool = False,
             recipe_path=None) -> dict:
    """Turn one trained model into the recipe's variants in `out_dir` (see module docstring); returns the
    summary also written to RUN/compress.json. Variants whose inputs and settings are unchanged since a
    previous run are reused, unless `force` (which redoes only the `only` variants when those are given).
    The recipe's own code references are trusted while it runs (README "Trust"). Relative data paths resolve against
    the recipe's folder (`recipe_path` when `recipe` is a Recipe object; else the current folder)."""
    path = recipe_path if isinstance(recipe, Recipe) else recipe
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(path)
    with trust_recipe_code(recipe, path):
        return _compress(checkpoint_path, recipe, out_dir, progress, only, force, path)


def _compress(checkpoint_path, recipe: Recipe, out_dir, progress: bool, only: list[str] | None, force: bool, path=None) -> dict:
    from edgekit.data.calibration import check as check_calibration, describe
    from edgekit.rundir import RunLock, Stages, stage_key

    recipe = recipe.model_copy(update={"calibration": resolve_calibration(recipe.calibration)})
    out = Path(out_dir)
    if only:
        unknown = set(only) - {v.name for v in recipe.variants}
        if unknown:
            raise EdgekitError(f"no variant named {sorted(unknown)} in the recipe", f"choose among: {', '.join(v.name for v in recipe.variants)}")
    if checkpoint_path is not None:
        from edgekit.checkpoint import read_config

        read_config(checkpoint_path)  # a wrong path fails before anything is written
    refuse_run_over_inputs(out, recipe, path, checkpoint_path)
    with RunLock(out):
        source = source_checkpoint(checkpoint_path, recipe, out, recipe_path=path)
        from edgekit import checkpoint

        model, spec, cfg = checkpoint.load(source)
        train, val, test = splits = _data(recipe, spec, path)
        cal = recipe.calibration
        from edgekit.data.calibration import sample

        required = tuple(i.modality for i in spec.inputs if i.modality and not i.optional)
        calibration = sample({"train": train, "val": val}[cal.split], cal.size, cal.stratify, cal.missing, cal.seed, required)
        check_calibration(calibration, spec)
        # every input is valid: only now are the run's files replaced (a compress that fails leaves the old ones)
        atomic_write_text(out / "recipe.resolved.yaml", dump_recipe(recipe))
        eval_samples = _write_eval_samples(out, test)
        ctx = Context(spec, model, train, val, test, calibration, recipe, progress)
        stages = Stages(out, force=([f"compress/{n}" for n in only] if only else ["compress"]) if force else [])
        src_files = [p for p in (Path(source) / "model.safetensors", Path(source) / "config.json") if p.exists()]
        common = {"recipe_data": recipe.data.model_dump(), "calibration": cal.model_dump(), "targets": [t.model_dump() for t in recipe.targets],
                  "eval_samples": eval_samples["sha256"],  # the data's files changed under the same settings: redo
                  "parity": recipe.parity.model_dump()}

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
                console.print(f"[dim]{escape(f'{name}: unchanged since the last run, reusing {vdir}')}[/]")
                results[name] = read_json(vdir / "metrics.json")
                variants[name] = None  # loaded lazily if a later variant starts from it
                continue
            stages.redo(f"compress/{name}", vdir / "metrics.json", out / "compress.json")
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
                console.print(f"[red]{escape(name)} failed:[/] {escape(reason)}", highlight=False)
                variants[name] = None
            metrics["key"] = key
            atomic_write_json(vdir / "metrics.json", metrics)
            if metrics["status"] == "ok":
                stages.mark(f"compress/{name}", key, [vdir / "model.onnx", vdir / "metrics.json"])
            results[name] = metrics
        for name in [REFERENCE_VARIANT] + [v.name for v in recipe.variants]:  # variants not redone this time (--variant)
            if name not in results and (out / "variants" / name / "metrics.json").exists():
                results[name] = read_json(out / "variants" / name / "metrics.json")
        order = [REFERENCE_VARIANT] + [v.name for v in recipe.variants]
        results = {n: results[n] for n in order if n in results}
        summary = {"stage": "compress", "source": str(source), "recipe": recipe.name, "data": splits.describe(), "eval_samples": eval_samples, "calibration": describe(calibration, spec.class_names),
                   "reference_variant": REFERENCE_VARIANT, "budget_unit": "accuracy points", "variants": results,
                   "table": [table_row(m) for m in results.values()]}
        atomic_write_json(out / "compress.json", summary)
    return summary


def run_outputs(out: Path, recipe: Recipe, checkpoint_path=None) -> list[Path]:
    """What compress writes or replaces in a run directory (a user model imported as RUN/source included)."""
    src = recipe.model
    imported = checkpoint_path is None and src is not None and src.checkpoint and (src.factory or src.inputs)
    return [out / n for n in ("recipe.resolved.yaml", "compress.json", "eval_samples.npz", "variants", ".stages")] + ([out / "source"] if imported else [])


def run_inputs(recipe: Recipe, recipe_path=None, checkpoint_path=None) -> list[Path]:
    """The files a run reads that its outputs must not overwrite: the recipe, its calibration definition, the checkpoint."""
    found = [recipe_path]
    if recipe.calibration.name:
        from edgekit.data.calibration import definition_path

        found.append(definition_path(recipe.calibration.name))
    return found + _checkpoint_files(recipe, recipe_path, checkpoint_path)


def _checkpoint_files(recipe: Recipe, recipe_path=None, checkpoint_path=None) -> list[Path]:
    from edgekit.checkpoint import input_files
    from edgekit.source import checkpoint_path_of

    ck = checkpoint_path if checkpoint_path is not None else (checkpoint_path_of(recipe.model, recipe_path) if recipe.model and recipe.model.checkpoint else None)
    return input_files(ck) if ck is not None else []


def refuse_run_over_inputs(out: Path, recipe: Recipe, recipe_path=None, checkpoint_path=None, outputs=(), inputs=()) -> None:
    """No run output overwrites what the run reads (edgekit.guard), and the run directory is not the checkpoint's
    folder (nor one holding it), except for RUN/source, where edgekit itself puts a model it trained or imported."""
    from edgekit.guard import clash

    reads = run_inputs(recipe, recipe_path, checkpoint_path) + [p for p in inputs if p is not None]
    refuse_overwrite(run_outputs(out, recipe, checkpoint_path) + list(outputs), reads, "the run's output")
    mine = out / "source"
    for f in _checkpoint_files(recipe, recipe_path, checkpoint_path):
        if clash([out], [f]) and not clash([mine], [f]):
            raise EdgekitError(f"the run directory {out} holds the checkpoint file {f}: a run writes its own files there",
                               "give --out a folder of its own (e.g. runs/<name>); the checkpoint stays where it is")


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


def read_json(p: Path) -> dict:
    from edgekit.io import load_json

    return load_json(p, "variant record")


def _reload(vdir: Path) -> Variant:
    from edgekit import checkpoint

    model, _, cfg = checkpoint.load(vdir)
    return Variant(model, cfg["model"], cfg.get("factory", checkpoint.DEFAULT_FACTORY), list(cfg.get("pruning_plan") or []),
                   list(cfg.get("passes") or []))


# ---------------------------------------------------------------- data of the stage

def _data(recipe: Recipe, spec: ModelSpec, path=None):
    """train/val/test of the recipe's data for this model (edgekit.data.resolve: the same splits every stage uses);
    relative paths resolve against the recipe's folder (the current one for a Recipe built in Python)."""
    from edgekit.data import resolve

    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    splits = resolve(recipe.data, spec, base_dir=base_dir, origin=str(path or "the recipe"))
    for note in splits.notes:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    return splits


def _write_eval_samples(out: Path, test) -> dict:
    """The resolved test split, written once into the run: measure and deploy judge on exactly these samples
    instead of rebuilding the dataset. Returns its entry for compress.json."""
    from edgekit.io import file_sha256

    target = out / "eval_samples.npz"
    test.save(target)
    return {"path": target.name, "sha256": file_sha256(target), "samples": len(test)}


# ---------------------------------------------------------------- passes

def _run_passes(vs: VariantSettings, base: Variant, ctx: Context) -> Variant:
    from edgekit import passes
    from edgekit.passes.base import PassContext
    from edgekit.passes.quantize import nncf_config

    v = Variant(copy.deepcopy(base.model), copy.deepcopy(base.config), base.factory, list(base.plan), list(base.passes))
    pctx = PassContext(ctx.spec, ctx.teacher, ctx.train, ctx.val, ctx.calibration, config=v.config, pruning_plan=v.plan,
                       progress=lambda label, total=None: progress_bar(f"  {label}", total=total if ctx.show_progress else None))
    for i, step in enumerate(vs.passes):
        pass_module = passes.get(step.name)
        if getattr(pass_module, "ON_QUANTIZED", None) is None and nncf_config(v.model) is not None:
            raise EdgekitError(f"variant '{vs.name}': {step.name} after quantize", passes.refused_after_quantize_hint())
        console.print(escape(f"  pass {i + 1}/{len(vs.passes)}: {step.name} {_brief(step.settings.model_dump())}"), highlight=False)
        v.model, rec = pass_module.run(v.model, step.settings, pctx)
        v.config, v.plan = pctx.config, pctx.pruning_plan  # a pass that changed the architecture says how to rebuild it
        line = pass_module.summary(rec)
        if line:
            console.print(f"    {escape(line)}", highlight=False)
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
    report = export.to_onnx(model, spec, vdir / "model.onnx", check_parity_on=ctx.val, min_top1=ctx.recipe.parity.min_top1.model_dump())
    torch_metrics = evaluate(model, ctx.test, spec.class_names)
    deployed = _deployed_metrics(vdir / "model.onnx", spec, ctx.test)
    budget = budget_of(vs.budget if vs is not None else None, ctx.recipe.budget)
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
    out["judgement"] = judge_variant(out, reference or out, budget)
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
