"""Calibration sets: which paired samples INT8 calibration (and Taylor pruning) sees.

Samples stay paired (image, audio and text of one sample together). A set is stratified by class, and a
chosen fraction of its samples has one modality missing (zeros + mask bit 0) so that activation ranges also
cover what the model sees when a sensor drops out. Named definitions live as YAML in the `calibration/` folder.

`stratified` is the one sampler every consumer of a few samples uses (calibration, Taylor importance, the
accuracy-aware ranking): seeded, equal per class, and interleaved, so that any prefix of it (the first batch,
the first N samples) holds every class, however the source split is ordered (the built-in splits are sorted by class).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.data.dataset import ArrayDataset
from edgekit.errors import EdgekitError
from edgekit.spec import ModelSpec

DEFINITIONS_DIR = Path(__file__).resolve().parents[2] / "calibration"


def definition_path(name: str) -> Path:
    """A definition by file path, or by name from ./calibration/ or the calibration/ folder shipped with edgekit."""
    p = Path(name)
    candidates = [p] if p.suffix in (".yaml", ".yml") else []
    candidates += [Path("calibration") / f"{name}.yaml", DEFINITIONS_DIR / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(f.stem for d in {Path("calibration"), DEFINITIONS_DIR} if d.is_dir() for f in d.glob("*.yaml"))
    raise EdgekitError(f"calibration set '{name}' is not defined", f"use one of: {', '.join(known) or '(none found)'}, "
                       "a path to a YAML definition, or inline {size: 256, stratify: class}")


def stratified(labels: np.ndarray, size: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of `size` samples (all when None): equal per class (the remainder spread over classes), each class's
    samples drawn at random, and interleaved round by round (one of each class per round, in a shuffled class
    order), so that every prefix of the result is as close to class-balanced as the counts allow."""
    labels = np.asarray(labels)
    size = len(labels) if size is None else min(size, len(labels))
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    quota = [0] * len(pools)
    while sum(quota) < size:  # equal shares; a class with too few samples leaves its share to the others
        open_ = [i for i, p in enumerate(pools) if quota[i] < len(p)]
        for i in open_[: size - sum(quota)] if len(open_) > size - sum(quota) else open_:
            quota[i] += 1
    rounds = [rng.permutation([p[r] for p, q in zip(pools, quota) if r < q]) for r in range(max(quota, default=0))]
    return np.concatenate(rounds).astype(np.int64) if rounds else np.zeros(0, np.int64)


def sample(data: ArrayDataset, size: int, stratify: str = "class", missing: float = 0.0, seed: int = 0,
           required: tuple[str, ...] = (), policy=None) -> ArrayDataset:
    """`size` paired samples: equal per class when stratify == "class" (the remainder spread over classes),
    uniform otherwise; a fraction `missing` of them gets one modality (never a `required` one, nor one the model
    never goes without) removed the way the model takes it: `policy` (edgekit.data.missing), else the dataset's.
    A size larger than the source, or (stratified) smaller than its number of classes, is an error: the set
    would silently not be what the recipe asked for."""
    if size < 1:
        raise EdgekitError(f"calibration size is {size}", "use at least one sample per class (e.g. size: 256)")
    if len(data) == 0:
        raise EdgekitError("the calibration source split is empty", "check the recipe's data section")
    if not 0.0 <= missing < 1.0:
        raise EdgekitError(f"calibration 'missing' fraction is {missing}", "give a fraction in [0, 1), e.g. 0.2")
    if size > len(data):
        raise EdgekitError(f"calibration size {size} is larger than its source split ({len(data)} samples)",
                           f"use size: {len(data)} or less, or calibrate on a larger split (split: train)")
    rng = np.random.default_rng(seed)
    if stratify == "class":
        classes = np.unique(data.labels)
        if size < len(classes):
            raise EdgekitError(f"calibration size {size} cannot hold one sample of each of the {len(classes)} classes (stratify: class)",
                               f"use size: {len(classes)} or more (64-512 is typical), or stratify: none")
        idx = stratified(data.labels, size, seed)
    elif stratify == "none":
        idx = rng.permutation(len(data))[:size]
    else:
        raise EdgekitError(f"unknown calibration stratify '{stratify}'", "use 'class' or 'none'")
    out = data.subset(idx)  # in sampled order: batches taken from its start see every class
    policy = policy or out.missing_policy
    droppable = [m for m in policy.droppable if m not in required]
    if missing > 0 and droppable:
        picked = rng.permutation(len(out))[: int(round(missing * len(out)))]
        for k, m in enumerate(droppable):  # round-robin, so every droppable modality is missing equally often
            out = policy.drop(out, m, rows=picked[k :: len(droppable)])
    return out


def describe(data: ArrayDataset, class_names: list[str] | None = None) -> dict:
    counts = np.bincount(data.labels, minlength=len(class_names or [])) if len(data) else np.zeros(0, int)
    names = class_names or [str(i) for i in range(len(counts))]
    out = {"size": len(data), "class_counts": {names[i]: int(c) for i, c in enumerate(counts)}}
    present = data.missing_policy.present(data) if len(data) else {}
    if present:
        out["modality_coverage"] = {m: float(p.mean()) for m, p in present.items()}
    return out


def check(data: ArrayDataset, spec: ModelSpec, what: str = "calibration set") -> None:
    """Refuse a set that would calibrate the model wrongly: empty, inputs missing or misshapen, or a modality
    the model uses that never appears (its branch would get no statistics), or a required one that is missing."""
    if data is None or len(data) == 0:
        raise EdgekitError(f"the {what} is empty", "give it at least one sample per class (e.g. calibration: {size: 256})")
    feed, _ = next(data.batches(4))
    missing = [n for n in spec.input_names if n not in feed]
    if missing:
        raise EdgekitError(f"the {what} has no input {missing} that the model needs",
                           f"its samples must carry every model input: {', '.join(spec.input_names)}")
    spec.check_feed({n: feed[n] for n in spec.input_names})
    for name in spec.input_names:  # the first batch was checked above; NaN/Inf anywhere would poison the INT8 ranges
        arr = data.inputs[name]
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1))
            raise EdgekitError(f"the {what} has NaN or Inf in '{name}' ({len(bad)} sample(s), e.g. sample {bad[0]})",
                               "clean those samples (np.nan_to_num) or drop them before calibrating")
    policy = data.missing_policy
    presence = policy.present(data)
    for i in spec.inputs:
        if i.modality is None or i.modality not in presence:
            continue
        present = presence[i.modality]
        if not present.any():
            raise EdgekitError(f"no sample of the {what} has the '{i.modality}' modality, which the model uses",
                               "calibrate on paired samples with every modality present (missing only in a fraction of them)")
        if not i.optional and not present.all():
            raise EdgekitError(f"{int((present == 0).sum())} samples of the {what} lack '{i.modality}', which the model requires",
                               "remove those samples or mark the input optional in the model spec")
