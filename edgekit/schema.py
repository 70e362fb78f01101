"""The two shapes every declarative schema here shares (recipes, data sections, pass settings)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, model_validator


class Strict(BaseModel):
    """An unknown key is an error naming the allowed ones, never silently ignored."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OneOf(Strict):
    """A mapping with exactly one of CHOICES as its key, e.g. {prune: {ratio: 0.3}}; a bare `prune` (or a key with
    no value) means that choice with its defaults. Subclasses declare one optional field per choice."""
    CHOICES: ClassVar[tuple[str, ...]] = ()
    WHAT: ClassVar[str] = "each entry"  # for the message: "<WHAT> is one of ..."

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, v):
        if isinstance(v, str) and v in cls.CHOICES:
            return {v: {}}
        if isinstance(v, dict):
            return {k: ({} if s is None else s) for k, s in v.items()}
        return v

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in self.CHOICES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"{self.WHAT} is one of {', '.join(self.CHOICES)} (got {given or 'none'})")
        return self

    @property
    def choice(self) -> str:
        return next(k for k in self.CHOICES if getattr(self, k) is not None)

    @property
    def settings(self) -> BaseModel:
        return getattr(self, self.choice)
