"""Decoding and per-input preprocessing of a whole column: files (PNG/JPEG via Pillow, WAV, .npy) or values
(strings, arrays) -> model-ready arrays. The array steps themselves are edgekit/agent/preprocess.py, the one
definition a deploy bundle also carries, so the device repeats exactly what training and evaluation saw. What
the numpy-only device cannot do lives here, host-side: decoding files and Hugging Face tokenization.

`recorded(...)` turns a recipe's declaration into the JSON dict stored per input in the ModelSpec."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgekit.agent import preprocess as steps
from edgekit.errors import EdgekitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
AUDIO_SUFFIXES = (".wav",)
ARRAY_SUFFIXES = (".npy",)


def infer_kind(value) -> str | None:
    """The preprocessing a value calls for when the recipe declares none: by file suffix, else array for
    numbers; None for a string that is no known file (text needs a declared tokenizer or vocab)."""
    if isinstance(value, (str, Path)):
        suffix = Path(str(value)).suffix.lower()
        return "image" if suffix in IMAGE_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES else "array" if suffix in ARRAY_SUFFIXES else None
    if isinstance(value, dict) and ("bytes" in value or "path" in value or "array" in value):
        name = str(value.get("path") or "")
        return "audio" if "array" in value or name.lower().endswith(AUDIO_SUFFIXES) else "image"
    return "image" if type(value).__module__.startswith("PIL.") else "array"


def recorded(name: str, declared, spec=None, base_dir: Path | None = None, tokenizer=None) -> dict:
    """The per-input preprocessing as stored in the ModelSpec: defaults filled, sizes taken from the model input
    when not given, a tokenizer folder as an absolute path with its pad id. `declared`: InputPreprocess."""
    kind, s = declared.kind, declared.settings.model_dump()
    inp = _spec_input(spec, name)
    if kind == "image":
        if s["size"] is None and inp is not None and len(inp.shape) == 4:
            s["size"] = list(inp.shape[2:4] if s["layout"] == "NCHW" else inp.shape[1:3])
    elif kind == "text":
        if spec is not None and s["mask_input"] not in spec.input_names:
            s["mask_input"] = None  # the model takes no mask: none is made
        if s["tokenizer"] is not None:
            s["tokenizer"] = str(tokenizer_path(s["tokenizer"], base_dir, name))
            tok = tokenizer or load_tokenizer(s["tokenizer"], name)
            s.update(pad=int(tok.pad_token_id or 0), vocab_size=int(len(tok)))
            for k in ("vocab", "lowercase", "unknown"):
                s.pop(k)
        else:
            s.pop("tokenizer")
            s["vocab_size"] = len(s["vocab"])
    return {kind: s}


def _spec_input(spec, name):
    if spec is None:
        return None
    try:
        return spec.input(name)
    except KeyError:
        return None


# ---------------------------------------------------------------- tokenizers

def tokenizer_path(path: str, base_dir: Path | None, name: str) -> Path:
    p = Path(path).expanduser()
    p = p if p.is_absolute() else (base_dir or Path.cwd()) / p
    if not p.is_dir():
        raise EdgekitError(f"tokenizer folder {p} (preprocess.{name}.text.tokenizer) does not exist",
                           "give a local Hugging Face tokenizer folder (tokenizer.save_pretrained(DIR)); relative paths resolve against the recipe's folder")
    return p.resolve()


_TOKENIZERS: dict[str, object] = {}


def load_tokenizer(path: str, name: str = "text"):
    if path not in _TOKENIZERS:
        from edgekit._optional import require

        transformers = require("transformers", f"the Hugging Face tokenizer of input '{name}'")
        try:
            _TOKENIZERS[path] = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise EdgekitError(f"tokenizer folder {path} (input '{name}') cannot be loaded: {' '.join(str(e).split())[:200]}",
                               "save a tokenizer there with tokenizer.save_pretrained(DIR) (tokenizer.json / vocab.txt + tokenizer_config.json)") from e
    return _TOKENIZERS[path]


def hf_tokenize(texts: list[str], pre: dict, tokenizer=None) -> tuple[np.ndarray, np.ndarray, int]:
    """input_ids, attention_mask [N, max_length] with the recorded Hugging Face tokenizer (`pre`: an input's
    recorded text step), and how many texts were truncated. Host-side only: the numpy-only device runtime asks
    its caller for these arrays (edgekit/agent/preprocess.py, CallerMustPrepare)."""
    tokenizer = tokenizer or load_tokenizer(pre["tokenizer"])
    n = pre["max_length"]
    enc = tokenizer(list(texts), max_length=n, padding="max_length", truncation=True, return_attention_mask=True)
    full = tokenizer(list(texts), truncation=False, return_attention_mask=False)["input_ids"]
    truncated = sum(len(ids) > n for ids in full)
    return np.asarray(enc["input_ids"], np.int64), np.asarray(enc["attention_mask"], np.int64), truncated


# ---------------------------------------------------------------- decoding one value

# Pillow modes that hold one channel of more than 8 bits: read as they are (uint16 / int32 / float32), never
# squeezed through 8-bit RGB, so a 16-bit PNG keeps all 65536 levels (divide by them with `scale: 65535`).
GREY_MODES = ("1", "L", "LA", "La")


def decode_image(value, where: str, mode: str = "RGB") -> np.ndarray:
    """PNG/JPEG file, bytes, {bytes, path} (Hugging Face Image), a PIL image or an array -> pixels in the declared
    colour `mode`: [H, W] for 'L', [H, W, 3] for 'RGB', at the file's own precision (a 16-bit PNG keeps its
    0..65535 levels). Colour -> grey is steps.LUMA, the arithmetic the device runtime applies to pixels it is
    given. An array is returned as given (image_array converts it)."""
    if isinstance(value, np.ndarray) or isinstance(value, list):
        return np.asarray(value)
    from PIL import Image, UnidentifiedImageError

    src = value
    if isinstance(value, dict):
        src = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        src = io.BytesIO(value)
    try:
        if type(src).__module__.startswith("PIL."):
            px = _native_pixels(src)
        else:
            with Image.open(src) as im:
                px = _native_pixels(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise EdgekitError(f"{where}: cannot decode image: {' '.join(str(e).split())[:160]}",
                           "replace or remove that file; images must be PNG or JPEG") from e
    if mode == "L" and px.ndim == 3:
        return steps.to_grey(px)
    if mode == "RGB" and px.ndim == 2:
        return np.repeat(px[:, :, None], 3, axis=-1)
    return px


# Pillow modes holding one channel of more than 8 bits: read as they are, never squeezed through 8-bit RGB
# (which clips a 16-bit PNG at 255).
WIDE_GREY_DTYPES = {"I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16,
                    "I": np.int32, "F": np.float32}


def _native_pixels(im) -> np.ndarray:
    """[H, W] for grey images (8-bit, 16-bit, int32, float), [H, W, 3] uint8 for everything else (alpha dropped)."""
    if im.mode in WIDE_GREY_DTYPES:
        return np.asarray(im).astype(WIDE_GREY_DTYPES[im.mode])
    if im.mode in GREY_MODES:
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))


def decode_audio(value, where: str) -> tuple[np.ndarray, int]:
    """WAV file or bytes, {array, sampling_rate} / {bytes, path} (Hugging Face Audio), or (wave, rate) ->
    (mono float32 wave, sample rate)."""
    from edgekit.data.audio import read_wav

    if isinstance(value, tuple) and len(value) == 2:
        return np.asarray(value[0], np.float32).reshape(-1), int(value[1])
    if isinstance(value, dict) and value.get("array") is not None:
        return np.asarray(value["array"], np.float32).reshape(-1), int(value["sampling_rate"])
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    try:
        if isinstance(value, (bytes, bytearray)):
            return read_wav(io.BytesIO(value))
        return read_wav(value)
    except EdgekitError as e:
        raise EdgekitError(f"{where}: {e.message}", e.hint) from e


def decode_array(value, where: str) -> np.ndarray:
    if isinstance(value, (str, Path)):
        try:
            return np.load(value, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EdgekitError(f"{where}: cannot read array: {' '.join(str(e).split())[:160]}", "save it with numpy.save (no pickled objects)") from e
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise EdgekitError(f"{where}: not an array: {e}", "give numbers or nested lists of one shape") from e


# ---------------------------------------------------------------- a whole column

def encode_column(name: str, pre: dict, values: list, where) -> tuple[dict[str, np.ndarray], dict]:
    """All values of one input -> {input name: [N, ...]} (text also fills its mask input) and info
    ({"truncated": n}). `pre`: the recorded dict; `where(i)`: 'file row n' of value i, for messages."""
    kind = next(iter(pre))
    s = pre[kind]
    if kind == "text":
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise EdgekitError(f"{where(bad)}: input '{name}' expects text, got {type(values[bad]).__name__} {str(values[bad])[:40]!r}",
                               "give a string per row, or declare preprocess for that input as array")
        if s.get("tokenizer"):
            ids, mask, truncated = hf_tokenize(values, s, load_tokenizer(s["tokenizer"], name))
        else:
            index = {w: i for i, w in enumerate(s["vocab"])}
            rows = [steps.word_ids(v, s, index) for v in values]
            ids = np.stack([r[0] for r in rows]) if rows else np.zeros((0, s["max_length"]), np.int64)
            truncated = sum(r[1] for r in rows)
            mask = (ids != s.get("pad", 0)).astype(np.int64)
        out = {name: ids}
        if s.get("mask_input"):
            out[s["mask_input"]] = mask
        return out, {"truncated": int(truncated)}
    arrays = []
    for i, v in enumerate(values):
        if kind == "image":
            arr = steps.image_array(decode_image(v, where(i), s.get("mode", "RGB")), s)
        elif kind == "audio":
            wave, rate = decode_audio(v, where(i))
            arr = steps.audio_features(wave, rate, s)
        else:
            arr = decode_array(v, where(i))
        if arrays and arr.shape != arrays[0].shape:
            hint = "set preprocess.{0}.image.size so every image is resized alike".format(name) if kind == "image" else "give every row the same shape"
            raise EdgekitError(f"{where(i)}: input '{name}' has shape {list(arr.shape)} after preprocessing, unlike {list(arrays[0].shape)} of {where(0)}", hint)
        arrays.append(arr)
    if not arrays:
        return {name: np.zeros((0,), np.float32)}, {}
    return {name: np.stack(arrays)}, {}
