"""What every pass shares: the base of its settings and the context it runs in. Kept apart from the registry
(__init__.py), which loads the pass modules, so no pass module imports the module that loads it."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from edgekit.schema import Strict


class PassSettings(Strict):
    """Base of every pass's settings: an unknown key is an error naming the allowed ones, never silently ignored."""


@contextmanager
def no_progress(label: str, total: float | None = None):
    yield lambda n=1, info=None: None


@dataclass
class PassContext:
    """What a pass may use besides the model. The test split is not here: it never drives a decision.

    `config` (the factory's argument) and `pruning_plan` (stages replayed on the built model) say how the model
    is rebuilt from a checkpoint; a pass that changes the architecture updates them."""
    spec: Any
    teacher: Any  # the original model
    train: Any
    val: Any
    calibration: Any
    config: dict
    pruning_plan: list
    progress: Callable = no_progress  # progress(label, total=None) -> context manager yielding advance(n, info=...)
