"""One resolver for every stage: a recipe's `data:` section (+ the model's spec) -> the same train/val/test of
named, model-ready input arrays and int labels, with the class list, the per-input preprocessing to record in
the ModelSpec, and a description for `edgekit data check`. The test split is for judging only: nothing here
(or in a caller) may use it for a decision.

Errors are one line naming the file and row: a missing manifest, column or referenced file, a corrupt image or
WAV, a label outside the class list, an empty split, a sample in both train and test, an input the model needs
that the data lacks, a shape that does not fit the model, a missing tokenizer folder, a loader that raises."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.data.dataset import ArrayDataset
from edgekit.errors import EdgekitError
from edgekit.spec import MASK_INPUT

SPLITS = ("train", "val", "test")


@dataclass
class Splits:
    """What `resolve` gives: iterate it for (train, val, test)."""
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    class_names: list[str]
    preprocess: dict[str, dict]      # model input -> its recorded steps (InputSpec.preprocess)
    preprocessing: dict              # ModelSpec.preprocessing: what was read (+ vocab_size, the built-in's own steps)
    source: str
    format: str
    missing: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter((self.train, self.val, self.test))

    def split(self, name: str) -> ArrayDataset:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def describe(self) -> dict:
        """Counts per split and class, input shapes/dtypes after preprocessing, how modalities go missing, and
        what was truncated or read from the cache."""
        def counts(ds):
            c = np.bincount(np.asarray(ds.labels, np.int64), minlength=len(self.class_names)) if len(ds) else np.zeros(len(self.class_names), int)
            return {n: int(k) for n, k in zip(self.class_names, c)}
        made = {MASK_INPUT: "made: all ones (every modality present)"}
        inputs = {n: {"shape": ["B", *a.shape[1:]], "dtype": str(a.dtype),
                      "preprocess": _kind(self.preprocess.get(n)) or made.get(n, "as given")}
                  for n, a in self.train.inputs.items()}
        return {"source": self.source, "format": self.format, "classes": list(self.class_names),
                "splits": {s: {"size": len(self.split(s)), "classes": counts(self.split(s))} for s in SPLITS},
                "inputs": inputs, "missing": self.missing, **self.info, "notes": list(self.notes)}


def _kind(pre: dict | None) -> str | None:
    if not pre:
        return None
    return f"mask of {pre['mask_of']}" if "mask_of" in pre else next(iter(pre))


def record_preprocessing(spec, splits: Splits):
    """The spec with the data's per-input preprocessing, class names and source written into it, so every later
    stage and the device runtime repeat what the model was judged with."""
    inputs = [i.model_copy(update={"preprocess": splits.preprocess[i.name]}) if i.name in splits.preprocess else i for i in spec.inputs]
    return spec.model_copy(update={"inputs": inputs, "class_names": list(splits.class_names),
                                   "preprocessing": {**spec.preprocessing, **splits.preprocessing}})


def resolve(settings, spec=None, base_dir=None, origin: str = "", cache_dir=None) -> Splits:
    """The recipe's data (`settings`: a DataSettings model) as train/val/test for `spec` (a ModelSpec, or None to
    read the data alone). Relative paths resolve against `base_dir` (the recipe's folder; default: the current
    one); `origin` names the recipe in messages about a loader."""
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    if settings.format == "avdigits":
        return _avdigits(settings, spec, cache_dir)
    from edgekit.data import sources

    if settings.format == "manifest":
        table, columns = sources.read_manifest(settings, base_dir), dict(settings.columns)
    elif settings.format == "hf":
        table, columns = sources.read_hf(settings, base_dir), dict(settings.columns)
    else:
        table = sources.read_python(settings, origin or "the recipe")
        columns = _loader_columns(table, spec, settings)
    _check_model_needs(spec, columns, settings, table.origin)
    class_names, labels = _labels(table, settings.classes or (spec.class_names if spec is not None and spec.class_names else None))
    idx, notes = _split_rows(table, labels, settings.split)
    arrays, preprocess, info = _decode(table, columns, settings, spec, base_dir, cache_dir)
    arrays = _fit_to_model(arrays, spec, table, columns, preprocess)
    _check_leaks(arrays, idx, table)
    modalities = tuple(spec.modalities) if spec is not None and spec.modalities else tuple(
        dict.fromkeys(next(iter(p)) for p in preprocess.values() if p and "mask_of" not in p))
    policy, missing = _missing(settings, spec)
    parts = {s: ArrayDataset({n: np.asarray(a[idx[s]]) for n, a in arrays.items()}, labels[idx[s]], modalities, policy) for s in SPLITS}
    vocab = [p["text"]["vocab_size"] for p in preprocess.values() if "text" in p]
    recorded = {"data": {"format": settings.format, "source": table.origin}, **({"vocab_size": max(vocab)} if vocab else {})}
    return Splits(parts["train"], parts["val"], parts["test"], class_names, preprocess, recorded, table.origin, settings.format,
                  missing, info, table.notes + notes)


# ---------------------------------------------------------------- the built-in dataset

def _avdigits(settings, spec, cache_dir) -> Splits:
    """avdigits; with no FSDD folder given, the recordings the model was trained on (named in its spec), so a model is
    never judged on other data than it learned from."""
    from edgekit.data import avdigits

    fsdd = settings.fsdd or os.environ.get("EDGEKIT_FSDD")
    trained_on = str((spec.preprocessing if spec is not None else {}).get("source", ""))
    if fsdd is None and trained_on.startswith("fsdd:"):
        recorded = Path(trained_on[5:].rsplit(":", 1)[0])
        fsdd = str(recorded) if recorded.is_dir() else None
    parts = [avdigits.load(s, fsdd, settings.seed, cache_dir) for s in SPLITS]
    pre = avdigits.preprocessing(fsdd, settings.seed, cache_dir)
    notes = []
    if trained_on and pre["source"] != trained_on:
        notes.append(f"the model was trained on avdigits from {trained_on}, these splits come from {pre['source']}; "
                     "set data.fsdd in the recipe to the same recordings")
    if spec is not None:
        have = parts[0].inputs
        lacking = [n for n in spec.input_names if n not in have]
        if lacking:
            raise EdgekitError(f"the model needs input(s) {lacking} that dataset 'avdigits' does not have",
                               f"the dataset provides {', '.join(have)}; give the model inputs with these names")
        parts = [ArrayDataset({n: p.inputs[n] for n in spec.input_names}, p.labels, p.modalities) for p in parts]
    if settings.missing:  # the recipe says how a modality is absent for this model: every split carries it
        policy, missing = _missing(settings, spec)
        if policy is not None:
            parts = [ArrayDataset(p.inputs, p.labels, p.modalities, policy) for p in parts]
    else:
        missing = parts[0].missing_policy.describe()
    return Splits(*parts, list(avdigits.DIGITS), {}, pre, f"avdigits ({pre['source']}, seed {settings.seed})", "avdigits",
                  missing, {}, notes)


# ---------------------------------------------------------------- columns, labels, splits

def _loader_columns(table, spec, settings) -> dict[str, str]:
    names = spec.input_names if spec is not None else list(table.rows[0])
    names = [n for n in names if n != MASK_INPUT and not _is_mask(n, settings, spec)] if spec is not None else names
    for row, where in zip(table.rows, table.where):
        for n in names:
            if n not in row:
                raise EdgekitError(f"{where} has no input '{n}'", f"it has {', '.join(map(str, row))[:200]}; every item must carry every model input")
    return {n: n for n in names}


def _is_mask(name, settings, spec) -> bool:
    """An input filled by a text input's tokenization (e.g. attention_mask), not read from the data."""
    return any(p.text is not None and p.text.mask_input == name for p in settings.preprocess.values())


def _check_model_needs(spec, columns: dict, settings, origin: str) -> None:
    if spec is None:
        return
    lacking = [n for n in spec.input_names if n not in columns and n != MASK_INPUT and not _is_mask(n, settings, spec)]
    if lacking:
        raise EdgekitError(f"the model needs input(s) {lacking} that {origin} does not provide",
                           f"map them in data.columns (input: column); the data gives {', '.join(columns) or 'nothing'}")
    extra = [n for n in settings.preprocess if n not in columns]
    if extra:
        raise EdgekitError(f"data.preprocess names input(s) {extra} that data.columns does not map", f"mapped inputs: {', '.join(columns)}")


def _label_text(v) -> str | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return v.strip() if isinstance(v, str) and v.strip() else None


def _labels(table, classes) -> tuple[list[str], np.ndarray]:
    texts = [_label_text(v) for v in table.labels]
    bad = next((i for i, t in enumerate(texts) if t is None), None)
    if bad is not None:
        raise EdgekitError(f"{table.where[bad]}: label {table.labels[bad]!r} is not a class name or number", "give each row a class (a string or an int)")
    if classes is None:
        seen = {t for t, s in zip(texts, table.splits) if s in (None, "train")}
        classes = sorted(seen, key=lambda t: (0, int(t), "") if t.lstrip("-").isdigit() else (1, 0, t))
        given_by = "the train split's labels"
    else:
        given_by = "data.classes" if classes else "the class list"
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(texts), np.int64)
    for i, t in enumerate(texts):
        j = index.get(t)
        if j is None and t.isdigit() and given_by != "the train split's labels" and not any(c.isdigit() for c in classes) and int(t) < len(classes):
            j = int(t)  # an index into a named class list
        if j is None:
            shown = ", ".join(classes[:12]) + (" ..." if len(classes) > 12 else "")
            raise EdgekitError(f"{table.where[i]}: label '{t}' is not in the class list ({shown})",
                               f"the classes come from {given_by}; fix the label or add it to data.classes")
        out[i] = j
    return list(classes), out


def _stratified(idx: np.ndarray, labels: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(taken, rest): about `fraction` of the rows (at least one when fraction > 0), spread over the classes in
    proportion (largest remainders first), each class's rows picked at random."""
    classes, counts = np.unique(labels[idx], return_counts=True)
    target = max(1, int(round(fraction * len(idx)))) if fraction > 0 and len(idx) > 1 else 0
    exact = fraction * counts
    take = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - take), kind="stable")[: max(0, target - int(take.sum()))]:
        take[j] += 1
    taken = [rng.permutation(idx[labels[idx] == c])[:k] for c, k in zip(classes, take)]
    taken = np.sort(np.concatenate(taken)) if taken else np.zeros(0, np.int64)
    return taken, np.setdiff1d(idx, taken)


def _split_rows(table, labels: np.ndarray, split) -> tuple[dict[str, np.ndarray], list[str]]:
    rng = np.random.default_rng(split.seed)
    given = np.array([s or "" for s in table.splits])
    notes = []
    if (given != "").any():
        idx = {s: np.flatnonzero(given == s) for s in SPLITS}
        for s in ("test", "val"):  # a split the source lacks is carved from train, stratified
            if len(idx[s]) == 0 and len(idx["train"]):
                idx[s], idx["train"] = _stratified(idx["train"], labels, getattr(split, s), rng)
                notes.append(f"{table.origin} has no {s} split: {len(idx[s])} rows of train taken for it (data.split.{s})")
    else:
        idx = {"train": np.arange(len(labels))}
        idx["test"], idx["train"] = _stratified(idx["train"], labels, split.test, rng)
        idx["val"], idx["train"] = _stratified(idx["train"], labels, split.val / (1 - split.test), rng)
    for s in SPLITS:
        if len(idx[s]) == 0:
            raise EdgekitError(f"the {s} split of {table.origin} is empty ({len(labels)} rows in all)",
                               f"give it rows (split column value '{s}') or a larger data.split.{s} fraction" if s != "train" else "give the train split rows")
    return idx, notes


# ---------------------------------------------------------------- decoding (cached) and fitting to the model

def _decode(table, columns: dict, settings, spec, base_dir: Path, cache_dir) -> tuple[dict, dict, dict]:
    from edgekit.data import cache
    from edgekit.data.preprocess import encode_column, infer_kind, recorded
    from edgekit.data.settings import InputPreprocess
    from edgekit.io import file_sha256

    arrays, preprocess, truncated, hits = {}, {}, {}, {"cache_hits": 0, "decoded": 0}
    for name, col in columns.items():
        values = [row[col] for row in table.rows]
        declared = settings.preprocess.get(name)
        if declared is None:
            kind = infer_kind(values[0])
            if kind is None:
                raise EdgekitError(f"{table.where[0]}: input '{name}' (column '{col}') holds text {str(values[0])[:40]!r} with no preprocessing declared",
                                   f"add data.preprocess.{name}: {{text: {{tokenizer: DIR, max_length: N}}}} (or vocab: [...]); file columns need a known suffix")
            declared = InputPreprocess.model_validate({kind: {}})
        pre = recorded(name, declared, spec, base_dir)
        kind = declared.kind
        where = [f"{w} ({col})" for w in table.where]
        parts: list = [pre]
        if kind in ("image", "audio", "array") and all(isinstance(v, str) for v in values) and table.base is not None:
            values = _files(values, table, col)
            where = [f"{w}, file {table.rows[i][col]}" for i, w in enumerate(table.where)]
            parts.append(table.digest or [file_sha256(v) for v in values])
        elif kind == "text":
            parts += [values, _folder_digest(pre["text"].get("tokenizer"))]
        elif table.digest:
            parts += [table.digest, col]
        else:
            parts = None  # values in memory from a loader: nothing stable to key a cache entry on
        key = cache.key_of(name, *parts) if parts else None  # the entry holds arrays by input name: part of the key
        got = cache.load(key, cache_dir) if key else None
        if got is None:
            out, info = encode_column(name, pre, values, where.__getitem__)
            if key:
                out = cache.store(key, out, info, cache_dir)
            hits["decoded"] += 1
        else:
            (out, info), hits["cache_hits"] = got, hits["cache_hits"] + 1
        if info.get("truncated"):
            truncated[name] = int(info["truncated"])
        arrays.update(out)
        preprocess[name] = pre
        mask = pre.get("text", {}).get("mask_input")
        if mask and mask in out:
            preprocess[mask] = {"mask_of": name}
    return arrays, preprocess, {**hits, "truncated": truncated, "rows": len(table.rows)}


def _files(values: list[str], table, col: str) -> list[str]:
    out = []
    for v, where in zip(values, table.where):
        p = Path(v).expanduser()
        p = p if p.is_absolute() else table.base / p
        if not p.is_file():
            raise EdgekitError(f"{where}: file {v} (column '{col}') does not exist", f"paths inside the data resolve against {table.base}")
        out.append(str(p))
    return out


def _folder_digest(folder) -> str | None:
    if not folder:
        return None
    from edgekit.data.cache import key_of
    from edgekit.io import file_sha256

    return key_of([(str(f.relative_to(folder)), file_sha256(f)) for f in sorted(Path(folder).rglob("*")) if f.is_file()])


def _fit_to_model(arrays: dict, spec, table, columns: dict, preprocess: dict) -> dict:
    """Model inputs only, in the model's per-sample shape (unit axes added or dropped) and dtype; a modality mask
    the data does not give is all ones (every modality present)."""
    if spec is None:
        return arrays
    out = {}
    n = len(table.rows)
    for inp in spec.inputs:
        if inp.name not in arrays:
            if inp.name == MASK_INPUT:
                width = inp.shape[1] if len(inp.shape) == 2 and inp.shape[1] else len(spec.modalities)
                out[inp.name] = np.ones((n, width), inp.dtype)
                continue
            raise EdgekitError(f"the model needs input '{inp.name}' that {table.origin} does not provide", "map it in data.columns")
        a = arrays[inp.name]
        want = inp.shape[1:]
        have = list(a.shape[1:])
        fits = len(want) == len(have) and all(d is None or d == h for d, h in zip(want, have))
        if not fits and all(d is not None for d in want) and [d for d in want if d != 1] == [h for h in have if h != 1]:
            a, fits = a.reshape((n, *want)), True
        if not fits:
            src = columns.get(inp.name) or (preprocess.get(inp.name) or {}).get("mask_of", "?")
            kind = next(iter(preprocess.get(inp.name) or {"array": 0}))
            fix = {"image": "set data.preprocess.{0}.image.size / mode / layout", "audio": "set n_mels / frames of data.preprocess.{0}.audio",
                   "text": "set data.preprocess.{0}.text.max_length"}.get(kind, "give arrays of the model's shape").format(inp.name)
            raise EdgekitError(f"{table.where[0]} ({src}): input '{inp.name}' is {have} per sample after preprocessing, the model expects "
                               f"{['B' if d is None else d for d in inp.shape]}", fix)
        out[inp.name] = a if str(a.dtype) == inp.dtype else a.astype(inp.dtype)
    return out


def _check_leaks(arrays: dict, idx: dict, table) -> None:
    """A test sample that is also a train sample (every input equal) would judge the model on what it learned."""
    names = sorted(arrays)

    def digest(i):
        h = hashlib.blake2b(digest_size=16)
        for n in names:
            h.update(np.ascontiguousarray(arrays[n][i]).tobytes())
        return h.digest()

    train = {digest(i): i for i in idx["train"]}
    for i in idx["test"]:
        j = train.get(digest(i))
        if j is not None:
            raise EdgekitError(f"{table.where[i]} (test) is the same sample as {table.where[j]} (train)",
                               "remove the duplicate, or keep it in one split only: a test sample seen in training inflates accuracy")


def _missing(settings, spec):
    """How each modality is absent for this model (edgekit.data.missing): the recipe's `missing:` checked against the
    model, else what the spec implies. Without a model: the recipe's block as written."""
    if spec is None:
        return None, {m: v if v == "never" else v.model_dump(exclude_none=True) for m, v in settings.missing.items()}
    from edgekit.data.missing import MissingPolicy

    policy = MissingPolicy.from_settings(dict(settings.missing) or None, spec)
    return policy, policy.describe()


def builtin_split(spec, split: str = "test", fsdd=None, cache_dir=None) -> ArrayDataset | None:
    """For a model trained by edgekit on the built-in dataset (its spec records which): that split, from the
    recordings the spec names unless `fsdd` is given; None for any other model, or when those recordings are gone.
    For runs written before eval_samples.npz existed, and for `edgekit evaluate/export CHECKPOINT`."""
    from edgekit.data.settings import AvdigitsData

    pre = spec.preprocessing or {}
    if pre.get("dataset") != "avdigits":
        return None
    source = str(pre.get("source", ""))
    if fsdd is None and source.startswith("fsdd:") and not Path(source[5:].rsplit(":", 1)[0]).is_dir():
        return None
    if split not in SPLITS:
        raise EdgekitError(f"unknown split '{split}'", "use train, val or test")
    return _avdigits(AvdigitsData(fsdd=fsdd, seed=int(pre.get("seed", 0))), spec, cache_dir).split(split)


def read_eval_samples(path, spec, sha256: str | None = None) -> ArrayDataset:
    """The test split a compress stage wrote (RUN/eval_samples.npz), checked against its recorded sha256, with the
    model's inputs only and its way of making a modality missing."""
    from edgekit.data.missing import MissingPolicy
    from edgekit.io import file_sha256

    p = Path(path)
    if not p.is_file():
        raise EdgekitError(f"{p} does not exist", "run the compress stage first (it writes the resolved test split there)")
    if sha256 and file_sha256(p) != sha256:
        raise EdgekitError(f"{p} changed since the compress stage wrote it (sha256 differs from compress.json)",
                           "rerun compress (edgekit compress ... --force) so every stage judges on the same samples")
    data = ArrayDataset.load(p)
    lacking = [n for n in spec.input_names if n not in data.inputs]
    if lacking:
        raise EdgekitError(f"{p} lacks the model's input(s) {lacking}", "rerun compress for this model")
    return ArrayDataset({n: data.inputs[n] for n in spec.input_names}, data.labels,
                        tuple(spec.modalities) or data.modalities, MissingPolicy.from_spec(spec))
