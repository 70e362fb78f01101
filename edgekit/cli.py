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

from edgekit.agent import measure
from edgekit.errors import ISSUES_URL, EdgekitError, InternalError
from edgekit.ui import console, escape, progress

app = typer.Typer(help="Compress, compile and benchmark multimodal fusion models for edge devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})

TRUST_HELP = ("run the code that files name (a checkpoint's model factory, a data loader) even if it is not edgekit's own "
              "or allowed in $EDGEKIT_TRUSTED_CODE: only for files you trust (README \"Trust\")")
FSDD_HELP = "folder of FSDD spoken-digit WAVs (default: $EDGEKIT_FSDD; without it speech is synthesized with espeak-ng)"
app.add_typer(__import__("edgekit.cli_data", fromlist=["app"]).app, name="data")


def _version(show: bool) -> None:
    if show:
        import importlib.metadata

        import edgekit

        try:
            v = importlib.metadata.version("edgekit")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
            v = edgekit.__version__
        print(f"edgekit {v}")
        raise typer.Exit()


@app.callback()
def _options(verbose: bool = typer.Option(False, "-v", "--verbose", help="debug logs, and the warnings libraries print on import"),
             version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        from edgekit._optional import silence_import_noise

        silence_import_noise()


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
    console.print(f"[bold]edgekit doctor[/]  Python {info['python']} on {escape(info['os'])}", highlight=False)
    console.print(escape(f"CPU: {cpu['model']} ({cpu['arch']}), {cpu['usable_cores']} usable / {cpu['logical_cores']} logical cores"), highlight=False)
    console.print("ISA: " + "  ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu["isa"].items()), highlight=False)
    console.print(escape("GPUs: " + (", ".join(g["name"] for g in info["gpus"]) or "none found (nvidia-smi not present or no device)")), highlight=False)
    t = Table("library", "version")
    for lib, v in info["libraries"].items():
        t.add_row(lib, escape(v) if v else "[dim]not installed[/]")
    console.print(t)
    t = Table("backend", "available", "why not / how to install")
    for name, b in info["backends"].items():  # reasons and hints are library text: printed as is, not as markup
        t.add_row(name, "[green]yes[/]" if b["available"] else "[red]no[/]", "" if b["available"] else escape(f"{b['reason']}  ->  {b['install']}"))
    console.print(t)


@app.command()
def train(out: Path = typer.Option(Path("model"), "--out", "-o", help="checkpoint folder to write"),
          preset: str = typer.Option("tiny", help="model size: tiny (tests, ~1 min), small (the quickstart's, ~40 MMACs) or base (realistic edge model)"),
          fusion: str = typer.Option("attention", help="early | late | hierarchical | attention"),
          text: str = typer.Option("transformer", help="text encoder: transformer | lstm"),
          epochs: Optional[int] = typer.Option(None, help="default: 12 for tiny, 8 for small, 10 for base"),
          fsdd: Optional[str] = typer.Option(None, help=FSDD_HELP),
          seed: int = typer.Option(0, help="seed for data and training (deterministic)")):
    """Train a reference fusion model on the built-in avdigits data and save a safe checkpoint."""
    from edgekit.data.avdigits import resolve_fsdd
    from edgekit.io import check_writable
    from edgekit.models import preset_config
    from edgekit.train import DEFAULT_EPOCHS, train_reference

    preset_config(preset, fusion, text_kind=text)  # bad names fail before any slow work
    if epochs is not None:
        from edgekit.limits import check_int

        check_int(epochs, "--epochs", 1, 10000)
    resolve_fsdd(fsdd)
    check_writable(out)
    n_epochs = epochs or DEFAULT_EPOCHS.get(preset, 10)
    with progress(f"training {preset}/{fusion}", total=None) as advance:
        cfg = train_reference(preset, fusion, out, fsdd=fsdd, seed=seed, epochs=n_epochs, text_kind=text,
                              progress=lambda n, loss: advance(n, info=f"loss {loss:.3f}"))
    _print_metrics(cfg["metrics"]["test"])
    console.print(escape(f"checkpoint: {out}/model.safetensors + config.json"))


@app.command()
def evaluate(checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="checkpoint folder (model.safetensors + config.json)"),
             split: str = typer.Option("test", help="train | val | test"),
             fsdd: Optional[str] = typer.Option(None, help=FSDD_HELP),
             data_file: Optional[Path] = typer.Option(None, "--data", help="evaluate on the data: section of this YAML (a "
                                                      "recipe, or the recipe-data.yaml of `edgekit data export-avdigits`) "
                                                      "instead of the dataset the model was trained on"),
             as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
             trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP)):
    """Accuracy, macro precision/recall/F1, per-class F1 and accuracy with each modality missing."""
    from edgekit import checkpoint
    from edgekit.data.resolver import builtin_split
    from edgekit.evaluate import evaluate as run_eval

    if split not in ("train", "val", "test"):
        raise EdgekitError(f"unknown split '{split}'", "use train, val or test")
    model, spec, cfg = checkpoint.load(checkpoint_path, trust_code=trust_code)
    if data_file is not None:
        from edgekit.data import resolve
        from edgekit.recipe import load_data_section

        splits = resolve(load_data_section(data_file), spec, base_dir=data_file.resolve().parent, origin=str(data_file))
        data = getattr(splits, split)
    else:
        data = builtin_split(spec, split, fsdd)
    if data is None:
        raise EdgekitError(f"{checkpoint_path} was not trained on the built-in dataset (or its recordings are gone), so there is no split to evaluate on",
                           "pass --fsdd for the recordings, or evaluate on your data through a recipe (edgekit compress/run; `edgekit data check` shows the splits)")
    metrics = run_eval(model, data, spec.class_names)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics)


@app.command()
def compress(checkpoint_path: Optional[Path] = typer.Argument(None, metavar="CHECKPOINT", help="checkpoint folder (default: the recipe's model)"),
             recipe: Path = typer.Option(..., "--recipe", "-r", help="recipe YAML, e.g. recipes/quickstart.yaml"),
             out: Path = typer.Option(..., "--out", "-o", help="run directory to write (variants/<name>/...)"),
             variant: Optional[list[str]] = typer.Option(None, "--variant", help="only these variants (repeatable)"),
             force: bool = typer.Option(False, "--force", help="redo variants even if their inputs are unchanged"),
             trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP)):
    """Turn one trained model into the recipe's variants (prune, distill, INT8), each judged on its exported graph."""
    from edgekit.compress import compress as run_compress
    from edgekit.judge import print_table

    with _trust(trust_code):
        print_table(run_compress(checkpoint_path, recipe, out, only=variant, force=force))
    console.print(escape(f"run directory: {out} (compress.json, variants/<name>/metrics.json)"))


@app.command()
def run(recipe: Path = typer.Argument(..., metavar="RECIPE", help="recipe YAML, e.g. recipes/quickstart.yaml"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default: runs/<recipe name>)"),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="trained checkpoint to start from (overrides the recipe's model)"),
        force: Optional[list[str]] = typer.Option(None, "--force", help="redo this stage even if its inputs are unchanged (repeatable): "
                                                  "train, compress, compile, measure, deploy, report"),
        identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="SSH private key for ssh:// targets (default: ssh-agent, ~/.ssh)"),
        known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help="known_hosts file for ssh:// targets (default ~/.ssh/known_hosts)"),
        accept_new_host: bool = typer.Option(False, "--accept-new-host", help="trust an ssh:// target's key on first contact (never a changed key)"),
        trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP)):
    """The whole job: train or load the model, compress it into the recipe's variants, compile each for every target,
    evaluate and benchmark it there, and write results.json and the report. Rerun the same command after a crash or
    Ctrl-C to continue where it stopped (finished stages are skipped)."""
    from edgekit.pipeline import run as run_all

    ssh = {"identity": identity, "known_hosts": known_hosts, "accept_new_host": accept_new_host}
    with _trust(trust_code):
        done = run_all(recipe, out, checkpoint, force or (), ssh)
    for line in done["recommendation"]:
        console.print(escape(line), highlight=False, soft_wrap=True)
    console.print("seconds per stage: " + ", ".join(f"{k} {v:g}" for k, v in done["seconds"].items()), highlight=False)
    print(done["html"])


@app.command()
def export(checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="checkpoint folder (model.safetensors + config.json)"),
           out: Path = typer.Option(Path("model.onnx"), "--out", "-o", help="ONNX file to write"),
           opset: int = typer.Option(17, help="ONNX opset (17 is read by TensorRT 10.3, ONNX Runtime and OpenVINO)"),
           fp16: bool = typer.Option(False, "--fp16", help="also write <out>.fp16.onnx (float16 inside, float32 I/O; TensorRT 11's FP16)"),
           fsdd: Optional[str] = typer.Option(None, help=FSDD_HELP),
           trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP)):
    """Export a checkpoint to ONNX (dynamic batch, Q/DQ for INT8) and check parity with the torch model."""
    from edgekit.export import export_checkpoint
    from edgekit.io import check_writable
    from edgekit.limits import check_int
    from edgekit.onnxgraph.fp16 import to_fp16_onnx

    check_int(opset, "--opset", 13, 23, hint="the exporter writes opsets 13 to 23; 17 is read by TensorRT 10.3, ONNX Runtime and OpenVINO")
    check_writable(out)
    with _trust(trust_code):
        reports = [export_checkpoint(checkpoint_path, out, fsdd=fsdd, opset=opset)]
    if fp16:
        reports.append(to_fp16_onnx(out, out.with_suffix(".fp16.onnx")))
    for r in reports:
        p = r["parity"]
        console.print(escape(f"{r['path']}: {r['precision']}, {r['nodes']} nodes, {r['size_bytes'] / 2**20:.2f} MiB; parity on {p['n']} samples: "
                             f"top-1 agreement {p['top1_agreement']:.2%}, max |logit diff| {p['max_abs_diff']:.3g}"), highlight=False)


@app.command(name="compile")
def compile_cmd(onnx_path: Path = typer.Argument(..., metavar="MODEL.onnx", help="ONNX file (from edgekit export)"),
                backend: str = typer.Option(..., help="onnxruntime | openvino | tensorrt"),
                out: Path = typer.Option(..., "--out", "-o", help="artifact folder to write"),
                precision: str = typer.Option("auto", help="auto (what the ONNX carries) | fp32 | fp16 | int8"),
                threads: Optional[int] = typer.Option(None, help="inference threads (default: the backend's)")):
    """Compile an ONNX file for a backend, then check the artifact's parity with the torch model."""
    from edgekit.backends import compile_onnx
    from edgekit.limits import check_threads

    check_threads(threads)
    art = compile_onnx(onnx_path, backend, out, {"precision": precision, "threads": threads})
    p = art.meta["parity"]
    console.print(escape(f"{art.backend} {art.precision} artifact: {art.path} ({art.meta.get('size_bytes', 0) / 2**20:.2f} MiB, "
                         f"{art.meta.get('compile_seconds', 0):.1f} s); parity top-1 {p['top1_agreement']:.2%}, max |logit diff| {p['max_abs_diff']:.3g}"), highlight=False)


PROTOCOL = measure.protocol()  # the latency protocol's defaults: one definition, shared with the device agent
TARGET_HELP = "device: ssh://user@host[:port][?python=/usr/bin/python3&workdir=/path] (repeat: several run at once)"
RUNTIME_HELP = "on the device: tensorrt | onnxruntime | auto (TensorRT when it is there)"


@app.command()
def bench(artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="compiled artifact folder, or a checkpoint with --backend torch; with --target: an ONNX file (or folder with model.onnx)"),
          backend: Optional[str] = typer.Option(None, help="onnxruntime | openvino | tensorrt | torch (default: the artifact's)"),
          batch: list[int] = typer.Option(PROTOCOL["batch_sizes"], "--batch", "-b", help="batch size (repeat for several)"),
          iterations: Optional[int] = typer.Option(None, help="exactly N timed calls (default: run for --min-seconds)"),
          min_seconds: float = typer.Option(PROTOCOL["min_seconds"], help="minimum timed duration per batch size"),
          warmup: int = typer.Option(PROTOCOL["warmup"], help="warm-up calls"),
          threads: Optional[int] = typer.Option(None, help="inference threads (default: the artifact's)"),
          out: Optional[Path] = typer.Option(None, help="folder for bench-<backend>.json (default: beside the artifact)"),
          as_json: bool = typer.Option(False, "--json", help="print the JSON instead of the table"),
          target: list[str] = typer.Option([], "--target", "-t", help=TARGET_HELP),
          runtime: str = typer.Option("auto", help=RUNTIME_HELP),
          accept_new_host: bool = typer.Option(False, "--accept-new-host", help="trust a device not yet in known_hosts (adds its key)"),
          identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="SSH private key (default: ssh-agent, ~/.ssh/id_*)"),
          known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help="default ~/.ssh/known_hosts"),
          trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP + "; with --backend torch")):
    """Latency (min/mean/median/p90/p95/p99/max, CV), throughput, cold start, memory; saved as bench-<backend>.json.
    With --target the engine is built and timed on each device (bench-<device>.json beside the ONNX)."""
    from edgekit.limits import check_protocol

    check_protocol(batch, warmup, iterations, min_seconds, threads)  # refused before anything loads or any thread starts
    if target:
        from edgekit.deploy import bench_remote, print_summary, raise_failures

        protocol = {"batch_sizes": batch, "warmup": warmup, "iterations": iterations, "min_seconds": min_seconds}
        summaries = bench_remote(artifact, target, runtime, accept_new_host, identity, known_hosts, bench=protocol, check=False)
        if as_json:
            print(json.dumps(summaries, indent=2, default=str))
        else:
            print_summary(summaries)
        raise_failures(summaries)
        return
    from edgekit.bench import bench_artifact, print_result, save

    with _trust(trust_code):
        result = bench_artifact(artifact, backend, batch_sizes=batch, warmup=warmup, iterations=iterations, min_seconds=min_seconds, threads=threads)
    path = save(result, out)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_result(result)
        console.print(escape(f"saved {path}"))


@app.command()
def deploy(run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="run directory with variants/*/model.onnx"),
           target: list[str] = typer.Option(..., "--target", "-t", help=TARGET_HELP),
           runtime: str = typer.Option("auto", help=RUNTIME_HELP),
           accept_new_host: bool = typer.Option(False, "--accept-new-host", help="trust a device not yet in known_hosts (adds its key)"),
           identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="SSH private key (default: ssh-agent, ~/.ssh/id_*)"),
           known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help="default ~/.ssh/known_hosts"),
           samples: int = typer.Option(200, help="evaluation samples checked on the device"),
           variant: list[str] = typer.Option([], "--variant", help="only this variant (repeat for several)")):
    """Build each variant's engine on the device over SSH, check accuracy and parity there, benchmark it and sample
    power; results, fingerprint and engines come back into RUN_DIR/targets/<device>/. Rerun to resume."""
    from edgekit.deploy import deploy as deploy_run, print_summary, raise_failures
    from edgekit.limits import MAX_SAMPLES, check_int

    check_int(samples, "--samples", 1, MAX_SAMPLES)
    summaries = deploy_run(run_dir, target, runtime, accept_new_host, identity, known_hosts, samples, variants=variant or None, check=False)
    print_summary(summaries)
    raise_failures(summaries)


@app.command()
def report(run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="run directory holding results.json")):
    """Accuracy-vs-latency report: report.md, a self-contained report.html and the plots (PNG) from results.json."""
    from edgekit.report import write_report

    out = write_report(run_dir)
    for line in out["recommendation"]:
        console.print(escape(line), highlight=False, soft_wrap=True)
    print(out["html"])


def _trust(trust_code: bool):
    """--trust-code: every code reference is trusted for this command (edgekit._optional.trusted)."""
    from contextlib import nullcontext

    from edgekit._optional import trusted

    return trusted() if trust_code else nullcontext()


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
    from edgekit import signals

    signals.install()  # SIGINT and SIGTERM raise KeyboardInterrupt; a watchdog ends a process stuck in native code
    try:
        try:
            code = app(standalone_mode=False)  # Typer returns the code of a typer.Exit, and 130 for a KeyboardInterrupt
        except Exception:
            if signals.received():  # what the interrupt became on its way out, e.g. ImportError from a C extension's init
                raise KeyboardInterrupt from None
            raise
        if signals.received():  # the command was interrupted (whatever code Typer made of it)
            raise KeyboardInterrupt
        sys.exit(code if isinstance(code, int) else 0)
    except EdgekitError as e:
        if os.environ.get("EDGEKIT_DEBUG") == "1":
            raise
        console.print(f"[red]error:[/] {escape(e.message)}" + (f"\n[yellow]hint:[/] {escape(e.hint)}" if e.hint else ""), highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C (130) or SIGTERM (143); every `finally` on the way out has run
        signals.report()  # plain print: a first rich render can take a second
        signals.leave()
    except SystemExit:
        raise
    except InternalError as e:
        if os.environ.get("EDGEKIT_DEBUG") == "1":
            raise
        console.print(f"[red]internal error (a bug in edgekit):[/] {escape(str(e))}\n"
                      f"please report it at {ISSUES_URL}; rerun with EDGEKIT_DEBUG=1 for the traceback", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 — the last line of defence: say it is our bug, not the user's
        from typer._click.exceptions import ClickException  # typer vendors click; plain `click` is not installed

        if isinstance(e, typer.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, typer.Abort):
            sys.exit(130)
        if os.environ.get("EDGEKIT_DEBUG") == "1":
            raise
        console.print(f"[red]internal error (a bug in edgekit):[/] {type(e).__name__}: {escape(str(e))}\n"
                      f"please report it at {ISSUES_URL}; rerun with EDGEKIT_DEBUG=1 for the traceback", highlight=False, soft_wrap=True)
        sys.exit(1)
