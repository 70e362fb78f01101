"""Issue 16, items 4 and 5: no command writes over a file it reads, and whatever a damaged, foreign or hostile input
file makes a parser raise reaches the user as one `error:` line naming the file plus a `hint:` (exit 2), while a
genuine bug still says "internal error" (exit 1). Also: report.md shows names as the characters they are, and a
control character in a target is refused, not silently dropped.

Real components throughout: an untrained tiny checkpoint saved with edgekit.checkpoint.save, its ONNX export, the
`edgekit` console entry in subprocesses, ONNX Runtime / OpenVINO / paramiko doing the failing. Every case hashes
every file under its folder before the command and checks that none of them changed."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_bad_input import assert_one_line_error

from conftest import run_cli
from edgekit import checkpoint
from edgekit.backends.base import get_backend
from edgekit.errors import EdgekitError, reading

HAVE_OPENVINO = get_backend("openvino").available()[0]
DEAD_TARGET = "ssh://nobody@127.0.0.1:1"  # never reached: every case fails before connecting


@pytest.fixture(scope="module")
def world(tmp_path_factory, fsdd):
    """An untrained tiny checkpoint, its ONNX export (with parity samples) and a run directory holding it as variant
    fp32 (config.json beside model.onnx, eval_samples.npz, recipe.resolved.yaml), as `edgekit compress` lays it out."""
    from edgekit import export
    from edgekit.data import avdigits
    from edgekit.models import build_model, preset_config
    from edgekit.recipe import dump_recipe, parse_recipe
    from edgekit.train import reference_spec

    root = tmp_path_factory.mktemp("inputs_guard")
    torch.manual_seed(0)
    cfg = preset_config("tiny", "attention")
    test = avdigits.load("test", fsdd)
    checkpoint.save(build_model(cfg).eval(), reference_spec(cfg, avdigits.preprocessing(fsdd)), root / "ck", cfg)
    model, spec, _ = checkpoint.load(root / "ck")
    export.to_onnx(model, spec, root / "onnx" / "model.onnx", check_parity_on=test.subset(np.arange(32)))
    run = root / "run"
    shutil.copytree(root / "onnx", run / "variants" / "fp32")
    shutil.copy(root / "ck" / "config.json", run / "variants" / "fp32")
    test.subset(np.arange(64)).save(run / "eval_samples.npz")
    recipe = parse_recipe({"name": "t", "data": {"dataset": "avdigits", "fsdd": fsdd, "seed": 0}, "calibration": {"size": 32},
                           "variants": [{"name": "copy"}]})
    (run / "recipe.resolved.yaml").write_text(dump_recipe(recipe))
    return root


class Ctx:
    def __init__(self, tmp: Path, world: Path):
        self.tmp, self.world = tmp, world

    def copy(self, what: str) -> Path:
        dst = self.tmp / what
        shutil.copytree(self.world / what, dst)
        return dst

    def onnx(self) -> Path:
        return self.copy("onnx") / "model.onnx"

    def recipe(self, text: str, name="r.yaml") -> Path:
        p = self.tmp / name
        p.write_text(text)
        return p


def _edit_config(ck: Path, **changes) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    cfg.update(changes)
    (ck / "config.json").write_text(json.dumps(cfg))


def _edit_onnx(path: Path, edit) -> Path:
    m = onnx.load(str(path))
    edit(m)
    onnx.save(m, str(path))
    return path


def _external(path: Path, keep_data: bool) -> Path:
    """The model with its weights moved to w.bin beside it (deleted unless keep_data)."""
    onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    if not keep_data:
        (path.parent / "w.bin").unlink()
    return path


FOREIGN = onnx.helper.make_model(onnx.helper.make_graph(
    [onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
    [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])]), opset_imports=[onnx.helper.make_opsetid("", 17)])


def _deploy(run: Path, *more) -> list:
    return ["deploy", run, "--target", DEAD_TARGET, "--known-hosts", run.parent / "known_hosts", *more]


CASES: dict = {}  # name -> (build(ctx) -> argv, needles in the error line, skip reason or None)


def case(name, *needles, skip_if=None):
    def deco(fn):
        CASES[name] = (fn, needles, skip_if)
        return fn
    return deco


# ---------------------------------------------------------------- item 4: never overwrite an input

@case("ow-compile-into-the-onnx-folder", "holds the input", "model.onnx")
def _(t):
    p = t.onnx()
    return ["compile", p, "--backend", "onnxruntime", "--out", p.parent]


@case("ow-compile-into-the-onnx-folder-via-symlink", "holds the input", skip_if=None if HAVE_OPENVINO else "OpenVINO not installed")
def _(t):
    p = t.onnx()
    (t.tmp / "link").symlink_to(p.parent)
    return ["compile", t.tmp / "link" / "model.onnx", "--backend", "openvino", "--out", p.parent]


@case("ow-compile-out-is-the-onnx", "is the input", "model.onnx")
def _(t):
    p = t.onnx()
    return ["compile", p, "--backend", "onnxruntime", "--out", p]


@case("ow-export-onto-the-weights", "is the input", "model.safetensors")
def _(t):
    ck = t.copy("ck")
    return ["export", ck, "--out", ck / "model.safetensors"]


@case("ow-export-onto-the-config", "is the input", "config.json")
def _(t):
    ck = t.copy("ck")
    return ["export", ck, "--out", ck / "config.json"]


@case("ow-export-onto-a-hard-link-of-the-weights", "is the input", "model.safetensors")
def _(t):
    ck = t.copy("ck")
    os.link(ck / "model.safetensors", t.tmp / "weights.onnx")
    return ["export", ck, "--out", t.tmp / "weights.onnx"]


@case("ow-compress-with-the-run's-own-resolved-recipe", "is the input", "recipe.resolved.yaml")
def _(t):
    run = t.copy("run")
    return ["compress", t.world / "ck", "--recipe", run / "recipe.resolved.yaml", "--out", run]


@case("ow-compress-a-variant-into-its-own-run", "holds the input", "variants")
def _(t):
    run = t.copy("run")
    return ["compress", run / "variants" / "fp32", "--recipe", t.world / "run" / "recipe.resolved.yaml", "--out", run]


@case("ow-run-from-a-variant-of-the-same-run", "holds the input", "variants")
def _(t):
    run = t.copy("run")
    return ["run", t.world / "run" / "recipe.resolved.yaml", "--checkpoint", run / "variants" / "fp32", "--out", run]


@case("ow-failing-compress-leaves-recipe.resolved.yaml", "calibration size 100000")
def _(t):
    run = t.copy("run")
    text = (t.world / "run" / "recipe.resolved.yaml").read_text().replace("size: 32", "size: 100000").replace("name: t\n", "name: other\n")
    return ["compress", t.world / "ck", "--recipe", t.recipe(text), "--out", run]


# ---------------------------------------------------------------- item 5: what a parser raises, as one line naming the file

@case("in-config-model-is-a-string-AttributeError", "config.json", "cannot build a model", "AttributeError")
def _(t):
    ck = t.copy("ck")
    _edit_config(ck, model="hello")
    return ["evaluate", ck]


@case("in-config-model-ill-typed-TypeError", "config.json", "cannot build a model", "TypeError")
def _(t):
    ck = t.copy("ck")
    cfg = json.loads((ck / "config.json").read_text())["model"]
    section = next(k for k, v in cfg.items() if isinstance(v, dict))
    _edit_config(ck, model={**cfg, section: {k: "x" for k in cfg[section]}})
    return ["evaluate", ck]


@case("in-config-spec-without-inputs", "config.json", "does not fit the model's forward")
def _(t):
    ck = t.copy("ck")
    spec = json.loads((ck / "config.json").read_text())["spec"]
    _edit_config(ck, spec={**spec, "inputs": []})
    return ["evaluate", ck]


@case("in-config-nested-deep-RecursionError", "config.json", "nested")
def _(t):
    ck = t.copy("ck")
    (ck / "config.json").write_text('{"format": "edgekit-checkpoint/1", "spec": {}, "model": ' + "[" * 100000 + "]" * 100000 + "}")
    return ["evaluate", ck]


@case("in-onnx-zero-bytes-ort-InvalidArgument", "cannot read ONNX model", "model.onnx")
def _(t):
    p = t.onnx()
    p.write_bytes(b"")
    return ["compile", p, "--backend", "onnxruntime", "--out", t.tmp / "out"]


@case("in-onnx-unknown-op-ort-InvalidGraph", "cannot read ONNX model", "model.onnx", "NoSuchOp")
def _(t):
    p = _edit_onnx(t.onnx(), lambda m: setattr(m.graph.node[0], "op_type", "NoSuchOp"))
    return ["compile", p, "--backend", "onnxruntime", "--out", t.tmp / "out"]


@case("in-onnx-external-data-missing", "model.onnx", "w.bin")
def _(t):
    return ["compile", _external(t.onnx(), keep_data=False), "--backend", "onnxruntime", "--out", t.tmp / "out"]


@case("in-onnx-external-data-truncated-ort-Fail", "model.onnx")
def _(t):
    p = _external(t.onnx(), keep_data=True)
    (p.parent / "w.bin").write_bytes((p.parent / "w.bin").read_bytes()[:100])
    return ["compile", p, "--backend", "onnxruntime", "--out", t.tmp / "out"]


@case("in-onnx-bad-spec-metadata-pydantic", "model.onnx", "edgekit.spec")
def _(t):
    def edit(m):
        next(p for p in m.metadata_props if p.key == "edgekit.spec").value = json.dumps({"inputs": 5})
    return ["compile", _edit_onnx(t.onnx(), edit), "--backend", "onnxruntime", "--out", t.tmp / "out"]


@case("in-compiled-model-garbage-openvino-RuntimeError", "cannot read compiled model", "model.xml",
      skip_if=None if HAVE_OPENVINO else "OpenVINO not installed")
def _(t):
    from edgekit.backends import compile_onnx

    art = compile_onnx(t.world / "onnx" / "model.onnx", "openvino", t.tmp / "ov")
    art.path.write_text("<net>not an IR</net>")
    shutil.rmtree(art.path.parent / "cache", ignore_errors=True)  # OpenVINO's model cache is its own to rewrite
    return ["bench", art.path.parent, "--iterations", "2", "--warmup", "1", "--batch", "1"]


@case("in-deploy-garbage-variant-onnx-protobuf-DecodeError", "cannot read ONNX model", "variants/fp32/model.onnx")
def _(t):
    run = t.copy("run")
    (run / "variants" / "fp32" / "model.onnx").write_bytes(b"\x00garbage, not a protobuf")
    return _deploy(run)


@case("in-deploy-zero-byte-variant-onnx-ort-InvalidArgument", "model.onnx")
def _(t):
    run = t.copy("run")
    (run / "variants" / "fp32" / "model.onnx").write_bytes(b"")
    return _deploy(run)


@case("in-deploy-foreign-onnx-in-a-variant-folder", "variants/fp32/model.onnx", "['x']")
def _(t):
    run = t.copy("run")
    onnx.save(FOREIGN, str(run / "variants" / "fp32" / "model.onnx"))
    return _deploy(run)


@case("in-deploy-garbage-samples-BadZipFile", "cannot read sample set", "eval_samples.npz")
def _(t):
    run = t.copy("run")
    (run / "eval_samples.npz").write_bytes(b"PK\x03\x04 garbage")
    return _deploy(run)


@case("in-deploy-malformed-resolved-recipe-yaml", "recipe.resolved.yaml")
def _(t):
    run = t.copy("run")
    (run / "recipe.resolved.yaml").write_text("targets: [\n  {a: ")
    return _deploy(run)


@case("in-target-unclosed-ipv6-ValueError", "ssh://u@[::1", "not a valid URL")
def _(t):
    return _deploy(t.copy("run"))[:2] + ["--target", "ssh://u@[::1"]


@case("in-known-hosts-not-utf8-UnicodeDecodeError", "cannot read known_hosts file", "known_hosts")
def _(t):
    run = t.copy("run")
    (t.tmp / "known_hosts").write_bytes(b"\xff\xfe garbage\nhost ssh-ed25519 !!!\n")
    return _deploy(run)


@case("in-known-hosts-is-a-folder-OSError", "cannot read known_hosts file", "known_hosts")
def _(t):
    run = t.copy("run")
    (t.tmp / "known_hosts").mkdir()
    return _deploy(run)


# ---------------------------------------------------------------- finding 7: a control character in a target is refused

@case("nl-newline-in-a-target-url", "control character")
def _(t):
    return _deploy(t.copy("run"))[:2] + ["--target", "ssh://u@host\n"]


@case("nl-newline-in-a-recipe-target-name", "targets[0].name", "control character")
def _(t):
    text = (t.world / "run" / "recipe.resolved.yaml").read_text() + "\n"
    text = text.replace("targets:\n- backend: onnxruntime\n", 'targets:\n- backend: onnxruntime\n  name: "cpu\\nbox"\n')
    assert "cpu\\nbox" in text
    return ["compress", t.world / "ck", "--recipe", t.recipe(text), "--out", t.tmp / "out"]


def _hashes(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def cli_runs(world, tmp_path_factory):
    """Every case, two subprocesses at a time: {name: (ctx, hashes before, CompletedProcess) or a skip reason}."""
    from concurrent.futures import ThreadPoolExecutor

    jobs, done = {}, {}
    for name, (build, _, skip_if) in CASES.items():
        if skip_if:
            done[name] = skip_if
            continue
        t = Ctx(tmp_path_factory.mktemp(name[:20]), world)
        argv = build(t)
        jobs[name] = (t, _hashes(t.tmp), argv)
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_cli, *argv) for name, (_, _, argv) in jobs.items()}
        done.update({name: (jobs[name][0], jobs[name][1], f.result()) for name, f in futures.items()})
    return done


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_no_file_changes(cli_runs, name):
    if isinstance(cli_runs[name], str):
        pytest.skip(cli_runs[name])
    t, before, r = cli_runs[name]
    assert_one_line_error(r, *CASES[name][1])
    after = _hashes(t.tmp)
    changed = [str(p) for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files changed by a command that failed: {changed}"


def test_the_guard_compares_resolved_paths(tmp_path):
    from edgekit.guard import clash, refuse_overwrite

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.onnx").write_bytes(b"x")
    assert clash([tmp_path / "a" / ".." / "a"], [tmp_path / "a" / "model.onnx"])[2] is False  # a folder holding the input
    assert clash([tmp_path / "b"], [tmp_path / "a" / "model.onnx"]) is None
    assert clash([tmp_path / "a" / "other.onnx"], [tmp_path / "a"]) is None  # a new file beside an input folder's files
    with pytest.raises(EdgekitError, match="is the input"):
        refuse_overwrite([tmp_path / "a" / "model.onnx"], [None, tmp_path / "a" / "model.onnx"])


def test_reading_converts_input_errors_and_nothing_else(tmp_path):
    """Inside reading(): a real MemoryError (numpy's) and a real parser error become one line naming the file; an
    exception that no input causes (ZeroDivisionError) passes through, and so does anything raised outside it."""
    f = tmp_path / "in.bin"
    with pytest.raises(EdgekitError) as e:
        with reading(f, "weights file"):
            np.empty(1 << 62, dtype=np.uint8)
    assert e.value.message.startswith(f"cannot read weights file {f}: not enough memory") and e.value.hint
    with pytest.raises(EdgekitError, match="cannot read results file .*JSONDecodeError"):
        with reading(f, "results file"):
            json.loads("{")
    with pytest.raises(ZeroDivisionError):
        with reading(f, "weights file"):
            1 / 0  # noqa: B018


def test_a_genuine_bug_still_says_internal_error_and_exits_1(tmp_path):
    """The real CLI entry: a command raising KeyError outside any reading() block is a bug, not bad input."""
    code = ("import sys; from edgekit import cli\n"
            "@cli.app.command()\ndef boom():\n    {}['not there']\n"
            "sys.argv = ['edgekit', 'boom']; cli.main()\n")
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    out = r.stdout + r.stderr
    assert "internal error" in out and "KeyError" in out and "error: " not in out.replace("internal error", "")


def test_report_md_shows_hostile_names_as_text(tmp_path):
    """Names from the user's files reach report.md escaped: rendered as HTML (CommonMark with raw HTML on, the way a
    Git host or an editor preview renders it) they are text, never a tag, a link or markup."""
    from markdown_it import MarkdownIt

    from edgekit.results import SCHEMA, save_results

    evil_v, evil_t, evil_r = "<script>alert(1)</script>", "[x](javascript:alert(1))", "**b** <img src=x onerror=alert(1)>\n# h"
    lat = {"1": {"median": 0.002, "p90": 0.0022, "p99": 0.0024, "cv": 0.01, "n": 100}}
    doc = {"schema": SCHEMA, "run": {"name": evil_r}, "budget": {"max_accuracy_drop": 0.01},
           "variants": {"fp32": {}, evil_v: {"precision": "int8"}}, "targets": {evil_t: {"backend": "onnxruntime"}},
           "results": [{"variant": "fp32", "target": evil_t, "metrics": {"accuracy": 0.97}, "latency": lat},
                       {"variant": evil_v, "target": evil_t, "metrics": {"accuracy": 0.97}, "latency": lat}]}
    save_results(doc, tmp_path / "results.json")
    r = run_cli("report", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "report.md").read_text()
    page = MarkdownIt("commonmark").enable("table").render(md)
    assert "<script" not in page and "<img src=x" not in page  # (the report's own figures are <img src="pareto.png" ...>)
    assert 'href="javascript' not in page and "<strong>b</strong>" not in page and "<h1>h</h1>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
    assert "[x](javascript:alert(1))" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
