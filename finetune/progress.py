"""Progress bars of the finetune commands: rich, on standard error, off when it is not a terminal."""

from __future__ import annotations

from typing import Any


def progress_bars(*extra: Any) -> Any:
    """rich progress bars on standard error (off when it is not a terminal); ``extra``: more columns."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra,
        console=console,
        disable=not console.is_terminal,
    )
