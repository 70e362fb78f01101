"""Bad input, end to end: every way a user's files, recipe, data, inputs or disk can be wrong gives one
`error:` line naming the problem and one `hint:` line naming the fix, exit code 2, never a traceback, and
never an output that looks finished when the command did not finish.

Real components throughout (torch, ONNX export, ONNX Runtime, OpenVINO, the `edgekit` console entry in a
subprocess). The model is an untrained tiny one saved with edgekit.checkpoint.save: these tests need a valid
checkpoint, not a good one, and training one costs minutes on a busy 2-core machine.

Numbered as in issue 8: 1-5 checkpoints, 6-8 and 19-20 recipes, 9-12 runner inputs, 13 calibration,
14-15 FSDD data, 16-17 output folder and disk, 18 results.json.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli
from edgekit import checkpoint
from edgekit.backends.base import Artifact, get_backend
from edgekit.errors import EdgekitError

HAVE_OPENVINO = get_backend("openvino").available()[0]
HAVE_TENSORRT = get_backend("tensorrt").available()[0]
BACKENDS = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(not HAVE_OPENVINO, reason="OpenVINO not installed"))]

# Files whose presence says "this step finished": none may be left by a command that failed.
FINISHED = {"model.safetensors", "config.json", "model.onnx", "model.xml", "model.bin", "model.engine", "artifact.json",
            "compress.json", "metrics.json", "results.json", "report.md", "report.html", "test.npz"}


# ---------------------------------------------------------------- helpers

def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2; exactly one `error:` line, holding every needle, followed by a non-empty `hint:` line; no traceback."""
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"exit {r.returncode}\n--- stdout\n{r.stdout[-2000:]}\n--- stderr\n{r.stderr[-3000:]}"
    assert "Traceback" not in out and "internal error" not in out, out[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    message = lines[errors[0]]
    assert errors[0] + 1 < len(lines) and lines[errors[0] + 1].startswith("hint: ") and len(lines[errors[0] + 1]) > 10, r.stderr[-2000:]
    for n in needles:
        assert n.lower() in message.lower(), f"{n!r} not in {message!r}"
    return message


def assert_lib_error(exc: pytest.ExceptionInfo, *needles: str) -> None:
    e = exc.value
    assert "\n" not in e.message and e.hint, (e.message, e.hint)
    for n in needles:
        assert n.lower() in e.message.lower(), f"{n!r} not in {e.message!r}"


def assert_nothing_finished(*roots: Path, given=()) -> None:
    """No file that marks a finished step, and no temp file of an atomic write, anywhere under the roots
    (`given`: input files that were there before the command ran)."""
    for root in roots:
        if not root.exists():
            continue
        for p in [root] if root.is_file() else root.rglob("*"):
            if not p.is_file() or p in given:
                continue
            finished = p.name in FINISHED or p.name.endswith((".export.json", ".parity.npz")) or p.name.startswith("bench-")
            assert not finished, f"{p} looks like a finished output of a command that failed"
            assert ".tmp" not in p.name, f"temp file {p} left behind"


def write_wav(path: Path, freq: float = 440.0, seconds: float = 0.4, rate: int = 8000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(2 * np.pi * freq * t) * 8000).astype("<i2").tobytes())
    return path


def exec_payload(marker: Path):
    """An object whose unpickling runs code: it creates `marker`. Loading a checkpoint must never do that."""

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('unpickled')",))

    return Payload()


def pickled_module(path: Path, marker: Path) -> Path:
    """torch.save of a whole nn.Module (not a state dict) that also carries an exec payload: the classic unsafe .pt."""
    m = torch.nn.Linear(2, 2)
    m.payload = exec_payload(marker)
    torch.save(m, path)
    return path


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ck(tmp_path_factory, fsdd):
    """A real edgekit checkpoint (safetensors + config.json) of an untrained tiny attention-fusion model."""
    from edgekit.data import avdigits
    from edgekit.models import build_model, preset_config
    from edgekit.train import reference_spec

    torch.manual_seed(0)
    cfg = preset_config("tiny", "attention")
    model = build_model(cfg).eval()
    out = tmp_path_factory.mktemp("bad_input") / "ck"
    checkpoint.save(model, reference_spec(cfg, avdigits.preprocessing(fsdd)), out, cfg)
    return out


@pytest.fixture(scope="module")
def onnx_model(ck, fsdd):
    """The checkpoint exported to ONNX (parity samples saved beside it, so compiles check against torch)."""
    from edgekit import export
    from edgekit.data import avdigits

    model, spec, _ = checkpoint.load(ck)
    path = ck.parent / "onnx" / "model.onnx"
    export.to_onnx(model, spec, path, check_parity_on=avdigits.load("test", fsdd).subset(np.arange(32)))
    return path


@pytest.fixture(scope="module", params=BACKENDS)
def runner(request, onnx_model):
    from edgekit.backends import compile_onnx

    art = compile_onnx(onnx_model, request.param, onnx_model.parent / request.param)
    return get_backend(request.param).load(Artifact.load(art.path.parent))


@pytest.fixture
def copy_ck(ck, tmp_path):
    """A writable copy of the checkpoint folder, to damage."""
    return lambda name="ck": Ctx(tmp_path, ck, None, None).copy_ck(name)


def recipe_file(tmp_path: Path, fsdd, name="recipe.yaml", text: str | None = None, **changes) -> Path:
    """A small valid recipe (one INT8 variant) with `changes` applied (dotted keys), or raw `text`."""
    d = {"name": "t", "data": {"dataset": "avdigits", "fsdd": fsdd, "seed": 0}, "calibration": {"size": 32},
         "variants": [{"name": "int8", "passes": [{"quantize": {}}]}], "targets": [{"backend": "onnxruntime"}]}
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = d
        for k in parents:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(last) if isinstance(node, list) else last] = value
    p = tmp_path / name
    p.write_text(text if text is not None else yaml.safe_dump(d))
    return p


# ---------------------------------------------------------------- the CLI cases
# Each case builds its bad input under `t.tmp` and returns the command line; everything the command would
# write goes under `t.out`. The test asserts the one-line error, exit 2, that nothing under t.out looks
# finished, and that no pickle payload ran. Variants of the same fault are checked on the library further down.

class Ctx:
    def __init__(self, tmp: Path, ck: Path, fsdd, onnx_model: Path):
        self.tmp, self.ck, self.fsdd, self.onnx = tmp, ck, fsdd, onnx_model
        self.out = tmp / "out"
        self.env: dict = {}
        self.given: set[Path] = set()  # input files that may sit under out (results.json for `report`)
        self.marker = tmp / "UNPICKLED"

    def copy_ck(self, name="ck") -> Path:
        """A writable copy of the checkpoint folder, to damage."""
        d = self.tmp / name
        d.mkdir()
        for f in ("model.safetensors", "config.json"):
            (d / f).write_bytes((self.ck / f).read_bytes())
        return d

    def recipe(self, **kw) -> Path:
        return recipe_file(self.tmp, self.fsdd, **kw)

    def compress(self, recipe: Path, ck=None, out=None) -> list:
        return ["compress", ck or self.ck, "--recipe", recipe, "--out", out or self.out]

    def a_file(self) -> Path:
        f = self.tmp / "a-file"
        f.write_text("a regular file, not a folder")
        return f

    def fsdd_dir(self) -> Path:
        d = self.tmp / "fsdd"
        d.mkdir()
        self.env["EDGEKIT_CACHE"] = str(self.tmp / "cache")  # no dataset may be cached from bad recordings
        return d

    def results(self, content: bytes) -> list:
        self.out.mkdir()
        (self.out / "results.json").write_bytes(content)
        self.given.add(self.out / "results.json")
        return ["report", self.out]


CASES: dict = {}  # name -> (build(ctx) -> argv, needles in the error line, reason to skip or None)


def case(name, *needles, skip_if: str | None = None):
    def deco(fn):
        CASES[name] = (fn, needles, skip_if)
        return fn
    return deco


@case("01-missing-checkpoint-export", "does not exist")
def _(t):
    return ["export", t.tmp / "no-such-checkpoint", "--out", t.out / "model.onnx"]


@case("02-garbage-safetensors-export", "corrupt or truncated", "model.safetensors")
def _(t):
    d = t.copy_ck()
    (d / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    return ["export", d, "--out", t.out / "model.onnx"]


@case("03-truncated-safetensors-compress", "corrupt or truncated")
def _(t):
    d = t.copy_ck()
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return t.compress(t.recipe(), ck=d)


@case("04-pickled-module-pt", "model.pt", "not a plain tensor file")
def _(t):
    d = t.copy_ck()
    (d / "model.safetensors").unlink()
    pickled_module(d / "model.pt", t.marker)
    return ["evaluate", d]


@case("04-pickle-renamed-safetensors", "contains a pickle", "never unpickles")
def _(t):
    d = t.copy_ck()
    (d / "model.safetensors").write_bytes(pickle.dumps(exec_payload(t.marker)))
    return ["export", d, "--out", t.out / "model.onnx"]


@case("05-config-of-base-preset", "do not match", "missing", "of another shape")
def _(t):
    from edgekit.models import preset_config

    d = t.copy_ck()
    _edit_config(d, model=preset_config("base", "attention"))
    return ["evaluate", d]


@case("06-misspelled-recipe-key", "unknown key 'ratoi'", "variants[0].passes[0].prune", "allowed keys: ratio")
def _(t):
    return t.compress(t.recipe(**{"variants.0.passes.0": {"prune": {"ratoi": 0.3}}}))


@case("07-negative-prune-ratio", "prune.ratio", "greater than 0", "-0.2")
def _(t):
    return t.compress(t.recipe(**{"variants.0.passes.0": {"prune": {"ratio": -0.2}}}))


@case("08-recipe-unknown-backend", "targets[0].backend", "openvno")
def _(t):
    return t.compress(t.recipe(**{"targets.0.backend": "openvno"}))


@case("08-compile-misspelled-backend", "unknown backend 'openvno'", "did you mean 'openvino'")
def _(t):
    return ["compile", t.onnx, "--backend", "openvno", "--out", t.out]


@case("08-compile-backend-not-installed", "backend 'tensorrt' is not available",
      skip_if="TensorRT is installed here" if HAVE_TENSORRT else None)
def _(t):
    return ["compile", t.onnx, "--backend", "tensorrt", "--out", t.out]


@case("13-calibration-larger-than-split", "calibration size 100000", "larger than its source split")
def _(t):
    return t.compress(t.recipe(**{"calibration": {"size": 100000, "split": "val"}}))


@case("14-fsdd-without-wavs", "holds no WAV files")
def _(t):
    d = t.fsdd_dir()
    (d / "README.txt").write_text("recordings go here")
    write_wav(d / "hello.wav")  # a WAV, but not named like FSDD's <digit>_<speaker>_<take>.wav
    return ["evaluate", t.ck, "--fsdd", d]


@case("15-fsdd-corrupt-wav", "cannot read WAV file", "3_jackson_1.wav")
def _(t):
    d = t.fsdd_dir()
    for digit in range(10):
        write_wav(d / f"{digit}_jackson_0.wav", 200 + 100 * digit)
    (d / "3_jackson_1.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    return ["evaluate", t.ck, "--fsdd", d]


@case("16-out-below-a-file-compile", "is a file, not a folder", skip_if=None if HAVE_OPENVINO else "OpenVINO not installed")
def _(t):
    t.out = t.a_file() / "ov"
    return ["compile", t.onnx, "--backend", "openvino", "--out", t.out]


@case("16-out-below-a-file-bench", "is a file, not a folder")
def _(t):
    from edgekit.backends import compile_onnx

    art = compile_onnx(t.onnx, "onnxruntime", t.tmp / "ort").path.parent
    t.out = t.a_file() / "bench"
    return ["bench", art, "--out", t.out, "--iterations", "2", "--warmup", "1", "--batch", "1"]


@case("16-out-below-a-file-compress", "a-file")
def _(t):
    t.out = t.a_file() / "run"
    return t.compress(t.recipe())


@case("16-out-in-read-only-folder", "permission denied",
      skip_if="running as root: chmod 0500 does not stop root (the below-a-file cases cover root)" if os.geteuid() == 0 else None)
def _(t):
    ro = t.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):
        pytest.skip("chmod 0500 has no effect here")
    t.out = ro / "out"
    return ["compile", t.onnx, "--backend", "onnxruntime", "--out", t.out]


@case("18-results-truncated", "results.json", "not valid JSON")
def _(t):
    return t.results(b'{"schema": "edgekit-results/1", "results": [{"variant": "fp32", "tar')


@case("18-results-binary-garbage", "results.json", "not valid JSON")
def _(t):
    return t.results(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")


@case("18-results-other-schema", "results.json", "schema")
def _(t):
    return t.results(json.dumps({"schema": "someone-elses/2", "rows": []}).encode())


@case("19-recipe-not-yaml", "not valid YAML", "line 4")
def _(t):
    return t.compress(t.recipe(text="name: x\nvariants:\n  - name: a\n   passes: []\n"))


@case("20-recipe-is-a-list", "is not a YAML mapping")
def _(t):
    return t.compress(t.recipe(text="- name: x\n- variants: []\n"))


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, ck, fsdd, onnx_model):
    """Every CLI case, three subprocesses at a time (each is mostly interpreter and torch start-up):
    {name: (ctx, CompletedProcess) or the reason it was skipped}."""
    from concurrent.futures import ThreadPoolExecutor

    jobs, done = {}, {}
    for name, (build, _, skip_if) in CASES.items():
        if skip_if:
            done[name] = skip_if
            continue
        t = Ctx(tmp_path_factory.mktemp(name[:24]), ck, fsdd, onnx_model)
        try:
            jobs[name] = (t, build(t))
        except pytest.skip.Exception as e:
            done[name] = str(e)
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(run_cli, *argv, env=t.env) for name, (t, argv) in jobs.items()}
        done.update({name: (jobs[name][0], f.result()) for name, f in futures.items()})
    return done


@pytest.mark.parametrize("name", list(CASES))
def test_cli_bad_input_is_one_line_exit_2_and_leaves_nothing_finished(cli_runs, name):
    if isinstance(cli_runs[name], str):
        pytest.skip(cli_runs[name])
    t, r = cli_runs[name]
    assert_one_line_error(r, *CASES[name][1])
    assert_nothing_finished(t.out, t.tmp / "cache", given=t.given)
    assert not t.marker.exists(), "a pickle in a checkpoint was executed"


def test_the_pickle_payloads_are_live(tmp_path):
    """Control for the 04 cases: the same payloads do run code when unpickled the unsafe way, so the marker's
    absence means edgekit did not unpickle them, not that the payload was inert."""
    raw, module = tmp_path / "raw-marker", tmp_path / "module-marker"
    pickle.loads(pickle.dumps(exec_payload(raw)))
    torch.load(pickled_module(tmp_path / "m.pt", module), weights_only=False)
    assert raw.exists() and module.exists()


# ---------------------------------------------------------------- 1-5 checkpoints on the library

def _no_weights(d: Path) -> Path:
    (d / "model.safetensors").unlink()
    return d


def _with_preset(d: Path, preset: str, fusion: str) -> Path:
    from edgekit.models import preset_config

    _edit_config(d, model=preset_config(preset, fusion))
    return d


# damage(checkpoint folder, marker) -> what to load (None: the folder)
CHECKPOINT_FAULTS = {
    "weights-missing": (lambda d, m: _no_weights(d), ["weights", "are missing"]),
    "weights-empty-file": (lambda d, m: (d / "model.safetensors").write_bytes(b"") and None, ["corrupt or truncated"]),
    "weights-is-a-folder": (lambda d, m: _no_weights(d).joinpath("model.safetensors").mkdir(), ["cannot read checkpoint weights"]),
    "pth-module-by-file-path": (lambda d, m: pickled_module(_no_weights(d) / "model.pth", m), ["model.pth", "not a plain tensor file"]),
    "torch-save-renamed-safetensors": (lambda d, m: pickled_module(d / "model.safetensors", m) and None, ["contains a pickle"]),
    "pt-dict-with-payload": (lambda d, m: torch.save({"w": exec_payload(m)}, _no_weights(d) / "model.pt"), ["not a plain tensor file"]),
    "pt-holds-a-tensor": (lambda d, m: torch.save(torch.zeros(3), _no_weights(d) / "model.pt"), ["not a state dict"]),
    "pt-holds-nested-dict": (lambda d, m: torch.save({"model": {"w": torch.zeros(2)}}, _no_weights(d) / "model.pt"), ["not a state dict"]),
    "config-of-late-fusion": (lambda d, m: _with_preset(d, "tiny", "late") and None, ["do not match", "unexpected"]),
    "config-missing": (lambda d, m: (d / "config.json").unlink(), ["config.json is missing"]),
    "config-not-json": (lambda d, m: (d / "config.json").write_bytes(b"\xff\xfe{"), ["not valid JSON"]),
    "config-is-a-folder": (lambda d, m: ((d / "config.json").unlink(), (d / "config.json").mkdir()) and None, ["cannot read checkpoint config"]),
    "config-without-spec": (lambda d, m: _edit_config(d, spec=None), ["not an edgekit checkpoint config"]),
    "spec-invalid": (lambda d, m: _edit_config(d, spec={"inputs": 3}), ["invalid model spec"]),
    "model-section-incomplete": (lambda d, m: _edit_config(d, model={"fusion": "attention"}), ["missing the key 'image'"]),
    "model-section-wrong-types": (lambda d, m: _edit_config(d, model={**json.loads((d / "config.json").read_text())["model"], "image": 3}), ["cannot build a model"]),
}


@pytest.mark.parametrize("fault", list(CHECKPOINT_FAULTS))
def test_checkpoint_faults_on_the_library(copy_ck, tmp_path, fault):
    damage, needles = CHECKPOINT_FAULTS[fault]
    d = copy_ck()
    marker = tmp_path / "UNPICKLED"
    target = damage(d, marker)
    with pytest.raises(EdgekitError) as e:
        checkpoint.load(target if isinstance(target, Path) else d)
    assert_lib_error(e, *needles)
    assert not marker.exists(), "a pickle in a checkpoint was executed"


def _edit_config(d: Path, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


# ---------------------------------------------------------------- 6-8, 19-20 recipes on the library

@pytest.mark.parametrize("changes, needles", [
    ({"variants.0.passes.0": {"prune": {"ratio": 1.0}}}, ["prune.ratio", "less than 1"]),
    ({"variants.0.passes.0": {"prune": {"target_macs": 0}}}, ["target_macs", "greater than 0"]),
    ({"variants.0.passes.0": {"distill": {"alpha": 1.5}}}, ["distill.alpha", "less than or equal to 1"]),
    ({"variants.0.passes.0": {"distill": {"epochs": 0}}}, ["distill.epochs"]),
    ({"variants.0.passes.0": {"quantize": {"batch_size": -4}}}, ["quantize.batch_size"]),
    ({"calibration.missing": 1.0}, ["calibration.missing", "less than 1"]),
    ({"calibration.size": 0}, ["calibration.size", "greater than or equal to 1"]),
    ({"calibration.split": "test"}, ["calibration.split", "'train' or 'val'"]),
    ({"bench": {"min_seconds": 0}}, ["bench.min_seconds"]),
    ({"targets.0": {"backend": "tensorrt", "host": "jetson.local"}}, ["ssh://"]),
    ({"targets.0.backend": "tflite"}, ["targets[0].backend", "tflite"]),
    ({"variants.0.passes.0": {"quantise": {}}}, ["quantise", "prune, distill, quantize"]),
    ({"variants.0.passes.0": {"quantize": {"keep_flaot": ["audio"]}}}, ["unknown key 'keep_flaot'", "keep_float"]),
], ids=["ratio-1", "target-macs-0", "alpha-1.5", "epochs-0", "batch-negative", "missing-1", "size-0", "split-test", "min-seconds-0",
        "host-not-ssh", "backend-tflite", "pass-misspelled", "key-misspelled"])
def test_recipe_values_out_of_range_or_misspelled(tmp_path, changes, needles):
    from edgekit.recipe import load_recipe

    with pytest.raises(EdgekitError) as e:
        load_recipe(recipe_file(tmp_path, None, **changes))
    assert_lib_error(e, *needles)


@pytest.mark.parametrize("text, needles", [
    ("name: [unclosed\n", ["not valid YAML", "line"]),
    ("name: 'unterminated\n", ["not valid YAML"]),
    ("name: x\n\tvariants: [\n", ["not valid YAML", "'\\t'"]),
    ("- just\n- a list\n", ["not a YAML mapping"]),
    ("just a string\n", ["not a YAML mapping"]),
    ("", ["not a YAML mapping"]),
    ("name: x\n", ["missing required key 'variants'"]),
    ("!!python/object/apply:os.system ['touch {tmp}/PWNED']\n", ["not valid YAML"]),
], ids=["unclosed-flow", "unterminated-quote", "tab", "list", "string", "empty", "no-variants", "python-tag"])
def test_recipe_files_that_are_not_recipes(tmp_path, text, needles):
    from edgekit.recipe import load_recipe

    with pytest.raises(EdgekitError) as e:
        load_recipe(recipe_file(tmp_path, None, text=text.replace("{tmp}", str(tmp_path))))
    assert_lib_error(e, *needles)
    assert not (tmp_path / "PWNED").exists(), "the recipe was not loaded with yaml.safe_load"


# ---------------------------------------------------------------- 9-12 runner inputs: real ORT and OpenVINO runners

def _bad_feeds(good: dict) -> dict:
    nan_audio, inf_image = good["audio"].copy(), good["image"].copy()
    nan_audio[1, 0, 3, 5] = np.nan
    inf_image[0, 0, 0, 0] = -np.inf
    renamed = dict(good)
    renamed["Image"] = renamed.pop("image")
    return {
        "name-mismatch": (renamed, ["missing ['image']", "unexpected ['Image']"]),
        "input-missing": ({k: v for k, v in good.items() if k != "modality_mask"}, ["missing ['modality_mask']"]),
        "shape-mismatch": (dict(good, audio=good["audio"][:, 0]), ["'audio' has shape [2, 40, 64]", "expected [B,1,40,64]"]),
        "shape-mismatch-inner": (dict(good, image=np.zeros((2, 1, 32, 32), np.float32)), ["'image' has shape [2, 1, 32, 32]"]),
        "dtype-float64": (dict(good, image=good["image"].astype(np.float64)), ["'image' has dtype float64, expected float32"]),
        "dtype-float-text": (dict(good, text=good["text"].astype(np.float32)), ["'text' has dtype float32, expected int64"]),
        "nan": (dict(good, audio=nan_audio), ["'audio' contains 1 NaN", "sample(s) 1"]),
        "inf": (dict(good, image=inf_image), ["'image' contains 0 NaN and 1 Inf", "sample(s) 0"]),
        "batch-sizes-differ": (dict(good, audio=np.concatenate([good["audio"]] * 2)), ["different batch sizes", "audio 4"]),
        "python-list": (dict(good, text=good["text"].tolist()), ["'text' is a list, not a numpy array"]),
        "torch-tensor": (dict(good, image=torch.from_numpy(good["image"])), ["'image' is a Tensor"]),
    }


BAD_FEEDS = list(_bad_feeds({"image": np.zeros((2, 1, 28, 28), np.float32), "audio": np.zeros((2, 1, 40, 64), np.float32),
                             "text": np.zeros((2, 16), np.int64), "modality_mask": np.ones((2, 3), np.float32)}))


@pytest.mark.parametrize("how", ["run", "bind"])
@pytest.mark.parametrize("fault", BAD_FEEDS)
def test_runner_refuses_bad_feeds_before_the_runtime_sees_them(runner, fault, how):
    feed, needles = _bad_feeds(runner.spec.example_inputs(2, seed=3))[fault]
    with pytest.raises(EdgekitError) as e:
        getattr(runner, how)(feed)
    assert_lib_error(e, *needles)


def test_runner_refuses_a_feed_that_is_not_a_mapping(runner):
    with pytest.raises(EdgekitError) as e:
        runner.run(runner.spec.example_inputs(1)["image"])
    assert_lib_error(e, "not a mapping")


def test_evaluate_stops_at_the_first_batch_with_nan(runner, fsdd):
    """12 at the evaluate boundary: a dataset with one NaN sample is refused, not scored as a wrong prediction."""
    from edgekit.data import avdigits
    from edgekit.evaluate import evaluate

    data = avdigits.load("test", fsdd).subset(np.arange(80))
    data.inputs["audio"] = data.inputs["audio"].copy()
    data.inputs["audio"][70, 0, 0, 0] = np.nan
    with pytest.raises(EdgekitError) as e:
        evaluate(runner, data, runner.spec.class_names, batch_size=64)
    assert_lib_error(e, "'audio' contains 1 NaN", "sample(s) 6")  # sample 6 of the second batch


# ---------------------------------------------------------------- 13 calibration sets on the library

def test_calibration_sets_that_cannot_be_drawn_or_used(ck, fsdd):
    from edgekit.data import avdigits
    from edgekit.data.calibration import check, sample

    _, spec, _ = checkpoint.load(ck)
    val = avdigits.load("val", fsdd)
    cases = [
        (lambda: sample(val, len(val) + 1), [f"calibration size {len(val) + 1}", f"({len(val)} samples)"]),
        (lambda: sample(val, 5, stratify="class"), ["calibration size 5", "10 classes"]),
        (lambda: sample(val.subset(np.arange(0)), 8), ["source split is empty"]),
        (lambda: sample(val, 0), ["calibration size is 0"]),
        (lambda: check(val.subset(np.arange(0)), spec), ["calibration set is empty"]),
    ]
    poisoned = sample(val, 40, missing=0.0)
    poisoned.inputs["image"] = poisoned.inputs["image"].copy()
    poisoned.inputs["image"][33, 0, 5, 5] = np.inf  # beyond the first batch check() looks at
    cases.append((lambda: check(poisoned, spec), ["NaN or Inf in 'image'", "sample 33"]))
    for call, needles in cases:
        with pytest.raises(EdgekitError) as e:
            call()
        assert_lib_error(e, *needles)
    assert len(sample(val, 10, stratify="class")) == 10 and len(sample(val, 3, stratify="none")) == 3  # the limits themselves are fine


# ---------------------------------------------------------------- 14-15 FSDD folders and WAV reading on the library

def test_fsdd_folders_that_cannot_make_the_dataset(tmp_path):
    from edgekit.data import avdigits

    one_digit = tmp_path / "one-digit"
    one_digit.mkdir()
    for take in range(3):
        write_wav(one_digit / f"7_jackson_{take}.wav")
    nested_empty = tmp_path / "nested" / "recordings"
    nested_empty.mkdir(parents=True)
    (nested_empty / "7_jackson_0.mp3").write_bytes(b"ID3")
    for folder, needles in [(one_digit, ["does not cover all ten digits"]), (tmp_path / "nested", ["holds no WAV files"]),
                            (tmp_path / "absent", ["does not exist"]), (write_wav(tmp_path / "0_a_0.wav"), ["not a folder"])]:
        with pytest.raises(EdgekitError) as e:
            avdigits.load("test", folder, cache_dir=tmp_path / "cache")
        assert_lib_error(e, *needles)
    assert not any((tmp_path / "cache").rglob("*.npz"))



@pytest.mark.parametrize("damage, needles", [
    (lambda b: b[: len(b) // 2 + 1], ["truncated"]),
    (lambda b: b[:44], ["unsupported or empty"]),
    (lambda b: b"", ["empty or cut short"]),
    (lambda b: b[:24] + (0).to_bytes(4, "little") + b[28:], ["sample rate 0"]),
    (lambda b: b"ID3\x03\x00" + b[5:], ["cannot read WAV file"]),
], ids=["cut-mid-sample", "header-only", "zero-bytes", "rate-0", "mp3-header"])
def test_corrupt_wavs_name_the_file(tmp_path, damage, needles):
    from edgekit.data.audio import read_wav

    good = write_wav(tmp_path / "good.wav").read_bytes()
    bad = tmp_path / "4_theo_7.wav"
    bad.write_bytes(damage(good))
    with pytest.raises(EdgekitError) as e:
        read_wav(bad)
    assert_lib_error(e, "4_theo_7.wav", *needles)


# ---------------------------------------------------------------- 17 disk full

def _small_tmpfs(path: Path) -> bool:
    path.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _file_size_limit(limit: int):
    import resource

    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


# Each pair takes another path to the one-line error: ENOSPC from Python's own write (export), OpenVINO's
# iostream error on a full file system, ONNX Runtime's protobuf error at the file-size limit, and OpenVINO's
# at the limit (it deletes its partial file). Not export under a file-size limit: the limit also hits torch's
# own scratch files outside --out.
DISK_FULL = [("tmpfs", "export"), ("tmpfs", "compile-openvino"),
             ("file-size-limit", "compile-onnxruntime"), ("file-size-limit", "compile-openvino")]


@pytest.mark.parametrize("how, command", DISK_FULL, ids=[f"{h}-{c}" for h, c in DISK_FULL])
def test_disk_full_is_one_line_and_leaves_nothing_finished(tmp_path, ck, onnx_model, how, command):
    if command.endswith("openvino") and not HAVE_OPENVINO:
        pytest.skip("OpenVINO not installed")
    disk, preexec = tmp_path / "disk", None
    if how == "tmpfs":
        if not _small_tmpfs(disk):
            pytest.skip("cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN); the file-size-limit cases cover disk full")
    else:
        disk.mkdir()
        preexec = _file_size_limit(64 << 10)
    out = disk / "out"
    args = (["export", ck, "--out", out / "model.onnx"] if command == "export" else
            ["compile", onnx_model, "--backend", command.split("-")[1], "--out", out])
    try:
        env = dict(os.environ)
        env.pop("EDGEKIT_DEBUG", None)
        r = subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True, env=env,
                           preexec_fn=preexec, timeout=600)
        assert_one_line_error(r, "disk full", str(out))
        assert_nothing_finished(disk)
    finally:
        if how == "tmpfs":
            _umount(disk)


def test_disk_full_during_export_sidecars_leaves_no_model_onnx(tmp_path, ck, fsdd):
    from edgekit import export
    from edgekit.data import avdigits

    disk = tmp_path / "disk"
    disk.mkdir()
    model, spec, _ = checkpoint.load(ck)
    data = avdigits.load("test", fsdd).subset(np.arange(32))
    try:  # room for the ONNX (~0.4 MB) but not also for its parity samples (~0.4 MB)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        with pytest.raises(EdgekitError) as e:
            export.to_onnx(model, spec, disk / "model.onnx", check_parity_on=data)
        assert_lib_error(e, "disk full")
        assert_nothing_finished(disk)
    finally:
        _umount(disk)


def test_atomic_writes_translate_write_failures(tmp_path, monkeypatch):
    """The io layer itself: ENOSPC/EFBIG/EACCES from a write, a file where a folder should be, and a native
    writer's own exception all become one-line errors; temp files never survive; other errors pass through."""
    import errno

    from edgekit import io

    def failing(err):
        def write(_self, *_a, **_k):
            raise err
        return write

    for err, needle in [(OSError(errno.ENOSPC, "No space left on device"), "disk full"),
                        (OSError(errno.EFBIG, "File too large"), "disk full"),
                        (OSError(errno.EACCES, "Permission denied"), "Permission denied")]:
        monkeypatch.setattr(Path, "write_text", failing(err))
        with pytest.raises(EdgekitError) as e:
            io.atomic_write_text(tmp_path / "a.json", "{}")
        monkeypatch.undo()
        assert_lib_error(e, needle, "a.json")
        assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(EdgekitError) as e:
        io.atomic_write_text(tmp_path / "f" / "x.json", "")
    assert_lib_error(e, "is a file, not a folder")
    with pytest.raises(ZeroDivisionError):  # a bug inside the block is not dressed up as a disk problem
        with io.atomic_path(tmp_path / "b.bin"):
            1 / 0
    # a native writer's own exception (OpenVINO's iostream error): an I/O error, and "disk full" when the disk is
    with pytest.raises(EdgekitError) as e:
        with io.atomic_path(tmp_path / "m.xml") as tmp:
            tmp.with_suffix(".bin").write_bytes(b"partial")  # what a writer puts beside its temp file is removed too
            raise RuntimeError("basic_ios::clear: iostream error")
    assert_lib_error(e, "cannot write", "m.xml", "I/O error")
    monkeypatch.setattr(io.shutil, "disk_usage", lambda _p: type("Usage", (), {"free": 0})())
    with pytest.raises(EdgekitError) as e:
        with io.atomic_path(tmp_path / "m.xml"):
            raise RuntimeError("basic_ios::clear: iostream error")
    assert_lib_error(e, "disk full", "m.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
