"""Safe checkpoints: `model.safetensors` (weights) + `config.json` (how to rebuild the model, its ModelSpec
and where it came from). Nothing is ever unpickled: a .pt/.pth file is read with weights_only=True."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgekit.errors import EdgekitError, input_errors, short_reason
from edgekit.io import atomic_path, atomic_write_json, file_sha256, load_json
from edgekit.limits import check_model_config, check_params
from edgekit.spec import ModelSpec, spec_from

FORMAT = "edgekit-checkpoint/1"
DEFAULT_FACTORY = "edgekit.models:build_model"
_PICKLE_MAGIC = (tuple(bytes([0x80, p]) for p in range(2, 6)), b"PK\x03\x04")  # raw pickle protocol 2-5, or torch.save's zip


def _is_pickle(head: bytes, size: int) -> bool:
    """A pickle or torch.save zip, not safetensors. A safetensors file starts with its header's length (8 bytes, little
    endian) and then the header's '{': that length's first byte can be 0x80 too (about 1 file in 256), so it is checked first."""
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return False
    return head[:2] in _PICKLE_MAGIC[0] or head[:4] == _PICKLE_MAGIC[1]


FACTORY_CALL = "factory(config: dict) -> torch.nn.Module"  # how every model factory is called (README "Trust")


def resolve_factory(ref: str, origin: str = ""):
    """'pkg.module:function' -> a callable building the model, only when the reference is trusted (edgekit's own, or
    trusted by the user: README "Trust"); `origin` is the file it was read from. A user's factory comes wrapped so
    that what it raises is reported as that code failing, with its file and line."""
    from edgekit._optional import call_user_code, granted_origin, import_reference, is_own

    origin = origin or granted_origin(ref)
    factory = import_reference(ref, what="model factory", origin=origin)
    if is_own(ref):
        return factory

    def build(config):
        model = call_user_code(factory, (config,), ref=ref, what="model factory", origin=origin, called_as=FACTORY_CALL)
        if not isinstance(model, nn.Module):
            raise EdgekitError(f"model factory '{ref}'{f' (from {origin})' if origin else ''} returned a {type(model).__name__}, not a torch.nn.Module",
                               f"edgekit calls a model factory as {FACTORY_CALL}")
        return model

    return build


def save(model: nn.Module, spec: ModelSpec, out_dir, config: dict, factory: str = DEFAULT_FACTORY, **meta) -> Path:
    """Writes weights then config.json (config last: its presence marks a complete checkpoint)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().contiguous().cpu()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses shared tensors (tied weights, a shared quantizer)
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        state[k] = t
    with atomic_path(out / "model.safetensors", suffix=".safetensors") as tmp:
        save_file(state, str(tmp))
    atomic_write_json(out / "config.json", {"format": FORMAT, "factory": factory, "model": config, "spec": spec.model_dump(),
                                            "weights_sha256": file_sha256(out / "model.safetensors"), **meta})
    return out


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    if not p.exists():
        raise EdgekitError(f"checkpoint {p} does not exist", "pass a folder with model.safetensors + config.json (from `edgekit train`)")
    if p.is_dir():
        weights = next((p / n for n in ("model.safetensors", "model.pt", "model.pth") if (p / n).exists()), p / "model.safetensors")
        return weights, p / "config.json"
    return p, p.parent / "config.json"


def input_files(path) -> list[Path]:
    """What loading the checkpoint at `path` reads (the folder, its weights, its config.json), whether or not they
    exist yet: the paths no output may overwrite (edgekit.guard)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".pt", ".pth"):
        return [p, p.parent / "config.json"]
    return [p, *(p / n for n in ("model.safetensors", "model.pt", "model.pth", "config.json"))]


def read_config(path) -> dict:
    _, cfg_path = _paths(path)
    if not cfg_path.exists():
        raise EdgekitError(f"checkpoint config {cfg_path} is missing", "a checkpoint is model.safetensors plus the config.json written beside it by `edgekit train`")
    cfg = load_json(cfg_path, "checkpoint config", max_bytes=16 << 20)  # bounded size and nesting, no duplicate keys
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "model" not in cfg or "spec" not in cfg:
        raise EdgekitError(f"{cfg_path} is not an edgekit checkpoint config (format {FORMAT})", "write checkpoints with `edgekit train` or edgekit.checkpoint.save")
    return cfg


def read_state(weights: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors (or weights-only .pt) file. A .safetensors file is checked against `sha256`, else
    against the weights_sha256 of the config.json beside it when there is one (files without a hash are accepted)."""
    weights = Path(weights)
    if not weights.exists():
        raise EdgekitError(f"checkpoint weights {weights} are missing", "copy model.safetensors next to config.json")
    try:
        with open(weights, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise EdgekitError(f"cannot read checkpoint weights {weights}: {e.strerror}", "check that it is a readable file") from e
    if weights.suffix in (".pt", ".pth"):
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses arbitrary pickles: that is the point
            raise EdgekitError(f"{weights} is not a plain tensor file ({type(e).__name__})", "edgekit loads only safetensors or weights-only state dicts; re-save with safetensors") from e
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise EdgekitError(f"{weights} holds a {type(state).__name__} that is not a state dict of tensors",
                               "save model.state_dict() (safetensors.torch.save_file(model.state_dict(), 'model.safetensors'))")
        return state
    if _is_pickle(head, weights.stat().st_size):
        raise EdgekitError(f"{weights} contains a pickle, not safetensors; edgekit never unpickles checkpoints", "convert it: safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise EdgekitError(f"checkpoint weights {weights} are corrupt or truncated ({e})", "re-copy or re-create the checkpoint") from e
    _check_hash(weights, sha256)  # after the format check, so a truncated file is called truncated
    return state


def _check_hash(weights: Path, sha256: str | None) -> None:
    """Bit-flipped or swapped weights with a valid header load fine and predict garbage: the hash recorded by save()
    catches them. No hash (an older checkpoint, a user's bare weights) is accepted."""
    if weights.suffix != ".safetensors":
        return
    if sha256 is None and weights.name == "model.safetensors" and (weights.parent / "config.json").is_file():
        try:
            sha256 = load_json(weights.parent / "config.json", "checkpoint config", max_bytes=16 << 20).get("weights_sha256")
        except (EdgekitError, AttributeError):  # a broken config.json is reported by whoever reads it
            sha256 = None
    if not isinstance(sha256, str) or not sha256:
        return
    if file_sha256(weights) != sha256.lower():
        raise EdgekitError(f"{weights}: weights do not match the hash in config.json: corrupt or altered",
                           "re-copy model.safetensors and config.json together from their source (if you changed the weights "
                           "on purpose, remove weights_sha256 from config.json)")


def load(path, trust_code: bool = False) -> tuple[nn.Module, ModelSpec, dict]:
    """(model in eval mode, its ModelSpec, the whole config.json) — never unpickles. A factory that is not edgekit's
    own runs only when trusted (README "Trust"); `trust_code=True` trusts it for this call."""
    from contextlib import nullcontext

    from edgekit._optional import trusted

    weights, cfg_path = _paths(path)
    cfg = read_config(path)
    sha = cfg.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise EdgekitError(f"{cfg_path}: weights_sha256 must be the weights' SHA-256 as 64 hex digits, not {str(sha)[:40]!r}",
                           "restore config.json from the original checkpoint (or remove weights_sha256 to load unverified weights on purpose)")
    state = read_state(weights, sha)
    try:
        spec = spec_from(cfg["spec"], str(cfg_path))  # shapes bounded before anything is allocated from them
    except ValueError as e:  # pydantic's ValidationError
        raise EdgekitError(f"{cfg_path} has an invalid model spec: {str(e).splitlines()[0][:200]}", "restore config.json from the original checkpoint") from e
    ref = cfg.get("factory", DEFAULT_FACTORY)
    with trusted() if trust_code else nullcontext():
        factory = resolve_factory(ref, origin=str(cfg_path))
    try:
        if ref == DEFAULT_FACTORY:
            _check_size(factory, cfg["model"], cfg_path)
        model = factory(cfg["model"])
    except EdgekitError:
        raise
    except input_errors() as e:  # only edgekit's own factory gets here (a user's reports its own failure): a config that is not one
        raise EdgekitError(f"the 'model' section of {cfg_path} cannot build a model: {short_reason(e)}",
                           "restore config.json from the original checkpoint") from e
    if not isinstance(model, nn.Module):  # edgekit's own factory given a config that is not a model's
        raise EdgekitError(f"model factory '{ref}' in {cfg_path} returned a {type(model).__name__}, not a torch.nn.Module",
                           "restore config.json from the original checkpoint")
    model = _restore_compression(model, cfg, spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        problems = _mismatch(model.state_dict(), state) or " ".join(str(e).split())[:300]
        raise EdgekitError(f"weights in {weights} do not match the model its config.json describes: {problems}",
                           "use the config.json saved with these weights (a config of another preset, fusion or variant does not fit)") from e
    _check_inputs(model, spec, cfg_path)
    return model.eval(), spec, cfg


def _check_inputs(model: nn.Module, spec: ModelSpec, cfg_path: Path) -> None:
    """The spec's inputs are what every stage feeds the model by name: they must be the arguments its forward() takes
    (a spec edited or copied from another model would fail only later, inside forward)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a forward without a signature (C++): nothing to check against
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown, missing = sorted(set(spec.input_names) - named), sorted(required - set(spec.input_names))
    if unknown or missing:
        raise EdgekitError(f"the spec in {cfg_path} does not fit the model's forward({', '.join(sorted(named))}): "
                           + "; ".join(x for x in (unknown and f"inputs {unknown} are not its arguments", missing and f"arguments {missing} are not in the spec's inputs") if x),
                           "restore config.json from the original checkpoint (its 'spec' names the model's inputs)")


def _check_size(factory, config, cfg_path: Path) -> None:
    """edgekit's own model config within edgekit.limits: every width bounded, then the model built on torch's meta
    device (no memory) to count its parameters, so a config of 10^12 channels is refused before anything is allocated."""
    check_model_config(config, str(cfg_path))
    with torch.device("meta"):
        n_params = sum(p.numel() for p in factory(config).parameters())
    check_params(n_params, str(cfg_path))


def _mismatch(expected: dict, state: dict) -> str:
    """'' if `state` fits `expected` by names and shapes, else a one-line summary with an example of each kind."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and hasattr(expected[k], "shape") and tuple(expected[k].shape) != tuple(state[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k}: {list(state[k].shape)} in the file, {list(expected[k].shape)} in the model)")
    return "; ".join(parts)


def _restore_compression(model: nn.Module, cfg: dict, spec: ModelSpec) -> nn.Module:
    """A compressed variant is its factory's model rebuilt by every pass in registry order, before the weights
    load: prune replays its saved plan (when the config could not express the pruned widths), quantize re-inserts
    its saved INT8 quantizers."""
    from edgekit import passes

    for name in passes.names():
        model = passes.get(name).restore(model, cfg, spec)
    return model
