"""`edgekit data export-avdigits`: avdigits as real files whose recipe preprocessing gives back the built-in arrays."""

import json

import numpy as np
import pytest
import yaml

from conftest import run_cli
from edgekit.data import avdigits
from edgekit.data.export_files import export_avdigits
from edgekit.errors import EdgekitError


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fsdd):
    out = tmp_path_factory.mktemp("exp") / "avdigits"
    return out, export_avdigits(out, fsdd=fsdd)


def _decode_image(path, pre):
    """The recipe's image preprocessing, written out by hand: (pixel / scale - mean) / std."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "I;16"  # 16-bit grayscale, not 8-bit: the values must survive
        px = np.asarray(im).astype(np.float64)
    return ((px / pre["scale"] - pre["mean"][0]) / pre["std"][0]).astype(np.float32)


def _encode_text(sentence, pre):
    vocab = pre["vocab"]
    ids = [vocab.index(w) if w in vocab else 1 for w in sentence.split()][: pre["max_length"]]
    return np.array(ids + [0] * (pre["max_length"] - len(ids)), np.int64)


def test_files_and_preprocessing_reproduce_the_builtin_arrays(exported, fsdd):
    out, summary = exported
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    section = yaml.safe_load((out / "recipe-data.yaml").read_text())["data"]
    assert section["format"] == "manifest" and section["split_column"] == "split"
    assert section["preprocess"]["audio"] == {"array": {}}
    img_pre, txt_pre = section["preprocess"]["image"]["image"], section["preprocess"]["text"]["text"]
    assert txt_pre == {"vocab": avdigits.VOCAB, "max_length": avdigits.SEQ_LEN}
    for split in ("train", "val", "test"):
        ds = avdigits.load(split, fsdd)
        mine = [r for r in rows if r["split"] == split]
        assert len(mine) == len(ds) == summary["counts"][split]
        labels = np.array([section["classes"].index(r["label"]) for r in mine])
        assert (labels == ds.labels).all()
        for i in np.linspace(0, len(ds) - 1, 25).astype(int):  # a spread of samples, every split
            r = mine[i]
            img = _decode_image(out / r["image"], img_pre)
            assert np.abs(img - ds.inputs["image"][i, 0]).max() <= 0.5 / img_pre["scale"] / img_pre["std"][0] + 1e-6
            np.testing.assert_array_equal(np.load(out / r["audio"]), ds.inputs["audio"][i])
            np.testing.assert_array_equal(_encode_text(r["text"], txt_pre), ds.inputs["text"][i])


def test_readme_says_why_audio_is_not_wav(exported):
    out, _ = exported
    text = (out / "README.md").read_text()
    assert "mel-power domain" in text and "not WAV" in text


def test_existing_folder_is_refused_unless_it_is_an_earlier_export(exported, tmp_path, fsdd):
    out, _ = exported
    with pytest.raises(EdgekitError, match="already exists"):
        export_avdigits(out, fsdd=fsdd)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.txt").write_text("user data")
    with pytest.raises(EdgekitError, match="only a folder written by export-avdigits"):
        export_avdigits(user, fsdd=fsdd, force=True)
    assert (user / "keep.txt").read_text() == "user data"
    before = (out / "manifest.jsonl").read_text()
    export_avdigits(out, fsdd=fsdd, force=True)
    assert (out / "manifest.jsonl").read_text() == before  # deterministic for (source, seed)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".avdigits.")]  # no temp folder left behind


def test_cli_export_and_bad_fsdd(tmp_path):
    r = run_cli("data", "export-avdigits", tmp_path / "x", "--fsdd", tmp_path / "nope")
    assert r.returncode == 2 and "FSDD path" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
    r = run_cli("data", "--help")
    assert r.returncode == 0 and "export-avdigits" in r.stdout


def test_manifest_path_reads_back_the_builtin_arrays(exported, fsdd):
    """The generic manifest resolver, given recipe-data.yaml, gives the arrays the built-in dataset gives (the
    issue's round trip: same arrays -> same accuracy)."""
    from edgekit.data import resolve
    from edgekit.recipe import parse_recipe
    from edgekit.train import reference_spec

    out, _ = exported
    section = yaml.safe_load((out / "recipe-data.yaml").read_text())["data"]
    settings = parse_recipe({"variants": [{"name": "a"}], "data": section}).data
    spec = reference_spec(
        {"input_shapes": {"image": [1, 28, 28], "audio": [1, 40, 64], "text": [16]}, "num_classes": 10}, {}
    )
    splits = resolve(settings, spec, base_dir=out, cache_dir=out.parent / "cache")
    for split in ("train", "val", "test"):
        mine, builtin = splits.split(split), avdigits.load(split, fsdd)
        np.testing.assert_array_equal(mine.labels, builtin.labels)
        np.testing.assert_array_equal(mine.inputs["text"], builtin.inputs["text"])
        np.testing.assert_array_equal(mine.inputs["audio"], builtin.inputs["audio"])
        np.testing.assert_array_equal(mine.inputs["modality_mask"], builtin.inputs["modality_mask"])
        assert np.abs(mine.inputs["image"] - builtin.inputs["image"]).max() <= 16 / 65535 / 2 + 1e-5
        assert mine.without("audio").inputs["modality_mask"][:, 1].max() == 0  # the recipe's missing block


def test_evaluate_through_the_manifest_gives_the_builtin_metrics(exported, tiny_checkpoint, fsdd):
    """The round trip a user can run: `edgekit evaluate CK` on the built-in split and `--data recipe-data.yaml` on the
    exported files give the same accuracy, macro-F1 and missing-modality accuracies."""
    out, _ = exported
    env = {"EDGEKIT_FSDD": fsdd} if fsdd else {}
    builtin = run_cli("evaluate", tiny_checkpoint, "--json", env=env)
    files = run_cli("evaluate", tiny_checkpoint, "--data", out / "recipe-data.yaml", "--json", env=env)
    assert builtin.returncode == 0 and files.returncode == 0, builtin.stderr + files.stderr
    a, b = json.loads(builtin.stdout), json.loads(files.stdout)
    for key in ("accuracy", "f1_macro", "missing_modality_accuracy"):
        assert a[key] == pytest.approx(b[key], abs=0.002), key
    bad = run_cli("evaluate", tiny_checkpoint, "--data", out / "missing.yaml")
    assert bad.returncode == 2 and "does not exist" in bad.stderr
