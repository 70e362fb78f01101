import numpy as np
import pytest

from edgekit.data import avdigits
from edgekit.data.audio import log_mel, read_wav
from edgekit.errors import EdgekitError


def test_dataset_is_deterministic_and_paired(fsdd, tmp_path):
    a = avdigits.load("test", fsdd, seed=3, cache_dir=tmp_path / "a")
    b = avdigits.load("test", fsdd, seed=3, cache_dir=tmp_path / "b")
    for k in a.inputs:
        assert np.array_equal(a.inputs[k], b.inputs[k])
    assert np.array_equal(a.labels, b.labels)
    c = avdigits.load("test", fsdd, seed=4, cache_dir=tmp_path / "c")
    assert not np.array_equal(a.inputs["image"], c.inputs["image"])
    # paired: the sentence of each sample, when it names one digit only, names the sample's own digit
    words = avdigits.VOCAB
    agree = total = 0
    for tokens, y in zip(a.inputs["text"], a.labels):
        digits = {words[t] for t in tokens if words[t] in avdigits.DIGITS}
        if len(digits) == 1:
            total += 1
            agree += digits == {avdigits.DIGITS[y]}
    assert total > 100 and agree / total > 0.6
    assert set(a.labels.tolist()) == set(range(10))
    assert a.inputs["image"].shape[1:] == (1, 28, 28) and a.inputs["audio"].shape[1:] == (1, 40, 64)


def test_splits_are_disjoint_by_take(fsdd, tmp_path):
    if not fsdd:
        pytest.skip("needs the FSDD recordings beside the repo")
    # FSDD takes 0-4 are test, 5-9 validation: the test audio must not equal any training audio
    train = avdigits.load("train", fsdd, cache_dir=tmp_path)
    test = avdigits.load("test", fsdd, cache_dir=tmp_path)
    assert len(train) == 2400 and len(test) == 600
    train_rows = {row.tobytes() for row in train.inputs["text"]}
    assert sum(row.tobytes() in train_rows for row in test.inputs["text"]) < 0.2 * len(test)  # short sentences may repeat by chance


def test_bad_fsdd_paths(tmp_path):
    with pytest.raises(EdgekitError, match="does not exist"):
        avdigits.load("test", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgekitError, match="holds no WAV"):
        avdigits.load("test", tmp_path / "empty")


def test_unreadable_wav_names_the_file(tmp_path):
    bad = tmp_path / "3_x_0.wav"
    bad.write_bytes(b"RIFF\x00\x00not a wav")
    with pytest.raises(EdgekitError, match="3_x_0.wav"):
        read_wav(bad)


def test_log_mel_of_a_tone_peaks_at_its_band():
    t = np.arange(8000) / 8000
    low, high = log_mel(np.sin(2 * np.pi * 300 * t)), log_mel(np.sin(2 * np.pi * 3000 * t))
    assert low.shape == (40, 64)
    assert low.mean(1).argmax() < high.mean(1).argmax()
