"""Runtime comparison: every CPU runtime side by side in one process, with its parity figures.

Per backend: size on disk of what it loads, latency at batch 1 (median), and throughput at the best batch size
of a sweep (1 to 4096), measured one backend after the other on the same test images; the parity columns come
from a ``verify`` run of the same export in the same process. ``lenet-export bench`` prints the table (and
writes JSON / Markdown). Like Ultralytics' benchmark table, plus proof that each row computes the same thing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Context
from .verify import (EVAL_BATCH, VerifyOptions, artefact_size, latency_batch1, load_artefacts, load_inputs,
                     open_backend, requested, verify)

SWEEP = (1, 4, 16, 64, 256, 1024, 4096)
MIN_SECONDS = 0.25  # each batch size runs at least this long (and at least 2 batches)


@dataclass
class BenchRow:
    backend: str
    status: str  # passed / failed / skipped (from verify)
    artefact: str
    size_bytes: int | None
    accuracy: float | None = None
    max_abs_diff: float | None = None
    argmax_agree: int | None = None
    latency_ms_batch1: float | None = None
    best_batch: int | None = None
    throughput_img_s: float | None = None
    note: str = ""


def sweep(run, x: np.ndarray, sizes=SWEEP) -> tuple[int, float]:
    """Best (batch size, images/s) over ``sizes``, each timed on real images for at least MIN_SECONDS."""
    best = (0, 0.0)
    for b in sizes:
        batch = np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])) if b > len(x) else x[:b])
        run(batch)  # warm-up: allocations, kernel selection
        n, t0 = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - t0 < MIN_SECONDS:
            run(batch)
            n += 1
        seconds = time.perf_counter() - t0
        best = max(best, (b, n * b / seconds), key=lambda r: r[1])
        if seconds / n > 1.0:  # a batch this slow gains nothing from being larger; stop the sweep here
            break
    return best


def bench(exported: Path, checkpoint: Path | None, data_dir: str | None, backends: tuple[str, ...] | None,
          log=print) -> list[BenchRow]:
    rep = verify(VerifyOptions(exported=exported, checkpoint=checkpoint, data_dir=data_dir, backends=backends),
                 log=lambda _: None)
    meta, ckpt, _, _ = load_artefacts(Path(exported), checkpoint)
    inputs, _ = load_inputs(rep.dataset, ckpt, data_dir)
    ctx = Context(Path(exported), meta, ckpt)
    rows = []
    for b in requested(backends):
        if b.device != "cpu":
            continue
        res = rep.backends[b.name]
        label, size = artefact_size(Path(exported), b.artefact)
        row = BenchRow(b.name, res.status, label, size, res.accuracy, res.logits.max_abs if res.logits else None,
                       res.argmax_agree, note=res.reason or "")
        _, runner = open_backend(b, ctx, False) if res.ran else (None, None)
        if runner is not None:
            x = inputs.for_backend(b)[:EVAL_BATCH]
            row.latency_ms_batch1 = latency_batch1(runner, x)["median"]
            hi = runner.batch_range[1] if runner.batch_range else SWEEP[-1]  # ranges start at 1 (Runner)
            sizes = tuple(s for s in SWEEP if s <= hi)
            row.best_batch, row.throughput_img_s = sweep(lambda a: (runner.run(a), runner.sync()), x, sizes)
            log(f"{b.name:<16} latency {row.latency_ms_batch1:.3f} ms  best batch {row.best_batch}  "
                f"{row.throughput_img_s:,.0f} img/s")
        rows.append(row)
    return rows


def markdown(rows: list[BenchRow], title: str) -> str:
    """The comparison as a Markdown table (for the README and model cards)."""
    head = (f"{title}\n\n| runtime | artefact | size | status | accuracy | max \\|Δ\\| vs torch | agree | "
            "latency b1 (ms) | best batch | img/s |\n|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"| {r.backend} | {r.artefact} | {fmt(r.size_bytes and r.size_bytes / 1024, ',.0f')} KiB | {r.status} "
             f"| {fmt(r.accuracy, '.4f')} | {fmt(r.max_abs_diff, '.1e')} | {fmt(r.argmax_agree, ',')} "
             f"| {fmt(r.latency_ms_batch1, '.3f')} | {fmt(r.best_batch, '')} | {fmt(r.throughput_img_s, ',.0f')} |"
             for r in rows]
    return "\n".join([head, *lines]).replace("| - KiB |", "| - |")
