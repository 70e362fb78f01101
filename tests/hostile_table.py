"""The hostile-input table of issue 16: every way a downloaded file, a recipe or an option can be malicious or broken,
each as one row — how to build the bad input in a copy of a small real workspace, the command line, the exit code
and what the one-line error must name. tests/test_hostile.py asserts every row; benchmarks/hostile_memory.py runs
the same rows and prints each one's peak memory.

The workspace (built once, copied per row): an UNTRAINED tiny attention-fusion checkpoint saved with
edgekit.checkpoint.save (`ck/`), its ONNX export (`onnx/model.onnx` + parity sidecars), that ONNX compiled for ONNX
Runtime (`ort/`), a small run directory with a valid results.json, resolved recipe, evaluation samples and one
variant (`run/`), and a valid recipe (`recipe.yaml`, one variant with no passes). Each command runs as the real
`edgekit` console entry in a subprocess with no trust granted by the machine (EDGEKIT_TRUSTED_CODE unset, an empty
XDG_CONFIG_HOME), watched for its thread count and memory; its peak RSS is ru_maxrss from os.wait4, taken by a small
launcher process that forks the command (see _LAUNCHER).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
FSDD = os.environ.get("EDGEKIT_FSDD") or (str(REPO.parent / "shared" / "data" / "fsdd") if (REPO.parent / "shared" / "data" / "fsdd").is_dir() else None)
TIMEOUT_S = 150            # a row that runs this long is killed and fails (a hostile input must fail early)
KILL_RSS = 3 << 30         # the watchdog kills a command past 3 GiB resident ...
KILL_THREADS = 2000        # ... or 2000 threads: the hostile inputs must not take the test machine down with them
RSS_BOUND = 2 << 30        # issue 16: the worst case stays under 2 GB
UNREACHABLE = "ssh://edgekit@127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


# ---------------------------------------------------------------- the workspace

def build_workspace(root: Path) -> Path:
    """The shared workspace under `root` (see the module doc); returns root."""
    import numpy as np
    import torch
    import yaml

    from edgekit import checkpoint, export
    from edgekit.backends import compile_onnx
    from edgekit.data import ArrayDataset, avdigits
    from edgekit.models import build_model, preset_config
    from edgekit.results import save_results
    from edgekit.train import reference_spec

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = preset_config("tiny", "attention")
    model = build_model(cfg).eval()
    spec = reference_spec(cfg, avdigits.preprocessing(FSDD))
    checkpoint.save(model, spec, root / "ck", cfg)
    export.to_onnx(model, spec, root / "onnx" / "model.onnx")
    compile_onnx(root / "onnx" / "model.onnx", "onnxruntime", root / "ort")
    run = root / "run"
    (run / "variants" / "fp32").mkdir(parents=True)
    shutil.copy(root / "onnx" / "model.onnx", run / "variants" / "fp32" / "model.onnx")
    shutil.copy(root / "ck" / "config.json", run / "variants" / "fp32" / "config.json")
    example = spec.example_inputs(16, seed=0)
    ArrayDataset(example, np.arange(16) % 10).save(run / "eval_samples.npz")
    recipe = good_recipe()
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    save_results(results_doc(), run / "results.json")
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (root / "site").mkdir()
    return root


def good_recipe(**changes) -> dict:
    """A small valid recipe: one variant without passes (cheap if a row's command ever gets past loading it)."""
    d = {"name": "hostile", "data": {"dataset": "avdigits", "fsdd": FSDD, "seed": 0}, "calibration": {"size": 32},
         "variants": [{"name": "same", "passes": []}], "targets": [{"backend": "onnxruntime"}]}
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = d
        for k in parents:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        node[int(last) if isinstance(node, list) else last] = value
    return d


def results_doc(**over) -> dict:
    """A valid edgekit-results/1 document: three variants on one target."""
    lat = lambda s: {"1": {"median": s, "p90": s * 1.1, "p99": s * 1.2, "cv": 0.01, "n": 100}}  # noqa: E731
    doc = {"schema": "edgekit-results/1", "run": {"name": "hostile"}, "budget": {"max_accuracy_drop": 0.01},
           "variants": {"fp32": {}, "int8": {"precision": "int8"}, "pruned": {}},
           "targets": {"cpu": {"backend": "onnxruntime"}},
           "results": [{"variant": "fp32", "target": "cpu", "metrics": {"accuracy": 0.97}, "latency": lat(0.002)},
                       {"variant": "int8", "target": "cpu", "metrics": {"accuracy": 0.965}, "latency": lat(0.001)},
                       {"variant": "pruned", "target": "cpu", "metrics": {"accuracy": 0.90}, "latency": lat(0.0005)}]}
    doc.update(over)
    return doc


class WS:
    """One row's copy of the workspace, with the small tools rows use to damage it."""

    def __init__(self, root: Path):
        self.root = root
        self.ck, self.onnx, self.ort, self.run = root / "ck", root / "onnx" / "model.onnx", root / "ort", root / "run"
        self.out = root / "out"           # where a command that is expected to fail would write
        self.marker = root / "PWNED"      # created by any code that must never run
        self.env: dict = {}

    # --- files
    def write(self, rel: str, data) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p

    def edit_json(self, path: Path, fn) -> Path:
        d = json.loads(path.read_text())
        d = fn(d) or d
        path.write_text(json.dumps(d))
        return path

    def config(self, **changes) -> Path:
        """Set (or with None, drop) top-level keys of ck/config.json."""
        def edit(d):
            for k, v in changes.items():
                d.pop(k) if v is None else d.__setitem__(k, v)
        return self.edit_json(self.ck / "config.json", edit)

    def model_config(self, fn) -> Path:
        return self.edit_json(self.ck / "config.json", lambda d: fn(d["model"]))

    def recipe(self, text: str | None = None, name: str = "bad.yaml", **changes) -> Path:
        import yaml

        return self.write(name, text if text is not None else yaml.safe_dump(good_recipe(**changes)))

    def compress(self, recipe: Path, out: Path | None = None) -> list:
        return ["compress", self.ck, "--recipe", recipe, "--out", out or self.out]

    def results(self, content) -> list:
        self.write("run/results.json", content if isinstance(content, (bytes, str)) else json.dumps(content, allow_nan=True))
        return ["report", self.run]

    def site_module(self, name: str) -> None:
        """A third-party module on PYTHONPATH that creates the marker when imported."""
        self.write(f"site/{name}.py", f"from pathlib import Path\nPath({str(self.marker)!r}).write_text('imported')\n"
                                      "def build(config):\n    raise SystemExit('ran')\n")
        self.env["PYTHONPATH"] = str(self.root / "site")

    # --- ONNX
    def onnx_edit(self, path: Path, fn) -> Path:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        fn(proto)
        path.write_bytes(proto.SerializeToString())
        return path

    def onnx_spec(self, path: Path, fn) -> Path:
        """Edit the ModelSpec JSON an edgekit ONNX carries in its metadata (key edgekit.spec)."""
        def edit(proto):
            for p in proto.metadata_props:
                if p.key == "edgekit.spec":
                    p.value = fn(json.loads(p.value))
        return self.onnx_edit(path, edit)

    def external_data(self, path: Path, location: str) -> Path:
        """Move the largest initializer of `path` to external data at `location` (as written in the file)."""
        def edit(proto):
            from onnx import TensorProto

            t = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
            n = len(t.raw_data)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", "0"), ("length", str(n))):
                e = t.external_data.add()
                e.key, e.value = k, v
        return self.onnx_edit(path, edit)


def foreign_onnx(path: Path) -> Path:
    """Someone else's model: y = x + 1 on [N, 4] floats, no edgekit metadata."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "foreign",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor("one", TensorProto.FLOAT, [4], [1.0] * 4)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def flip_a_weight_byte(weights: Path) -> None:
    raw = bytearray(weights.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], "little")  # after the safetensors header: the header stays valid
    raw[data_start + (len(raw) - data_start) // 2] ^= 0x40
    weights.write_bytes(bytes(raw))


def alias_bomb(levels: int = 6, width: int = 10) -> str:
    """"Billion laughs": each level a list of `width` aliases of the one below (width**levels leaves when expanded)."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines)


# ---------------------------------------------------------------- the table

@dataclass
class Case:
    name: str
    category: str
    setup: Callable[[WS], list]   # builds the bad input in the row's workspace, returns the command line
    needles: tuple                # what the one `error:` line must contain (the culprit: file, key, option, value)
    exit: int = 2
    may_change: tuple = ()        # workspace paths (relative) the command is allowed to change
    check: Callable | None = None  # extra assertions: check(ws, outcome)


CASES: dict[str, Case] = {}


def case(name: str, category: str, *needles: str, exit: int = 2, may_change: tuple = (), check=None):
    def deco(fn):
        assert name not in CASES, name
        CASES[name] = Case(name, category, fn, needles, exit, may_change, check)
        return fn
    return deco


# ---- 1. code references: nothing a downloaded file names runs without trust (the marker must not appear)

@case("trust-ck-factory-os-system", "trust", "os:system", "config.json")
def _(w):
    w.config(factory="os:system", model=f"touch {w.marker}")
    return ["evaluate", w.ck]


@case("trust-ck-factory-builtins-eval", "trust", "builtins:eval", "config.json")
def _(w):
    w.config(factory="builtins:eval", model=f"open({str(w.marker)!r}, 'w').write('x')")
    return ["evaluate", w.ck]


@case("trust-ck-factory-subprocess-run-export", "trust", "subprocess:run", "config.json")
def _(w):
    w.config(factory="subprocess:run", model=["touch", str(w.marker)])
    return ["export", w.ck, "--out", w.out / "model.onnx"]


@case("trust-ck-factory-third-party-evaluate", "trust", "vendor_hostile:build", "not trusted")
def _(w):
    w.site_module("vendor_hostile")
    w.config(factory="vendor_hostile:build")
    return ["evaluate", w.ck]


@case("trust-ck-factory-third-party-bench-torch", "trust", "vendor_hostile:build", "not trusted")
def _(w):
    w.site_module("vendor_hostile")
    w.config(factory="vendor_hostile:build")
    return ["bench", w.ck, "--backend", "torch", "--iterations", "2", "--warmup", "1", "--out", w.out]


@case("trust-ck-factory-third-party-compress", "trust", "vendor_hostile:build", "not trusted")
def _(w):
    w.site_module("vendor_hostile")
    w.config(factory="vendor_hostile:build")
    return w.compress(w.root / "recipe.yaml")


@case("trust-ck-factory-allowed-prefix-is-not-parent", "trust", "vendor_hostile.zoo:build", "not trusted")
def _(w):
    w.write("site/vendor_hostile/__init__.py", f"from pathlib import Path\nPath({str(w.marker)!r}).write_text('imported')\n")
    w.write("site/vendor_hostile/zoo.py", "def build(config):\n    raise SystemExit('ran')\n")
    w.env.update(PYTHONPATH=str(w.root / "site"), EDGEKIT_TRUSTED_CODE="vendor_hostile.other")
    w.config(factory="vendor_hostile.zoo:build")
    return ["evaluate", w.ck]


@case("trust-ck-factory-malformed-reference", "trust", "config.json", "not a reference")
def _(w):
    w.config(factory="__import__('os').system('touch x')")
    return ["evaluate", w.ck]


@case("trust-ck-factory-not-a-string", "trust", "config.json", "factory")
def _(w):
    w.config(factory={"module": "os", "attr": "system"})
    return ["evaluate", w.ck]


@case("trust-recipe-factory-stdlib", "trust", "subprocess:run", "standard library")
def _(w):
    r = w.recipe(**{"model": {"checkpoint": str(w.ck), "factory": "subprocess:run", "config": {"args": ["touch", str(w.marker)]}}})
    return ["compress", "--recipe", r, "--out", w.out]


@case("trust-recipe-loader-stdlib", "trust", "os:system", "standard library")
def _(w):
    r = w.recipe(**{"data": {"format": "python", "loader": "os:system", "options": {"command": f"touch {w.marker}"}}})
    return ["evaluate", w.ck, "--data", r]


# ---- 2. resource limits: refused before anything is allocated or started

def _bench(w, *extra):
    return ["bench", w.ort, "--out", w.out, *extra]


@case("limit-bench-threads-huge", "limits", "--threads", "100000")
def _(w):
    return _bench(w, "--threads", "100000", "--iterations", "2", "--warmup", "1", "--batch", "1")


@case("limit-compile-threads-huge", "limits", "--threads", "100000")
def _(w):
    return ["compile", w.onnx, "--backend", "onnxruntime", "--threads", "100000", "--out", w.out]


@case("limit-bench-threads-zero", "limits", "--threads")
def _(w):
    return _bench(w, "--threads", "0", "--iterations", "2", "--warmup", "1", "--batch", "1")


@case("limit-bench-threads-negative", "limits", "--threads")
def _(w):
    return _bench(w, "--threads", "-3", "--iterations", "2", "--warmup", "1", "--batch", "1")


@case("limit-bench-batch-huge", "limits", "--batch", "1000000000")
def _(w):
    return _bench(w, "--batch", "1000000000", "--iterations", "2", "--warmup", "1")


@case("limit-bench-batch-zero", "limits", "--batch")
def _(w):
    return _bench(w, "--batch", "0", "--iterations", "2", "--warmup", "1")


@case("limit-bench-batch-negative", "limits", "--batch")
def _(w):
    return _bench(w, "--batch", "-8", "--iterations", "2", "--warmup", "1")


@case("limit-bench-iterations-zero", "limits", "--iterations")
def _(w):
    return _bench(w, "--iterations", "0", "--warmup", "1", "--batch", "1")


@case("limit-bench-iterations-negative", "limits", "--iterations")
def _(w):
    return _bench(w, "--iterations", "-5", "--warmup", "1", "--batch", "1")


@case("limit-bench-warmup-negative", "limits", "--warmup")
def _(w):
    return _bench(w, "--warmup", "-1", "--iterations", "2", "--batch", "1")


@case("limit-bench-min-seconds-nan", "limits", "--min-seconds")
def _(w):
    return _bench(w, "--min-seconds", "nan", "--warmup", "1", "--batch", "1")


@case("limit-bench-min-seconds-inf", "limits", "--min-seconds")
def _(w):
    return _bench(w, "--min-seconds", "inf", "--warmup", "1", "--batch", "1")


@case("limit-bench-min-seconds-negative", "limits", "--min-seconds")
def _(w):
    return _bench(w, "--min-seconds", "-2", "--warmup", "1", "--batch", "1")


@case("limit-bench-remote-iterations-zero", "limits", "--iterations")
def _(w):
    return ["bench", w.onnx, "--target", UNREACHABLE, "--iterations", "0"]


@case("limit-train-epochs-zero", "limits", "--epochs")
def _(w):
    return ["train", "--epochs", "0", "--out", w.out]


@case("limit-export-opset-out-of-range", "limits", "--opset")
def _(w):
    return ["export", w.ck, "--opset", "999", "--out", w.out / "model.onnx"]


@case("limit-deploy-samples-negative", "limits", "--samples")
def _(w):
    return ["deploy", w.run, "--target", UNREACHABLE, "--samples", "-5"]


@case("limit-recipe-bench-threads-huge", "limits", "bench.threads")
def _(w):
    return w.compress(w.recipe(**{"bench.threads": 100000}))


@case("limit-recipe-bench-batch-huge", "limits", "bench.batch_sizes")
def _(w):
    return w.compress(w.recipe(**{"bench.batch_sizes": [1000000000]}))


@case("limit-recipe-bench-batch-zero", "limits", "bench.batch_sizes")
def _(w):
    return w.compress(w.recipe(**{"bench.batch_sizes": [0]}))


@case("limit-recipe-bench-min-seconds-nan", "limits", "bench.min_seconds")
def _(w):
    return w.compress(w.recipe(text=(w.root / "recipe.yaml").read_text() + "bench: {min_seconds: .nan}\n"))


@case("limit-recipe-yaml-alias-bomb", "limits", "bad.yaml", "alias")
def _(w):
    return w.compress(w.recipe(text=alias_bomb() + "\n" + (w.root / "recipe.yaml").read_text()))


@case("limit-recipe-yaml-alias-bomb-data-check", "limits", "bad.yaml", "alias")
def _(w):
    text = (w.root / "recipe.yaml").read_text().replace("seed: 0", "seed: 0\n  options: *a5")
    return ["data", "check", w.recipe(text=alias_bomb() + "\n" + text)]


@case("limit-recipe-yaml-deep-nesting", "limits", "bad.yaml", "deep")
def _(w):
    return w.compress(w.recipe(text="name: x\nvariants: " + "[" * 20000 + "]" * 20000 + "\n"))


@case("limit-config-json-deep-nesting", "limits", "config.json", "deep")
def _(w):
    w.write("ck/config.json", '{"format": "edgekit-checkpoint/1", "model": ' + "[" * 100000 + "]" * 100000 + "}")
    return ["evaluate", w.ck]


@case("limit-config-huge-widths", "limits", "config.json", "1000000000000")
def _(w):
    w.model_config(lambda m: m["image"].__setitem__("stem", 10**12))
    return ["evaluate", w.ck]


@case("limit-config-spec-huge-shape", "limits", "config.json", "image")
def _(w):
    w.edit_json(w.ck / "config.json", lambda d: d["spec"]["inputs"][0].__setitem__("shape", [None, 1000000, 1000000]))
    return ["export", w.ck, "--out", w.out / "model.onnx"]


@case("limit-onnx-spec-huge-shape-compile", "limits", "model.onnx", "image")
def _(w):
    w.onnx_spec(w.onnx, lambda s: json.dumps({**s, "inputs": [dict(s["inputs"][0], shape=[None, 1000000, 1000000])] + s["inputs"][1:]}))
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("limit-artifact-spec-huge-shape-bench", "limits", "artifact.json", "image")
def _(w):
    w.edit_json(w.ort / "artifact.json", lambda d: d["spec"]["inputs"][0].__setitem__("shape", [None, 1000000, 1000000]))
    return _bench(w, "--iterations", "2", "--warmup", "1", "--batch", "1")


@case("limit-results-json-deep-nesting", "limits", "results.json", "deep")
def _(w):
    return w.results('{"schema": "edgekit-results/1", "run": ' + "[" * 100000 + "]" * 100000 + "}")


# ---- 4. never overwrite an input (the hashes prove it)

@case("overwrite-compile-out-is-onnx-folder", "overwrite", "model.onnx")
def _(w):
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.onnx.parent]


@case("overwrite-compile-out-is-onnx-file", "overwrite", "model.onnx")
def _(w):
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.onnx]


@case("overwrite-compile-out-is-parent-of-onnx", "overwrite", "model.onnx")
def _(w):
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.root]


@case("overwrite-export-out-is-weights", "overwrite", "model.safetensors")
def _(w):
    return ["export", w.ck, "--out", w.ck / "model.safetensors"]


@case("overwrite-export-out-is-config", "overwrite", "config.json")
def _(w):
    return ["export", w.ck, "--out", w.ck / "config.json"]


@case("overwrite-export-out-symlink-to-weights", "overwrite", "model.safetensors")
def _(w):
    link = w.root / "innocent.onnx"
    link.symlink_to(w.ck / "model.safetensors")
    return ["export", w.ck, "--out", link]


@case("overwrite-compress-out-is-checkpoint", "overwrite", "ck")
def _(w):
    return w.compress(w.root / "recipe.yaml", out=w.ck)


@case("overwrite-compress-bad-recipe-into-existing-run", "overwrite", "bad.yaml", "ratoi")
def _(w):
    return w.compress(w.recipe(**{"variants.0.passes": [{"prune": {"ratoi": 0.3}}]}), out=w.run)


@case("overwrite-compress-missing-checkpoint-into-existing-run", "overwrite", "no-such-ck")
def _(w):
    return ["compress", w.root / "no-such-ck", "--recipe", w.root / "recipe.yaml", "--out", w.run]


# ---- 5. bad data

@case("data-bit-flipped-weights-evaluate", "data", "model.safetensors", "hash")
def _(w):
    flip_a_weight_byte(w.ck / "model.safetensors")
    return ["evaluate", w.ck]


@case("data-bit-flipped-weights-export", "data", "model.safetensors", "hash")
def _(w):
    flip_a_weight_byte(w.ck / "model.safetensors")
    return ["export", w.ck, "--out", w.out / "model.onnx"]


@case("data-weights-sha256-not-a-string", "data", "config.json", "weights_sha256")
def _(w):
    w.config(weights_sha256=12345)
    return ["bench", w.ck, "--backend", "torch", "--iterations", "2", "--warmup", "1", "--batch", "1", "--out", w.out]


@case("overwrite-compress-corrupt-checkpoint-into-existing-run", "overwrite", "model.safetensors")
def _(w):
    flip_a_weight_byte(w.ck / "model.safetensors")
    return w.compress(w.recipe(**{"name": "another-run", "budget": {"max_accuracy_drop": 2.0}}), out=w.run)


@case("data-recipe-duplicate-key-top", "data", "bad.yaml", "budget")
def _(w):
    text = (w.root / "recipe.yaml").read_text()
    return w.compress(w.recipe(text=text + "budget: {max_accuracy_drop: 1.0}\nbudget: {max_accuracy_drop: 50}\n"))


@case("data-recipe-duplicate-key-nested", "data", "bad.yaml", "name")
def _(w):
    return w.compress(w.recipe(text="name: dup\nvariants:\n  - name: a\n    name: b\n    passes: []\n"))


@case("data-config-json-duplicate-key", "data", "config.json", "model")
def _(w):
    text = (w.ck / "config.json").read_text().rstrip()
    w.write("ck/config.json", text[:-1] + ', "model": {"fusion": "late"}}')
    return ["evaluate", w.ck]


@case("data-results-nan-latency", "data", "results.json", "median")
def _(w):
    d = results_doc()
    d["results"][1]["latency"]["1"]["median"] = float("nan")
    return w.results(d)


@case("data-results-negative-latency", "data", "results.json", "median")
def _(w):
    d = results_doc()
    d["results"][2]["latency"]["1"]["median"] = -0.001
    return w.results(d)


@case("data-results-infinite-latency", "data", "results.json", "p99")
def _(w):
    d = results_doc()
    d["results"][0]["latency"]["1"]["p99"] = float("inf")
    return w.results(d)


@case("data-recipe-target-folders-collide", "data", "bad.yaml", "cpu a")
def _(w):
    return w.compress(w.recipe(**{"targets": [{"backend": "onnxruntime", "name": "cpu a"}, {"backend": "onnxruntime", "name": "cpu-a"}]}))


@case("data-recipe-target-name-case-collide", "data", "bad.yaml", "CPU")
def _(w):
    return w.compress(w.recipe(**{"targets": [{"backend": "onnxruntime", "name": "CPU"}, {"backend": "openvino", "name": "cpu"}]}))


@case("data-recipe-target-name-newline", "data", "bad.yaml", "targets[0].name")
def _(w):
    return w.compress(w.recipe(**{"targets": [{"backend": "onnxruntime", "name": "cpu\nINJECTED"}]}))


@case("data-recipe-bench-warmup-negative", "data", "bench.warmup")
def _(w):
    return w.compress(w.recipe(**{"bench.warmup": -1}))


@case("data-recipe-bench-min-iterations-zero", "data", "bench.min_iterations")
def _(w):
    return w.compress(w.recipe(**{"bench.min_iterations": 0}))


# ---- 6. malformed files: one line naming the file, never a crash

@case("file-config-is-a-json-list", "files", "config.json")
def _(w):
    w.write("ck/config.json", "[1, 2, 3]")
    return ["evaluate", w.ck]


@case("file-config-model-section-missing", "files", "config.json", "model")
def _(w):
    w.config(model=None)
    return ["evaluate", w.ck]


@case("file-config-model-is-a-list", "files", "config.json", "model")
def _(w):
    w.config(model=[1, 2])
    return ["evaluate", w.ck]


@case("file-config-stages-ill-typed", "files", "config.json", "stages")
def _(w):
    w.model_config(lambda m: m["image"].__setitem__("stages", "wide"))
    return ["evaluate", w.ck]


@case("file-config-spec-is-a-string", "files", "config.json", "spec")
def _(w):
    w.config(spec="image: 28x28")
    return ["export", w.ck, "--out", w.out / "model.onnx"]


@case("file-config-non-utf8", "files", "config.json")
def _(w):
    w.write("ck/config.json", b'{"format": "edgekit-checkpoint/1", "name": "\xff\xfe\xfa"}')
    return ["evaluate", w.ck]


@case("file-recipe-non-utf8", "files", "bad.yaml")
def _(w):
    return w.compress(w.write("bad.yaml", b"name: caf\xe9\nvariants: [{name: a, passes: []}]\n"))


@case("file-recipe-data-non-utf8", "files", "bad.yaml")
def _(w):
    return ["evaluate", w.ck, "--data", w.write("bad.yaml", b"data: {format: avdigits, seed: \xff\xfe}\n")]


@case("file-recipe-calibration-file-broken", "files", "calib.yaml")
def _(w):
    w.write("calib.yaml", "size: [unclosed\n")
    return w.compress(w.recipe(**{"calibration": str(w.root / "calib.yaml")}))


@case("file-recipe-calibration-file-binary", "files", "calib.yaml")
def _(w):
    w.write("calib.yaml", bytes(range(256)) * 4)
    return w.compress(w.recipe(**{"calibration": str(w.root / "calib.yaml")}))


@case("file-onnx-zero-bytes-compile", "files", "model.onnx")
def _(w):
    w.onnx.write_bytes(b"")
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-onnx-truncated-compile", "files", "model.onnx")
def _(w):
    data = w.onnx.read_bytes()
    w.onnx.write_bytes(data[: len(data) // 3])
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-onnx-unknown-op-compile", "files", "model.onnx", "NoSuchOp")
def _(w):
    def edit(proto):
        proto.graph.node[len(proto.graph.node) // 2].op_type = "NoSuchOp"
    w.onnx_edit(w.onnx, edit)
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-onnx-spec-metadata-not-json", "files", "model.onnx", "edgekit.spec")
def _(w):
    w.onnx_spec(w.onnx, lambda s: "{this is not json")
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-onnx-spec-metadata-ill-typed", "files", "model.onnx", "edgekit.spec")
def _(w):
    w.onnx_spec(w.onnx, lambda s: json.dumps({**s, "inputs": 3}))
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-onnx-spec-metadata-deep", "files", "model.onnx", "edgekit.spec")
def _(w):
    w.onnx_spec(w.onnx, lambda s: '{"inputs": ' + "[" * 100000 + "]" * 100000 + "}")
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-onnx-external-data-outside-folder", "files", "model.onnx", "external data")
def _(w):
    w.write("secret.bin", bytes(1 << 20))
    w.external_data(w.onnx, "../secret.bin")
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-onnx-external-data-absolute", "files", "model.onnx", "external data")
def _(w):
    w.external_data(w.onnx, "/etc/hostname")
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-onnx-external-data-missing", "files", "model.onnx", "external data")
def _(w):
    w.external_data(w.onnx, "weights.bin")
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-onnx-parity-samples-garbage", "files", "model.parity.npz")
def _(w):
    w.onnx.with_name("model.parity.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-artifact-json-path-escapes-folder", "files", "artifact.json")
def _(w):
    shutil.copy(w.ort / "model.onnx", w.root / "elsewhere.onnx")
    w.edit_json(w.ort / "artifact.json", lambda d: d.__setitem__("path", "../elsewhere.onnx"))
    return _bench(w, "--iterations", "2", "--warmup", "1", "--batch", "1")


@case("file-artifact-json-deep", "files", "artifact.json")
def _(w):
    w.write("ort/artifact.json", '{"backend": "onnxruntime", "options": ' + "[" * 100000 + "]" * 100000 + "}")
    return _bench(w, "--iterations", "2", "--warmup", "1", "--batch", "1")


@case("file-artifact-model-garbage", "files", "model.onnx")
def _(w):
    (w.ort / "model.onnx").write_bytes(os.urandom(4096))
    return _bench(w, "--iterations", "2", "--warmup", "1", "--batch", "1")


@case("file-results-json-list", "files", "results.json")
def _(w):
    return w.results("[1, 2, 3]")


@case("file-results-json-non-utf8", "files", "results.json")
def _(w):
    return w.results(b'{"schema": "edgekit-results/1", "run": {"name": "\xff\xfe"}}')


@case("file-results-variant-ill-typed", "files", "results.json", "variants")
def _(w):
    return w.results(results_doc(variants=["fp32", "int8"]))


@case("file-deploy-variant-onnx-garbage", "files", "model.onnx")
def _(w):
    (w.run / "variants" / "fp32" / "model.onnx").write_bytes(os.urandom(4096))
    return ["deploy", w.run, "--target", UNREACHABLE]


@case("file-deploy-variant-onnx-zero-bytes", "files", "model.onnx")
def _(w):
    (w.run / "variants" / "fp32" / "model.onnx").write_bytes(b"")
    return ["deploy", w.run, "--target", UNREACHABLE]


@case("file-deploy-foreign-model-in-variant", "files", "foreign")
def _(w):
    foreign_onnx(w.run / "variants" / "foreign" / "model.onnx")
    return ["deploy", w.run, "--target", UNREACHABLE]


@case("file-deploy-resolved-recipe-not-yaml", "files", "recipe.resolved.yaml")
def _(w):
    w.write("run/recipe.resolved.yaml", "targets: [{backend: tensorrt, options: {fp16: true}\n")
    return ["deploy", w.run, "--target", UNREACHABLE]


@case("file-deploy-resolved-recipe-a-list", "files", "recipe.resolved.yaml")
def _(w):
    w.write("run/recipe.resolved.yaml", "- targets\n- tensorrt\n")
    return ["deploy", w.run, "--target", UNREACHABLE]


@case("file-deploy-resolved-recipe-non-utf8", "files", "recipe.resolved.yaml")
def _(w):
    w.write("run/recipe.resolved.yaml", b"targets: [{backend: tensorrt, options: {workspace: \xff}}]\n")
    return ["deploy", w.run, "--target", UNREACHABLE]


@case("file-deploy-eval-samples-garbage", "files", "eval_samples.npz")
def _(w):
    w.write("run/eval_samples.npz", b"PK\x03\x04 not an npz")
    return ["deploy", w.run, "--target", UNREACHABLE]


# ---- targets: host strings and known_hosts

@case("target-port-out-of-range", "targets", "99999")
def _(w):
    return ["deploy", w.run, "--target", "ssh://edgekit@127.0.0.1:99999"]


@case("target-password-in-url", "targets", "password")
def _(w):
    return ["deploy", w.run, "--target", "ssh://edgekit:hunter2@127.0.0.1"]


@case("target-unclosed-ipv6", "targets", "ssh://[::1")
def _(w):
    return ["deploy", w.run, "--target", "ssh://[::1"]


@case("target-space-in-host", "targets", "bad host")
def _(w):
    return ["deploy", w.run, "--target", "ssh://edge kit@bad host"]


@case("target-newline-in-host", "targets", "target")
def _(w):
    return ["deploy", w.run, "--target", "ssh://edgekit@host\nProxyCommand=touch /tmp/x"]


@case("target-unknown-option", "targets", "proxycommand")
def _(w):
    return ["deploy", w.run, "--target", f"ssh://edgekit@127.0.0.1:9?proxycommand=touch%20{w.marker}"]


@case("target-bench-not-ssh", "targets", "http")
def _(w):
    return ["bench", w.onnx, "--target", "http://127.0.0.1:9"]


@case("target-known-hosts-binary", "targets", "known_hosts")
def _(w):
    w.write("known_hosts", bytes(range(256)) * 8)
    return ["bench", w.onnx, "--target", UNREACHABLE, "--known-hosts", w.root / "known_hosts"]


@case("target-known-hosts-is-a-folder", "targets", "known_hosts")
def _(w):
    (w.root / "known_hosts").mkdir()
    return ["deploy", w.run, "--target", UNREACHABLE, "--known-hosts", w.root / "known_hosts"]


@case("target-known-hosts-bad-key-line", "targets", "known_hosts")
def _(w):
    w.write("known_hosts", "127.0.0.1 ssh-ed25519 AAAA!!!not-base64!!!\n[127.0.0.1]:9 ssh-rsa =\n")
    return ["deploy", w.run, "--target", UNREACHABLE, "--known-hosts", w.root / "known_hosts"]


@case("target-identity-missing", "targets", "no-such-key")
def _(w):
    return ["bench", w.onnx, "--target", UNREACHABLE, "--identity", w.root / "no-such-key"]


# ---- more code that a file could smuggle in

@case("trust-recipe-python-tag", "trust", "bad.yaml")
def _(w):
    return w.compress(w.recipe(text=f"name: !!python/object/apply:os.system ['touch {w.marker}']\nvariants: [{{name: a, passes: []}}]\n"))


@case("trust-run-checkpoint-factory-untrusted", "trust", "vendor_hostile:build", "not trusted")
def _(w):
    w.site_module("vendor_hostile")
    w.config(factory="vendor_hostile:build")
    return ["run", w.root / "recipe.yaml", "--checkpoint", w.ck, "--out", w.out]


def _pickled_npz(w: WS, path: Path) -> Path:
    """An .npz whose array is a pickle that creates the marker when unpickled."""
    import numpy as np

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(w.marker)!r}, 'w').write('unpickled')",))

    arr = np.empty(1, dtype=object)
    arr[0] = Payload()
    with open(path, "wb") as f:
        np.savez(f, labels=arr, image=arr)
    return path


@case("trust-eval-samples-pickled-object-array", "trust", "eval_samples.npz")
def _(w):
    _pickled_npz(w, w.run / "eval_samples.npz")
    return ["deploy", w.run, "--target", UNREACHABLE]


@case("trust-parity-samples-pickled-object-array", "trust", "model.parity.npz")
def _(w):
    _pickled_npz(w, w.onnx.with_name("model.parity.npz"))
    return ["compile", w.onnx, "--backend", "onnxruntime", "--out", w.out]


@case("file-artifact-json-unknown-backend", "files", "artifact.json", "os")
def _(w):
    w.edit_json(w.ort / "artifact.json", lambda d: d.__setitem__("backend", "os"))
    return _bench(w, "--iterations", "2", "--warmup", "1", "--batch", "1")


@case("data-results-nan-accuracy", "data", "results.json", "accuracy")
def _(w):
    d = results_doc()
    d["results"][1]["metrics"]["accuracy"] = float("nan")
    return w.results(d)


@case("data-results-batch-key-not-a-number", "data", "results.json", "latency")
def _(w):
    d = results_doc()
    d["results"][0]["latency"] = {"one": d["results"][0]["latency"]["1"]}
    return w.results(d)


# ---- report: names from results.json are escaped in report.md (exit 0, nothing else changed)

def _no_raw_html(w: WS, outcome) -> None:
    md = (w.run / "report.md").read_text()
    assert "<script>" not in md and "<img" not in md, "report.md copies a name through unescaped"
    html = (w.run / "report.html").read_text()
    assert "<script>alert(" not in html, "report.html copies a name through unescaped"


@case("report-variant-name-script", "escaping", exit=0, may_change=("run/report.md", "run/report.html"), check=_no_raw_html)
def _(w):
    d = results_doc()
    d["variants"]["<script>alert(1)</script>"] = d["variants"].pop("pruned")
    d["results"][2]["variant"] = "<script>alert(1)</script>"
    return w.results(d)


@case("report-target-name-markup", "escaping", exit=0, may_change=("run/report.md", "run/report.html"), check=_no_raw_html)
def _(w):
    d = results_doc()
    bad = "cpu<img src=x onerror=alert(2)>|"
    d["targets"] = {bad: d["targets"]["cpu"]}
    for r in d["results"]:
        r["target"] = bad
    return w.results(d)


# ---------------------------------------------------------------- running a row

def tree_hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (a symlink: where it points)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            else:
                try:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError as e:
                    out[rel] = f"unreadable:{e.errno}"
    return out


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int                 # bytes: ru_maxrss of the command (os.wait4 in a small launcher)
    peak_threads: int             # most threads seen by the watchdog (sampled every 50 ms)
    killed: str = ""              # why the watchdog killed it, if it did
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    argv: list = field(default_factory=list)


def run_edgekit(argv: list, env: dict, cwd: Path, timeout: float = TIMEOUT_S) -> Outcome:
    """The real `edgekit` console entry in a subprocess, watched (threads, RSS, time) and reaped with os.wait4."""
    import psutil

    e = {k: v for k, v in os.environ.items() if k not in ("EDGEKIT_DEBUG", "EDGEKIT_TRUSTED_CODE")}
    e.update({"XDG_CONFIG_HOME": str(cwd / ".xdg"), "COLUMNS": "200"}, **({"EDGEKIT_FSDD": FSDD} if FSDD else {}), **env)
    out, err, rss_file = cwd / ".stdout", cwd / ".stderr", cwd / ".maxrss"
    t0 = time.monotonic()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        p = subprocess.Popen([sys.executable, "-c", _LAUNCHER, rss_file, *map(str, argv)], stdout=fo, stderr=fe,
                             stdin=subprocess.DEVNULL, env=e, cwd=cwd, start_new_session=True)
    state = {"threads": 0, "rss": 0, "killed": ""}
    done = threading.Event()

    def watch():
        try:
            proc = psutil.Process(p.pid)
        except psutil.Error:
            return
        while not done.wait(0.05):
            try:
                procs = [proc] + proc.children(recursive=True)
                threads = sum(q.num_threads() for q in procs)
                sizes = [q.memory_info().rss for q in procs]
                rss = sum(sizes)  # what the kill threshold bounds (shared pages counted in each process: on the safe side)
            except psutil.Error:
                continue
            state["threads"], state["rss"] = max(state["threads"], threads), max([state["rss"], *sizes])  # as ru_maxrss: per process
            why = (f"{threads} threads" if threads > KILL_THREADS else f"{rss >> 20} MiB resident" if rss > KILL_RSS
                   else f"still running after {timeout:.0f} s" if time.monotonic() - t0 > timeout else "")
            if why:
                state["killed"] = why
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                return

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    _, status, _ = os.wait4(p.pid, 0)
    done.set()
    w.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    # the launcher's report; if the command was killed before it could write one, the watchdog's highest sample
    peak = int(rss_file.read_text()) * 1024 if rss_file.exists() else state["rss"]
    return Outcome(p.returncode, out.read_text(errors="replace"), err.read_text(errors="replace"), time.monotonic() - t0,
                   peak, state["threads"], state["killed"], argv=[str(a) for a in argv])


# Forked from this (large) test process, a child's ru_maxrss would start at this process's own resident size (Linux
# carries the pre-exec high-water mark over exec), so a small launcher forks the command and reports its wait4 peak.
_LAUNCHER = """import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "edgekit"] + sys.argv[2:])
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda n, f: os.kill(pid, n))
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_case(c: Case, base: Path, tmp: Path) -> tuple[WS, Outcome]:
    """Copy the workspace, build the row's bad input, hash every file, run the command, hash again."""
    root = tmp / "ws"
    shutil.copytree(base, root, symlinks=True)
    w = WS(root)
    argv = c.setup(w)
    before = tree_hashes(root)
    o = run_edgekit(argv, w.env, tmp)
    o.before, o.after = before, tree_hashes(root)
    return w, o


def changed_inputs(c: Case, o: Outcome) -> list[str]:
    """Files present before the command that it changed or removed (and was not allowed to)."""
    allowed = set(c.may_change)
    return sorted(rel for rel, h in o.before.items() if rel not in allowed and o.after.get(rel) != h)


def left_temp_files(o: Outcome) -> list[str]:
    return sorted(rel for rel in set(o.after) - set(o.before) if ".tmp" in Path(rel).name)


def run_all(base: Path, tmp: Path, names=None, workers: int = 3) -> dict[str, tuple[WS, Outcome]]:
    """Every row (or those named), `workers` at a time: {name: (workspace, outcome)}."""
    from concurrent.futures import ThreadPoolExecutor

    names = list(names or CASES)
    with ThreadPoolExecutor(workers) as pool:
        futures = {}
        for n in names:
            d = tmp / n
            d.mkdir(parents=True)
            futures[n] = pool.submit(run_case, CASES[n], base, d)
        return {n: f.result() for n, f in futures.items()}
