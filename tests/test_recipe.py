"""Recipes: the shipped ones load and round-trip, typos and bad values are one-line errors naming the key and
what is allowed; and (slow) the compress stage end to end on a tiny model and on a user model via factory."""
import copy
import json
import re

import pytest
import yaml

from conftest import REPO, run_cli
from edgekit.errors import EdgekitError
from edgekit.recipe import dump_recipe, load_recipe, parse_recipe, resolve_calibration

SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))
QUICK = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_recipes_load_and_round_trip(path):
    r = load_recipe(path)
    again = parse_recipe(yaml.safe_load(dump_recipe(r)))
    assert again == r
    assert dump_recipe(again) == dump_recipe(r)
    cal = resolve_calibration(r.calibration)
    assert cal.size >= 1 and cal.name == r.calibration.name


def test_required_recipes_are_shipped():
    assert {"quickstart", "cpu-openvino", "jetson-orin"} <= {p.stem for p in SHIPPED}
    cpu = load_recipe(REPO / "recipes" / "cpu-openvino.yaml")
    assert {t.backend for t in cpu.targets} >= {"openvino", "onnxruntime"}
    aa = next(v for v in cpu.variants if any(p.name == "quantize" and p.quantize.max_accuracy_drop == 0.5 for p in v.passes))
    assert aa.budget.max_accuracy_drop == 0.5
    assert load_recipe(REPO / "recipes" / "jetson-orin.yaml").targets[0].host.startswith("ssh://")


def bad(mutate):
    d = copy.deepcopy(QUICK)
    mutate(d)
    with pytest.raises(EdgekitError) as e:
        parse_recipe(d, "r.yaml")
    assert "\n" not in e.value.message
    return e.value.message


def test_typos_name_the_key_and_the_allowed_keys():
    m = bad(lambda d: d["variants"][1]["passes"][0]["prune"].update(ratoi=0.3))
    assert "unknown key 'ratoi' in variants[1].passes[0].prune" in m and "allowed keys: ratio, target_macs" in m
    m = bad(lambda d: d.update(calibraton="avdigits-64"))
    assert "unknown key 'calibraton'" in m and "calibration" in m.split("allowed keys:")[1]
    m = bad(lambda d: d["variants"][0]["passes"].append({"quantise": {}}))
    assert "'quantise'" in m and "prune, distill, quantize" in m
    m = bad(lambda d: d["variants"][0]["passes"][0]["quantize"].update(keep_flaot=["audio"]))
    assert "keep_float" in m


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["variants"][1]["passes"][0]["prune"].update(ratio=1.5), "less than 1"),
    (lambda d: d["variants"][1]["passes"][0]["prune"].update(ratio=0), "greater than 0"),
    (lambda d: d["variants"][1]["passes"][0]["prune"].update(per_branch={"audio": 2}), r"\[0, 1\)"),
    (lambda d: d["variants"][1]["passes"][0]["prune"].pop("ratio"), "exactly one of 'ratio'"),
    (lambda d: d["variants"][0]["passes"].append({"quantize": {}, "prune": {"ratio": 0.2}}), "each pass is one of"),
    (lambda d: d["variants"][2].update({"from": "nope"}), "not an earlier variant"),
    (lambda d: d["variants"][0].update(name="fp32"), "reserved"),
    (lambda d: d["variants"].append(copy.deepcopy(d["variants"][0])), "used twice"),
    (lambda d: d.update(variants=[]), "at least 1"),
    (lambda d: d.update(calibration={"size": 0}), "greater than or equal to 1"),
    (lambda d: d.update(budget={"max_accuracy_drop": -1}), "greater than or equal to 0"),
    (lambda d: d["targets"].append({"backend": "tensorrt", "host": "jetson"}), "ssh://"),
    (lambda d: d["targets"].append({"backend": "tflite"}), "tensorrt"),
    (lambda d: d.update(model={"checkpoint": "a", "train": {}}), "exactly one of 'checkpoint' and 'train'"),
])
def test_bad_values_are_one_line_errors(mutate, match):
    assert re.search(match, bad(mutate))


def test_calibration_by_name_and_inline_override(tmp_path):
    r = parse_recipe(dict(QUICK, calibration={"name": "avdigits-256", "size": 32}))
    cal = resolve_calibration(r.calibration)
    assert (cal.size, cal.stratify, cal.missing) == (32, "class", 0.2)
    with pytest.raises(EdgekitError, match="not defined"):
        resolve_calibration(parse_recipe(dict(QUICK, calibration="nope")).calibration)


def test_yaml_errors_and_missing_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nvariants:\n  - name: a\n   passes: []\n")
    with pytest.raises(EdgekitError, match="line"):
        load_recipe(p)
    with pytest.raises(EdgekitError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_cli_compress_with_a_typo_exits_2_with_one_line(tmp_path):
    d = copy.deepcopy(QUICK)
    d["variants"][0]["passes"][0]["quantize"]["presett"] = "mixed"
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    r = run_cli("compress", tmp_path, "--recipe", p, "--out", tmp_path / "run")
    assert r.returncode == 2
    assert "unknown key 'presett'" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- the compress stage end to end

def _recipe(tmp_path, fsdd, variants, budget=2.0):
    d = {"name": "t", "data": {"dataset": "avdigits", "fsdd": fsdd, "seed": 0}, "calibration": {"size": 32},
         "budget": {"max_accuracy_drop": budget}, "variants": variants, "targets": [{"backend": "onnxruntime"}]}
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.slow
def test_compress_stage_end_to_end(tmp_path, tiny_checkpoint, fsdd):
    from edgekit import checkpoint
    from edgekit.compress import compress

    variants = [{"name": "pruned", "passes": [{"prune": {"ratio": 0.3}}, {"distill": {"epochs": 1}}], "budget": {"max_accuracy_drop": 0.0}},
                {"name": "pruned-int8", "from": "pruned", "passes": [{"quantize": {}}], "budget": {"max_accuracy_drop": 100}}]
    out = tmp_path / "run"
    s = compress(tiny_checkpoint, _recipe(tmp_path, fsdd, variants), out, progress=False)
    for name in ("fp32", "pruned", "pruned-int8"):
        vdir = out / "variants" / name
        assert all((vdir / f).exists() for f in ("model.safetensors", "config.json", "model.onnx", "metrics.json"))
        m = json.loads((vdir / "metrics.json").read_text())
        assert m["status"] == "ok" and "accuracy" in m["deployed_metrics"]["onnxruntime"] and "accuracy" in m["torch_metrics"]
    assert (out / "recipe.resolved.yaml").exists() and (out / "variants" / "pruned-int8" / "precision_map.json").exists()
    v = s["variants"]
    assert v["pruned"]["macs"] < v["fp32"]["macs"] and v["pruned-int8"]["precision"] == "int8"
    assert v["pruned"]["judgement"]["met"] is (v["pruned"]["judgement"]["drop_points"]["onnxruntime"] <= 0)
    assert "NOT within budget" in v["pruned"]["judgement"]["verdict"] or v["pruned"]["judgement"]["met"]
    model, _, cfg = checkpoint.load(out / "variants" / "pruned")  # rebuilt from its derived config, no plan needed
    assert "pruning_plan" not in cfg or not cfg["pruning_plan"]
    again = compress(tiny_checkpoint, _recipe(tmp_path, fsdd, variants), out, progress=False)  # unchanged: reused
    assert again["variants"]["pruned"]["key"] == v["pruned"]["key"]


def test_compress_user_model_via_factory(tmp_path, fsdd):
    """A user's model (not ours) given as factory + bare safetensors + its inputs in the recipe."""
    import torch
    from safetensors.torch import save_file
    from test_prune import build_user_model

    from edgekit.compress import compress

    torch.manual_seed(0)
    save_file(build_user_model({}).state_dict(), str(tmp_path / "weights.safetensors"))
    recipe = yaml.safe_load(_recipe(tmp_path, fsdd, [{"name": "p", "passes": [{"prune": {"ratio": 0.5}}, {"quantize": {}}]}], 100).read_text())
    recipe["model"] = {"checkpoint": str(tmp_path / "weights.safetensors"), "factory": "test_prune:build_user_model", "config": {},
                       "inputs": [{"name": "image", "shape": [None, 1, 28, 28]}, {"name": "audio", "shape": [None, 1, 40, 64]}]}
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(recipe))
    s = compress(None, tmp_path / "user.yaml", tmp_path / "run", progress=False)
    m = s["variants"]["p"]
    assert m["status"] == "ok", m.get("reason")
    assert m["passes"][0]["rebuild"] == "plan" and m["macs"] < s["variants"]["fp32"]["macs"] / 1.8
    assert "onnxruntime" in m["deployed_metrics"] and m["precision"] == "int8"
    cfg = json.loads((tmp_path / "run" / "variants" / "p" / "config.json").read_text())
    assert cfg["factory"] == "test_prune:build_user_model" and cfg["pruning_plan"] and cfg["quantization"]
