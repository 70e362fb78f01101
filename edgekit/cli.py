"""The `edgekit` command. Each command is a few lines that call the library; errors the user can fix are
one line plus a hint (exit 2), anything else is reported as a bug (exit 1, traceback with EDGEKIT_DEBUG=1)."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from edgekit.errors import ISSUES_URL, EdgekitError
from edgekit.ui import console, progress

app = typer.Typer(help="Compress, compile and benchmark multimodal fusion models for edge devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})

FSDD_HELP = "folder of FSDD spoken-digit WAVs (default: $EDGEKIT_FSDD; without it speech is synthesized with espeak-ng)"


@app.callback()
def _options(verbose: bool = typer.Option(False, "-v", "--verbose", help="debug logs")):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """What this machine can do: library versions, backends (and why one is missing), CPU and ISA, GPUs."""
    from edgekit.env import backends_status, fingerprint

    info = fingerprint()
    info["backends"] = backends_status()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    from rich.table import Table

    cpu = info["cpu"]
    console.print(f"[bold]edgekit doctor[/]  Python {info['python']} on {info['os']}")
    console.print(f"CPU: {cpu['model']} ({cpu['arch']}), {cpu['usable_cores']} usable / {cpu['logical_cores']} logical cores")
    console.print("ISA: " + "  ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu["isa"].items()))
    console.print("GPUs: " + (", ".join(g["name"] for g in info["gpus"]) or "none found (nvidia-smi not present or no device)"))
    t = Table("library", "version")
    for lib, v in info["libraries"].items():
        t.add_row(lib, v or "[dim]not installed[/]")
    console.print(t)
    t = Table("backend", "available", "why not / how to install")
    for name, b in info["backends"].items():
        t.add_row(name, "[green]yes[/]" if b["available"] else "[red]no[/]", "" if b["available"] else f"{b['reason']}  ->  {b['install']}")
    console.print(t)


@app.command()
def train(out: Path = typer.Option(Path("model"), "--out", "-o", help="checkpoint folder to write"),
          preset: str = typer.Option("tiny", help="model size: tiny (tests, ~1 min) or base (realistic edge model)"),
          fusion: str = typer.Option("attention", help="early | late | hierarchical | attention"),
          text: str = typer.Option("transformer", help="text encoder: transformer | lstm"),
          epochs: Optional[int] = typer.Option(None, help="default: 12 for tiny, 10 for base"),
          fsdd: Optional[str] = typer.Option(None, help=FSDD_HELP),
          seed: int = typer.Option(0, help="seed for data and training (deterministic)")):
    """Train a reference fusion model on the built-in avdigits data and save a safe checkpoint."""
    from edgekit.models import preset_config
    from edgekit.train import DEFAULT_EPOCHS, train_reference
    from edgekit.data.avdigits import resolve_fsdd

    preset_config(preset, fusion, text_kind=text)  # bad names fail before any slow work
    resolve_fsdd(fsdd)
    n_epochs = epochs or DEFAULT_EPOCHS.get(preset, 10)
    with progress(f"training {preset}/{fusion}", total=None) as advance:
        cfg = train_reference(preset, fusion, out, fsdd=fsdd, seed=seed, epochs=n_epochs, text_kind=text,
                              progress=lambda n, loss: advance(n, info=f"loss {loss:.3f}"))
    _print_metrics(cfg["metrics"]["test"])
    console.print(f"checkpoint: {out}/model.safetensors + config.json")


@app.command()
def evaluate(checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="checkpoint folder (model.safetensors + config.json)"),
             split: str = typer.Option("test", help="train | val | test"),
             fsdd: Optional[str] = typer.Option(None, help=FSDD_HELP),
             as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Accuracy, macro precision/recall/F1, per-class F1 and accuracy with each modality missing."""
    from edgekit import checkpoint
    from edgekit.data import avdigits
    from edgekit.evaluate import evaluate as run_eval

    model, spec, cfg = checkpoint.load(checkpoint_path)
    data = avdigits.load(split, fsdd, spec.preprocessing.get("seed", 0))
    metrics = run_eval(model, data, spec.class_names)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics)


def _print_metrics(m: dict) -> None:
    from rich.table import Table

    t = Table("metric", "value")
    t.add_row("accuracy", f"{m['accuracy']:.4f}  (95% CI {m['accuracy_ci95'][0]:.3f}-{m['accuracy_ci95'][1]:.3f})")
    for k in ("precision_macro", "recall_macro", "f1_macro"):
        t.add_row(k, f"{m[k]:.4f}")
    t.add_row("per-class F1", " ".join(f"{c}:{v:.2f}" for c, v in m["per_class_f1"].items()))
    for mod, acc in m.get("missing_modality_accuracy", {}).items():
        t.add_row(f"accuracy without {mod}", f"{acc:.4f}")
    console.print(t)


def main() -> None:
    try:
        app(standalone_mode=False)
    except EdgekitError as e:
        if os.environ.get("EDGEKIT_DEBUG") == "1":
            raise
        console.print(f"[red]error:[/] {e.message}" + (f"\n[yellow]hint:[/] {e.hint}" if e.hint else ""), highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt,):
        console.print("interrupted; rerun the same command to resume")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 — the last line of defence: say it is our bug, not the user's
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        if os.environ.get("EDGEKIT_DEBUG") == "1":
            raise
        console.print(f"[red]internal error (a bug in edgekit):[/] {type(e).__name__}: {e}\n"
                      f"please report it at {ISSUES_URL}; rerun with EDGEKIT_DEBUG=1 for the traceback", highlight=False, soft_wrap=True)
        sys.exit(1)
