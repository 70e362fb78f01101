"""User errors vs. bugs: an EdgekitError is the user's to fix and is shown as one line plus a hint."""
from __future__ import annotations


class EdgekitError(Exception):
    """A problem with the user's input or environment; `hint` says how to fix it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


ISSUES_URL = "https://github.com/edgekit/edgekit/issues"


class InternalError(Exception):
    """A bug in edgekit, not the user's mistake: the CLI says so, asks for a report and exits 1 (NNCF's split of
    user-facing errors from internal ones)."""
