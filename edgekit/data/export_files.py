"""The built-in avdigits dataset written out as ordinary files + a manifest, so the generic manifest path can be
checked against the built-in one and the worked example has real files to read.

Layout of the folder (all paths in the manifest are relative to it):
  manifest.jsonl       one row per sample: id, split, image, audio, text, label
  images/<split>/N.png 16-bit grayscale PNG: the model-ready image, mapped linearly from [-8, 8] to 0..65535
                       (a step of 16 / 65535 ~ 2.4e-4, far below the dataset's own noise, std 0.6)
  audio/<split>/N.npy  the model-ready log-mel features [1, 40, 64] (float32, normalised). Not WAV: avdigits adds
                       its microphone noise in the mel-power domain, so no waveform reproduces these features.
  text                 the sentence as a string (words of avdigits.VOCAB, decoded from the token ids)
  recipe-data.yaml     a ready `data:` section whose preprocessing reproduces the built-in arrays
  README.md            what the files are
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, InternalError

SPLITS = ("train", "val", "test")
PNG_LEVELS = 65535  # 16-bit grayscale: the model-ready float image survives to ~1e-4
IMAGE_RANGE = (-8.0, 8.0)  # model-ready image values mapped linearly onto 0..65535
MARKERS = ("manifest.jsonl", "recipe-data.yaml")  # a folder holding both is a previous export (safe to replace)


def decode_text(ids: np.ndarray, vocab: list[str]) -> str:
    """Token ids -> the sentence (padding dropped); word-vocab preprocessing turns it back into the same ids."""
    return " ".join(vocab[int(i)] for i in ids if int(i) != 0)


def image_range(images: list[np.ndarray]) -> tuple[float, float]:
    """The fixed [lo, hi] the PNGs map to 0..65535: avdigits images are [0, 1] digits plus N(0, 0.6) noise, so
    +-8 is over 13 standard deviations away (checked here); a fixed range keeps the recipe's numbers the same for
    every seed and speech source."""
    lo, hi = IMAGE_RANGE
    low, high = min(float(x.min()) for x in images), max(float(x.max()) for x in images)
    if low < lo or high > hi:
        raise InternalError(f"avdigits image values span [{low:.3g}, {high:.3g}], outside the PNG range [{lo}, {hi}]")
    return lo, hi


def image_to_png16(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.rint((np.clip(img, lo, hi) - lo) / (hi - lo) * PNG_LEVELS).astype(np.uint16)


def image_preprocess(lo: float, hi: float) -> dict:
    """(pixel / scale - mean) / std = lo + pixel * (hi - lo) / 65535, i.e. the inverse of `image_to_png16`."""
    return {
        "image": {
            "size": [28, 28],
            "mode": "L",
            "scale": PNG_LEVELS,
            "mean": [-lo / (hi - lo)],
            "std": [1.0 / (hi - lo)],
            "layout": "NCHW",
        }
    }


def data_section(manifest: Path, lo: float, hi: float) -> dict:
    """The recipe `data:` section for an exported folder (README: Your model, your data)."""
    from edgekit.data.avdigits import DIGITS, SEQ_LEN, VOCAB

    return {
        "format": "manifest",
        "path": str(manifest),
        "columns": {"image": "image", "audio": "audio", "text": "text"},
        "label": "label",
        "classes": list(DIGITS),
        "split_column": "split",
        "preprocess": {
            "image": image_preprocess(lo, hi),
            "text": {"text": {"vocab": list(VOCAB), "max_length": SEQ_LEN}},
            "audio": {"array": {}},
        },
        # the reference models: zeros + a bit in modality_mask (columns in ModelSpec.modalities order)
        "missing": {
            m: {"inputs": [m], "mask": {"input": "modality_mask", "column": j}}
            for j, m in enumerate(("image", "audio", "text"))
        },
    }


def export_avdigits(out_dir, fsdd=None, seed: int = 0, force: bool = False, progress=None) -> dict:
    """Write avdigits (built for `fsdd`, `seed`) into `out_dir` as files + manifest; returns a summary.

    The folder appears complete or not at all: it is written beside the target and renamed into place. An existing
    non-empty folder is an error, unless `force` and it is a previous export (then it is replaced)."""
    import yaml

    from edgekit.data import avdigits

    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        previous = out.is_dir() and all((out / m).is_file() for m in MARKERS)
        if not (force and previous):
            raise EdgekitError(
                f"{out} already exists and is not empty",
                "choose a new folder"
                + (
                    ", or pass --force to replace this earlier export"
                    if previous
                    else " (--force replaces only a folder written by export-avdigits)"
                ),
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise EdgekitError(f"cannot write into {out.parent}: {e.strerror}", "choose a folder you can write to") from e
    try:
        parts = {s: avdigits.load(s, fsdd, seed) for s in SPLITS}
        lo, hi = image_range([d.inputs["image"] for d in parts.values()])
        counts = {}
        with open(tmp / "manifest.jsonl", "w") as manifest:
            for split, ds in parts.items():
                (tmp / "images" / split).mkdir(parents=True)
                (tmp / "audio" / split).mkdir(parents=True)
                for i in range(len(ds)):
                    row = _write_sample(tmp, split, i, ds, lo, hi, avdigits.VOCAB, avdigits.DIGITS)
                    manifest.write(json.dumps(row) + "\n")
                    if progress:
                        progress(1)
                counts[split] = len(ds)
        section = data_section(out.resolve() / "manifest.jsonl", lo, hi)
        (tmp / "recipe-data.yaml").write_text(
            "# A ready `data:` section for this folder: its preprocessing reproduces the built-in avdigits arrays\n"
            f"# (images to within {(hi - lo) / PNG_LEVELS / 2:.1e}, audio and text exactly). `path` is absolute; write it\n"
            "# relative to your recipe's folder when you move the files.\n"
            + yaml.safe_dump({"data": section}, sort_keys=False, default_flow_style=None, width=120)
        )
        (tmp / "README.md").write_text(_readme(counts, lo, hi, avdigits.preprocessing(fsdd, seed)["source"], seed))
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "path": str(out),
        "counts": counts,
        "image_range": [lo, hi],
        "manifest": str(out / "manifest.jsonl"),
        "recipe_data": str(out / "recipe-data.yaml"),
    }


def _write_sample(root: Path, split: str, i: int, ds, lo: float, hi: float, vocab, digits) -> dict:
    from PIL import Image

    name = f"{i:05d}"
    image, audio = f"images/{split}/{name}.png", f"audio/{split}/{name}.npy"
    Image.fromarray(image_to_png16(ds.inputs["image"][i, 0], lo, hi)).save(root / image)
    np.save(root / audio, np.ascontiguousarray(ds.inputs["audio"][i], np.float32))
    return {
        "id": f"{split}-{name}",
        "split": split,
        "image": image,
        "audio": audio,
        "text": decode_text(ds.inputs["text"][i], vocab),
        "label": digits[int(ds.labels[i])],
    }


def _readme(counts: dict, lo: float, hi: float, source: str, seed: int) -> str:
    return f"""# avdigits as files

Written by `edgekit data export-avdigits` (seed {seed}, speech source: {source}).
Samples: {", ".join(f"{k} {v}" for k, v in counts.items())}. One row per sample in `manifest.jsonl`
(`id`, `split`, `image`, `audio`, `text`, `label`); paths are relative to this folder.

- image: 16-bit grayscale PNG, 28x28; pixel p stands for {lo:g} + p * {hi - lo:g} / 65535 (the model-ready value).
- audio: `.npy` of the model-ready log-mel features [1, 40, 64], float32, normalised with the train statistics.
  They are not WAV files: avdigits adds its noisy-microphone model in the mel-power domain, so no waveform
  would reproduce these features.
- text: the sentence; words of avdigits' vocabulary, at most 16.
- label: the digit's name (zero ... nine).

`recipe-data.yaml` is a recipe `data:` section whose preprocessing turns these files back into the arrays
the built-in dataset gives (format: manifest, word-vocabulary text, `array` audio).
"""
