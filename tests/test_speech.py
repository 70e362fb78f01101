"""Real espeak-ng synthesis: the digit data must be reproducible, audible and varied enough to train on."""
import numpy as np
import pytest

from edgekit.data import speech
from edgekit.data.speech import synthesize_digits


@pytest.fixture(scope="module")
def takes():
    return synthesize_digits(3, seed=0)


def test_shapes_dtype_labels(takes):
    assert len(takes) == 30
    assert [d for _, d, _ in takes] == [d for d in range(10) for _ in range(3)]
    for wav, _, voice in takes:
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert np.all(np.abs(wav) <= 1.0) and np.all(np.isfinite(wav))
        assert voice.startswith("en")


def test_durations_plausible(takes):
    for wav, digit, voice in takes:
        assert 0.2 <= wav.size / 8000 <= 2.0, (digit, voice, wav.size)


def test_not_silent(takes):
    for wav, digit, voice in takes:
        assert np.sqrt(np.mean(wav.astype(np.float64) ** 2)) > 0.01, (digit, voice)


def test_same_seed_bit_identical_regardless_of_history(takes):
    synthesize_digits(1, seed=123)  # espeak-ng's hidden state must not leak into later takes
    again = synthesize_digits(3, seed=0)
    for (a, da, va), (b, db, vb) in zip(takes, again):
        assert (da, va) == (db, vb) and np.array_equal(a, b)


def test_more_takes_only_appends(takes):
    more = synthesize_digits(4, seed=0)
    for d in range(10):
        for k in range(3):
            assert np.array_equal(takes[3 * d + k][0], more[4 * d + k][0])


def test_other_seed_differs(takes):
    other = synthesize_digits(3, seed=1)
    assert not any(a.size == b.size and np.array_equal(a, b) for (a, _, _), (b, _, _) in zip(takes, other))


def test_sample_rate_scales_length():
    (a, _, _), = [t for t in synthesize_digits(1, seed=5, sample_rate=8000) if t[1] == 7]
    (b, _, _), = [t for t in synthesize_digits(1, seed=5, sample_rate=16000) if t[1] == 7]
    assert abs(b.size - 2 * a.size) <= 0.02 * b.size  # same take; only silence trimming may move by a few samples


def test_takes_use_many_voices():
    voices = {v for _, _, v in synthesize_digits(5, seed=2)}
    assert len(voices) >= 20


def test_voices_produce_different_waveforms():
    with speech._LOCK:
        eng = speech._engine()
        raw = {v: speech._speak(eng, "seven", v, 170, 50, 50, 1) for v in ("en-us", "en-gb-x-rp+m3", "en+f2")}
        assert np.array_equal(raw["en+f2"], speech._speak(eng, "seven", "en+f2", 170, 50, 50, 1))
    a, b, c = raw.values()
    assert not (np.array_equal(a[: b.size], b[: a.size]) or np.array_equal(a[: c.size], c[: a.size]))
    # different speakers, not just a different noise draw: their spectra differ clearly
    spec = [np.abs(np.fft.rfft(x.astype(float), 8192))[:2000] for x in (a, b, c)]
    spec = [s / np.linalg.norm(s) for s in spec]
    assert max(float(spec[0] @ spec[1]), float(spec[0] @ spec[2]), float(spec[1] @ spec[2])) < 0.95


def test_bad_arguments_are_user_errors():
    from edgekit.errors import EdgekitError

    with pytest.raises(EdgekitError):
        synthesize_digits(-1, seed=0)
    with pytest.raises(EdgekitError):
        synthesize_digits(1, seed=0, sample_rate=0)


def test_missing_library_is_a_user_error(monkeypatch, tmp_path):
    import espeakng_loader

    from edgekit.errors import EdgekitError

    monkeypatch.setattr(speech, "_ENGINE", None)
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(tmp_path / "libespeak-ng.so"))
    with pytest.raises(EdgekitError) as err:
        synthesize_digits(1, seed=0)
    assert "espeakng-loader" in err.value.hint
