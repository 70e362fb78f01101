"""The data contract: manifest / Hugging Face / Python-loader sources resolved into the same train/val/test, the
preprocessing recorded so the device runtime repeats it, the decode cache, and every kind of bad data reported as
one line naming the file and row (and nothing half-written)."""
import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data import resolve
from edgekit.data.resolver import record_preprocessing
from edgekit.errors import EdgekitError
from edgekit.recipe import parse_recipe
from edgekit.spec import InputSpec, ModelSpec, OutputSpec

CLASSES = ["cat", "dog", "bird"]
VOCAB = ["<pad>", "<unk>", "cat", "dog", "bird", "this", "is", "a"]
WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog", "bird", "this", "is", "a"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))


def write_png(path: Path, rng, size=(10, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)


def write_wav(path: Path, rng, rate=16000, seconds=0.25, freq=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.sin(np.arange(int(rate * seconds)) * 0.05 * freq) * 9000 + rng.integers(-300, 300, int(rate * seconds))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())


def make_rows(folder: Path, n=15, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = i % 3
        write_png(folder / f"img/{i}.png", rng)
        write_wav(folder / f"wav/{i}.wav", rng, freq=c + 1)
        rows.append({"image": f"img/{i}.png", "wav": f"wav/{i}.wav", "caption": f"this is a {CLASSES[c]} {'cat ' * (i % 4)}", "label": CLASSES[c]})
    return rows


def write_manifest(folder: Path, rows, name="m.jsonl"):
    p = folder / name
    if name.endswith(".csv"):
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def data_settings(**data):
    base = {"format": "manifest", "path": "m.jsonl", "columns": {"pixels": "image", "audio": "wav", "words": "caption"},
            "preprocess": {"pixels": {"image": {"size": 8, "mean": 0.5, "std": 0.25}},
                           "words": {"text": {"vocab": VOCAB, "max_length": 6}}}}
    return parse_recipe({"variants": [{"name": "a", "passes": []}], "data": {**base, **data}}).data


def make_spec(**shapes):
    s = {"pixels": [None, 3, 8, 8], "audio": [None, 1, 40, 64], "words": [None, 6], **shapes}
    inputs = [InputSpec(name="pixels", shape=s["pixels"], modality="image", optional=True),
              InputSpec(name="audio", shape=s["audio"], modality="audio", optional=True),
              InputSpec(name="words", shape=s["words"], dtype="int64", modality="text", optional=True),
              InputSpec(name="modality_mask", shape=[None, 3])]
    return ModelSpec(inputs=inputs, outputs=[OutputSpec(shape=[None, 3])], class_names=[], modalities=["image", "audio", "text"])


@pytest.fixture
def ds(tmp_path):
    folder = tmp_path / "ds"
    rows = make_rows(folder)
    write_manifest(folder, rows)
    return folder, rows


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in e.value.message
    return msg


# ---------------------------------------------------------------- sources resolve alike

def test_manifest_resolves_stratified_splits_with_recorded_preprocessing(ds):
    folder, rows = ds
    s = resolve(data_settings(), make_spec(), base_dir=folder)
    train, val, test = s
    assert s.class_names == sorted(CLASSES) and len(train) + len(val) + len(test) == len(rows)
    assert (len(train), len(val), len(test)) == (10, 2, 3)  # val 0.1 and test 0.2 of 15 rows, rounded
    for part in (train, test):  # stratified: every class where there is room for it
        assert set(part.labels.tolist()) == {0, 1, 2}
    assert train.inputs["pixels"].shape[1:] == (3, 8, 8) and train.inputs["pixels"].dtype == np.float32
    assert train.inputs["audio"].shape[1:] == (1, 40, 64) and train.inputs["words"].dtype == np.int64
    assert (train.inputs["modality_mask"] == 1).all()
    d = s.describe()
    assert d["splits"]["test"]["size"] == len(test) and d["inputs"]["words"]["preprocess"] == "text"
    assert d["missing"]["image"].startswith("zeros in pixels")
    spec = record_preprocessing(make_spec(), s)
    assert spec.input("pixels").preprocess["image"]["size"] == [8, 8] and spec.class_names == s.class_names
    assert ModelSpec.model_validate(json.loads(spec.model_dump_json())) == spec  # recorded preprocessing round-trips


def test_text_longer_than_max_length_is_truncated_and_counted(ds):
    folder, rows = ds
    s = resolve(data_settings(columns={"pixels": "image", "words": "caption"}), base_dir=folder)
    longer = sum(len(r["caption"].split()) > 6 for r in rows)
    assert longer > 0 and s.describe()["truncated"] == {"words": longer}
    ids = np.concatenate([s.train.inputs["words"], s.val.inputs["words"], s.test.inputs["words"]])
    assert ids.shape[1] == 6 and set(ids[:, :3].ravel().tolist()) == {5, 6, 7}  # "this is a" -> ids 5, 6, 7


def test_csv_and_jsonl_give_the_same_arrays_and_the_second_run_reads_the_cache(ds):
    folder, rows = ds
    write_manifest(folder, rows, "m.csv")
    a = resolve(data_settings(), make_spec(), base_dir=folder)
    b = resolve(data_settings(path="m.csv"), make_spec(), base_dir=folder)
    assert a.info["decoded"] == 3 and b.info["cache_hits"] == 3  # the same files, texts and settings: all cached
    for n in a.test.inputs:
        assert np.array_equal(a.test.inputs[n], b.test.inputs[n])
    write_png(folder / "img/0.png", np.random.default_rng(9))  # a changed file is decoded afresh
    c = resolve(data_settings(), make_spec(), base_dir=folder)
    assert c.info["decoded"] == 1 and c.info["cache_hits"] == 2


def test_split_column_and_explicit_classes(ds):
    folder, rows = ds
    for i, r in enumerate(rows):
        r["split"] = ["train", "train", "train", "validation", "test"][i % 5]
        r["label"] = CLASSES.index(r["label"])  # an index into the class list
    write_manifest(folder, rows)
    s = resolve(data_settings(split_column="split", classes=CLASSES), make_spec(), base_dir=folder)
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 3) and s.class_names == CLASSES


def test_device_runtime_repeats_the_recorded_preprocessing(ds):
    from edgekit.agent.predictor import make_feed
    from edgekit.agent.preprocess import CallerMustPrepare

    folder, rows = ds
    s = resolve(data_settings(), make_spec(), base_dir=folder)
    spec = record_preprocessing(make_spec(), s).model_dump()
    everything = [r for r in rows]
    ids = np.concatenate([s.train.inputs["words"], s.val.inputs["words"], s.test.inputs["words"]])
    pix = np.concatenate([s.train.inputs["pixels"], s.val.inputs["pixels"], s.test.inputs["pixels"]])
    for r in everything[:3]:
        with wave.open(str(folder / r["wav"])) as w:
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
            rate = w.getframerate()
        feed = make_feed(spec, {"pixels": np.asarray(Image.open(folder / r["image"])), "audio_wave": x, "words": r["caption"]}, rate)
        assert any(np.allclose(feed["pixels"][0], p, atol=1e-5) for p in pix)
        assert any(np.array_equal(feed["words"][0], t) for t in ids)
        got = make_feed(spec, {"pixels": np.asarray(Image.open(folder / r["image"]).convert("L")), "audio": x, "words": r["caption"]}, rate)
        assert got["pixels"].shape == feed["pixels"].shape and got["audio"].shape == (1, 1, 40, 64)
    with pytest.raises(CallerMustPrepare, match="input 'pixels' needs image decoding"):  # no Pillow on the device
        make_feed(spec, {"pixels": str(folder / r["image"]), "audio": x, "words": r["caption"]}, rate)
    from edgekit.data.preprocess import encode_column

    arr, _ = encode_column("audio", spec["inputs"][1]["preprocess"], [str(folder / everything[0]["wav"])], lambda i: "x")
    first = make_feed(spec, {"audio_wave": _wave(folder / everything[0]["wav"])[0], "pixels": np.zeros((8, 8, 3), np.uint8)}, 16000)
    assert np.allclose(first["audio"][0, 0], arr["audio"][0], atol=1e-4)
    assert first["modality_mask"].tolist() == [[1.0, 1.0, 0.0]]  # text absent: zeros + mask bit 0


def _wave(p):
    with wave.open(str(p)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768, w.getframerate()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from transformers import BertTokenizer

    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n")
    BertTokenizer(str(d / "vocab.txt")).save_pretrained(str(d / "tokenizer"))
    return d / "tokenizer"


def test_hugging_face_tokenizer_fills_ids_and_attention_mask(ds, tokenizer_dir):
    from edgekit.agent.predictor import make_feed
    from edgekit.agent.preprocess import CallerMustPrepare
    from edgekit.data.preprocess import hf_tokenize

    folder, _ = ds
    spec = make_spec(words=[None, 8])
    spec.inputs.insert(3, InputSpec(name="attention_mask", shape=[None, 8], dtype="int64", modality="text", optional=True))
    s = resolve(data_settings(preprocess={"words": {"text": {"tokenizer": str(tokenizer_dir), "max_length": 8}}}), spec, base_dir=folder)
    ids, mask = s.train.inputs["words"], s.train.inputs["attention_mask"]
    assert ids[:, 0].tolist() == [2] * len(ids) and ((ids != 0) == (mask == 1)).all()
    recorded = record_preprocessing(spec, s)
    assert recorded.input("attention_mask").preprocess == {"mask_of": "words"}
    # the numpy-only device runtime does not tokenize (no transformers there): it names the step and the inputs
    with pytest.raises(CallerMustPrepare, match="input 'words' needs Hugging Face tokenization") as e:
        make_feed(recorded.model_dump(), {"words": "this is a dog"})
    assert "\n" not in str(e.value) and "'attention_mask'" in str(e.value) and "max_length=8" in str(e.value)
    # ... the host does, with the step recorded in the spec, and the device takes those arrays as they are
    ids, mask, truncated = hf_tokenize(["this is a dog"], recorded.input("words").preprocess["text"])
    assert ids[0, :6].tolist() == [2, 8, 9, 10, 6, 3] and mask[0].tolist() == [1] * 6 + [0] * 2 and truncated == 0
    feed = make_feed(recorded.model_dump(), {"words": ids[0], "attention_mask": mask[0]})
    np.testing.assert_array_equal(feed["words"], ids)
    np.testing.assert_array_equal(feed["attention_mask"], mask)
    given = make_feed(recorded.model_dump(), {"words": [2, 8, 3]})  # ids alone: the mask marks the non-pad tokens
    assert given["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 5


def test_hf_save_to_disk_and_parquet(ds, tmp_path):
    datasets = pytest.importorskip("datasets")
    folder, rows = ds
    table = {"image": [str(folder / r["image"]) for r in rows], "caption": [r["caption"] for r in rows], "label": [r["label"] for r in rows]}
    d = datasets.Dataset.from_dict(table).cast_column("image", datasets.Image())
    dd = datasets.DatasetDict({"train": d.select(range(9)), "validation": d.select(range(9, 12)), "test": d.select(range(12, 15))})
    dd.save_to_disk(str(tmp_path / "hfds"))
    cfg = dict(format="hf", path=str(tmp_path / "hfds"), columns={"pixels": "image", "words": "caption"})
    s = resolve(data_settings(**cfg), base_dir=folder)
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 3)
    m = resolve(data_settings(columns={"pixels": "image", "words": "caption"}), base_dir=folder)
    hf_all = np.concatenate([s.train.inputs["pixels"], s.val.inputs["pixels"], s.test.inputs["pixels"]])
    assert any(np.allclose(hf_all[0], x) for x in np.concatenate([m.train.inputs["pixels"], m.test.inputs["pixels"], m.val.inputs["pixels"]]))
    d.to_parquet(str(tmp_path / "all.parquet"))
    p = resolve(data_settings(**{**cfg, "path": str(tmp_path / "all.parquet")}), base_dir=folder)
    assert len(p.train) + len(p.val) + len(p.test) == 15


LOADER = '''
import numpy as np

def load(n=12, fail=False):
    def items(k):
        for i in range(k):
            if fail and i == 2:
                raise ValueError("sensor file is broken")
            yield {"feats": np.full((4,), i, np.float32), "words": "this is a cat"}, ["cat", "dog", "bird"][i % 3]
    return {"train": items(n), "test": list(items(6))[:3] + [({"feats": np.full((4,), 100.0 + i, np.float32), "words": "dog"}, "dog") for i in range(3)]}
'''


def test_python_loader(tmp_path):
    from edgekit._optional import trusted

    (tmp_path / "my_loader.py").write_text(LOADER)
    d = parse_recipe({"variants": [{"name": "a"}], "data": {"format": "python", "loader": "my_loader:load",
                                                            "preprocess": {"words": {"text": {"vocab": VOCAB, "max_length": 4}}}}}).data
    spec = ModelSpec(inputs=[InputSpec(name="feats", shape=[None, 4]), InputSpec(name="words", shape=[None, 4], dtype="int64")],
                     outputs=[OutputSpec(shape=[None, 3])], class_names=["cat", "dog", "bird"])
    with trusted(["my_loader:load"], origin="recipe.yaml", base_dir=tmp_path):
        with pytest.raises(EdgekitError, match="the same sample") as e:  # test items 1-3 repeat train items 1-3
            resolve(d, spec, origin="recipe.yaml")
        assert "item 1 (test)" in one_line(e)
        ok = d.model_copy(update={"options": {"n": 12}})
        (tmp_path / "my_loader2.py").write_text(LOADER.replace("list(items(6))[:3] + ", ""))
    with trusted(["my_loader2:load"], origin="recipe.yaml", base_dir=tmp_path):
        s = resolve(ok.model_copy(update={"loader": "my_loader2:load"}), spec, origin="recipe.yaml")
    assert s.class_names == ["cat", "dog", "bird"] and len(s.test) == 3 and len(s.val) > 0
    assert s.train.inputs["words"][0].tolist() == [5, 6, 7, 2]


# ---------------------------------------------------------------- bad data: one line naming the culprit

def test_manifest_missing(ds):
    folder, _ = ds
    with pytest.raises(EdgekitError, match="manifest .*nope.jsonl does not exist") as e:
        resolve(data_settings(path="nope.jsonl"), base_dir=folder)
    one_line(e)


def test_column_missing(ds):
    folder, rows = ds
    del rows[4]["caption"]
    write_manifest(folder, rows)
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(), base_dir=folder)
    assert "m.jsonl row 5" in one_line(e) and "'caption'" in str(e.value) and "words" in str(e.value)


def test_referenced_file_missing(ds):
    folder, _ = ds
    (folder / "img/3.png").unlink()
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(), base_dir=folder)
    assert "m.jsonl row 4" in one_line(e) and "img/3.png" in str(e.value) and "does not exist" in str(e.value)


def test_corrupt_image_and_nothing_half_written(ds, tmp_path):
    folder, _ = ds
    (folder / "img/6.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(), base_dir=folder)
    assert "m.jsonl row 7, file img/6.png" in one_line(e) and "cannot decode image" in str(e.value)
    cached = list((tmp_path / "cache" / "decoded").glob("*")) if (tmp_path / "cache" / "decoded").exists() else []
    assert all(not p.name.startswith(".") for p in cached)  # no temp folder left behind
    assert not any("pixels" in f.name for p in cached for f in p.iterdir())  # no entry for the failed column


def test_corrupt_wav(ds):
    folder, _ = ds
    (folder / "wav/2.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(), base_dir=folder)
    assert "m.jsonl row 3, file wav/2.wav" in one_line(e) and "2.wav" in str(e.value).split("file wav/2.wav", 1)[1]


def test_label_not_in_class_list(ds):
    folder, rows = ds
    rows[8]["label"] = "horse"
    write_manifest(folder, rows)
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(classes=CLASSES), base_dir=folder)
    assert "m.jsonl row 9" in one_line(e) and "'horse'" in str(e.value)


def test_empty_split(ds):
    folder, rows = ds
    for r in rows:
        r["split"] = "train" if r is not rows[0] else "test"
    write_manifest(folder, rows)
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(split_column="split", split={"val": 0.0, "test": 0.2}), base_dir=folder)
    assert "the val split of" in one_line(e) and "m.jsonl" in str(e.value) and "is empty" in str(e.value)


def test_same_sample_in_train_and_test(ds):
    folder, rows = ds
    for i, r in enumerate(rows):
        r["split"] = "test" if i in (12, 13, 14) else "val" if i in (9, 10, 11) else "train"
    rows[13] = {**rows[4], "split": "test"}
    write_manifest(folder, rows)
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(split_column="split"), base_dir=folder)
    assert "m.jsonl row 14 (test) is the same sample as" in one_line(e) and "row 5 (train)" in str(e.value)


def test_input_the_model_needs_that_the_data_lacks(ds):
    folder, _ = ds
    spec = make_spec()
    spec.inputs.insert(0, InputSpec(name="depth", shape=[None, 1, 8, 8], modality="depth"))
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(), spec, base_dir=folder)
    assert "['depth']" in one_line(e) and "m.jsonl" in str(e.value)


def test_shape_that_does_not_fit_the_model(ds):
    folder, _ = ds
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(), make_spec(pixels=[None, 3, 28, 28]), base_dir=folder)
    assert "input 'pixels'" in one_line(e) and "m.jsonl row 1" in str(e.value) and "[3, 8, 8]" in str(e.value)


def test_tokenizer_folder_that_does_not_exist(ds):
    folder, _ = ds
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(preprocess={"words": {"text": {"tokenizer": "no-such-tokenizer", "max_length": 8}}}), base_dir=folder)
    assert "no-such-tokenizer" in one_line(e) and "does not exist" in str(e.value)


def test_loader_that_raises_names_its_file_and_line(tmp_path):
    from edgekit._optional import trusted

    (tmp_path / "bad_loader.py").write_text(LOADER)
    d = parse_recipe({"variants": [{"name": "a"}], "data": {"format": "python", "loader": "bad_loader:load", "options": {"fail": True},
                                                            "preprocess": {"words": {"text": {"vocab": VOCAB}}}}}).data
    with trusted(["bad_loader:load"], origin="recipe.yaml", base_dir=tmp_path), pytest.raises(EdgekitError) as e:
        resolve(d, origin="recipe.yaml")
    msg = one_line(e)
    assert "bad_loader.py:8" in msg and "sensor file is broken" in msg and "bad_loader:load" in msg


def test_untrusted_loader_is_not_imported(tmp_path):
    (tmp_path / "evil_loader.py").write_text("raise SystemExit('imported!')\n")
    d = parse_recipe({"variants": [{"name": "a"}], "data": {"format": "python", "loader": "evil_loader:load"}}).data
    with pytest.raises(EdgekitError, match="not trusted") as e:
        resolve(d, origin="recipe.yaml")
    assert "evil_loader:load" in one_line(e)


def test_bad_json_line(ds):
    folder, rows = ds
    (folder / "m.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(), base_dir=folder)
    assert "m.jsonl line 2 is not valid JSON" in one_line(e)


def test_csv_without_the_label_column(ds):
    folder, rows = ds
    write_manifest(folder, [{k: v for k, v in r.items() if k != "label"} for r in rows], "m.csv")
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(path="m.csv"), base_dir=folder)
    assert "m.csv row 1" in one_line(e) and "label column 'label'" in str(e.value)


def test_bad_split_value(ds):
    folder, rows = ds
    for r in rows:
        r["split"] = "train"
    rows[10]["split"] = "holdout"
    write_manifest(folder, rows)
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(split_column="split"), base_dir=folder)
    assert "m.jsonl row 11" in one_line(e) and "'holdout'" in str(e.value)


def test_arrays_of_different_shapes(ds):
    folder, rows = ds
    for i, r in enumerate(rows):
        np.save(folder / f"f{i}.npy", np.zeros((4,) if i != 7 else (5,), np.float32))
        r["feats"] = f"f{i}.npy"
    write_manifest(folder, rows)
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(columns={"feats": "feats"}, preprocess={}), base_dir=folder)
    assert "m.jsonl row 8, file f7.npy" in one_line(e) and "[5]" in str(e.value)


def test_text_column_without_preprocessing(ds):
    folder, _ = ds
    with pytest.raises(EdgekitError) as e:
        resolve(data_settings(preprocess={}), base_dir=folder)
    assert "input 'words'" in one_line(e) and "caption" in str(e.value) and "m.jsonl row 1" in str(e.value)


def test_loader_item_that_is_not_a_pair(tmp_path):
    from edgekit._optional import trusted

    (tmp_path / "odd_loader.py").write_text("def load():\n    return [({'x': [1.0]}, 'a'), 'oops']\n")
    d = parse_recipe({"variants": [{"name": "a"}], "data": {"format": "python", "loader": "odd_loader:load"}}).data
    with trusted(["odd_loader:load"], origin="recipe.yaml", base_dir=tmp_path), pytest.raises(EdgekitError) as e:
        resolve(d, origin="recipe.yaml")
    assert "odd_loader:load' item 2 is a str" in one_line(e)


def test_recipe_rejects_unknown_data_keys_naming_the_format():
    with pytest.raises(EdgekitError) as e:
        data_settings(loader="x:y")
    assert "unknown key 'loader' for format manifest" in one_line(e)
    with pytest.raises(EdgekitError, match="exactly one of 'tokenizer'"):
        data_settings(preprocess={"words": {"text": {"max_length": 4}}})
    old = parse_recipe({"variants": [{"name": "a"}], "data": {"dataset": "avdigits", "seed": 0}})
    assert old.data.format == "avdigits" and old.data.seed == 0


def test_images_decode_at_their_own_precision_in_the_declared_mode(tmp_path):
    """A 16-bit grey PNG keeps its 65536 levels (not clipped through 8-bit RGB), in either declared mode; a colour
    image declared 'L' gets the same luma the device runtime computes from the pixels it is given."""
    from edgekit.agent.preprocess import image_array
    from edgekit.data.preprocess import decode_image, encode_column

    levels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7)  # 7 .. 63007: far above 255
    Image.fromarray(levels).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
    grey = decode_image(str(tmp_path / "g16.png"), "x", "L")
    assert grey.shape == (8, 8) and grey.dtype == np.uint16 and (grey == levels).all()
    rgb = decode_image(str(tmp_path / "g16.png"), "x", "RGB")
    assert rgb.shape == (8, 8, 3) and (rgb == levels[:, :, None]).all()
    pre = {"image": {"size": [8, 8], "mode": "L", "mean": [0.0], "std": [1.0], "layout": "NCHW", "scale": 65535.0}}
    out, _ = encode_column("g", pre, [str(tmp_path / "g16.png")], lambda i: "x")
    np.testing.assert_allclose(out["g"][0, 0], levels / 65535.0, rtol=0, atol=1e-7)

    colour = (np.random.default_rng(0).random((6, 5, 3)) * 255).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "c.png")
    pre_l = {"image": {"size": [6, 5], "mode": "L", "mean": [0.5], "std": [0.25], "layout": "NCHW", "scale": 255.0}}
    host, _ = encode_column("c", pre_l, [str(tmp_path / "c.png")], lambda i: "x")
    device = image_array(colour, pre_l["image"])  # the device is given the decoded RGB pixels
    assert host["c"].shape == (1, 1, 6, 5)
    np.testing.assert_array_equal(host["c"][0], device)
    assert decode_image(str(tmp_path / "c.png"), "x", "RGB").dtype == np.uint8


def test_the_same_files_under_another_input_name_are_not_mixed_up_by_the_cache(tmp_path):
    """A cache entry holds arrays by input name: the same column decoded the same way for a model that names the
    input differently (the cache is shared by every run on this machine) must still give that model's name."""
    write_manifest(tmp_path, make_rows(tmp_path))
    first = resolve(data_settings(), make_spec(), base_dir=tmp_path)
    cols = {"image": "image", "audio": "wav", "words": "caption"}
    pre = {"image": {"image": {"size": 8, "mean": 0.5, "std": 0.25}}, "words": {"text": {"vocab": VOCAB, "max_length": 6}}}
    spec = make_spec().model_copy(update={"inputs": [i.model_copy(update={"name": "image"}) if i.name == "pixels" else i
                                                     for i in make_spec().inputs]})
    second = resolve(data_settings(columns=cols, preprocess=pre), spec, base_dir=tmp_path)
    assert "image" in second.test.inputs and "pixels" not in second.test.inputs
    np.testing.assert_array_equal(second.test.inputs["image"], first.test.inputs["pixels"])


def test_loader_options_may_be_named_like_edgekits_own_arguments(tmp_path):
    """A loader is called as loader(**options): an option called `ref`, `what`, `origin` or `called_as` is the
    loader's, not a clash with how edgekit reports the user's code."""
    from edgekit._optional import trusted

    (tmp_path / "named_loader.py").write_text(
        "import numpy as np\n"
        "def load(ref, what, origin, called_as):\n"
        "    assert (ref, what, origin, called_as) == (1, 2, 3, 4)\n"
        "    return [({'feats': np.full((4,), i, np.float32)}, ['cat', 'dog', 'bird'][i % 3]) for i in range(30)]\n")
    d = parse_recipe({"variants": [{"name": "a"}], "data": {"format": "python", "loader": "named_loader:load",
                                                            "options": {"ref": 1, "what": 2, "origin": 3, "called_as": 4}}}).data
    spec = ModelSpec(inputs=[InputSpec(name="feats", shape=[None, 4])], outputs=[OutputSpec(shape=[None, 3])], class_names=CLASSES)
    with trusted(["named_loader:load"], origin="recipe.yaml", base_dir=tmp_path):
        s = resolve(d, spec, origin="recipe.yaml")
    assert len(s.train) + len(s.val) + len(s.test) == 30
