"""Terminal output: rich progress bars and tables. Kept apart from the library logic."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Without a terminal rich assumes 80 columns; reports and logs read better wider.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
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
    console.print(msg, soft_wrap=True, markup=False)


def fail(msg: str, code: int = 2) -> None:
    err_console.print(f"error: {msg}", soft_wrap=True, markup=False)
    sys.exit(code)


def verify_table(report: dict):
    """The parity report as a rich table."""
    from rich.table import Table

    t = Table(title=f"parity: {report['model']} on {report['dataset']}, {report['samples']} test images "
                    f"({report['data_source']}), atol {report['tolerance']['atol']:g} rtol {report['tolerance']['rtol']:g}",
              title_justify="left")
    for col in ("backend", "status", "accuracy", "max|Δ|", "p99|Δ|", "max rel", "agree", "batch-inv|Δ|",
                "b1 ms", "img/s"):
        t.add_column(col, no_wrap=True, justify="left" if col in ("backend", "status") else "right")
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    for name, e in report["backends"].items():
        st = f"[{style[e['status']]}]{e['status']}[/]"
        if "logits" not in e:
            t.add_row(name, st, *["-"] * 8)
            continue
        lg = e["logits"]
        t.add_row(name, st, f"{e['accuracy']:.4f}", f"{lg['max_abs']:.1e}", f"{lg['p99_abs']:.1e}",
                  f"{lg['max_rel']:.1e}", f"{e['argmax_agree']}/{report['samples']}",
                  f"{e['batch_invariance']['max_abs_diff']:.1e}", f"{e['latency_ms_batch1']['median']:.3f}",
                  f"{e['throughput_img_s']:,.0f}")
    return t


def ran_on(entry: dict) -> str:
    """What actually ran a backend, in one line."""
    rt = entry.get("runtime", {})
    parts = [f"onnxruntime {rt['onnxruntime']}, providers {rt['providers']}" if "onnxruntime" in rt
             else f"torch {rt.get('torch')}, {rt.get('threads', '?')} threads"]
    parts.append(rt.get("device", "?"))
    if "tf32" in rt:
        parts.append(f"TF32 {'on' if rt['tf32'] else 'off'}")
    return "; ".join(parts)
