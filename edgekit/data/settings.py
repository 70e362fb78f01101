"""The schema of a recipe's `data:` section: one model per source `format` (avdigits, manifest, hf, python),
chosen by `format` (absent: avdigits, so `data: {dataset: avdigits, seed: 0}` stays valid). Every model forbids
unknown keys; preprocessing is declared per model input and recorded in the ModelSpec."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from edgekit.schema import OneOf, Strict

FORMATS = ("avdigits", "manifest", "hf", "python")




def _pair(v):
    return [v, v] if isinstance(v, int) and not isinstance(v, bool) else v


def _listed(v):
    return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v


# ---------------------------------------------------------------- per-input preprocessing

class ImagePreprocess(Strict):
    """Decode (PNG/JPEG), colour mode, bilinear resize, / scale, (x - mean) / std per channel, layout."""
    size: Optional[list[int]] = Field(None, min_length=2, max_length=2, description="[height, width]; default: the model input's")
    mode: Literal["RGB", "L"] = "RGB"
    mean: list[float] = Field(default_factory=lambda: [0.0], min_length=1, max_length=3)
    std: list[float] = Field(default_factory=lambda: [1.0], min_length=1, max_length=3)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = Field(255.0, gt=0, description="pixel values are divided by this first")

    _size = field_validator("size", mode="before")(lambda v: _pair(v))
    _mean = field_validator("mean", "std", mode="before")(lambda v: _listed(v))

    @field_validator("size", "std")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(x <= 0 for x in v):
            raise ValueError(f"must be positive, got {v}")
        return v


class AudioPreprocess(Strict):
    """Decode (WAV, any sample rate), resample, log-mel or MFCC over a fixed window, (x - mean) / std."""
    sample_rate: int = Field(8000, gt=0)
    features: Literal["log_mel", "mfcc"] = "log_mel"
    n_fft: int = Field(256, ge=8)
    hop: int = Field(128, ge=1)
    n_mels: int = Field(40, ge=1)
    frames: int = Field(64, ge=1)
    n_mfcc: int = Field(13, ge=1)
    mean: float = 0.0
    std: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _fits(self):
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        return self


class TextPreprocess(Strict):
    """A local Hugging Face tokenizer folder, or a word-level vocabulary; padded/truncated to max_length."""
    tokenizer: Optional[str] = Field(None, description="a local Hugging Face tokenizer folder (offline)")
    vocab: Optional[list[str]] = Field(None, min_length=2, description="word-level: words a-z, id = position")
    max_length: int = Field(32, ge=1)
    mask_input: str = Field("attention_mask", description="model input filled with the padding mask, when the model has it")
    lowercase: bool = True
    pad: int = Field(0, ge=0)
    unknown: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.tokenizer is None) == (self.vocab is None):
            raise ValueError("give exactly one of 'tokenizer' (a local Hugging Face folder) and 'vocab' (a word list)")
        if self.vocab is not None and max(self.pad, self.unknown) >= len(self.vocab):
            raise ValueError(f"pad/unknown ids must index the vocab ({len(self.vocab)} words)")
        return self


class ArrayPreprocess(Strict):
    """Pre-computed arrays (.npy files or array values), used as they are (cast to the model input's dtype)."""


KINDS = ("image", "audio", "text", "array")


class InputPreprocess(OneOf):
    """Exactly one of image / audio / text / array; `array:` alone means {}."""
    CHOICES = KINDS
    WHAT = "each input's preprocessing"
    image: Optional[ImagePreprocess] = None
    audio: Optional[AudioPreprocess] = None
    text: Optional[TextPreprocess] = None
    array: Optional[ArrayPreprocess] = None

    @property
    def kind(self) -> str:
        return self.choice


# ---------------------------------------------------------------- missing modalities, splits

class MaskColumn(Strict):
    input: str = "modality_mask"
    column: int = Field(ge=0)


class MissingModality(Strict):
    """How a modality is absent for this model: its inputs are zeros (an all-zero attention_mask for text) and,
    with `mask`, a column of a mask input is 0."""
    inputs: list[str] = Field(min_length=1)
    mask: Optional[MaskColumn] = None


class SplitSettings(Strict):
    """Fractions carved from one set, stratified by class (used when the source has no splits of its own)."""
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_train(self):
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must leave something to train on (got {self.val} + {self.test})")
        return self


# ---------------------------------------------------------------- sources

class _DataBase(Strict):
    seed: int = 0
    missing: dict[str, Union[Literal["never"], MissingModality]] = Field(default_factory=dict,
                                                                         description="modality -> how it is absent, or 'never'")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, v):
        """Unknown keys named with the keys this format allows (the generic message would list another format's)."""
        if isinstance(v, dict):
            allowed = sorted((f.alias or n for n, f in cls.model_fields.items()), key=lambda k: k != "format")
            bad = [k for k in v if k not in allowed]
            if bad:
                key = f"'{bad[0]}'" if str(bad[0]).isprintable() else repr(str(bad[0]))
                fmt = v.get("format", "avdigits")
                raise ValueError(f"unknown key {key} for format {fmt if isinstance(fmt, str) and fmt.isprintable() else '?'}; "
                                 f"allowed keys: {', '.join(allowed)}")
        return v


class _Preprocessed(_DataBase):
    classes: Optional[list[str]] = Field(None, min_length=1, description="the class list in order; default: sorted train labels")
    preprocess: dict[str, InputPreprocess] = Field(default_factory=dict, description="model input -> its preprocessing")
    split: SplitSettings = Field(default_factory=SplitSettings)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, v):
        if v is not None and len(set(v)) != len(v):
            raise ValueError("class names must be distinct")
        return v


class AvdigitsData(_DataBase):
    """The built-in dataset (edgekit.data.avdigits)."""
    format: Literal["avdigits"] = "avdigits"
    dataset: Literal["avdigits"] = "avdigits"
    fsdd: Optional[str] = Field(None, description="FSDD recordings folder ($EDGEKIT_FSDD if unset)")


class _Table(_Preprocessed):
    path: str = Field(min_length=1)
    columns: dict[str, str] = Field(min_length=1, description="model input -> column")
    label: str = Field("label", min_length=1, description="column holding the class (a string or int)")
    split_column: Optional[str] = Field(None, description="column with values train / val / test")


class ManifestData(_Table):
    """JSONL or CSV, one row per sample; paths inside resolve against the manifest's folder."""
    format: Literal["manifest"]


class HfData(_Table):
    """A Hugging Face `datasets` folder (save_to_disk) or parquet file(s)/folder, read offline."""
    format: Literal["hf"]


class PythonData(_Preprocessed):
    """`loader: "package.module:function"` returning {"train": it, "val": it, "test": it} (val/test optional) or one
    iterable, each item (inputs: dict, label); called as loader(**options)."""
    format: Literal["python"]
    loader: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    options: dict = Field(default_factory=dict, description="keyword arguments of the loader")


def _format_tag(v):
    if isinstance(v, BaseModel):
        return getattr(v, "format", None) and v.format.capitalize()
    if not isinstance(v, dict):
        return "Avdigits"  # reported by that model as "not a mapping"
    fmt = v.get("format", "avdigits")
    return fmt.capitalize() if isinstance(fmt, str) and fmt in FORMATS else None


# Union members are tagged with capitalised names: recipe error messages drop such tags from the key path.
# ManifestData comes first so that key look-ups along an error's path find the fullest model.
DataSettings = Annotated[
    Union[Annotated[ManifestData, Tag("Manifest")], Annotated[HfData, Tag("Hf")], Annotated[PythonData, Tag("Python")],
          Annotated[AvdigitsData, Tag("Avdigits")]],
    Discriminator(_format_tag, custom_error_type="data_format",
                  custom_error_message=f"'format' must be one of {', '.join(FORMATS)} (default avdigits)"),
]
