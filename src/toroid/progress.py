"""The one progress helper: library code reports through it, the CLI turns it on.

Off by default, so the library never prints; `enable()` renders rich progress bars on
stderr.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_enabled = False


def enable(on: bool = True) -> None:
    """Turn rendering of progress bars on (the CLI does) or off."""
    global _enabled
    _enabled = on


def is_enabled() -> bool:
    return _enabled


class Reporter:
    """Advances one task; does nothing when progress is off."""

    def __init__(self, progress: Any = None, task_id: Any = None) -> None:
        self._progress = progress
        self._task_id = task_id

    def advance(self, steps: float = 1, **fields: Any) -> None:
        if self._progress is not None:
            status = "  ".join(f"{k} {v}" for k, v in fields.items())
            self._progress.update(self._task_id, advance=steps, status=status)

    def update(self, **fields: Any) -> None:
        self.advance(0, **fields)


@contextmanager
def task(description: str, total: float | None, *, enabled: bool = True) -> Iterator[Reporter]:
    """A progress bar for `total` steps, shown only when progress is enabled globally and
    `enabled` (a caller's own switch, such as fit's `progress=`) is true."""
    if not (_enabled and enabled):
        yield Reporter()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield Reporter(progress, progress.add_task(description, total=total, status=""))
