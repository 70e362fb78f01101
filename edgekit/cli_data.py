"""`edgekit data ...`: commands about datasets (what the resolver sees, exporting the built-in one as files)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgekit.ui import console, escape, progress

app = typer.Typer(
    help="Datasets: check what a recipe's data section gives, export the built-in avdigits as files.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command("export-avdigits")
def export_avdigits(
    out: Path = typer.Argument(..., metavar="DIR", help="folder to write (must be new or empty)"),
    fsdd: Optional[str] = typer.Option(
        None,
        help="folder of FSDD spoken-digit WAVs (default: $EDGEKIT_FSDD; "
        "without it speech is synthesized with espeak-ng)",
    ),
    seed: int = typer.Option(0, help="avdigits seed (the same seed gives the same samples)"),
    force: bool = typer.Option(False, "--force", help="replace DIR if it holds an earlier export"),
):
    """Write avdigits as real files: 16-bit PNG images, .npy log-mel features, sentences and labels in manifest.jsonl,
    plus recipe-data.yaml (a ready `data:` section that reproduces the built-in arrays)."""
    from edgekit.data.avdigits import resolve_fsdd
    from edgekit.data.export_files import export_avdigits as export

    resolve_fsdd(fsdd)  # a wrong folder fails before the (slow) build
    with progress("exporting avdigits", total=None) as advance:
        done = export(out, fsdd=fsdd, seed=seed, force=force, progress=advance)
    console.print(
        f"{done['path']}: " + ", ".join(f"{k} {v}" for k, v in done["counts"].items()) + " samples; "
        f"manifest {done['manifest']}, data section {done['recipe_data']}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("check")
def check(
    recipe: Path = typer.Argument(..., metavar="RECIPE", help="recipe YAML whose data: section to resolve"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """What the resolver gives every stage: counts per split and class, input shapes and dtypes after
    preprocessing, how each modality goes missing, and the first problem found (exit 2)."""
    import json

    from edgekit.data import resolve
    from edgekit.errors import EdgekitError
    from edgekit.recipe import load_recipe, trust_recipe_code

    r = load_recipe(recipe)
    spec = _recipe_spec(r, recipe.resolve().parent)
    try:
        with trust_recipe_code(r, recipe):
            splits = resolve(r.data, spec, base_dir=recipe.resolve().parent, origin=str(recipe))
    except EdgekitError as e:
        if as_json:
            print(json.dumps({"ok": False, "problem": e.message, "hint": e.hint}))
        raise
    d = splits.describe()
    if as_json:
        print(json.dumps({"ok": True, **d}, indent=2))
        return
    from rich.table import Table

    console.print(
        f"[bold]{d['source']}[/] (format {d['format']}), {len(d['classes'])} classes, model: "
        f"{'inputs of ' + ', '.join(spec.input_names) if spec else 'none given (no shape checks)'}",
        highlight=False,
    )
    t = Table("class", *[f"{s} ({v['size']})" for s, v in d["splits"].items()])
    for c in d["classes"]:
        t.add_row(c, *[str(v["classes"][c]) for v in d["splits"].values()])
    console.print(t)
    t = Table("input", "shape", "dtype", "preprocessing")
    for n, v in d["inputs"].items():
        t.add_row(n, str(v["shape"]), v["dtype"], v["preprocess"])
    console.print(t)
    for m, how in d["missing"].items():
        console.print(escape(f"missing {m}: {how if isinstance(how, str) else json.dumps(how)}"), highlight=False)
    if d.get("truncated"):
        console.print(
            "truncated to max_length: " + ", ".join(f"{n} {k} text(s)" for n, k in d["truncated"].items()),
            highlight=False,
        )
    console.print(
        f"decoded {d.get('decoded', 0)} column(s), {d.get('cache_hits', 0)} read from the cache", highlight=False
    )
    for note in d["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    console.print("[green]no problems found[/]")


def _recipe_spec(r, base_dir: Path):
    """The model spec the data must fit: a checkpoint's, or the recipe's model.inputs; None when neither is given."""
    from edgekit.spec import ModelSpec, OutputSpec

    m = r.model
    if m is None:
        return None
    if m.checkpoint:
        p = Path(m.checkpoint)
        p = p if p.is_absolute() else base_dir / p
        if (p / "config.json").is_file():
            from edgekit.checkpoint import read_config

            return ModelSpec.model_validate(read_config(p)["spec"])
    if m.inputs:
        names = m.class_names or []
        return ModelSpec(
            inputs=m.inputs,
            outputs=[OutputSpec(name="logits", shape=[None, len(names) or None])],
            class_names=names,
            modalities=list(dict.fromkeys(i.modality for i in m.inputs if i.modality)),
        )
    return None
