"""The contract every stage shares: what a model takes and returns, by name."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgekit.agent.measure import (
    MASK_INPUT as MASK_INPUT,  # defined once, in the numpy-only measurement core
    random_feed,
)
from edgekit.errors import EdgekitError
from edgekit.limits import MAX_DIM, MAX_SAMPLE_BYTES, itemsize


def _dims(shape: list) -> list:
    """A shape's axes must be sizes 1..MAX_DIM or None (dynamic): checked before anything is allocated from it."""
    for axis, d in enumerate(shape):
        if d is not None and not 1 <= d <= MAX_DIM:
            raise ValueError(f"axis {axis} of shape {shape} is {d}; a size must be between 1 and {MAX_DIM} (or null for the batch axis)")
    return shape


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[Optional[int]]  # None = dynamic (the batch axis)
    dtype: Literal["float32", "int64", "float16", "int32"] = "float32"
    modality: Optional[str] = None  # None for auxiliary inputs such as the modality mask
    optional: bool = False  # an optional modality may be missing: fed as zeros + mask bit 0
    # how a raw value becomes this input (edgekit/agent/preprocess.py), e.g. {"image": {...}}, {"text": {...}},
    # {"mask_of": "input_ids"}; None for models recorded before per-input preprocessing (see ModelSpec.preprocessing)
    preprocess: Optional[dict] = None

    @field_validator("shape")
    @classmethod
    def _sizes(cls, v):
        return _dims(v)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample of this input: every axis but a dynamic batch axis (another dynamic axis counts as 1)."""
        axes = self.shape[1:] if self.shape[:1] == [None] else self.shape
        return math.prod(d or 1 for d in axes) * itemsize(self.dtype)


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "logits"
    shape: list[Optional[int]]

    @field_validator("shape")
    @classmethod
    def _sizes(cls, v):
        return _dims(v)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    class_names: list[str]
    modalities: list[str] = Field(default_factory=list)  # order of the modality_mask columns
    preprocessing: dict = Field(default_factory=dict)
    # how each modality is absent for this model (edgekit.data.missing, the recipe's `data.missing` shape):
    # {modality: {"inputs": [...], "mask": {"input": ..., "column": j}} | "never"}; {} = implied by `inputs`
    missing: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sample_size(self):
        if self.sample_bytes > MAX_SAMPLE_BYTES:
            raise ValueError(f"one sample of the inputs would take {self.sample_bytes:,} bytes, more than {MAX_SAMPLE_BYTES:,} "
                             f"(shapes {', '.join(f'{i.name}{_fmt(i.shape)}' for i in self.inputs)})")
        return self

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample of all inputs: a batch of B takes B times this."""
        return sum(i.sample_bytes for i in self.inputs)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def input(self, name: str) -> InputSpec:
        for i in self.inputs:
            if i.name == name:
                return i
        raise KeyError(name)

    def example_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right names, shapes and dtypes (all modalities present): the measurement core's
        random feed, so the device agent times the same numbers when a bundle has no samples."""
        return random_feed([i.model_dump() for i in self.inputs], batch, seed, int(self.preprocessing.get("vocab_size", 2)))

    def check_feed(self, feed: dict) -> None:
        """Raise a clear error if a feed's names, shapes, batch sizes or dtypes do not match this spec, or a
        float input holds NaN/Inf (a model would return garbage logits for it, silently). Every runner calls this."""
        expected = ", ".join(f"{i.name}{_fmt(i.shape)}:{i.dtype}" for i in self.inputs)
        if not isinstance(feed, Mapping):
            raise EdgekitError(f"the inputs are a {type(feed).__name__}, not a mapping of input name to array", f"pass a dict: the model expects {expected}")
        names = set(feed)
        want = set(self.input_names)
        if names != want:
            missing, extra = sorted(want - names), sorted(names - want)
            raise EdgekitError(
                f"input names do not match the model: missing {missing}, unexpected {extra}",
                f"the model expects {expected}",
            )
        batch = {}
        for i in self.inputs:
            arr = feed[i.name]
            if not isinstance(arr, np.ndarray):
                raise EdgekitError(f"input '{i.name}' is a {type(arr).__name__}, not a numpy array",
                                   f"convert it, e.g. np.asarray(x, dtype='{i.dtype}') (a torch tensor: t.numpy())")
            shape = list(arr.shape)
            ok = len(shape) == len(i.shape) and all(d is None or d == s for d, s in zip(i.shape, shape))
            if not ok:
                raise EdgekitError(f"input '{i.name}' has shape {shape}, expected {_fmt(i.shape)}", f"the model expects {expected}")
            if str(arr.dtype) != i.dtype:
                raise EdgekitError(f"input '{i.name}' has dtype {arr.dtype}, expected {i.dtype}", f"cast it with .astype('{i.dtype}')")
            batch.update({i.name: s for d, s in zip(i.shape[:1], shape) if d is None})
        if len(set(batch.values())) > 1:
            raise EdgekitError("inputs have different batch sizes: " + ", ".join(f"{n} {b}" for n, b in batch.items()),
                               "every input of one call must hold the same samples (same first dimension)")
        for i in self.inputs:
            arr = feed[i.name]
            if i.dtype.startswith("float") and not np.isfinite(arr).all():
                n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
                rows = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1)) if arr.ndim else []
                where = f" in sample(s) {', '.join(map(str, rows[:5]))}{' ...' if len(rows) > 5 else ''}" if len(rows) else ""
                raise EdgekitError(f"input '{i.name}' contains {n_nan} NaN and {n_inf} Inf value(s){where}",
                                   "clean or impute the input before inference (e.g. np.nan_to_num, or drop those samples)")


def spec_from(data, origin: str) -> ModelSpec:
    """A ModelSpec from parsed JSON (a dict, or a JSON string such as an ONNX file's metadata), or a one-line
    EdgekitError naming `origin` (the file) and the first invalid field."""
    from pydantic import ValidationError

    if isinstance(data, str):
        from edgekit.io import parse_json

        data = parse_json(data, f"the model spec in {origin}")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "the top level"
        msg = err["msg"].removeprefix("Value error, ")
        raise EdgekitError(f"{origin} has an invalid model spec at {where}: {msg}",
                           "the file is damaged or was not written by edgekit: re-export or restore it") from None


def _fmt(shape) -> str:
    return "[" + ",".join("B" if d is None else str(d) for d in shape) + "]"
