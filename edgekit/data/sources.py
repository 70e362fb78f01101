"""Reading a source into rows: a manifest (JSONL/CSV), a Hugging Face dataset (save_to_disk folder or parquet),
or a user's Python loader. Each gives a `Table`: one dict per sample, the split the source puts it in (if any),
its label, and where it came from ('data/manifest.jsonl row 12'), so every later error names the file and row."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.io import parse_json

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


@dataclass
class Table:
    origin: str                      # the source as shown in messages
    rows: list[dict]                 # column -> raw value
    labels: list                     # raw label per row
    where: list[str]                 # 'FILE row N' per row
    splits: list[str | None]         # the source's split per row (None: to be made)
    base: Path | None = None         # folder that relative file paths in the rows resolve against
    digest: str | None = None        # content digest of the whole source (None: rows name files, digested one by one)
    notes: list[str] = field(default_factory=list)


def _shown(p: Path, base_dir: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _data_path(settings, base_dir: Path) -> tuple[Path, str]:
    """data.path resolved against the recipe's folder, and how messages show it."""
    p = Path(settings.path).expanduser()
    p = p if p.is_absolute() else base_dir / p
    return p, _shown(p, base_dir)


def _split_of(value, where: str, column: str) -> str:
    s = SPLIT_NAMES.get(str(value).strip().lower())
    if s is None:
        raise EdgekitError(f"{where}: split column '{column}' holds {str(value)[:40]!r}", "use train, val (or validation) or test")
    return s


def _check_columns(row: dict, where: str, columns: dict[str, str], label: str, split_column: str | None) -> None:
    for inp, col in columns.items():
        if col not in row:
            raise EdgekitError(f"{where}: no column '{col}' (mapped to model input '{inp}')",
                               f"the row has columns {', '.join(map(str, row))[:200]}; fix data.columns or the file")
    for what, col in (("label", label), ("split", split_column)):
        if col is not None and col not in row:
            raise EdgekitError(f"{where}: no {what} column '{col}'", f"the row has columns {', '.join(map(str, row))[:200]}; set data.{'label' if what == 'label' else 'split_column'}")


# ---------------------------------------------------------------- manifest

def read_manifest(settings, base_dir: Path) -> Table:
    p, shown = _data_path(settings, base_dir)
    if not p.is_file():
        raise EdgekitError(f"manifest {shown} does not exist", "data.path is resolved against the recipe's folder; give a .jsonl or .csv file")
    suffix = p.suffix.lower()
    raw: list[dict] = []
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            with open(p, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = parse_json(line, f"{shown} line {n}")  # bounded nesting, no duplicate keys
                    except EdgekitError as e:
                        raise EdgekitError(e.message, "one JSON object per line (JSON Lines)") from None
                    if not isinstance(row, dict):
                        raise EdgekitError(f"{shown} line {n} is a {type(row).__name__}, not a JSON object", "one object per line, keys = columns")
                    raw.append(row)
        elif suffix in (".csv", ".tsv"):
            with open(p, newline="", encoding="utf-8") as f:
                raw = [dict(r) for r in csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")]
        else:
            raise EdgekitError(f"manifest {shown} is neither JSON Lines nor CSV (suffix '{p.suffix}')", "use a .jsonl or .csv file")
    except UnicodeDecodeError as e:
        raise EdgekitError(f"manifest {shown} is not UTF-8 text ({e.reason} at byte {e.start})", "save it as UTF-8") from None
    if not raw:
        raise EdgekitError(f"manifest {shown} has no rows", "one row per sample")
    where = [f"{shown} row {i}" for i in range(1, len(raw) + 1)]
    for row, w in zip(raw, where):
        _check_columns(row, w, settings.columns, settings.label, settings.split_column)
    sc = settings.split_column
    splits = [_split_of(r[sc], w, sc) if sc else None for r, w in zip(raw, where)]
    return Table(shown, raw, [r[settings.label] for r in raw], where, splits, base=p.parent)


# ---------------------------------------------------------------- Hugging Face datasets

def read_hf(settings, base_dir: Path) -> Table:
    from edgekit._optional import require
    from edgekit.data.cache import key_of
    from edgekit.io import file_sha256

    p, shown = _data_path(settings, base_dir)
    if not p.exists():
        raise EdgekitError(f"Hugging Face dataset {shown} does not exist", "give a save_to_disk folder or parquet file(s); resolved against the recipe's folder")
    wanted = list(dict.fromkeys([*settings.columns.values(), settings.label] + ([settings.split_column] if settings.split_column else [])))
    parquet = [p] if p.is_file() else sorted(p.rglob("*.parquet"))
    if p.is_dir() and any((p / f).exists() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
        datasets = require("datasets", "format: hf")
        try:
            ds = datasets.load_from_disk(str(p))
        except (OSError, ValueError, FileNotFoundError) as e:
            raise EdgekitError(f"cannot read Hugging Face dataset {shown}: {' '.join(str(e).split())[:200]}", "write it with Dataset.save_to_disk(DIR)") from e
        parts = dict(ds.items()) if isinstance(ds, datasets.DatasetDict) else {None: ds}
        files = sorted(f for f in p.rglob("*") if f.is_file())
        loaded = {}
        for split, d in parts.items():
            for col, feat in d.features.items():  # decode images/audio ourselves, exactly like manifest files
                if type(feat).__name__ in ("Image", "Audio") and col in wanted:
                    d = d.cast_column(col, type(feat)(decode=False))
            missing = [c for c in wanted if c not in d.column_names]
            if missing:
                raise EdgekitError(f"{shown}{f' split {split}' if split else ''} row 1: no column '{missing[0]}'",
                                   f"it has columns {', '.join(d.column_names)}; fix data.columns / data.label")
            loaded[split] = d.select_columns(wanted).to_list()
    elif parquet and all(f.suffix == ".parquet" for f in parquet):
        pq = require("pyarrow.parquet", "format: hf with parquet files")
        files, loaded = parquet, {}
        for f in parquet:
            split = next((SPLIT_NAMES[k] for k in SPLIT_NAMES if f.stem.lower().startswith(k)), None) if len(parquet) > 1 else None
            try:
                table = pq.read_table(f)
            except Exception as e:  # noqa: BLE001 — pyarrow raises many kinds for a broken file
                raise EdgekitError(f"cannot read parquet file {_shown(f, base_dir)}: {' '.join(str(e).split())[:200]}", "replace the file") from e
            missing = [c for c in wanted if c not in table.column_names]
            if missing:
                raise EdgekitError(f"{_shown(f, base_dir)} row 1: no column '{missing[0]}'", f"it has columns {', '.join(table.column_names)}")
            loaded.setdefault(split, []).extend(table.select(wanted).to_pylist())
    else:
        raise EdgekitError(f"{shown} is neither a save_to_disk folder nor parquet", "give Dataset.save_to_disk(DIR) output or .parquet file(s)")
    rows, where, splits = [], [], []
    for split, part in loaded.items():
        s = None if split is None else SPLIT_NAMES.get(str(split).lower())
        if split is not None and s is None:
            raise EdgekitError(f"{shown} has a split named '{split}'", "name the splits train, validation (or val) and test")
        for i, row in enumerate(part, 1):
            rows.append(row)
            where.append(f"{shown}{f' split {split}' if split else ''} row {i}")
            splits.append(_split_of(row[settings.split_column], where[-1], settings.split_column) if settings.split_column else s)
    if not rows:
        raise EdgekitError(f"Hugging Face dataset {shown} has no rows", "one row per sample")
    digest = key_of("hf", [file_sha256(f) for f in files])
    return Table(shown, rows, [r[settings.label] for r in rows], where, splits, base=p if p.is_dir() else p.parent, digest=digest)


# ---------------------------------------------------------------- a Python loader

LOADER_SIGNATURE = "loader(**options) -> {'train': iterable, 'val': iterable, 'test': iterable} or one iterable, of (inputs: dict, label)"


def read_python(settings, origin: str) -> Table:
    """Rows from the user's loader, imported only through the trusted-reference gate; anything its code raises
    is reported as the user's code failing, with its file and line."""
    from edgekit._optional import call_user_code, import_reference, user_code_error

    ref = settings.loader
    what = "data loader"
    fn = import_reference(ref, what=what, origin=origin)
    got = call_user_code(fn, (), settings.options, ref=ref, what=what, origin=origin, called_as=LOADER_SIGNATURE)
    if isinstance(got, dict):
        unknown = [k for k in got if SPLIT_NAMES.get(str(k).lower()) is None]
        if unknown:
            raise EdgekitError(f"{what} '{ref}' returned a split named {str(unknown[0])!r}", "return keys train, val (or validation) and test")
        parts = [(SPLIT_NAMES[str(k).lower()], v) for k, v in got.items()]
    else:
        parts = [(None, got)]
    rows, labels, where, splits = [], [], [], []
    for split, items in parts:
        try:
            it = iter(items)
        except TypeError:
            raise EdgekitError(f"{what} '{ref}' returned a {type(items).__name__}{f' for split {split}' if split else ''}, not an iterable",
                               f"edgekit calls it as {LOADER_SIGNATURE}") from None
        n = 0
        while True:
            try:
                item = next(it)
            except StopIteration:
                break
            except EdgekitError:
                raise
            except Exception as e:  # noqa: BLE001 — the user's generator failed
                raise user_code_error(e, ref=ref, what=what, origin=origin, fn=fn, stage=f"while giving{f' split {split}' if split else ''} item {n + 1}") from e
            n += 1
            w = f"{what} '{ref}'{f' split {split}' if split else ''} item {n}"
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], dict)):
                raise EdgekitError(f"{w} is a {type(item).__name__}, not (inputs: dict, label)", f"edgekit calls it as {LOADER_SIGNATURE}")
            rows.append(item[0])
            labels.append(item[1])
            where.append(w)
            splits.append(split)
    if not rows:
        raise EdgekitError(f"{what} '{ref}' gave no samples", "return at least one (inputs, label) per class and split")
    return Table(f"{what} '{ref}'", rows, labels, where, splits)
