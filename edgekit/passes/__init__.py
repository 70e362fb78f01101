"""Compression passes: nn.Module in, nn.Module out, each records what it did.

The registry below is the only list of passes: recipe validation, the compress stage and checkpoint loading
iterate over it, so a new pass is one module plus one line here. A pass module declares
  Settings                            its recipe settings, a base.PassSettings model (validating a recipe
                                      never imports torch-pruning or NNCF: those load inside functions)
  run(model, settings, ctx)           -> (compressed copy, record of what it did); ctx is a base.PassContext
  restore(model, cfg, spec)           -> the model rebuilt from a checkpoint's config.json, before its weights
                                      load (the model itself when this pass left nothing to rebuild)
  summary(record)                     -> the line printed after it runs ('' for none)
  ON_QUANTIZED (optional)             what it becomes on an INT8 model (distill: "QAT"); passes without it
                                      refuse to follow quantize
"""
from __future__ import annotations

import importlib
from types import ModuleType

# name -> module, in the order recipes list them and checkpoints replay them
REGISTRY = {
    "prune": "edgekit.passes.prune",
    "distill": "edgekit.passes.distill",
    "quantize": "edgekit.passes.quantize",
}


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> ModuleType:
    """The pass module, imported on first use."""
    return importlib.import_module(REGISTRY[name])


def refused_after_quantize_hint() -> str:
    """'put prune and quantize before any quantize (distill may follow as QAT)', from the registry."""
    refuse = [n for n in names() if getattr(get(n), "ON_QUANTIZED", None) is None]
    follow = [f"{n} may follow as {get(n).ON_QUANTIZED}" for n in names() if n not in refuse]
    listed = " and ".join(filter(None, [", ".join(refuse[:-1]), refuse[-1]]))
    return f"put {listed} before any quantize" + (f" ({', '.join(follow)})" if follow else "")
