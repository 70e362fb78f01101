"""avdigits: a built-in 10-class multimodal dataset. Each sample pairs a handwritten digit image
(scikit-learn's `load_digits`), a spoken digit (real FSDD recordings, or espeak-ng speech when no FSDD
path is given) as log-mel features, and a short noisy sentence — all of the same digit.

Every modality is only partly informative (image noise and occlusion, a noisy microphone with dropouts,
sentences that often omit the digit or mention a wrong one), so fusing them beats the best single modality.
Splits are disjoint in every modality: test images, recordings (takes 0-4, the usual FSDD split) and
sentences never appear in training; validation uses takes 5-9."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from edgekit.data.audio import FRONTEND, log_mel, read_wav
from edgekit.data.dataset import ArrayDataset
from edgekit.errors import EdgekitError
from edgekit.spec import MASK_INPUT

VERSION = 3  # v3: harsher microphone model (SNR -14..4 dB, tilt, dropout, band loss, gain)
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FILLER = ("the a an is was it this that number digit value my your code pin card shows reads says "
          "please enter write call dial type note page row item label box tag door room seat level "
          "line step floor gate unit next last first about maybe think heard saw").split()
VOCAB = ["<pad>", "<unk>"] + DIGITS + FILLER
SEQ_LEN, IMAGE_SIZE = 16, 28
SYNTH_TAKES = 200  # per digit; each take draws its own voice, rate, pitch and noise
FSDD_RE = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def default_cache_dir() -> Path:
    from edgekit.data.cache import cache_root

    return cache_root()


def resolve_fsdd(fsdd) -> Path | None:
    """The FSDD recordings folder from an argument or EDGEKIT_FSDD; None means synthesize speech."""
    fsdd = fsdd or os.environ.get("EDGEKIT_FSDD")
    if not fsdd:
        return None
    p = Path(fsdd).expanduser()
    if not p.is_dir():
        raise EdgekitError(f"FSDD path {p} does not exist or is not a folder", "pass the folder holding the FSDD WAVs (e.g. ../shared/data/fsdd) or omit --fsdd to synthesize speech")
    rec = p / "recordings" if (p / "recordings").is_dir() else p
    if not any(FSDD_RE.match(f.name) for f in rec.iterdir()):
        raise EdgekitError(f"FSDD path {rec} holds no WAV files named like 7_jackson_32.wav", "point --fsdd at the FSDD folder (with recordings/) or omit it to synthesize speech")
    return rec


def _speech(fsdd: Path | None, seed: int) -> list[tuple[np.ndarray, int, int]]:
    """[(log-mel [mels, frames], digit, take)] — `take` decides the split."""
    out = []
    if fsdd is not None:
        for f in sorted(fsdd.iterdir()):
            m = FSDD_RE.match(f.name)
            if m:
                x, rate = read_wav(f)
                out.append((log_mel(x, rate), int(m.group(1)), int(m.group(3))))
        return out
    from edgekit.data.speech import synthesize_digits

    takes = {}
    for wave_, digit, _voice in synthesize_digits(n_per_digit=SYNTH_TAKES, seed=seed, sample_rate=FRONTEND["sample_rate"]):
        take = takes[digit] = takes.get(digit, -1) + 1
        out.append((log_mel(wave_, FRONTEND["sample_rate"]), digit, take))
    return out


def _images(rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """28x28 digit images in [0,1] and a fixed 70/30 train/test split of the 1,797 originals."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    is_test = np.zeros(len(x), bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        is_test[idx[: int(0.3 * len(idx))]] = True
    return x[:, 0].numpy(), d.target, is_test


def _augment_image(img: np.ndarray, rng) -> np.ndarray:
    """Shift, heavy noise and a random occluding block: an image alone is right only part of the time."""
    img = np.roll(img, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
    if rng.random() < 0.6:
        s = rng.integers(10, 17)
        r, c = rng.integers(0, IMAGE_SIZE - s, size=2)
        img = img.copy()
        img[r : r + s, c : c + s] = rng.random()
    return (img + rng.normal(0, 0.6, img.shape)).astype(np.float32)


def _sentence(digit: int, rng) -> np.ndarray:
    """Filler words; the digit word is present only sometimes, and a wrong digit word sometimes too."""
    words = list(rng.choice(FILLER, size=rng.integers(4, 12)))
    if rng.random() < 0.55:
        words.insert(rng.integers(0, len(words) + 1), DIGITS[digit])
    if rng.random() < 0.3:
        words.insert(rng.integers(0, len(words) + 1), DIGITS[(digit + rng.integers(1, 10)) % 10])
    ids = [VOCAB.index(w) for w in words][:SEQ_LEN]
    return np.array(ids + [0] * (SEQ_LEN - len(ids)), np.int64)


NOISE = {"snr_db": (-14.0, 4.0), "tilt": 1.5, "gain_db": 6.0, "dropout": (0.5, 12), "band_loss": (0.5, 10)}


def _noisy_mel(mel: np.ndarray, rng) -> np.ndarray:
    """A noisy, imperfect microphone, in the mel power domain: audio alone is right only part of the time.

    Background noise at a random SNR (-14..4 dB against the clip's mean power) with a random spectral
    tilt (hum-like to hiss-like), a dropout (half the clips lose 2-12 frames of speech: only noise is
    left there), a lost frequency band (half the clips lose 2-10 mel bands of speech) and a random
    input gain (+-6 dB). Every draw comes from `rng`, so a seed fixes the dataset."""
    n_mels, frames = mel.shape
    clean = np.exp(mel)
    speech = clean.copy()
    p, longest = NOISE["dropout"]
    if rng.random() < p:
        w = rng.integers(2, longest + 1)
        t = rng.integers(0, frames - w + 1)
        speech[:, t : t + w] = 0
    p, widest = NOISE["band_loss"]
    if rng.random() < p:
        w = rng.integers(2, widest + 1)
        f = rng.integers(0, n_mels - w + 1)
        speech[f : f + w] = 0
    tilt = np.exp(rng.uniform(-NOISE["tilt"], NOISE["tilt"]) * np.linspace(-1, 1, n_mels))[:, None]
    snr_db = rng.uniform(*NOISE["snr_db"])
    noise = clean.mean() / 10 ** (snr_db / 10) * (tilt / tilt.mean()) * rng.exponential(1.0, mel.shape)
    gain = 10 ** (rng.uniform(-NOISE["gain_db"], NOISE["gain_db"]) / 10)
    return np.log(gain * (speech + noise) + 1e-6).astype(np.float32)


def build(fsdd: Path | None, seed: int = 0) -> dict[str, ArrayDataset]:
    """All three splits from a resolved FSDD recordings folder, or from synthesized speech if None."""
    rng = np.random.default_rng(seed)
    images, img_labels, img_test = _images(rng)
    speech = _speech(fsdd, seed)
    if len({d for _, d, _ in speech}) < 10:
        raise EdgekitError("the speech source does not cover all ten digits", "use the full FSDD recordings folder")
    test_end, val_end = (5, 10) if fsdd is not None else (SYNTH_TAKES // 5, SYNTH_TAKES * 3 // 10)  # FSDD: the usual take split
    split_of = lambda take: "test" if take < test_end else ("val" if take < val_end else "train")  # noqa: E731
    pairings = {"train": 1, "val": 1, "test": 2}  # two pairings per test recording -> 600 test samples
    out = {}
    for split in ("train", "val", "test"):
        img_pool = [np.flatnonzero((img_labels == c) & (img_test == (split == "test"))) for c in range(10)]
        rows = [(m, d) for m, d, t in speech if split_of(t) == split]
        xs_i, xs_a, xs_t, ys = [], [], [], []
        for _ in range(pairings[split]):
            for mel, digit in rows:
                xs_i.append(_augment_image(images[rng.choice(img_pool[digit])], rng)[None])
                xs_a.append(_noisy_mel(mel, rng)[None])
                xs_t.append(_sentence(digit, rng))
                ys.append(digit)
        inputs = {"image": np.stack(xs_i), "audio": np.stack(xs_a), "text": np.stack(xs_t),
                  MASK_INPUT: np.ones((len(ys), 3), np.float32)}
        out[split] = ArrayDataset(inputs, np.array(ys, np.int64))
    mean, std = float(out["train"].inputs["audio"].mean()), float(out["train"].inputs["audio"].std())
    for ds in out.values():  # normalise audio with train statistics (recorded in the preprocessing)
        ds.inputs["audio"] = ((ds.inputs["audio"] - mean) / std).astype(np.float32)
    out["train"].inputs["audio_stats"] = np.array([mean, std], np.float32)
    return out


def _cache(fsdd, seed: int, cache_dir) -> tuple[Path | None, str, Path]:
    src = resolve_fsdd(fsdd)
    source = f"fsdd:{src.resolve()}:{len(list(src.iterdir()))}" if src else "espeak-ng"
    key = hashlib.sha256(json.dumps([VERSION, source, seed]).encode()).hexdigest()[:16]
    return src, source, Path(cache_dir or default_cache_dir()) / "avdigits" / key


def load(split: str = "train", fsdd=None, seed: int = 0, cache_dir=None) -> ArrayDataset:
    """Deterministic for (source, seed); built once, then read from the on-disk cache."""
    if split not in ("train", "val", "test"):
        raise EdgekitError(f"unknown split '{split}'", "use train, val or test")
    src, _, folder = _cache(fsdd, seed, cache_dir)
    if not (folder / "test.npz").exists():
        parts = build(src, seed)
        for name, ds in parts.items():  # test.npz last: its presence marks a complete cache
            ds.save(folder / f"{name}.npz")
    ds = ArrayDataset.load(folder / f"{split}.npz")
    ds.inputs.pop("audio_stats", None)
    return ds


def preprocessing(fsdd=None, seed: int = 0, cache_dir=None) -> dict:
    """What a deployed predictor must do to raw inputs: recorded in every ModelSpec."""
    load("test", fsdd, seed, cache_dir)  # builds the cache if needed
    _, source, folder = _cache(fsdd, seed, cache_dir)
    with np.load(folder / "train.npz") as z:
        mean, std = (float(v) for v in z["audio_stats"])
    return {"image": {"size": IMAGE_SIZE, "scale": 1 / 16, "note": "grayscale, 0..16 input scaled to 0..1, resized bilinear"},
            "audio": dict(FRONTEND, mean=mean, std=std, feature="log-mel, natural log, +1e-6"),
            "text": {"vocab": VOCAB, "seq_len": SEQ_LEN, "unknown": 1, "pad": 0},
            "vocab_size": len(VOCAB), "dataset": "avdigits", "source": source, "seed": seed}
