"""Terminal output: rich progress bars and tables. Kept apart from the library logic."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Callable, Iterator

from rich.console import Console

if TYPE_CHECKING:
    from .report import BackendResult, Report
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


def verify_table(rep: "Report"):
    """The parity report as a rich table; a backend that did not run shows its reason in the last column."""
    from rich.markup import escape
    from rich.table import Table

    tol = rep.tolerance
    t = Table(title=f"parity: {rep.model} on {rep.dataset}, {rep.samples} test images ({rep.data_source}), "
                    f"atol {tol.atol:g} rtol {tol.rtol:g}", title_justify="left")
    for col in ("backend", "status", "accuracy", "max|Δ|", "p99|Δ|", "agree", "batch-inv|Δ|", "b1 ms", "img/s"):
        t.add_column(col, no_wrap=True, justify="left" if col in ("backend", "status") else "right")
    t.add_column("note", overflow="ellipsis", no_wrap=True, max_width=28)  # full reasons follow the table
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    for name, r in rep.backends.items():
        st = f"[{style[r.status]}]{r.status}[/]"
        note = escape(r.reason or (r.failures[0] if r.failures else ""))
        if not r.ran:
            t.add_row(name, st, *["-"] * 7, note)
            continue
        lg, tm = r.logits, r.timing
        t.add_row(name, st, f"{r.accuracy:.4f}", f"{lg.max_abs:.1e}", f"{lg.p99_abs:.1e}",
                  f"{r.argmax_agree}/{rep.samples}", f"{r.batch_invariance.max_abs_diff:.1e}",
                  f"{tm.latency_ms_batch1['median']:.3f}" if tm else "-", f"{tm.throughput_img_s:,.0f}" if tm else "-",
                  note)
    return t


def ran_on(r: "BackendResult") -> str:
    """What actually ran a backend, in one line."""
    rt = r.runtime
    parts = [f"onnxruntime {rt['onnxruntime']}, providers {rt['providers']}" if "onnxruntime" in rt
             else f"onnxruntime-web {rt['onnxruntime_web']} ({rt['backend']}, threads {rt['wasm_threads']}), "
                  f"node {rt['node']}" if "onnxruntime_web" in rt
             else f"torch {rt.get('torch')}, {rt.get('threads', '?')} threads"]
    parts.append(rt.get("device", "?"))
    if "tf32" in rt:
        parts.append(f"TF32 {'on' if rt['tf32'] else 'off'}")
    return "; ".join(parts)


def print_report(rep: "Report", path=None) -> None:
    """Table, what ran, failures, metadata, flips between backends, verdict line."""
    from rich.markup import escape

    console.print(verify_table(rep))
    for name, r in rep.backends.items():
        if r.runtime:
            console.print(f"{name} ran on: {escape(ran_on(r))}")
        for f in r.failures:
            console.print(f"[bold red]FAIL[/] {name}: {escape(f)}")
        if r.status == "skipped":
            console.print(f"[yellow]skipped[/] {name}: {escape(r.reason or '')}")
    md = rep.metadata
    if md.passed:
        console.print(f"metadata: {len(md.files)} copies agree with the checkpoint ({', '.join(md.files)})")
    for f in md.failures:
        console.print(f"[bold red]FAIL[/] metadata: {escape(f)}")
    pw = rep.pairwise
    if pw and pw.flips:
        for pair, idx in pw.flips.items():
            console.print(f"class flips {pair}: samples {', '.join(map(str, idx[:20]))}"
                          + (" ..." if len(idx) > 20 else ""))
    elif pw:
        console.print(f"no sample changes class between any two of the {len(pw.backends)} backends that ran")
    if rep.passed:
        console.print("[green]parity passed[/]" + (f"; report: {path}" if path else ""))
