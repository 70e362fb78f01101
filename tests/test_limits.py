"""Limits everywhere an input's size makes edgekit work (edgekit.limits, edgekit.io's loaders): each bound refuses with
one line naming the value and where it came from, before anything is allocated or any thread starts."""
import json
import os
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from edgekit import limits
from edgekit.errors import EdgekitError
from edgekit.io import load_json, load_yaml, parse_json, parse_yaml
from edgekit.recipe import load_recipe, parse_recipe
from edgekit.results import load_results

# the "billion laughs" as YAML: about 400 bytes that become 9^9 strings when the aliases are expanded (a dump, a validation)
BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB


def one_line(e) -> str:
    msg = e.value.message if hasattr(e, "value") else e
    assert "\n" not in msg, msg
    return msg


def cli_refuses(res, *needles):
    """The CLI said one `error:` line (+ hint), exit 2, no traceback, and named each needle."""
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out and out.count("error:") == 1, out
    for n in needles:
        assert n in out, (n, out)
    return out


# ---------------------------------------------------------------- YAML / JSON loaders

def test_billion_laughs_is_refused_at_the_first_alias_without_memory_growth(tmp_path):
    assert len(BOMB) < 500
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    tracemalloc.start()
    with pytest.raises(EdgekitError) as e:
        load_yaml(p, "recipe")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "alias *a" in one_line(e) and "line 2" in one_line(e) and str(p) in one_line(e)
    assert peak < 2 << 20, f"parsing the bomb took {peak} bytes"
    out = cli_refuses(run_cli("compress", "--recipe", p, "--out", tmp_path / "run"), "alias", "bomb.yaml")
    assert "aliases are not allowed" in out
    assert not (tmp_path / "run").exists()


def test_duplicate_yaml_keys_are_refused_naming_key_and_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("variants: [{name: a}]\nbudget:\n  max_accuracy_drop: 0.5\n  max_accuracy_drop: 50\n")
    with pytest.raises(EdgekitError) as e:
        load_recipe(p)
    assert "duplicate key 'max_accuracy_drop'" in one_line(e) and "line 4" in one_line(e)
    cli_refuses(run_cli("compress", "--recipe", p, "--out", tmp_path / "run"), "duplicate key 'max_accuracy_drop'", "line 4")
    assert parse_yaml("a: 1\nb: {a: 2}\n") == {"a": 1, "b": {"a": 2}}  # the same key in two mappings is fine


def test_yaml_nesting_size_and_encoding_are_bounded(tmp_path):
    with pytest.raises(EdgekitError) as e:
        parse_yaml("a: " + "[" * 100 + "]" * 100, "deep.yaml")
    assert "nested more than 32 levels" in one_line(e) and "deep.yaml" in one_line(e)
    assert parse_yaml("a: " + "[" * 20 + "]" * 20) is not None
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:  # sparse: refused from its size, never read
        f.truncate(64 << 20)
    with pytest.raises(EdgekitError) as e:
        load_yaml(big, "recipe")
    assert "64.0 MiB" in one_line(e) and "big.yaml" in one_line(e)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\u00e9\nvariants: [{name: a}]\n".encode("latin-1"))
    with pytest.raises(EdgekitError) as e:
        load_recipe(latin)
    assert "not UTF-8" in one_line(e) and "line 1" in one_line(e) and "latin1.yaml" in one_line(e)
    with pytest.raises(EdgekitError) as e:
        parse_yaml("a: !!python/object/apply:os.system ['true']\n", "x.yaml")
    assert "x.yaml" in one_line(e)


def test_json_loader_refuses_deep_duplicate_and_broken_files(tmp_path):
    for text, needle in (("[" * 100_000 + "]" * 100_000, "nested more than 32"), ("[" * 40 + "]" * 40, "nested more than 32"),
                         ('{"a": 1, "a": 2}', "duplicate key 'a'"), ('{"a": ', "not valid JSON at line 1")):
        with pytest.raises(EdgekitError) as e:
            parse_json(text, "f.json")
        assert needle in one_line(e) and "f.json" in one_line(e)
    assert parse_json('{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    p = tmp_path / "config.json"
    p.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(EdgekitError) as e:
        load_json(p, "checkpoint config")
    assert "not valid JSON" in one_line(e) and "not UTF-8" in one_line(e)
    with pytest.raises(EdgekitError) as e:
        load_json(p, "checkpoint config", max_bytes=4)
    assert "larger than" in one_line(e) or "MiB" in one_line(e)


# ---------------------------------------------------------------- numeric limits: CLI and recipe

@pytest.mark.parametrize("args, needle", [
    (["--threads", "100000"], "--threads is 100000"),
    (["--threads", "0"], "--threads is 0"),
    (["--batch", "1000000000"], "--batch is 1000000000"),
    (["--batch", "0"], "--batch is 0"),
    (["--iterations", "0"], "--iterations is 0"),
    (["--warmup", "-1"], "--warmup is -1"),
    (["--min-seconds", "nan"], "--min-seconds is nan"),
    (["--min-seconds", "-2"], "--min-seconds is -2"),
])
def test_bench_options_out_of_bounds_are_refused_before_anything_loads(tmp_path, args, needle):
    # the artifact does not even exist: the bound is checked first, before any file is read or thread started
    cli_refuses(run_cli("bench", tmp_path / "nothing-here", *args), needle)


def test_compile_and_deploy_counts_are_bounded(tmp_path):
    cli_refuses(run_cli("compile", tmp_path / "m.onnx", "--backend", "onnxruntime", "--out", tmp_path / "a", "--threads", "100000"),
                "--threads is 100000")
    cli_refuses(run_cli("deploy", tmp_path, "--target", "ssh://u@h", "--samples", "0"), "--samples is 0")


def test_library_limits():
    assert limits.check_threads(None) is None and limits.check_threads(1) == 1
    assert limits.check_threads(limits.max_threads()) == limits.max_threads()
    for bad in (0, -3, limits.max_threads() + 1, 1.5, True):
        with pytest.raises(EdgekitError):
            limits.check_threads(bad)
    for bad in (float("inf"), float("nan"), -0.1, limits.MAX_SECONDS + 1, "x"):
        with pytest.raises(EdgekitError):
            limits.check_seconds(bad)
    assert limits.check_seconds(0) == 0.0
    avail = limits.available_memory()
    assert avail is None or avail > 0
    with pytest.raises(EdgekitError) as e:  # 2^16 samples of 1 GiB: 64 TiB, more than any machine running this
        limits.check_batch(limits.MAX_BATCH, 1 << 30, "model.onnx")
    assert "64.0 TiB" in one_line(e) and "model.onnx" in one_line(e)
    limits.check_batch(8, 1 << 10, "model.onnx")


@pytest.mark.parametrize("bench, needle", [
    ({"threads": 100000}, "bench.threads"), ({"threads": 0}, "bench.threads"), ({"batch_sizes": [0]}, "bench.batch_sizes[0]"),
    ({"batch_sizes": [10**9]}, "bench.batch_sizes[0]"), ({"batch_sizes": []}, "bench.batch_sizes"),
    ({"warmup": -1}, "bench.warmup"), ({"min_iterations": 0}, "bench.min_iterations"),
    ({"min_seconds": float("nan")}, "bench.min_seconds"), ({"min_seconds": float("inf")}, "bench.min_seconds"),
    ({"min_seconds": 0}, "bench.min_seconds"),
])
def test_recipe_bench_section_is_bounded(bench, needle):
    with pytest.raises(EdgekitError) as e:
        parse_recipe({"variants": [{"name": "a"}], "bench": bench})
    assert needle in one_line(e)


def test_recipe_counts_are_bounded():
    for section in ({"calibration": {"size": 0}}, {"calibration": {"size": -5}}):
        with pytest.raises(EdgekitError) as e:
            parse_recipe({"variants": [{"name": "a"}], **section})
        assert "calibration.size" in one_line(e)


def test_two_targets_sharing_a_results_folder_are_refused():
    with pytest.raises(EdgekitError) as e:
        parse_recipe({"variants": [{"name": "a"}], "targets": [{"backend": "onnxruntime", "name": "cpu a"},
                                                             {"backend": "openvino", "name": "cpu/a"}]})
    assert "'cpu a' and 'cpu/a'" in one_line(e) and "targets/cpu-a" in one_line(e)
    with pytest.raises(EdgekitError):
        parse_recipe({"variants": [{"name": "a"}], "targets": [{"backend": "onnxruntime", "name": "CPU"}, {"backend": "openvino", "name": "cpu"}]})
    parse_recipe({"variants": [{"name": "a"}], "targets": [{"backend": "onnxruntime", "name": "cpu-a"}, {"backend": "openvino", "name": "cpu-b"}]})


# ---------------------------------------------------------------- ONNX files: spec metadata, external data

def _tiny_onnx(path, spec: dict | None = None, external: str | None = None):
    """y = x @ W + 0 for x [B, 4]; W stored outside the file (as `external`) when given."""
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 16, "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if spec is not None:
        helper.set_model_props(model, {"edgekit.spec": json.dumps(spec)})
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=external, size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def _set_location(path, location: str):
    proto = onnx.load(str(path), load_external_data=False)
    for e in proto.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = location
    onnx.save_model(proto, str(path))


def _spec(shape):
    return {"inputs": [{"name": "x", "shape": shape}], "outputs": [{"shape": [None, 4], "name": "y"}], "class_names": list("abcd")}


def test_spec_metadata_of_a_million_by_a_million_is_refused_before_allocation(tmp_path):
    from edgekit.onnxgraph.info import spec_for_onnx

    onnx_path = _tiny_onnx(tmp_path / "m.onnx", spec=_spec([None, 10**6, 10**6]))
    tracemalloc.start()
    with pytest.raises(EdgekitError) as e:
        spec_for_onnx(onnx_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "m.onnx" in one_line(e) and "1,073,741,824" in one_line(e) and peak < 16 << 20
    cli_refuses(run_cli("compile", onnx_path, "--backend", "onnxruntime", "--out", tmp_path / "a"), "m.onnx", "invalid model spec")
    assert not (tmp_path / "a").exists()
    for bad in ([None, 0], [None, -4], [None, 2**40], [None, "x"], [None, 1.5]):
        with pytest.raises(EdgekitError) as e:
            spec_for_onnx(_tiny_onnx(tmp_path / "b.onnx", spec=_spec(bad)))
        assert "b.onnx" in one_line(e)


def test_external_data_inside_the_folder_loads(tmp_path):
    import onnxruntime as ort

    p = _tiny_onnx(tmp_path / "m.onnx", external="m.weights")
    limits.check_external_data(p)
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.eye(4, dtype=np.float32)})[0]
    assert np.allclose(y, np.arange(16).reshape(4, 4) / 16)


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, where):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    p = _tiny_onnx(model_dir / "m.onnx", external="m.weights")
    if where == "dotdot":
        _set_location(p, "../secret.bin")
    elif where == "absolute":
        _set_location(p, str(secret))
    else:
        os.symlink(secret, model_dir / "link.bin")
        _set_location(p, "link.bin")
    with pytest.raises(EdgekitError) as e:
        limits.check_external_data(p)
    assert "outside the model's folder" in one_line(e) and "'W'" in one_line(e)
    cli_refuses(run_cli("compile", p, "--backend", "onnxruntime", "--out", tmp_path / "a"), "outside the model's folder", "m.onnx")
    assert not (tmp_path / "a").exists()


def test_external_data_missing_or_short_is_refused(tmp_path):
    p = _tiny_onnx(tmp_path / "m.onnx", external="m.weights")
    (tmp_path / "m.weights").write_bytes(b"\0" * 8)  # the model expects 64 bytes of W
    with pytest.raises(EdgekitError) as e:
        limits.check_external_data(p)
    assert "holds 8 bytes, not the 64" in one_line(e)
    (tmp_path / "m.weights").unlink()
    with pytest.raises(EdgekitError) as e:
        limits.check_external_data(p)
    assert "'m.weights', which is missing" in one_line(e)
    cli_refuses(run_cli("compile", p, "--backend", "onnxruntime", "--out", tmp_path / "a"), "external data", "m.onnx")


def test_bench_batch_beyond_memory_is_refused_with_the_computed_size(tmp_path):
    from edgekit.backends import compile_onnx

    onnx_path = _tiny_onnx(tmp_path / "m.onnx", spec=_spec([None, 4]))
    art_dir = tmp_path / "art"
    compile_onnx(onnx_path, "onnxruntime", art_dir)
    meta = json.loads((art_dir / "artifact.json").read_text())
    meta["spec"]["inputs"][0]["shape"] = [None, 16384, 16384]  # 1 GiB per sample: allowed, but not 4096 of them
    (art_dir / "artifact.json").write_text(json.dumps(meta))
    out = cli_refuses(run_cli("bench", art_dir, "--batch", "4096", "--iterations", "1", "--warmup", "0"), "batch 4096", "4.0 TiB")
    assert "memory available" in out
    meta["path"] = "../m.onnx"  # an artifact names a file outside its folder
    (art_dir / "artifact.json").write_text(json.dumps(meta))
    cli_refuses(run_cli("bench", art_dir, "--iterations", "1"), "outside the artifact's folder")


# ---------------------------------------------------------------- results.json: what a recommendation is made from

@pytest.mark.parametrize("median, needle", [(float("nan"), "finite"), (-0.001, "greater than or equal to 0"), (float("inf"), "finite")])
def test_nan_or_negative_latency_in_results_is_refused(tmp_path, median, needle):
    doc = {"schema": "edgekit-results/1", "variants": {"fp32": {}}, "targets": {"cpu": {"backend": "onnxruntime"}},
           "results": [{"variant": "fp32", "target": "cpu", "latency": {"1": {"median": median, "p99": 0.002}}}]}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(EdgekitError) as e:
        load_results(tmp_path)
    assert "results[0].latency.1.median" in one_line(e) and needle in one_line(e)
    cli_refuses(run_cli("report", tmp_path), "results.json", "median")
    assert not (tmp_path / "report.html").exists()
    doc["results"][0]["latency"]["1"]["median"] = 0.001
    doc["results"][0]["throughput"] = {"1": -5}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(EdgekitError, match="throughput"):
        load_results(tmp_path)


# ---------------------------------------------------------------- model configs

def test_model_config_widths_are_bounded_before_the_model_is_built(tmp_path, fsdd):
    from edgekit import checkpoint
    from edgekit.data import avdigits
    from edgekit.models import build_model, preset_config
    from edgekit.train import reference_spec

    ck = tmp_path / "ck"  # a real checkpoint of an untrained tiny model: only its config.json matters here
    cfg = preset_config("tiny", "attention")
    checkpoint.save(build_model(cfg), reference_spec(cfg, avdigits.preprocessing(fsdd)), ck, cfg)
    checkpoint.load(ck)
    cfg = json.loads((ck / "config.json").read_text())
    huge = json.loads(json.dumps(cfg))
    huge["model"]["image"]["stages"][0]["width"] = 10**12
    (ck / "config.json").write_text(json.dumps(huge))
    with pytest.raises(EdgekitError) as e:
        checkpoint.load(ck)
    assert "model.image.stages[0].width is 1000000000000" in one_line(e) and "config.json" in one_line(e)
    cli_refuses(run_cli("evaluate", ck), "1000000000000", "config.json")
    wide = json.loads(json.dumps(cfg))  # every width allowed, but together 10^10 parameters
    wide["model"]["text"]["vocab"] = 65536
    wide["model"]["text"]["d_model"] = 65536
    for layer in wide["model"]["text"]["layers"]:
        layer.update(heads=64, head_dim=1024, ff=65536)
    (ck / "config.json").write_text(json.dumps(wide))
    tracemalloc.start()
    with pytest.raises(EdgekitError) as e:
        checkpoint.load(ck)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "parameters" in one_line(e) and peak < 256 << 20
