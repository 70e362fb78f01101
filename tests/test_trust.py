"""Trust for code references (README "Trust"): a `factory` named by a checkpoint's config.json is imported and run
only when it is edgekit's own or the user trusted it; the standard library never; the recipe the user runs is
trusted, and its module may sit beside it; weights are checked against config.json's weights_sha256; a user
factory that fails is reported as that code failing, with its file and line.

Real files throughout: a real checkpoint (untrained tiny model), real modules written into temp folders that would
leave a marker file if they ever ran, and the `edgekit` console entry in a subprocess for the CLI cases.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_bad_input import assert_one_line_error

from conftest import run_cli
from edgekit import _optional, checkpoint
from edgekit.errors import EdgekitError


@pytest.fixture(scope="module")
def ck(tmp_path_factory, fsdd):
    """A real edgekit checkpoint (safetensors + config.json) of an untrained tiny attention-fusion model."""
    from edgekit.data import avdigits
    from edgekit.models import build_model, preset_config
    from edgekit.train import reference_spec

    torch.manual_seed(0)
    cfg = preset_config("tiny", "attention")
    out = tmp_path_factory.mktemp("trust") / "ck"
    checkpoint.save(build_model(cfg).eval(), reference_spec(cfg, avdigits.preprocessing(fsdd)), out, cfg)
    return out


@pytest.fixture(autouse=True)
def no_machine_trust(monkeypatch, tmp_path):
    """No allow-list from the machine running the tests leaks in: an empty env var and an empty config folder."""
    monkeypatch.delenv(_optional.TRUST_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def with_factory(ck: Path, dest: Path, ref, model=None) -> Path:
    """A copy of the checkpoint whose config.json names `ref` as its factory (and, if given, `model` as its argument)."""
    shutil.copytree(ck, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["factory"] = ref
    if model is not None:
        cfg["model"] = model
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def third_party(root: Path, name: str, marker: Path, body: str = "") -> Path:
    """A package `name` under root/site that marks `marker` when imported and again when its build() runs, and
    builds edgekit's reference model (a real, working third-party factory)."""
    pkg = root / "site" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "def build(config):\n"
        "    from edgekit.models import build_model\n"
        f"    Path({str(marker)!r}).write_text('ran')\n"
        "    return build_model(config)\n" + body)
    return root / "site"


# ---------------------------------------------------------------- checkpoints naming code: through the CLI

STDLIB_ATTACKS = {  # factory -> the config.json 'model' that would make it create the marker
    "os:system": lambda m: f"touch {m}",
    "builtins:eval": lambda m: f"open({str(m)!r}, 'w').write('x')",
    "subprocess:run": lambda m: ["touch", str(m)],
}


@pytest.mark.parametrize("ref", list(STDLIB_ATTACKS))
def test_stdlib_factory_never_runs_from_the_cli(ck, tmp_path, ref):
    """Refused even with --trust-code and the module in the allow-list (so also without them: see below)."""
    marker = tmp_path / "pwned"
    bad = with_factory(ck, tmp_path / "ck", ref, STDLIB_ATTACKS[ref](marker))
    r = run_cli("evaluate", bad, "--trust-code", env={_optional.TRUST_ENV: ref.split(":")[0]})
    assert_one_line_error(r, ref, "config.json", "standard library")
    assert not marker.exists()


@pytest.mark.parametrize("ref", list(STDLIB_ATTACKS))
def test_stdlib_factory_never_runs_untrusted(ck, tmp_path, ref):
    marker = tmp_path / "pwned"
    bad = with_factory(ck, tmp_path / "ck", ref, STDLIB_ATTACKS[ref](marker))
    with pytest.raises(EdgekitError, match="standard library"):
        checkpoint.load(bad)
    assert not marker.exists()


def test_third_party_factory_runs_only_with_trust(ck, tmp_path):
    marker = tmp_path / "ran"
    site = third_party(tmp_path, "vendor_models", marker)
    bad = with_factory(ck, tmp_path / "ck", "vendor_models:build")
    env = {"PYTHONPATH": str(site), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    msg = assert_one_line_error(run_cli("evaluate", bad, env=env), "vendor_models:build", str(bad / "config.json"), "not trusted")
    assert "Traceback" not in msg and not marker.exists()  # not even imported
    r = run_cli("evaluate", bad, "--trust-code", "--json", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert marker.read_text() == "ran" and 0 <= json.loads(r.stdout)["accuracy"] <= 1


def test_untrusted_hint_says_how_to_allow(ck, tmp_path):
    bad = with_factory(ck, tmp_path / "ck", "vendor_models.zoo:build")
    r = run_cli("evaluate", bad, env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert_one_line_error(r, "vendor_models.zoo:build")
    assert "--trust-code" in r.stderr and "EDGEKIT_TRUSTED_CODE=vendor_models" in r.stderr and str(tmp_path / "xdg") in r.stderr


# ---------------------------------------------------------------- the same rules from Python

def test_allow_list_in_environment_and_config_file(ck, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.syspath_prepend(str(third_party(tmp_path, "vendor_env_models", marker)))
    bad = with_factory(ck, tmp_path / "ck", "vendor_env_models:build")
    with pytest.raises(EdgekitError, match="not trusted"):
        checkpoint.load(bad)
    monkeypatch.setenv(_optional.TRUST_ENV, "other, vendor_env_models.sub")  # a sub-package does not allow the parent
    with pytest.raises(EdgekitError, match="not trusted"):
        checkpoint.load(bad)
    assert not marker.exists()
    conf = tmp_path / "xdg" / "edgekit" / "trusted-code.txt"
    conf.parent.mkdir(parents=True)
    conf.write_text("# vendors I trust\nvendor_env_models:build\n")
    model, _, _ = checkpoint.load(bad)
    assert marker.read_text() == "ran" and isinstance(model, torch.nn.Module)
    conf.unlink()
    monkeypatch.setenv(_optional.TRUST_ENV, "other,vendor_env_models")  # a module prefix
    checkpoint.load(bad)


def test_stdlib_refused_even_when_trusted(ck, tmp_path, monkeypatch):
    monkeypatch.setenv(_optional.TRUST_ENV, "os,builtins")
    for ref in ("os:system", "builtins:eval", "os.path:join", "importlib:import_module"):
        bad = with_factory(ck, tmp_path / ref.replace(":", "_"), ref)
        with pytest.raises(EdgekitError, match="standard library") as e:
            checkpoint.load(bad, trust_code=True)
        assert "\n" not in e.value.message and ref in e.value.message


def test_trust_is_scoped_and_restored(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.syspath_prepend(str(third_party(tmp_path, "vendor_scoped_models", marker)))
    ref = "vendor_scoped_models:build"
    with _optional.trusted([ref], origin="r.yaml"):
        with _optional.trusted():
            assert _optional.import_reference("vendor_scoped_models:build", what="model factory", origin="x")
        with _optional.trusted([ref], origin="inner.yaml"):  # the outer grant (recipe folder) is kept
            assert _optional.granted_origin(ref) == "r.yaml"
    with pytest.raises(EdgekitError, match="not trusted"):
        _optional.import_reference(ref, what="model factory", origin="x")
    with pytest.raises(EdgekitError, match="not trusted"):
        _optional.import_reference("vendor_scoped_models:other", what="data loader", origin="recipe.yaml")
    assert _optional.import_reference("edgekit.models:build_model", what="model factory", origin="x")  # our own: always


@pytest.mark.parametrize("ref", ["evil", "a:b:c", "pkg.mod:fn()", "../x:y", "", None, 5, ["os:system"]])
def test_malformed_reference_is_one_line_error(ref):
    with pytest.raises(EdgekitError, match="is not a reference") as e:
        _optional.import_reference(ref, what="data loader", origin="recipe.yaml")
    assert "\n" not in e.value.message and "recipe.yaml" in e.value.message


# ---------------------------------------------------------------- a recipe is the user's own instruction

def test_recipe_factory_beside_the_recipe(ck, tmp_path):
    """examples/own-model style: `factory: own_model:build` finds own_model.py in the recipe's folder; the checkpoint
    naming the same reference is trusted while the recipe runs, and sys.path is left as it was."""
    from edgekit.recipe import load_recipe, trust_recipe_code

    folder = tmp_path / "own-model"
    folder.mkdir()
    name = "own_model_trust_test"
    (folder / f"{name}.py").write_text("from edgekit.models import build_model\n\ndef build(config):\n    return build_model(config)\n")
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({"name": "own", "model": {"checkpoint": str(ck), "factory": f"{name}:build"},
                                           "variants": [{"name": "int8", "passes": [{"quantize": {}}]}]}))
    bad = with_factory(ck, tmp_path / "ck", f"{name}:build")
    recipe = load_recipe(recipe_path)
    path_before = list(sys.path)
    with pytest.raises(EdgekitError, match="not trusted"):
        checkpoint.load(bad)
    with trust_recipe_code(recipe, recipe_path):
        model, _, _ = checkpoint.load(bad)
    assert isinstance(model, torch.nn.Module) and sys.path == path_before
    other = with_factory(ck, tmp_path / "ck2", f"{name}:build_other")  # only the recipe's own reference is trusted
    with trust_recipe_code(recipe, recipe_path), pytest.raises(EdgekitError, match="not trusted"):
        checkpoint.load(other)


# ---------------------------------------------------------------- weights checked against config.json

def flip_a_weight_byte(weights: Path) -> None:
    raw = bytearray(weights.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], "little")  # after the safetensors header: the header stays valid
    raw[data_start + (len(raw) - data_start) // 2] ^= 0x40
    weights.write_bytes(bytes(raw))


def test_bit_flipped_weights_are_refused(ck, tmp_path):
    bad = shutil.copytree(ck, tmp_path / "ck")
    flip_a_weight_byte(bad / "model.safetensors")
    from safetensors.torch import load_file

    load_file(str(bad / "model.safetensors"))  # still a valid safetensors file: only the hash can tell
    with pytest.raises(EdgekitError, match="do not match the hash in config.json"):
        checkpoint.load(bad)
    with pytest.raises(EdgekitError, match="corrupt or altered"):
        checkpoint.read_state(bad / "model.safetensors")  # the hash beside it is found without load()
    assert_one_line_error(run_cli("evaluate", bad), "model.safetensors", "do not match the hash in config.json")


def test_missing_hash_is_accepted(ck, tmp_path):
    old = shutil.copytree(ck, tmp_path / "ck")
    cfg = json.loads((old / "config.json").read_text())
    del cfg["weights_sha256"]
    (old / "config.json").write_text(json.dumps(cfg))
    model, _, _ = checkpoint.load(old)
    assert isinstance(model, torch.nn.Module)


# ---------------------------------------------------------------- a user's factory that fails is the user's code failing

def test_factory_that_raises_names_its_file_and_line(ck, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_models.py").write_text(
        "def build(config):\n"
        "    width = config['width_that_is_not_there']\n"  # line 2
        "    return width\n"
        "\n"
        "def build_kwargs(num_classes=10, *, depth):\n"  # called as build(config): does not fit
        "    return None\n"
        "\n"
        "def build_nothing(config):\n"
        "    return 'a string'\n")
    bad = with_factory(ck, tmp_path / "ck", "broken_models:build")
    env = {"PYTHONPATH": str(site), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    msg = assert_one_line_error(run_cli("evaluate", bad, "--trust-code", env=env), "broken_models:build", "KeyError")
    assert f"{site / 'broken_models.py'}:2" in msg
    sys.path.insert(0, str(site))
    try:
        with pytest.raises(EdgekitError, match="factory\\(config: dict\\)") as e:
            checkpoint.load(with_factory(ck, tmp_path / "ck2", "broken_models:build_kwargs"), trust_code=True)
        assert "cannot be called the way edgekit calls it" in e.value.message
        with pytest.raises(EdgekitError, match="returned a str, not a torch.nn.Module"):
            checkpoint.load(with_factory(ck, tmp_path / "ck3", "broken_models:build_nothing"), trust_code=True)
    finally:
        sys.path.remove(str(site))


def test_module_that_fails_on_import_is_the_users_code(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "crashing_on_import.py").write_text("import math\n\nSCALE = math.sqrt(-1)\n")
    monkeypatch.syspath_prepend(str(site))
    with _optional.trusted(), pytest.raises(EdgekitError, match="failed importing its module: ValueError") as e:
        _optional.import_reference("crashing_on_import:build", what="data loader", origin="recipe.yaml")
    assert "crashing_on_import.py:3" in e.value.message and "recipe.yaml" in e.value.message


def test_only_named_edgekit_factories_are_trusted_by_default():
    """edgekit's own code is trusted by name, not by package: a config.json naming another edgekit function (called
    with its dict) is refused like any untrusted reference."""
    with pytest.raises(EdgekitError, match="not trusted"):
        _optional.import_reference("edgekit.io:atomic_write_text", what="model factory", origin="config.json")
