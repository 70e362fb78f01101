"""Where the model to compress comes from: a checkpoint folder, a user's own model (factory + weights) written as an
edgekit checkpoint, or a reference model trained per the recipe. Every later stage reads the one checkpoint format."""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.recipe import Recipe
from edgekit.spec import ModelSpec
from edgekit.ui import console, escape, progress as progress_bar


def source_checkpoint(checkpoint_path, recipe: Recipe, out: Path, retrain: bool = False, recipe_path=None) -> Path:
    """The checkpoint to compress: the argument, else recipe.model.checkpoint, else one trained per recipe.model.train
    (into RUN/source, reused while its preset, fusion, epochs and data match unless `retrain`)."""
    src = recipe.model
    if checkpoint_path is not None:
        return Path(checkpoint_path)
    if src is None:
        raise EdgekitError("no model to compress", "pass a CHECKPOINT folder, or give `model: {checkpoint: PATH}` or `model: {train: {...}}` in the recipe")
    if src.checkpoint:
        return import_user_model(src, out, recipe, recipe_path) if (src.factory or src.inputs) else checkpoint_path_of(src, recipe_path)
    from edgekit.checkpoint import read_config
    from edgekit.train import train_reference

    target = out / "source"
    t = src.train
    if (target / "config.json").exists() and not retrain:
        cfg = read_config(target)
        had = cfg.get("training", {})
        if (had.get("preset"), had.get("fusion")) == (t.preset, t.fusion) and t.epochs in (None, had.get("epochs")):
            return target
    console.print(escape(f"training a {t.preset}/{t.fusion} reference model into {target}"), highlight=False)
    with progress_bar(f"training {t.preset}/{t.fusion}") as advance:
        train_reference(t.preset, t.fusion, target, fsdd=getattr(recipe.data, "fsdd", None), seed=recipe.data.seed, epochs=t.epochs, text_kind=t.text,
                        progress=lambda n, loss: advance(n, info=f"loss {loss:.3f}"))
    return target


def checkpoint_path_of(src, recipe_path=None) -> Path:
    """`model.checkpoint`; a relative path is relative to the recipe's folder, like the recipe's data paths."""
    path = Path(src.checkpoint).expanduser()
    return Path(recipe_path).resolve().parent / path if recipe_path and not path.is_absolute() else path


def import_user_model(src, out: Path, recipe: Recipe, recipe_path=None) -> Path:
    """A user model (factory + weights [+ inputs]) written as an edgekit checkpoint, so every stage reads one format."""
    from edgekit import checkpoint

    path = checkpoint_path_of(src, recipe_path)
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
        spec = _spec_from_data(src, recipe, recipe_path)
        cfg_model, weights = src.config or {}, path
    model = checkpoint.resolve_factory(src.factory or checkpoint.DEFAULT_FACTORY)(cfg_model)
    try:
        model.load_state_dict(checkpoint.read_state(weights), strict=True)
    except RuntimeError as e:
        raise EdgekitError(f"weights {weights} do not fit {src.factory}(config): {str(e).splitlines()[0][:200]}", "check model.factory and model.config") from e
    target = out / "source"
    checkpoint.save(model, spec, target, cfg_model, factory=src.factory or checkpoint.DEFAULT_FACTORY, imported_from=str(path))
    return target


def _spec_from_data(src, recipe: Recipe, recipe_path=None) -> ModelSpec:
    """The spec of bare weights: the recipe's inputs, with the class names and per-input preprocessing of the
    recipe's data (resolved once here, so a mismatch between model and data fails before anything is written)."""
    from edgekit.data import resolve
    from edgekit.data.resolver import record_preprocessing
    from edgekit.spec import OutputSpec

    names = list(src.class_names or getattr(recipe.data, "classes", None) or [])
    spec = ModelSpec(inputs=src.inputs, outputs=[OutputSpec(name="logits", shape=[None, len(names) or None])], class_names=names,
                     modalities=list(dict.fromkeys(i.modality for i in src.inputs if i.modality)))
    base_dir = Path(recipe_path).resolve().parent if recipe_path else Path.cwd()
    splits = resolve(recipe.data, spec, base_dir=base_dir, origin=str(recipe_path or "the recipe"))
    spec = record_preprocessing(spec, splits)
    if getattr(recipe.data, "missing", None):  # how each modality is absent for this model, for every later stage
        from edgekit.data.missing import record

        spec = record(spec, dict(recipe.data.missing))
    return spec.model_copy(update={"outputs": [OutputSpec(name="logits", shape=[None, len(spec.class_names)])]})
