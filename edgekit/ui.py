"""Terminal output: one console, progress bars for anything that takes more than a second."""
from __future__ import annotations

import logging
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
log = logging.getLogger("edgekit")
__all__ = ["console", "escape", "log", "progress"]  # escape(text): user or library text printed as is, never read as
# Rich markup (a hint such as pip install 'edgekit[openvino]' would otherwise lose its "[openvino]")


@contextmanager
def progress(description: str, total: float | None = None):
    """Yields advance(n=1, **fields); shown only on a terminal-capable console, silent otherwise."""
    cols = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, console=console, transient=False, disable=not console.is_terminal) as p:
        task = p.add_task(description, total=total, info="")

        def advance(n: float = 1, info: str | None = None):
            p.update(task, advance=n, **({"info": info} if info is not None else {}))

        yield advance
