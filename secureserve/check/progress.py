"""How far the long parts of a check have come: a rich progress bar on a terminal.

A check is handed a :class:`Progress` and wraps each long part (the attack, the fuzzing,
the load) in ``with progress.part(description, total) as advance:``, calling
``advance(amount)`` as it goes. The base class shows nothing: it is what library
callers, tests and runs whose output is not a terminal get. :func:`progress_for` gives
a :class:`TerminalProgress` (a transient rich bar on standard error, gone when the part
ends) when the stream is a terminal and rich (the ``secureserve[check]`` extra) is
installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Advance", "Progress", "TerminalProgress", "progress_for"]

#: Moves a part's bar on by ``amount`` units of its total.
Advance = Callable[[float], None]


def _nothing(amount: float) -> None:
    """The ``advance`` of a part nobody watches."""


class Progress:
    """Shows nothing."""

    @contextlib.contextmanager
    def part(self, description: str, total: float) -> Iterator[Advance]:  # noqa: ARG002
        """One long part of ``total`` units: yields its ``advance``."""
        yield _nothing


class TerminalProgress(Progress):
    """A rich progress bar per part, on ``console``, erased when the part ends."""

    def __init__(self, console: Console) -> None:
        self._console = console

    @contextlib.contextmanager
    def part(self, description: str, total: float) -> Iterator[Advance]:
        """One long part of ``total`` units: a bar with the time left; yields its ``advance``."""
        from rich.progress import (  # noqa: PLC0415 - the [check] extra
            BarColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar  # noqa: PLC0415

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
        )
        with Bar(*columns, console=self._console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda amount: bar.advance(task, amount)


def progress_for(stream: TextIO) -> Progress:
    """A bar on ``stream`` when it is a terminal and rich is installed; else none."""
    if not stream.isatty():
        return Progress()
    try:
        from rich.console import Console  # noqa: PLC0415 - the [check] extra
    except ImportError:
        return Progress()
    return TerminalProgress(Console(file=stream))
