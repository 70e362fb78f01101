"""Property: any YAML document given as a recipe is either accepted, and then dumps and reloads to the same
recipe, or rejected with a one-line EdgekitError — never another exception. Documents are drawn near the real
schema (right keys with wrong values, misspelled keys, wrong types) so most of them reach deep validation."""
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from edgekit.errors import EdgekitError
from edgekit.recipe import dump_recipe, load_recipe, parse_recipe

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 1000), st.floats(-2, 200), st.just(float("nan")), st.just(float("inf")),
                    st.text(max_size=12), st.sampled_from(["tiny", "base", "attention", "avdigits", "onnxruntime", "openvino",
                                                           "tensorrt", "ssh://a@b", "ssh://nvidia@orin.local:22", "fp32", "x"]))
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


def near(keys: dict, required=()):
    """A mapping using (mostly) the real keys, each value from its own strategy (mostly) or anything at all;
    sometimes a misspelled key. `required` keys are always present."""
    parts = {k: st.one_of(v, v, v, anything) for k, v in keys.items()}
    base = st.fixed_dictionaries({k: v for k, v in parts.items() if k in required},
                                 optional={k: v for k, v in parts.items() if k not in required})
    typo = st.sampled_from(list(keys)).map(lambda k: k[:-1] + "_")
    return st.one_of(base, base, base, st.tuples(base, typo, anything).map(lambda t: {**t[0], t[1]: t[2]}))


prune = near({"ratio": st.floats(-0.5, 1.5), "target_macs": st.floats(-0.5, 1.5), "importance": st.sampled_from(["magnitude", "taylor", "lamp"]),
              "round_to": st.integers(-1, 32)})
quantize = near({"preset": st.sampled_from(["performance", "mixed", "fast"]), "max_accuracy_drop": st.floats(-1, 5)})
distill = near({"epochs": st.integers(-1, 5), "lr": st.floats(-1, 1), "temperature": st.floats(-1, 10)})
step = st.one_of(prune.map(lambda d: {"prune": d}), quantize.map(lambda d: {"quantize": d}), distill.map(lambda d: {"distill": d}),
                 st.dictionaries(st.sampled_from(["prune", "quantize", "distill", "sparsify"]), anything, max_size=2))
variant = near({"name": st.sampled_from(["a", "b", "fp32", "int8"]), "passes": st.lists(step, max_size=3),
                "from": st.sampled_from(["a", "b", "int8", "nope"]), "budget": near({"max_accuracy_drop": st.floats(-1, 10)})},
               required=("name", "passes"))
target = near({"backend": st.sampled_from(["onnxruntime", "openvino", "tensorrt", "tflite"]), "host": scalars,
               "options": st.dictionaries(st.text(max_size=6), scalars, max_size=2), "name": st.text(max_size=6)})
recipe = near({"name": st.text(max_size=10), "model": near({"train": near({"preset": st.sampled_from(["tiny", "base", "huge"]),
                                                                          "epochs": st.integers(-1, 20)}),
                                                            "checkpoint": st.text(max_size=10)}),
               "data": near({"dataset": st.sampled_from(["avdigits", "mnist"]), "seed": st.integers(-3, 3)}),
               "calibration": st.one_of(st.sampled_from(["avdigits-64", "avdigits-9999"]), near({"size": st.integers(-1, 600)})),
               "budget": near({"max_accuracy_drop": st.floats(-1, 10), "metric": st.sampled_from(["accuracy", "f1_macro", "auc"])}),
               "variants": st.lists(variant, min_size=1, max_size=3), "targets": st.lists(target, max_size=3),
               "bench": near({"batch_sizes": st.lists(st.integers(-1, 64), max_size=3), "min_seconds": st.floats(-1, 3)})},
              required=("variants",))


def _check(doc, tmp):
    try:
        r = parse_recipe(doc)
    except EdgekitError as e:
        assert e.message and "\n" not in e.message and "Traceback" not in e.message
        return
    p = tmp / "r.yaml"
    p.write_text(dump_recipe(r))
    assert load_recipe(p) == r  # accepted -> round-trips through its own YAML


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=st.one_of(recipe, anything))
def test_random_recipes_are_accepted_and_round_trip_or_rejected_in_one_line(doc, tmp_path):
    _check(doc, tmp_path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_random_yaml_text_is_loaded_or_rejected_in_one_line(text, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    try:
        r = load_recipe(p)
    except EdgekitError as e:
        assert e.message and "Traceback" not in e.message
        return
    assert isinstance(r.variants, list)


def test_a_valid_generated_shape_is_accepted(tmp_path):
    """Guards the generator: the real shape must be accepted, or the property above would only test rejections."""
    doc = {"name": "ok", "variants": [{"name": "a", "passes": [{"prune": {"ratio": 0.3}}, {"quantize": {}}]}],
           "targets": [{"backend": "openvino", "options": {"device": "CPU"}}], "bench": {"batch_sizes": [1, 8]}}
    assert yaml.safe_load(dump_recipe(parse_recipe(doc)))["variants"][0]["name"] == "a"
    _check(doc, tmp_path)
