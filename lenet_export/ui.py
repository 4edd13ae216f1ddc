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
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
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


@contextlib.contextmanager
def counter(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a transient progress bar on stderr (only on a terminal, and output stays clean)."""
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)


def log(msg: str) -> None:
    console.print(msg, soft_wrap=True, markup=False)


def fail(msg: str, code: int = 2) -> None:
    err_console.print(f"error: {msg}", soft_wrap=True, markup=False)
    sys.exit(code)


def results_table(results: list, samples: int, columns: tuple[str, ...], title: str):
    """Backend results as a rich table of ``columns`` (``report.cells``: the same row text as the model card and
    the bench markdown); a backend that did not run shows its reason in the note column."""
    from rich.markup import escape
    from rich.table import Table

    from .report import COLUMNS, cells

    t = Table(title=title, title_justify="left")
    for c in columns:
        left = c in ("backend", "status", "artefact", "note")
        t.add_column(COLUMNS[c], no_wrap=True, justify="left" if left else "right",
                     **({"overflow": "ellipsis", "max_width": 32} if c == "note" else {}))
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    for r in results:
        row = cells(r, samples)
        row["status"] = f"[{style[r.status]}]{r.status}[/]"
        t.add_row(*[row[c] if c == "status" else escape(row[c]) for c in columns])
    return t


VERIFY_COLUMNS = ("backend", "status", "accuracy", "max_abs", "agree", "batch", "latency", "throughput", "note")
BENCH_COLUMNS = ("backend", "size", "status", "accuracy", "max_abs", "latency", "throughput")


def verify_table(rep: "Report"):
    """The parity report as a rich table (full reasons follow it)."""
    tol = rep.tolerance
    data = f"{rep.samples} images" if rep.images else f"{rep.dataset}, {rep.samples} test images"
    return results_table(list(rep.backends.values()), rep.samples, VERIFY_COLUMNS,
                         f"parity: {rep.model} on {data} ({rep.data_source}), atol {tol.atol:g} rtol {tol.rtol:g}")


def ran_on(r: "BackendResult") -> str:
    """What actually ran a backend, in one line: the runtime's own facts, then the device."""
    rt = r.runtime
    facts = [f"{k} {v}" for k, v in rt.items() if k not in ("device", "tf32")]
    if "tf32" in rt:
        facts.append(f"TF32 {'on' if rt['tf32'] else 'off'}")
    return ", ".join(facts) + f"; {rt.get('device', '?')}"


MAX_FLIP_LINES = 8


def _print_flips(rep: "Report") -> None:
    """Flips against the reference, and between exact backends; pairs of two backends that are each compared
    with the reference already (an approximate variant against anything) stay in the report only."""
    approximate = {n for n, b in rep.backends.items() if b.precision != "fp32"}
    shown = {pair: f for pair, f in rep.pairwise.flips.items()
             if pair.startswith(f"{rep.reference} | ") or not approximate & set(pair.split(" | "))}
    for pair, f in list(shown.items())[:MAX_FLIP_LINES]:
        first = [rep.sample_name(i) for i in f["samples"][:10]]
        console.print(f"class flips {pair}: {f['count']} sample{'s' if f['count'] > 1 else ''} "
                      f"({', '.join(first)}{', ...' if f['count'] > len(first) else ''})", markup=False)
    rest = len(rep.pairwise.flips) - min(len(shown), MAX_FLIP_LINES)
    if rest:
        console.print(f"... and {rest} more pairs with flips in the report (pairwise.flips)")


def print_report(rep: "Report", path=None) -> None:
    """Table, what ran, failures, metadata, flips between backends, verdict line."""
    from rich.markup import escape

    console.print(verify_table(rep))
    for name, r in rep.backends.items():
        if r.runtime:
            console.print(f"{name} ran on: {escape(ran_on(r))}")
        for f in r.failures:
            console.print(f"[bold red]FAIL[/] {name}: {escape(str(f))}")
        if r.layer_diff:
            console.print(diff_line(name, r.layer_diff), markup=False, soft_wrap=True)
        if r.status == "skipped":
            console.print(f"[yellow]skipped[/] {name}: {escape(r.reason or '')}")
    md = rep.metadata
    if md.passed:
        console.print(f"metadata: {len(md.files)} copies agree with the checkpoint ({', '.join(md.files)})")
    for f in md.failures:
        console.print(f"[bold red]FAIL[/] metadata: {escape(f)}")
    for name, why in md.unchecked.items():
        console.print(f"[yellow]not checked[/] metadata copy {name}: {escape(why)}")
    pw = rep.pairwise
    if pw and pw.flips:
        _print_flips(rep)
    elif pw:
        console.print(f"no sample changes class between any two of the {len(pw.backends)} backends that ran")
    if rep.passed:
        console.print("[green]parity passed[/]" + (f"; report: {path}" if path else ""))


MAX_SAMPLE_LINES = 10


def print_replay(res) -> None:
    """``verify --replay``: both machines, each backend against the record, the samples that changed class."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"replay of {res.record}")
    console.print(f"recorded on: {res.there.summary}", markup=False)
    console.print(f"here:        {res.here.summary}", markup=False)
    console.print(f"difference:  {res.difference}", markup=False)
    t = Table(title_justify="left")
    for col in ("backend", "status", "accuracy there", "accuracy here", "max|Δ|", "samples changed", "note"):
        t.add_column(col, no_wrap=True, justify="left" if col in ("backend", "status", "note") else "right")
    style = {"reproduced": "green", "differs": "bold red", "skipped": "yellow"}
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for b in res.backends.values():
        note = b.reason or (str(b.failures[0]) if b.failures else "")
        t.add_row(b.name, f"[{style[b.status]}]{b.status}[/]", fmt(b.accuracy_there, ".4f"), fmt(b.accuracy_here, ".4f"),
                  fmt(b.max_abs, ".1e"), str(b.differing_count), escape(note))
    console.print(t)
    for b in res.backends.values():
        for d in b.differing[:MAX_SAMPLE_LINES]:
            console.print(f"{b.name} sample {d.index}: class {d.there_class} (margin {d.there_margin:.3g}) in the "
                          f"record, {d.here_class} (margin {d.here_margin:.3g}) here", markup=False)
        if b.differing_count > MAX_SAMPLE_LINES:
            console.print(f"{b.name}: ... and {b.differing_count - MAX_SAMPLE_LINES} more (--report)", markup=False)
    if res.passed:
        console.print("[green]replay reproduced the record[/]")


def diff_line(backend: str, d: dict) -> str:
    """One line per localised backend (``DiffResult.to_dict()``, or ``{"error": ...}`` when diff failed)."""
    if "error" in d:
        return f"{backend}: {d['error']}"
    first = next((r for r in d["layers"] if r["layer"] == d["first_divergent_layer"]), None)
    if first is None:
        return f"{backend}: every layer within tolerance on {d['samples']} samples"
    where = "+".join(first["modules"]) if len(first["modules"]) > 1 else first["layer"]
    return (f"{backend} first diverges at {where} (tensor {first['tensor']}: max |Δ| {float(first['max_abs']):.3e}, "
            f"SQNR {float(first['sqnr_db']):.1f} dB)")


def diff_table(res):
    """``lenet-export diff``'s per-layer table."""
    from rich.table import Table

    tol = res.tolerance
    t = Table(title=f"{res.backend} ({res.artefact}, {res.runtime}) vs torch-cpu on {res.samples} "
                    f"test images, atol {tol.atol:g} rtol {tol.rtol:g}", title_justify="left")
    for col in ("layer", "runtime tensor", "shape", "max|Δ|", "mean|Δ|", "rel err", "SQNR dB", ""):
        t.add_column(col, no_wrap=True, justify="left" if col in ("layer", "runtime tensor", "shape", "") else "right")
    for s in res.layers:
        mark = s.note or ("ok" if s.within_tolerance else "[bold red]BEYOND TOLERANCE[/]")
        if s.layer == res.first_divergent_layer:
            mark += " [bold red]<- first[/]"
        t.add_row(s.label, s.tensor, "x".join(map(str, s.shape)), f"{s.max_abs:.2e}", f"{s.mean_abs:.2e}",
                  f"{s.rel_l2:.2e}", f"{s.sqnr_db:.1f}", mark)
    for n in res.notes:
        t.caption = (t.caption + "; " if t.caption else "") + n
    return t


def bench_table(results: list, samples: int, title: str):
    """``lenet-export bench`` results as a rich table."""
    return results_table(results, samples, BENCH_COLUMNS, f"runtimes on {title}")
