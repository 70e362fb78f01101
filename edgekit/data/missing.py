"""How a modality is absent for one model (issue 15 item 4): the single place that knows it.

Models represent a missing sensor differently: edgekit's reference models take zeros plus a 0 bit in a
`modality_mask [B, M]` input; a Hugging Face text encoder takes all-zero `input_ids` + `attention_mask`; some models
have no way to go without a modality at all. A recipe says which, per modality (`data.missing`):

    image: {inputs: [pixels], mask: {input: modality_mask, column: 0}}   # zeros + a mask column
    text:  {inputs: [input_ids, attention_mask]}                         # zeros in these inputs
    audio: never                                                         # never missing

A `MissingPolicy` built from that block (or derived from a ModelSpec) is recorded in the ModelSpec, so calibration
(a fraction of samples with a modality missing), distillation (modality dropout), evaluation (the missing-modality
table) and the report all make a modality absent the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.spec import MASK_INPUT, ModelSpec

NEVER = "never"


@dataclass(frozen=True)
class Absence:
    """What "modality missing" means for one modality: zeros in `inputs`, and 0 in `mask_input[:, mask_column]`."""

    inputs: tuple[str, ...]
    mask_input: str | None = None
    mask_column: int | None = None

    def to_dict(self) -> dict:
        out: dict = {"inputs": list(self.inputs)}
        if self.mask_input is not None:
            out["mask"] = {"input": self.mask_input, "column": self.mask_column}
        return out


@dataclass(frozen=True)
class MissingPolicy:
    """Per modality (in a fixed order: the mask's column order for reference models) an `Absence`, or None when the
    modality is never missing for this model."""

    modalities: dict[str, Absence | None] = field(default_factory=dict)

    # ------------------------------------------------------------ construction

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "MissingPolicy":
        """The policy recorded in the spec (`spec.missing`), else the one its inputs imply: a modality whose inputs are
        marked optional is zeros (+ its `modality_mask` column when the model has that input), others are never missing."""
        if spec.missing:
            return cls.from_settings(spec.missing, spec, where="the model spec's 'missing'")
        names = spec.input_names
        order = list(spec.modalities) + [
            i.modality for i in spec.inputs if i.modality and i.modality not in spec.modalities
        ]
        out: dict[str, Absence | None] = {}
        for m in dict.fromkeys(order):
            ins = [i for i in spec.inputs if i.modality == m]
            if not ins or not any(i.optional for i in ins):
                out[m] = None
                continue
            has_mask = MASK_INPUT in names and m in spec.modalities
            out[m] = Absence(
                tuple(i.name for i in ins),
                MASK_INPUT if has_mask else None,
                spec.modalities.index(m) if has_mask else None,
            )
        return cls(out)

    @classmethod
    def from_settings(cls, block: dict | None, spec: ModelSpec, where: str = "data.missing") -> "MissingPolicy":
        """The recipe's `data.missing` block, checked against the model's inputs; modalities it does not mention keep
        what the spec implies."""
        if not block:
            return cls.from_spec(spec.model_copy(update={"missing": {}}))
        if not isinstance(block, dict):
            raise EdgekitError(
                f"{where} is a {type(block).__name__}, not a mapping of modality to how it is absent",
                "e.g. missing: {image: {inputs: [pixels]}, text: {inputs: [input_ids, attention_mask]}, audio: never}",
            )
        base = cls.from_spec(spec.model_copy(update={"missing": {}})).modalities
        out = dict(base)
        for modality, how in block.items():
            out[str(modality)] = None if how == NEVER else _absence(str(modality), how, spec, where)
        columns: dict = {}
        for m, a in out.items():  # a mask column tells one modality's presence: two sharing one would be ambiguous
            if a and a.mask_input:
                twin = columns.setdefault((a.mask_input, a.mask_column), m)
                if twin != m:
                    raise EdgekitError(
                        f"{where}: '{twin}' and '{m}' use the same mask column {a.mask_input}[:, {a.mask_column}]",
                        "give each modality its own column",
                    )
        return cls(out)

    @classmethod
    def for_dataset(cls, data) -> "MissingPolicy":
        """What a dataset carries (`data.missing`), else the reference convention: an input per modality, named like
        it, plus `modality_mask`. Without a mask input nothing is assumed: every modality is never missing."""
        own = getattr(data, "missing", None)
        if own is not None:
            return own
        inputs = data.inputs
        if MASK_INPUT not in inputs:
            return cls({m: None for m in data.modalities})
        return cls({m: Absence((m,), MASK_INPUT, j) if m in inputs else None for j, m in enumerate(data.modalities)})

    def to_dict(self) -> dict:
        """The recipe's shape (stored in ModelSpec.missing and results)."""
        return {m: (a.to_dict() if a else NEVER) for m, a in self.modalities.items()}

    def describe(self) -> dict[str, str]:
        """One phrase per modality, for `edgekit data check` and the report."""
        out = {}
        for m, a in self.modalities.items():
            if a is None:
                out[m] = "never missing"
            else:
                out[m] = (
                    "zeros in "
                    + ", ".join(a.inputs)
                    + (f" + {a.mask_input}[:, {a.mask_column}] = 0" if a.mask_input else "")
                )
        return out

    # ------------------------------------------------------------ use

    @property
    def droppable(self) -> list[str]:
        return [m for m, a in self.modalities.items() if a is not None]

    def absence(self, modality: str) -> Absence:
        if modality not in self.modalities:
            raise EdgekitError(
                f"unknown modality '{modality}'", f"this model's modalities: {', '.join(self.modalities) or '(none)'}"
            )
        a = self.modalities[modality]
        if a is None:
            raise EdgekitError(
                f"the '{modality}' modality is never missing for this model",
                f"modalities that can be missing: {', '.join(self.droppable) or '(none)'}; "
                "declare how it is absent in the recipe's data.missing",
            )
        return a

    def drop(self, data, modality: str, rows=None):
        """`data` (an ArrayDataset, or a feed {name: numpy array | torch tensor}) with `modality` missing in `rows`
        (indices or a boolean mask over samples; default all). Returns a new object; `data` is not changed."""
        a = self.absence(modality)
        if dataclasses.is_dataclass(data):  # an ArrayDataset (not imported: edgekit.data imports this module)
            return dataclasses.replace(data, inputs=self.drop(data.inputs, modality, rows), missing=self)
        lacking = [n for n in (*a.inputs, *([a.mask_input] if a.mask_input else [])) if n not in data]
        if lacking:
            raise EdgekitError(
                f"the data has no input {lacking}, which the '{modality}' modality's absence uses",
                f"its inputs are {', '.join(data)}; fix data.missing in the recipe",
            )
        out = dict(data)
        sel = slice(None) if rows is None else rows
        for name in a.inputs:
            out[name] = _zeroed(out[name], sel, None)
        if a.mask_input:
            out[a.mask_input] = _zeroed(out[a.mask_input], sel, a.mask_column)
        return out

    def dropout(self, feed: dict, p: float, gen) -> dict:
        """Training-time modality dropout on a torch batch: each droppable modality of each sample is missing with
        probability p; a sample keeps at least one modality. With a mask the input is multiplied by the new mask
        column (a sample already missing a modality stays so), which is what the reference models always did."""
        import torch

        mods = self.droppable
        if p <= 0 or not mods:
            return feed
        batch = next(iter(feed.values())).shape[0]
        drop = torch.rand((batch, len(mods)), generator=gen) < p
        if len(mods) == len(self.modalities):  # nothing is never-missing: keep at least one modality per sample
            drop[drop.all(1)] = False
        out = dict(feed)
        cloned = set()
        for j, m in enumerate(mods):
            a = self.modalities[m]
            keep = ~drop[:, j]
            if a.mask_input:
                if a.mask_input not in cloned:
                    out[a.mask_input] = out[a.mask_input].clone()
                    cloned.add(a.mask_input)
                out[a.mask_input][drop[:, j], a.mask_column] = 0
                keep = out[a.mask_input][:, a.mask_column]
            for name in a.inputs:
                x = out[name]
                out[name] = x * keep.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return out

    def present(self, data) -> dict[str, np.ndarray]:
        """Per droppable modality, which samples have it: its mask column, or any non-zero value in its inputs."""
        inputs = getattr(data, "inputs", data)
        out = {}
        for m in self.droppable:
            a = self.modalities[m]
            if a.mask_input and a.mask_input in inputs:
                out[m] = np.asarray(inputs[a.mask_input])[:, a.mask_column] != 0
            elif all(n in inputs for n in a.inputs):
                out[m] = np.any([np.asarray(inputs[n]).reshape(len(inputs[n]), -1).any(1) for n in a.inputs], axis=0)
        return out

    def only(self, data, modality: str):
        """`data` with every droppable modality but `modality` missing (single-modality baselines)."""
        self.absence(modality)
        for m in self.droppable:
            if m != modality:
                data = self.drop(data, m)
        return data


def record(spec: ModelSpec, block: dict | None) -> ModelSpec:
    """The spec with the recipe's `data.missing` checked and written into it (so every later stage, the deployed
    bundle and the report read the same policy); an input is `optional` exactly when its modality can be missing."""
    policy = MissingPolicy.from_settings(block, spec)
    droppable = {n for m in policy.droppable for n in policy.modalities[m].inputs}
    known = {n for a in policy.modalities.values() if a for n in a.inputs} | {
        i.name for i in spec.inputs if i.modality in policy.modalities
    }
    inputs = [i.model_copy(update={"optional": i.name in droppable}) if i.name in known else i for i in spec.inputs]
    return spec.model_copy(update={"missing": policy.to_dict(), "inputs": inputs})


def _absence(modality: str, how, spec: ModelSpec, where: str) -> Absence:
    at = f"{where}.{modality}"
    if hasattr(how, "model_dump"):  # the recipe's parsed form (edgekit.data.settings.MissingModality)
        how = how.model_dump(exclude_none=True)
    example = "e.g. {inputs: [pixels], mask: {input: modality_mask, column: 0}}, {inputs: [input_ids, attention_mask]} or never"
    if not isinstance(how, dict) or set(how) - {"inputs", "mask"} or "inputs" not in how:
        raise EdgekitError(
            f"{at} must be 'never' or a mapping with 'inputs' (and optionally 'mask'), got {how!r}", example
        )
    names = spec.input_names
    inputs = how["inputs"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(n, str) for n in inputs):
        raise EdgekitError(
            f"{at}.inputs must be a non-empty list of input names, got {inputs!r}",
            f"the model's inputs: {', '.join(names)}",
        )
    unknown = [n for n in inputs if n not in names]
    if unknown:
        raise EdgekitError(
            f"{at}.inputs names {unknown}, which the model does not take", f"the model's inputs: {', '.join(names)}"
        )
    mask = how.get("mask")
    if mask is None:
        return Absence(tuple(inputs))
    if not isinstance(mask, dict) or set(mask) != {"input", "column"}:
        raise EdgekitError(f"{at}.mask must be {{input: NAME, column: N}}, got {mask!r}", example)
    name, col = mask["input"], mask["column"]
    if name not in names:
        raise EdgekitError(
            f"{at}.mask.input '{name}' is not an input of the model", f"the model's inputs: {', '.join(names)}"
        )
    if name in inputs:
        raise EdgekitError(f"{at}: '{name}' is both zeroed and the mask", "list the mask input only under mask")
    width = spec.input(name).shape[-1] if spec.input(name).shape else None
    if not isinstance(col, int) or isinstance(col, bool) or col < 0 or (width is not None and col >= width):
        raise EdgekitError(
            f"{at}.mask.column is {col!r}, not a column of '{name}' (width {width})", f"use 0 .. {(width or 1) - 1}"
        )
    return Absence(tuple(inputs), name, col)


def _zeroed(x, rows, column):
    """A copy of x with x[rows] (or x[rows, column]) set to 0; numpy or torch."""
    y = x.clone() if hasattr(x, "clone") else np.array(x, copy=True)
    y[rows if column is None else (rows, column)] = 0
    return y


def policy_for(spec: ModelSpec, data=None) -> MissingPolicy:
    """The policy a stage uses: what the resolved data carries (made for this model), else what the spec records."""
    own = getattr(data, "missing", None)
    return own if own is not None else MissingPolicy.from_spec(spec)
