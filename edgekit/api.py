"""The Python API (re-exported by `edgekit`): the CLI's stages as functions, for notebooks and scripts.

    import edgekit
    model, spec = edgekit.load("model/")                          # an edgekit checkpoint
    summary = edgekit.compress(model, data, recipe, spec=spec, out="runs/nb")   # -> the variants, judged
    art = edgekit.compile("runs/nb/variants/int8/model.onnx", "openvino", "runs/nb/int8-ov")
    edgekit.bench(art.path)                                       # latency, the CLI's protocol

`data` is any iterable of (inputs: dict[str, array], label), a dict {"train": ..., "val": ..., "test": ...} of such
iterables, or a recipe `data:` block (a mapping with `format:`); `recipe` is a recipe file, a mapping or a Recipe.
Every function validates as the CLI does and raises `edgekit.errors.EdgekitError` (message + hint) for a mistake
the caller can fix. Nothing here is a second implementation: each call goes through the stage the CLI uses.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from edgekit.errors import EdgekitError

# In-memory objects handed to the stages by reference: a model without a factory of its own is rebuilt by copying
# it, data given as Python objects is read back through the `python` loader. Both live only in this process.
_MODELS: dict[str, object] = {}
_DATA: dict[str, object] = {}
MEMORY_FACTORY = "edgekit.api:memory_model"
MEMORY_LOADER = "edgekit.api:memory_data"


def load(path, trust_code: bool = False):
    """(model in eval mode, its ModelSpec) from an edgekit checkpoint folder (model.safetensors + config.json) or a
    run's variant folder. A factory that is not edgekit's own runs only with `trust_code=True` (README "Trust")."""
    from edgekit import checkpoint

    model, spec, _ = checkpoint.load(path, trust_code=trust_code)
    return model, spec


def compress(
    model,
    data=None,
    recipe=None,
    *,
    spec=None,
    inputs=None,
    class_names=None,
    missing=None,
    out="runs/api",
    factory: str | None = None,
    config: dict | None = None,
    only=None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Compress `model` (a torch nn.Module) into the recipe's variants, judged on `data`; returns the compress summary
    (also RUN/compress.json: per variant accuracy, missing-modality accuracy, size, MACs, status).

    model:  an nn.Module, or a checkpoint path (then `spec`/`inputs` come from it).
    data:   an iterable of (inputs, label), a dict of such per split (train/val/test; missing ones are carved out per
            the recipe's data.split), an ArrayDataset, or a recipe `data:` block; None: the recipe's data section.
    recipe: a recipe YAML path, a mapping (variants, budget, calibration, targets...) or a Recipe.
    spec:   the model's ModelSpec; or `inputs` (InputSpec or dicts: name, shape, dtype, modality) + `class_names`.
    missing: how each modality is absent for this model (the recipe's data.missing shape, edgekit.data.missing).
    factory + config: 'module:function' that rebuilds the model (makes the run directory reusable from another
            process); without it the run's checkpoints can be reloaded only in this Python process.
    """
    from edgekit.compress import compress as compress_stage
    from edgekit.recipe import Recipe, load_recipe, parse_recipe

    out = Path(out)
    if isinstance(model, (str, Path)):
        model, spec = load(model)
    recipe_path = None
    if isinstance(recipe, (str, Path)):
        recipe_path = Path(recipe)
        recipe = load_recipe(recipe_path)
    if recipe is None:
        raise EdgekitError(
            "compress needs a recipe",
            "pass recipe='recipes/quickstart.yaml', a dict such as "
            "{'variants': [{'name': 'int8', 'passes': ['quantize']}]}, or a Recipe",
        )
    body = recipe.model_dump(by_alias=True, exclude_none=True) if isinstance(recipe, Recipe) else dict(recipe)
    body.pop("model", None)  # the model is the argument
    if data is not None:
        body["data"] = _data_block(data, missing)
    elif missing is not None:
        body["data"] = {**dict(body.get("data") or {}), "missing": missing}
    recipe = parse_recipe(body, str(recipe_path or "the recipe"))
    model = _check_model(model)
    spec = _spec(model, spec, inputs, class_names, recipe, recipe_path)
    from contextlib import nullcontext

    from edgekit._optional import trusted

    with trusted([factory]) if factory else nullcontext():  # a factory passed in code is the caller's own instruction
        source = _save_source(model, spec, out, factory, config)
        return compress_stage(source, recipe, out, progress=progress, only=only, force=force, recipe_path=recipe_path)


def export(model, path, *, spec=None, data=None, opset: int = 17, trust_code: bool = False) -> dict:
    """One ONNX file (dynamic batch; Q/DQ for an INT8 model) with its parity checked against the torch model by ONNX
    Runtime; returns the export report. `model`: an nn.Module (with `spec`) or a checkpoint path. `data`: samples to
    check parity on (iterable of (inputs, label) or ArrayDataset; default: held-out data for edgekit's own models,
    else random inputs)."""
    from edgekit.export import export_checkpoint, to_onnx

    if isinstance(model, (str, Path)):
        if data is None:
            return export_checkpoint(model, path, opset=opset)
        model, spec = load(model, trust_code=trust_code)
    model = _check_model(model)
    if spec is None:
        raise EdgekitError(
            "export of an nn.Module needs its spec", "pass spec=... (edgekit.spec.ModelSpec), e.g. from edgekit.load"
        )
    return to_onnx(model, spec, path, opset=opset, check_parity_on=None if data is None else _array_dataset(data, spec))


def compile(onnx_path, backend: str, out, *, precision: str = "auto", threads: int | None = None, **options):  # noqa: A001
    """ONNX -> a backend artifact (onnxruntime | openvino | tensorrt), parity-checked against the torch model;
    returns the Artifact (its .path, .precision and .meta['parity'])."""
    from edgekit.backends import compile_onnx

    return compile_onnx(onnx_path, backend, out, {"precision": precision, "threads": threads, **options})


def bench(
    artifact,
    *,
    backend: str | None = None,
    batch_sizes=(1, 8),
    warmup: int = 10,
    iterations: int | None = None,
    min_seconds: float = 2.0,
    threads: int | None = None,
    save: bool = True,
) -> dict:
    """Latency (min/mean/median/p90/p95/p99/max, CV), throughput, cold start and memory of a compiled artifact (or a
    checkpoint with backend='torch'), measured as `edgekit bench` does; saved as bench-<backend>.json beside it."""
    from edgekit.bench import bench_artifact, save as save_result

    result = bench_artifact(
        artifact,
        backend,
        batch_sizes=tuple(batch_sizes),
        warmup=warmup,
        iterations=iterations,
        min_seconds=min_seconds,
        threads=threads,
    )
    if save:
        result["saved"] = str(save_result(result))
    return result


def evaluate(model, data, *, spec=None, class_names=None, missing: bool = True) -> dict:
    """Accuracy, macro-F1, per-class F1 and (with `missing`) accuracy with each modality absent, of an nn.Module, a
    Runner or a checkpoint path on `data` (iterable of (inputs, label) or ArrayDataset), as `edgekit evaluate` does."""
    from edgekit.data.missing import policy_for
    from edgekit.evaluate import evaluate as evaluate_metrics

    if isinstance(model, (str, Path)):
        model, spec = load(model)
    if spec is None and class_names is None:
        raise EdgekitError("evaluate needs the class names", "pass spec=... (from edgekit.load) or class_names=[...]")
    ds = _array_dataset(data, spec)
    names = list(class_names or spec.class_names)
    return evaluate_metrics(
        model, ds, names, missing=missing, policy=policy_for(spec, ds) if spec is not None else None
    )


def report(run_dir) -> dict:
    """report.md, report.html and the plots from RUN_DIR/results.json; returns their paths and the recommendation."""
    from edgekit.report import write_report

    return write_report(run_dir)


def run(recipe, out=None, *, checkpoint=None, force=()) -> dict:
    """Every stage of a recipe file (`edgekit run RECIPE`): compress, compile, measure, deploy, report."""
    from edgekit.pipeline import run as run_pipeline

    return run_pipeline(recipe, out, checkpoint, tuple(force))


# ---------------------------------------------------------------- in-memory model and data, by reference


def memory_model(config: dict):
    """The factory of a model handed over in memory: a copy of it (its weights are then loaded from the checkpoint)."""
    key = config.get("memory_model") if isinstance(config, Mapping) else None
    if key not in _MODELS:
        raise EdgekitError(
            "this checkpoint was made from an in-memory model in another Python process",
            "reload it in the process that made it, or compress with factory='module:function' and config={...}",
        )
    return copy.deepcopy(_MODELS[key])


def memory_data(key: str):
    """The `python` loader of data handed over in memory."""
    if key not in _DATA:
        raise EdgekitError(
            "this recipe names in-memory data of another Python process", "pass the data again to edgekit.compress"
        )
    return _DATA[key]


def _check_model(model):
    from torch import nn

    if not isinstance(model, nn.Module):
        raise EdgekitError(
            f"the model is a {type(model).__name__}, not a torch.nn.Module",
            "pass the nn.Module itself, or a checkpoint folder path",
        )
    return model


def _data_block(data, missing) -> dict:
    """A recipe data block for `data`: given as one, or a `python` loader reading the objects back."""
    if isinstance(data, Mapping) and ("format" in data or "dataset" in data):
        block = dict(data)
    elif hasattr(data, "model_dump") and hasattr(data, "format"):  # a parsed DataSettings
        block = data.model_dump(exclude_none=True)
    else:
        if isinstance(data, Mapping):
            unknown = [k for k in data if str(k).lower() not in ("train", "val", "validation", "test")]
            if unknown:
                raise EdgekitError(
                    f"data has a key {unknown[0]!r} that is neither a split nor `format`",
                    "pass {'train': ..., 'val': ..., 'test': ...}, one iterable of (inputs, label), or a data block",
                )
        elif not isinstance(data, Iterable) or isinstance(data, (str, bytes, Path)):
            raise EdgekitError(
                f"data is a {type(data).__name__}, not an iterable of (inputs: dict, label)",
                "pass a list/generator of (dict of arrays, label), a dict of splits, or a recipe data block",
            )
        key = uuid.uuid4().hex
        _DATA[key] = {k: list(v) for k, v in data.items()} if isinstance(data, Mapping) else list(data)
        block = {"format": "python", "loader": MEMORY_LOADER, "options": {"key": key}}
    if missing is not None:
        block["missing"] = missing
    return block


def _spec(model, spec, inputs, class_names, recipe, recipe_path):
    """The model's spec: given, or from `inputs` + class names (the data's classes when not given), with the data's
    per-input preprocessing and the recipe's missing-modality policy recorded (what every later stage reads)."""
    from edgekit.data import resolve
    from edgekit.data.missing import record
    from edgekit.data.resolver import record_preprocessing
    from edgekit.spec import InputSpec, ModelSpec, OutputSpec

    if spec is None:
        if not inputs:
            raise EdgekitError(
                "compress needs to know the model's inputs",
                "pass spec=ModelSpec(...) or inputs=[{'name': 'pixels', 'shape': [None, 1, 28, 28], 'modality': 'image'}, ...]",
            )
        try:
            ins = [i if isinstance(i, InputSpec) else InputSpec.model_validate(i) for i in inputs]
        except ValueError as e:
            raise EdgekitError(
                f"bad model input: {str(e).splitlines()[-1].strip()[:200]}",
                "each input is {name, shape (None for the batch axis), dtype, modality}",
            ) from None
        names = list(class_names or getattr(recipe.data, "classes", None) or [])
        spec = ModelSpec(
            inputs=ins,
            outputs=[OutputSpec(shape=[None, len(names) or None])],
            class_names=names,
            modalities=list(dict.fromkeys(i.modality for i in ins if i.modality)),
        )
    elif recipe.data.format == "avdigits":  # a given spec of a model trained on the built-in data is complete
        return record(spec, dict(recipe.data.missing)) if recipe.data.missing else spec
    base_dir = Path(recipe_path).resolve().parent if recipe_path else Path.cwd()
    splits = resolve(recipe.data, spec, base_dir=base_dir, origin=str(recipe_path or "edgekit.compress"))
    spec = record_preprocessing(spec, splits)
    spec = spec.model_copy(
        update={"outputs": [OutputSpec(name=spec.outputs[0].name, shape=[None, len(spec.class_names)])]}
    )
    if getattr(recipe.data, "missing", None):
        spec = record(spec, dict(recipe.data.missing))
    return spec


def _save_source(model, spec, out: Path, factory: str | None, config: dict | None) -> Path:
    """The model as an edgekit checkpoint in RUN/source (every stage reads that one format)."""
    from edgekit import checkpoint
    from edgekit.io import check_writable

    check_writable(out / "source")
    if factory:
        return checkpoint.save(
            model, spec, out / "source", dict(config or {}), factory=factory, origin="edgekit.compress"
        )
    key = uuid.uuid4().hex
    _MODELS[key] = copy.deepcopy(model).eval()
    return checkpoint.save(
        model, spec, out / "source", {"memory_model": key}, factory=MEMORY_FACTORY, origin="edgekit.compress"
    )


def _array_dataset(data, spec):
    """An ArrayDataset of model-ready arrays from one iterable of (inputs, label) (or an ArrayDataset as it is)."""
    import numpy as np

    from edgekit.data import ArrayDataset
    from edgekit.data.missing import MissingPolicy

    if isinstance(data, ArrayDataset):
        return data
    items = list(data) if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)) else None
    if not items:
        raise EdgekitError(
            f"data is a {type(data).__name__} with no (inputs, label) items",
            "pass a non-empty list of (dict of arrays, label)",
        )
    bad = next(
        (
            n
            for n, it in enumerate(items)
            if not (isinstance(it, (tuple, list)) and len(it) == 2 and isinstance(it[0], Mapping))
        ),
        None,
    )
    if bad is not None:
        raise EdgekitError(
            f"data item {bad + 1} is a {type(items[bad]).__name__}, not (inputs: dict, label)",
            "yield (dict of arrays, int label)",
        )
    names = spec.input_names if spec is not None else list(items[0][0])
    lacking = [n for n in names if n not in items[0][0]]
    if lacking:
        raise EdgekitError(f"data items lack the model input(s) {lacking}", f"the model takes {', '.join(names)}")
    dtypes = {i.name: i.dtype for i in spec.inputs} if spec is not None else {}
    arrays = {n: np.stack([np.asarray(x[n], dtype=dtypes.get(n)) for x, _ in items]) for n in names}
    names_of = list(spec.class_names) if spec is not None else []
    unknown = next((y for _, y in items if isinstance(y, str) and y not in names_of), None)
    if unknown is not None:
        raise EdgekitError(
            f"label {unknown!r} is not one of the model's classes", f"classes: {', '.join(names_of) or '(none given)'}"
        )
    labels = np.array([names_of.index(y) if isinstance(y, str) else int(y) for _, y in items], np.int64)
    mods = tuple(spec.modalities) if spec is not None and spec.modalities else ()
    return ArrayDataset(arrays, labels, mods, MissingPolicy.from_spec(spec) if spec is not None else None)
