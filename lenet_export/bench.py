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

from .artefacts import artefact_size, load_export
from .backends import Context
from .report import BackendResult, Timing, markdown_table
from .verify import EVAL_BATCH, VerifyOptions, latency_batch1, open_backend, requested, run_suite

SWEEP = (1, 4, 16, 64, 256, 1024, 4096)
MIN_SECONDS = 0.25  # each batch size runs at least this long (and at least 2 batches)
MARKDOWN_COLUMNS = ("backend", "artefact", "size", "status", "accuracy", "max_abs", "agree", "latency", "throughput")


@dataclass
class BenchRow:
    """One backend's bench figures, as the JSON output holds them."""

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


def row(r: BackendResult, exported: Path) -> BenchRow:
    tm = r.timing
    return BenchRow(r.name, r.status, artefact_size(exported, r.artefact)[0], r.size_bytes, r.accuracy,
                    r.logits.max_abs if r.logits else None, r.argmax_agree,
                    tm.latency_ms_batch1["median"] if tm else None, tm.throughput_batch if tm else None,
                    tm.throughput_img_s if tm else None, r.reason or "")
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


def bench(opts: VerifyOptions, log=print) -> tuple[list[BackendResult], int]:
    """Every requested CPU backend's verify result (on the test split, or ``opts.images``), its timing replaced
    by the bench figures: batch-1 latency and the best throughput of the batch sweep. Returns (results, samples)."""
    rep, _, inputs = run_suite(opts, log=lambda _: None)  # the images, loaded once
    export = load_export(Path(opts.exported), opts.checkpoint)
    ctx = Context(export.folder, export.metadata, export.checkpoint, opts.endpoints)
    results = []
    for b in requested(opts.backends):
        if b.device != "cpu":
            continue
        res = rep.backends[b.name]
        res.timing = None
        _, runner = open_backend(b, ctx, False) if res.ran else (None, None)
        if runner is not None:
            try:
                res.timing = _timing(runner, inputs.get(b.input)[:EVAL_BATCH])
            finally:
                runner.close()
            t = res.timing
            log(f"{b.name:<16} latency {t.latency_ms_batch1['median']:.3f} ms  best batch {t.throughput_batch}  "
                f"{t.throughput_img_s:,.0f} img/s")
        results.append(res)
    return results, rep.samples


def _timing(runner, x: np.ndarray) -> Timing:
    latency = latency_batch1(runner, x)
    hi = runner.batch_range[1] if runner.batch_range else SWEEP[-1]  # ranges start at 1 (Runner)
    best, img_s = sweep(lambda a: (runner.run(a), runner.sync()), x, tuple(s for s in SWEEP if s <= hi))
    return Timing(latency, img_s, best)


def markdown(results: list[BackendResult], samples: int, title: str) -> str:
    """The comparison as a Markdown table (for the README and model cards)."""
    return f"{title}\n\n" + markdown_table(results, samples, MARKDOWN_COLUMNS)
