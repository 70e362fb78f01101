"""Datasets: anything iterable of (inputs: dict[str, array], label). `ArrayDataset` is the in-memory one."""
from __future__ import annotations

from edgekit.data.dataset import ArrayDataset

__all__ = ["ArrayDataset", "resolve"]


def resolve(settings, spec=None, base_dir=None, origin: str = "", cache_dir=None):
    """A recipe's `data:` section -> `Splits` (train/val/test ArrayDatasets for `spec`, class names, the per-input
    preprocessing to record): the one resolver every stage uses. See edgekit/data/resolver.py."""
    from edgekit.data.resolver import resolve as resolve_data

    return resolve_data(settings, spec, base_dir=base_dir, origin=origin, cache_dir=cache_dir)
