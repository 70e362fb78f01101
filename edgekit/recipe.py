"""Recipes: what to compress, into which variants, judged against which budget, on which targets.

A recipe is YAML validated by the pydantic models below. Every model forbids unknown keys, so a typo is an
error naming the key and the keys allowed there, never silently ignored. A recipe round-trips:
load -> dump -> load gives the same object (`dump_recipe` writes every default, i.e. the resolved recipe).

Accuracy budgets are in accuracy points: `max_accuracy_drop: 0.5` allows half a percentage point.
"""
from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from edgekit import limits, passes
from edgekit.data.settings import AvdigitsData, DataSettings  # `data:`: one schema per source format
from edgekit.errors import EdgekitError
from edgekit.io import load_yaml, slug
from edgekit.parity import MIN_TOP1
from edgekit.schema import OneOf, Strict
from edgekit.spec import InputSpec

# ---------------------------------------------------------------- passes

PASS_NAMES = passes.names()


class _OnePass(OneOf):
    """One pass: a mapping with exactly one key, e.g. {prune: {ratio: 0.3}}; `quantize:` alone uses defaults.
    PassStep below adds one optional field per registered pass (edgekit.passes), typed by that pass's Settings."""
    CHOICES = PASS_NAMES
    WHAT = "each pass"

    @property
    def name(self) -> str:
        return self.choice


PassStep = create_model("PassStep", __base__=_OnePass, __module__=__name__, __doc__=_OnePass.__doc__,
                        **{n: (Optional[passes.get(n).Settings], None) for n in PASS_NAMES})


# ---------------------------------------------------------------- the rest of a recipe

def printable(v, what: str):
    """A name that becomes a folder, a report heading or a log line: one line, no control characters (a newline
    would be dropped from a folder name silently, or start a new line in a report)."""
    if isinstance(v, str) and not v.isprintable():
        raise ValueError(f"{what} {v!r} contains a control character (newline, tab, ...); write it on one line")
    return v


class Budget(Strict):
    max_accuracy_drop: float = Field(1.0, ge=0, description="allowed drop vs the float model, in accuracy points")
    metric: Literal["accuracy", "f1_macro"] = "accuracy"


REFERENCE_VARIANT = "fp32"


class VariantSettings(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    start_from: Optional[str] = Field(None, alias="from", description="start from another variant's result instead of the original")
    passes: list[PassStep] = Field(default_factory=list)
    budget: Optional[Budget] = Field(None, description="overrides the recipe's budget for this variant")


class TrainSource(Strict):
    preset: Literal["tiny", "small", "base"] = "tiny"
    fusion: Literal["early", "late", "hierarchical", "attention"] = "attention"
    text: Literal["transformer", "lstm"] = "transformer"
    epochs: Optional[int] = Field(None, ge=1, le=10000)


class ModelSource(Strict):
    """Either an edgekit checkpoint, a reference model to train, or a user model: factory + weights."""
    checkpoint: Optional[str] = None
    train: Optional[TrainSource] = None
    factory: Optional[str] = Field(None, description="'package.module:function' building the model from `config`")
    config: Optional[dict] = Field(None, description="argument of the factory (with bare weights)")
    inputs: Optional[list[InputSpec]] = Field(None, description="model inputs (with bare weights); see edgekit.spec")
    class_names: Optional[list[str]] = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.checkpoint is None) == (self.train is None):
            raise ValueError("give exactly one of 'checkpoint' and 'train'")
        if self.factory and not re.match(r"^[\w.]+:\w+$", self.factory):
            raise ValueError(f"factory '{self.factory}' must look like 'package.module:function'")
        if (self.factory or self.inputs) and self.train:
            raise ValueError("'factory'/'inputs' go with 'checkpoint', not 'train'")
        return self


class CalibrationSettings(Strict):
    """A named definition from calibration/ (`calibration: NAME`) and/or inline settings (these win)."""
    name: Optional[str] = None
    description: str = ""
    split: Literal["train", "val"] = "train"
    size: int = Field(256, ge=1, le=limits.MAX_SAMPLES)
    stratify: Literal["class", "none"] = "class"
    missing: float = Field(0.2, ge=0, lt=1, description="fraction of samples with one modality missing")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _by_name(cls, v):
        return {"name": v} if isinstance(v, str) else v


class TargetSettings(Strict):
    backend: Literal["onnxruntime", "openvino", "tensorrt"]
    name: Optional[str] = Field(None, description="label in reports (default: backend, plus host)")
    host: Optional[str] = Field(None, description="ssh://user@host[:port] to build and run on a device")
    options: dict = Field(default_factory=dict, description="backend options, e.g. {device: CPU, hint: LATENCY}; each backend's "
                          "Options schema (edgekit/backends/) says which keys it takes")

    @field_validator("host")
    @classmethod
    def _ssh(cls, v):
        if v is not None and not re.fullmatch(r"ssh://[^@\s]+@[^:\s]+(:\d+)?", v):  # fullmatch: `$` would let a final newline in
            raise ValueError(f"host {_quoted(v)} must look like ssh://user@host[:port]")
        return v

    @field_validator("name")
    @classmethod
    def _one_line(cls, v):
        return printable(v, "target name")

    @field_validator("options")
    @classmethod
    def _backend_options(cls, v, info):
        """Kept as written (stage keys hash them), but checked against the backend's schema: a typo is an error."""
        from edgekit.backends.base import check_options

        if "backend" in info.data:  # else the backend itself is wrong, and that error is the one to show
            check_options(info.data["backend"], v, on_device=info.data.get("host") is not None)
        return v

    @property
    def label(self) -> str:
        return self.name or (f"{self.backend}@{self.host[6:]}" if self.host else self.backend)


class MinTop1(Strict):
    """Top-1 agreement with the torch model each precision's converted/compiled graph must keep (edgekit.parity)."""
    fp32: float = Field(MIN_TOP1["fp32"], ge=0, le=1)
    fp16: float = Field(MIN_TOP1["fp16"], ge=0, le=1)
    int8: float = Field(MIN_TOP1["int8"], ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _one_for_all(cls, v):
        return {p: v for p in MIN_TOP1} if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class ParitySettings(Strict):
    """The parity gate: `min_top1: 0.9` (every precision) or `min_top1: {int8: 0.9}` (the others keep their defaults)."""
    min_top1: MinTop1 = Field(default_factory=MinTop1)


class BenchSettings(Strict):
    """Bounded (edgekit.limits) so that a typo cannot start 10^5 threads or allocate a batch of 10^9."""
    batch_sizes: list[Annotated[int, Field(ge=1, le=limits.MAX_BATCH)]] = Field(default_factory=lambda: [1], min_length=1)
    warmup: int = Field(20, ge=0, le=limits.MAX_WARMUP)
    min_iterations: int = Field(100, ge=1, le=limits.MAX_ITERATIONS)
    min_seconds: float = Field(2.0, gt=0, le=limits.MAX_SECONDS, allow_inf_nan=False)
    threads: Optional[int] = Field(None, ge=1)
    rounds: int = Field(5, ge=3, le=100, description="interleaved timing rounds over a target's variants; min_seconds and "
                        "min_iterations are split over them (each variant at each batch size gets them in total)")

    @field_validator("threads")
    @classmethod
    def _threads(cls, v):
        if v is not None and v > limits.max_threads():
            raise ValueError(f"{v} threads is more than {limits.max_threads()} ({limits.THREADS_PER_CPU} per CPU of this machine's {limits.cpu_count()})")
        return v


class Recipe(Strict):
    name: str = ""
    description: str = ""

    @field_validator("name")
    @classmethod
    def _one_line(cls, v):
        return printable(v, "recipe name")
    model: Optional[ModelSource] = Field(None, description="optional: `edgekit compress CHECKPOINT` gives it")
    data: DataSettings = Field(default_factory=AvdigitsData)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    budget: Budget = Field(default_factory=Budget)
    variants: list[VariantSettings] = Field(min_length=1)
    targets: list[TargetSettings] = Field(default_factory=lambda: [TargetSettings(backend="onnxruntime")])
    bench: BenchSettings = Field(default_factory=BenchSettings)
    parity: ParitySettings = Field(default_factory=ParitySettings)

    @model_validator(mode="after")
    def _variant_names(self):
        seen = {REFERENCE_VARIANT}
        for v in self.variants:
            if v.name in seen:
                raise ValueError(f"variant name '{v.name}' is used twice" if v.name != REFERENCE_VARIANT else
                                 f"'{REFERENCE_VARIANT}' is reserved for the uncompressed reference variant")
            if v.start_from is not None and v.start_from not in seen:
                raise ValueError(f"variant '{v.name}' starts from '{v.start_from}', which is not an earlier variant")
            seen.add(v.name)
        labels = [t.label for t in self.targets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two targets share a label ({labels}); give them distinct 'name's")
        folders: dict[str, str] = {}
        for label in labels:  # results go to targets/<slug of the label>/: two labels must not share a folder
            other = folders.setdefault(slug(label).lower(), label)
            if other != label:
                raise ValueError(f"targets '{other}' and '{label}' would share the results folder targets/{slug(label)}; "
                                 "give them names that differ in letters or digits, not only in punctuation or case")
        return self


# ---------------------------------------------------------------- load / dump

def parse_recipe(data, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise EdgekitError(f"{source} is not a YAML mapping", "a recipe starts with keys such as name:, data:, variants:")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise EdgekitError(f"{source}: {_describe(e)}", "fix the recipe; see recipes/quickstart.yaml for a complete example") from None


def _read_yaml(p: Path, what: str = "recipe"):
    if not p.is_file():
        shipped = sorted(f.name for f in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
        raise EdgekitError(f"{what} {p} does not exist", f"pass a YAML file, e.g. recipes/{shipped[0] if shipped else 'quickstart.yaml'}")
    return load_yaml(p, what)  # no aliases, no duplicate keys, bounded size and nesting (edgekit.io)


def load_recipe(path) -> Recipe:
    p = Path(path)
    return parse_recipe(_read_yaml(p), str(p))


def load_data_section(path):
    """The `data:` section of a recipe, or of a file holding only that section (the recipe-data.yaml of
    `edgekit data export-avdigits`), validated as in a recipe."""
    p = Path(path)
    raw = _read_yaml(p, "data file")
    section = raw.get("data", raw) if isinstance(raw, dict) else raw
    try:  # validated inside a minimal recipe, so its errors name keys as a recipe's do (data.columns, ...)
        return Recipe.model_validate({"data": section, "variants": [{"name": "data-only"}]}).data
    except ValidationError as e:
        raise EdgekitError(f"{p}: {_describe(e)}", "fix its data section (README: Your model, your data)") from None


def trust_recipe_code(recipe: Recipe, path=None):
    """A context in which the code references the recipe names (model.factory, data.loader) are trusted: a recipe the
    user runs is their own instruction, like a script (README "Trust"). Its modules are imported with the recipe's
    folder on sys.path, so a recipe can name a module beside it."""
    from edgekit._optional import trusted

    refs = [r for r in (getattr(recipe.model, "factory", None), getattr(recipe.data, "loader", None)) if isinstance(r, str)]
    return trusted(refs, origin=str(path or ""), base_dir=Path(path).resolve().parent if path else None)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML: every default written out, so it documents exactly what ran."""
    return yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def resolve_calibration(settings: CalibrationSettings) -> CalibrationSettings:
    """Fill a named calibration set from its definition file; settings given inline win."""
    if not settings.name:
        return settings
    from edgekit.data.calibration import definition_path

    path = definition_path(settings.name)
    data = load_yaml(path, "calibration definition") or {}
    if not isinstance(data, dict):
        raise EdgekitError(f"calibration definition {path} is not a YAML mapping", "see calibration/avdigits-256.yaml")
    data.pop("name", None)
    inline = settings.model_dump(exclude_unset=True)
    try:
        return CalibrationSettings.model_validate({**data, **inline, "name": settings.name})
    except ValidationError as e:
        raise EdgekitError(f"{path}: {_describe(e)}", "fix the calibration definition") from None


# ---------------------------------------------------------------- one-line errors

def _quoted(key) -> str:
    """'key', or its escaped repr when it holds a newline or other unprintable characters (errors stay one line)."""
    return f"'{key}'" if str(key).isprintable() else repr(str(key))


def _describe(e: ValidationError) -> str:
    errors = e.errors()
    first = errors[0]
    loc = [x for x in first["loc"] if not (isinstance(x, str) and x[:1].isupper())]  # drop union member tags
    where = _path(loc[:-1]) or "the top level"
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        text = f"unknown key {_quoted(loc[-1])} in {where}" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
    elif first["type"] == "missing":
        text = f"missing required key {_quoted(loc[-1])} in {where}"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        text = (f"{_path(loc)}: {msg}" if loc else msg) + (f" (got {first['input']!r})" if first["type"] not in ("value_error",) and not isinstance(first["input"], (dict, list)) else "")
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _path(loc) -> str:
    out = ""
    for x in loc:
        out += f"[{x}]" if isinstance(x, int) else (f".{x}" if out else str(x))
    return out


def _allowed_keys(loc) -> list[str]:
    """The keys allowed at a location, found by walking the schema along the error's path."""
    t = Recipe
    for key in loc:
        t = _model_of(t)
        if isinstance(key, int) or t is None:
            continue
        field = next((f for n, f in t.model_fields.items() if key in (n, f.alias)), None)
        if field is None:
            return []
        t = field.annotation
    t = _model_of(t)
    if t is None:
        return []
    return [f.alias or n for n, f in t.model_fields.items()]


def _model_of(t):
    """The BaseModel class inside Optional[...], list[...] or dict[..., ...], if any."""
    if isinstance(t, type) and issubclass(t, BaseModel):
        return t
    for arg in typing.get_args(t):
        m = _model_of(arg)
        if m is not None:
            return m
    return None
