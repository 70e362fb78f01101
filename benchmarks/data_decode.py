"""Decode speed of the data resolver: N manifest rows (small PNG images + 1 s WAVs + short texts) generated in a
temp folder, resolved twice — the first run decodes every file, the second reads the content-hashed cache.

    python benchmarks/data_decode.py [--rows 10000] [--keep DIR]

Prints a table; nothing is asserted (timings live here, not in tests)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

WORDS = "the a is it this that number digit shows reads says enter write call seven three nine".split()
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def generate(folder: Path, rows: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(exist_ok=True)
    t = np.arange(16000) / 16000
    with open(folder / "manifest.jsonl", "w") as f:
        for i in range(rows):
            c = int(rng.integers(10))
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(folder / f"img/{i}.png")
            x = 0.3 * np.sin(2 * np.pi * (200 + 50 * c) * t) + 0.05 * rng.standard_normal(len(t))
            with wave.open(str(folder / f"wav/{i}.wav"), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
                w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 10))))
            f.write(json.dumps({"image": f"img/{i}.png", "wav": f"wav/{i}.wav", "text": f"{text} {i}", "label": CLASSES[c]}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, help="generate into (and keep) this folder")
    args = ap.parse_args()
    from edgekit.data import resolve
    from edgekit.data.settings import ManifestData

    folder = args.keep or Path(tempfile.mkdtemp(prefix="edgekit-decode-"))
    cache = Path(tempfile.mkdtemp(prefix="edgekit-decode-cache-"))
    try:
        t0 = time.perf_counter()
        generate(folder, args.rows)
        gen = time.perf_counter() - t0
        settings = ManifestData.model_validate({
            "format": "manifest", "path": str(folder / "manifest.jsonl"),
            "columns": {"pixels": "image", "audio": "wav", "words": "text"},
            "preprocess": {"pixels": {"image": {"size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
                           "audio": {"audio": {"sample_rate": 8000}},
                           "words": {"text": {"vocab": ["<pad>", "<unk>", *WORDS], "max_length": 8}}}})
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            s = resolve(settings, base_dir=folder, cache_dir=cache)
            times.append(time.perf_counter() - t0)
        d = s.describe()
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{args.rows} rows ({size / 1e6:.0f} MB of files: 32x32 PNG, 1 s 16 kHz WAV, short text) on {os.cpu_count()} CPU(s); generated in {gen:.1f} s")
        print("| run | seconds | rows/s | decoded columns | cached columns |")
        print("|---|---:|---:|---:|---:|")
        for name, t, info in (("first (decode)", times[0], None), ("second (cache)", times[1], d)):
            print(f"| {name} | {t:.2f} | {args.rows / t:,.0f} | {'3' if info is None else info['decoded']} | {'0' if info is None else info['cache_hits']} |")
        print("splits:", {k: v["size"] for k, v in d["splits"].items()}, "truncated texts:", d["truncated"])
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
