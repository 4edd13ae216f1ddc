"""Terminal output: rich progress bars and tables. Kept apart from the library logic."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def epoch_progress() -> Iterator[Callable[[int, int, int], Callable[[int, float, float], None]]]:
    """Yield ``start(epoch, epochs, steps) -> update(done, loss, acc)``: one transient bar per epoch."""
    columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.4f}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        def start(epoch: int, epochs: int, steps: int):
            task = progress.add_task("train", total=steps, epoch=f"{epoch}/{epochs}", loss=0.0, acc=0.0)

            def update(done: int, loss: float, acc: float) -> None:
                progress.update(task, completed=done, loss=loss, acc=acc)
                if done >= steps:
                    progress.remove_task(task)
            return update
        yield start


def log(msg: str) -> None:
    console.print(msg, soft_wrap=True)


def fail(msg: str, code: int = 2) -> None:
    err_console.print(f"error: {msg}", soft_wrap=True)
    sys.exit(code)
