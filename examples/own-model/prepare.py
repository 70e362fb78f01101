"""Makes what a user would bring: a dataset of real files and a model trained on it, outside edgekit.

  1. avdigits exported as files (16-bit PNG images, .npy log-mel features, sentences, labels) + manifest.jsonl,
     into data/avdigits/ beside this script (git-ignored);
  2. own_model.build(config) trained for a few epochs with a plain PyTorch loop, written as
     checkpoint/model.safetensors + checkpoint/own_config.json (the user's own config file).

Then `edgekit run examples/own-model/recipe.yaml` compresses that checkpoint on that data. Usage:
    python examples/own-model/prepare.py [--epochs 12] [--fsdd PATH] [--force]
Preprocessing here is the user's own code; it follows recipe.yaml's `data.preprocess`, which edgekit applies.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CONFIG = {"vocab_size": 64, "num_classes": 10, "hidden": 64, "layers": 2, "heads": 4, "intermediate": 128, "max_length": 16,
          "cnn_width": 16}


def export_data(out: Path, fsdd, force: bool) -> Path:
    from edgekit.data.export_files import export_avdigits

    if (out / "manifest.jsonl").exists() and not force:
        print(f"data: {out} (already there)")
    else:
        done = export_avdigits(out, fsdd=fsdd, force=force)
        print(f"data: {out} ({', '.join(f'{k} {v}' for k, v in done['counts'].items())} samples)")
    return out / "manifest.jsonl"


def load_split(manifest: Path, split: str, data: dict) -> tuple[dict, np.ndarray]:
    """The user's own reading of the files, following recipe.yaml's data section (columns, classes, preprocess)."""
    from PIL import Image
    from transformers import AutoTokenizer

    rows = [r for r in map(json.loads, manifest.read_text().splitlines()) if r[data["split_column"]] == split]
    cols, pre = data["columns"], data["preprocess"]
    img = pre["pixels"]["image"]
    pixels = np.stack([np.asarray(Image.open(manifest.parent / r[cols["pixels"]]), np.float32) for r in rows])[:, None]
    pixels = ((pixels / img["scale"] - img["mean"][0]) / img["std"][0]).astype(np.float32)
    audio = np.stack([np.load(manifest.parent / r[cols["audio"]]) for r in rows]).astype(np.float32)
    tok = AutoTokenizer.from_pretrained(str(HERE / pre["input_ids"]["text"]["tokenizer"]))
    enc = tok([r[cols["input_ids"]] for r in rows], max_length=pre["input_ids"]["text"]["max_length"], padding="max_length",
              truncation=True, return_tensors="np")
    labels = np.array([data["classes"].index(r[data["label"]]) for r in rows], np.int64)
    return {"pixels": pixels, "audio": audio, "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64)}, labels


def accuracy(model, x: dict, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(**{k: torch.from_numpy(v[s : s + 256]) for k, v in x.items()}) for s in range(0, len(y), 256)])
    return float((logits.argmax(1).numpy() == y).mean())


def train(manifest: Path, out: Path, epochs: int, seed: int = 0) -> dict:
    """AdamW, cosine schedule, and the image or the sentence left out of 15% of samples each, as the recipe's
    data.missing describes, so the model knows how to do without them."""
    from own_model import build
    from safetensors.torch import save_file

    data = yaml.safe_load((HERE / "recipe.yaml").read_text())["data"]
    (xtr, ytr), (xva, yva), (xte, yte) = (load_split(manifest, s, data) for s in ("train", "val", "test"))
    torch.manual_seed(seed)
    model = build(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * -(-len(ytr) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng(seed)
    best, best_acc = None, -1.0
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        for idx in np.array_split(rng.permutation(len(ytr)), len(ytr) // 64):
            feed = {k: torch.from_numpy(v[idx].copy()) for k, v in xtr.items()}
            which = rng.random(len(idx))
            feed["pixels"][torch.from_numpy(which < 0.15)] = 0  # no image
            no_text = torch.from_numpy((which >= 0.15) & (which < 0.30))
            feed["input_ids"][no_text] = 0  # no sentence: all-zero input_ids + attention_mask
            feed["attention_mask"][no_text] = 0
            loss = torch.nn.functional.cross_entropy(model(**feed), torch.from_numpy(ytr[idx]), label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, xva, yva)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, val accuracy {acc:.3f} ({time.time() - t0:.1f} s)")
        if acc > best_acc:
            best, best_acc = {k: v.detach().clone() for k, v in model.state_dict().items()}, acc
    model.load_state_dict(best)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "model.safetensors"))
    (out / "own_config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    result = {"val_accuracy": best_acc, "test_accuracy": accuracy(model, xte, yte)}
    print(f"checkpoint: {out}/model.safetensors (val accuracy {best_acc:.3f}, test accuracy {result['test_accuracy']:.3f})")
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE / "data" / "avdigits", help="folder for the exported files")
    ap.add_argument("--out", type=Path, default=HERE / "checkpoint", help="checkpoint folder to write")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--fsdd", default=None, help="FSDD recordings folder (default: $EDGEKIT_FSDD, else synthesized speech)")
    ap.add_argument("--force", action="store_true", help="export the data again")
    args = ap.parse_args(argv)
    train(export_data(args.data, args.fsdd, args.force), args.out, args.epochs)


if __name__ == "__main__":
    main()
