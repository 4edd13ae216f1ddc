"""Parity suite orchestration only: export folder -> data -> reference -> each backend -> parity rules -> report.

``verify(opts)`` loads the export (``artefacts``), runs every requested backend (``backends``) on the whole test
split, judges each one against the eager PyTorch reference with the rules in ``parity``, checks the metadata
every artefact carries, and returns a typed ``Report`` (written to ``opts.report`` even when something fails).
``Report.check()`` turns the verdict into ``ParityError``. Localising a failure is the caller's choice
(``opts.localise``, e.g. ``diff.attach``): this module imports no localiser.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__, backends as registry
from .artefacts import (Inputs, artefact_size, check_metadata, folder_inputs, load_export, load_inputs,
                        refuse_input_as_output)
from .backends import REFERENCE, Backend, Context, Fallback, Runner, Skip
from .errors import ConfigError, first_line
from .parity import (BATCH_INVARIANCE_SAMPLES, BATCH_INVARIANCE_SIZES, BUDGETS, Failure, Tolerance, batch_invariance,
                     judge, judge_approximate, pairwise)
from .report import FAILED, PASSED, SKIPPED, BackendResult, Report, Timing

EVAL_BATCH = 256  # the "full batch" of the whole-test-set pass and of the throughput figure: the best batch
# size of eager torch in `lenet-export bench` on these 2-core machines (1000 ran it at half the speed: cache misses)
LATENCY_RUNS = 50


@dataclass
class VerifyOptions:
    exported: Path
    checkpoint: Path | None = None  # default: <exported>/best.pth when shipped beside the artefacts
    data_dir: str | None = None
    dataset: str | None = None  # default: the checkpoint's
    backends: tuple[str, ...] | None = None  # None: all
    tolerance: Tolerance = Tolerance()
    require_cuda: bool = False
    report: Path | None = None
    images: Path | None = None  # the user's labelled folder (image_folder) instead of the test split
    fit: str = "exact"  # how --images are fitted to the model's input (predict.FITS)
    invert: bool = False
    endpoints: dict[str, str] = field(default_factory=dict)  # --endpoint: URL scheme -> a running server's URL
    # called after the parity pass as localise(report, context, inputs, tolerance); must not raise (diff.attach)
    localise: Callable | None = None


# ---------------------------------------------------------------------------------------------
# Running one backend


def run_batched(r: Runner, x: np.ndarray, batch: int, times: list | None = None) -> list[np.ndarray]:
    outs = []
    for i in range(0, len(x), batch):
        t = time.perf_counter()
        outs.append(r.run(np.ascontiguousarray(x[i:i + batch])))
        r.sync()
        if times is not None:
            times.append((len(outs[-1][0]), time.perf_counter() - t))
    return [np.concatenate(parts) for parts in zip(*outs)]


def latency_batch1(r: Runner, x: np.ndarray) -> dict:
    """Median and p90 latency (ms) of LATENCY_RUNS single-image runs, after a warm-up."""
    one = np.ascontiguousarray(x[:1])
    for _ in range(5):
        r.run(one)
    r.sync()
    lat = []
    for _ in range(LATENCY_RUNS):
        t = time.perf_counter()
        r.run(one)
        r.sync()
        lat.append(time.perf_counter() - t)
    return {"median": float(np.median(lat) * 1e3), "p90": float(np.percentile(lat, 90) * 1e3)}


def measure_timing(r: Runner, x: np.ndarray, batch_times: list[tuple[int, float]]) -> Timing:
    """Latency at batch 1 and throughput from the full pass's batch times."""
    # The first batch of the full pass pays for warm-up (allocations, kernel choice): leave it out.
    steady = [(n, s) for n, s in batch_times[1:] if n == batch_times[0][0]] or batch_times
    return Timing(latency_batch1(r, x), float(steady[0][0] / np.median([s for _, s in steady])), steady[0][0])


def batch_plan(r: Runner) -> tuple[int, tuple[int, ...] | None]:
    """(batch of the full pass, batch sizes of the invariance check) within what the artefact takes (ranges
    start at 1: ``Runner``). A fixed batch has no other size to compare with: ``None``, and the check says so."""
    hi = EVAL_BATCH if r.batch_range is None else r.batch_range[1]
    if hi == 1:
        return 1, None
    return min(EVAL_BATCH, hi), tuple(s for s in BATCH_INVARIANCE_SIZES if s <= hi)


def open_backend(b: Backend, ctx: Context, require_cuda: bool) -> tuple[BackendResult, Runner | None]:
    res = BackendResult(b.name, SKIPPED, artefact=b.artefact, input=b.input, precision=b.precision)
    try:
        b.require_package()
        return res, b.open(ctx)
    except Skip as e:
        res.reason = str(e)
        if require_cuda and b.device == "cuda":
            res.fail(Failure("require-cuda", {"message": str(e)}))
    except Fallback as e:
        res.fail(Failure("fallback", {"message": str(e)}))
    except Exception as e:  # a runtime that cannot load its artefact raises its own types: fail with one line
        res.fail(Failure("load", {"what": b.artefact or "the checkpoint", "message": first_line(e)}))
    return res, None


def evaluate(b: Backend, ctx: Context, inputs: Inputs, ref: np.ndarray | None, tol: Tolerance, *,
             require_cuda: bool = False, measure: bool = True) -> tuple[BackendResult, np.ndarray | None]:
    """Run backend ``b`` on ``inputs`` and judge it against ``ref`` (None: it *is* the reference)."""
    res, runner = open_backend(b, ctx, require_cuda)
    if runner is None:
        return res, None
    res.runtime = runner.runtime
    try:
        return _evaluate_open(b, runner, res, ctx, inputs, ref, tol, measure)
    finally:
        runner.close()


def _evaluate_open(b: Backend, runner: Runner, res: BackendResult, ctx: Context, inputs: Inputs,
                   ref: np.ndarray | None, tol: Tolerance, measure: bool) -> tuple[BackendResult, np.ndarray | None]:
    x = inputs.get(b.input)
    try:
        t, batch_times = time.perf_counter(), []
        full, sizes = batch_plan(runner)
        outs = run_batched(runner, x, full, batch_times)
        res.seconds_full_pass = round(time.perf_counter() - t, 3)
        k = min(BATCH_INVARIANCE_SAMPLES, len(x))
        by_batch = None if sizes is None else {s: run_batched(runner, x[:k], s)[0] for s in sizes}
        timing = measure_timing(runner, x, batch_times) if measure else None
    except Exception as e:  # as above: the runtime's own error types, reported in one line
        return res.fail(Failure("run", {"what": b.artefact or "the checkpoint", "message": first_line(e)})), None
    logits = outs[0]
    if logits.shape != (len(x), len(ctx.checkpoint["classes"])):
        return res.fail(Failure("outputs", {"shape": tuple(logits.shape[1:]),
                                            "classes": len(ctx.checkpoint["classes"])})), None
    if b.precision != "fp32" and ref is not None:
        j = judge_approximate(ref, logits, inputs.labels, BUDGETS[b.precision])
    else:
        j = judge(logits if ref is None else ref, logits, inputs.labels, tol, outs[1] if len(outs) > 1 else None)
    res.accuracy, res.argmax_agree, res.logits, res.disagreements = j.accuracy, j.argmax_agree, j.logits, j.flips
    res.precision = b.precision
    res.size_bytes = artefact_size(ctx.exported, b.artefact)[1]
    res.batch_invariance = batch_invariance(by_batch, logits, full, tol)
    res.timing = timing
    res.failures += j.failures
    if not res.batch_invariance.passed:
        res.failures.append(Failure("batch-invariance", {"max_abs": res.batch_invariance.max_abs_diff}))
    res.status = FAILED if res.failures else PASSED
    return res, logits


# ---------------------------------------------------------------------------------------------
# The suite


def _check_report_path(path: Path | None) -> None:
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--report {path} is a folder; give a file name")
    if path.suffix == ".npz":  # the record is written beside the report as <name>.npz
        raise ConfigError(f"--report {path}: give a .json name; the record beside it gets the .npz one")
    parent = path.parent if path.parent != Path("") else Path(".")
    probe = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ConfigError(f"--report {path} cannot be written ({probe} is not a writable folder)")


def requested(names: tuple[str, ...] | None) -> list[Backend]:
    chosen = registry.names() if names is None else names
    return [registry.get(n) for n in dict.fromkeys([REFERENCE, *chosen])]


def run_suite(opts: VerifyOptions, log=print) -> tuple[Report, dict[str, np.ndarray], Inputs]:
    """The suite without writing anything: (report, every backend's logits, the inputs)."""
    from .machine import this_machine

    chosen = requested(opts.backends)
    export = load_export(Path(opts.exported), opts.checkpoint)
    ckpt = export.checkpoint
    name = opts.dataset or ckpt["dataset"]
    images = None
    if opts.images is not None:
        inputs, files = folder_inputs(opts.images, ckpt, opts.fit, opts.invert)
        source = f"image folder {opts.images} (fit {opts.fit}{', inverted' if opts.invert else ''})"
        images = {"folder": str(opts.images), "fit": opts.fit, "invert": opts.invert, "files": files}
    else:
        inputs, source = load_inputs(name, ckpt, opts.data_dir)
    ctx = Context(export.folder, export.metadata, ckpt, opts.endpoints)
    rep = Report(model=ckpt["model"], dataset=name, data_source=source, samples=len(inputs.labels),
                 exported=str(export.folder), checkpoint=str(export.checkpoint_path),
                 checkpoint_sha256=export.checkpoint_sha256, tolerance=opts.tolerance, reference=REFERENCE,
                 created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 lenet_export_version=__version__, machine=this_machine().to_dict(), images=images)
    rep.metadata = check_metadata(export, backends=[b.name for b in chosen])
    outputs: dict[str, np.ndarray] = {}
    for b in chosen:
        res, logits = evaluate(b, ctx, inputs, outputs.get(REFERENCE), opts.tolerance, require_cuda=opts.require_cuda)
        rep.backends[b.name] = res
        if logits is not None:
            outputs[b.name] = logits
        log(f"{b.name:<17} {res.status:<7} " + (f"acc {res.accuracy:.4f}  max|diff| {res.logits.max_abs:.2e}  "
                                                  if res.ran else "") + "; ".join(map(str, res.failures or [res.reason or ""])))
    if REFERENCE not in outputs:
        raise ConfigError(f"the reference ({REFERENCE}) could not run: {rep.backends[REFERENCE].reason}")
    rep.reference_accuracy = rep.backends[REFERENCE].accuracy
    if opts.localise:
        opts.localise(rep, ctx, inputs, opts.tolerance)  # e.g. the first diverging layer of each failed backend
    rep.pairwise = pairwise(outputs)
    return rep, outputs, inputs


def verify(opts: VerifyOptions, log=print) -> Report:
    """Run the suite and return the report; with ``opts.report``, write it and its replayable record
    (``record.sidecar_path``: every sample's class per backend, referenced by sha256 from the report)."""
    _check_report_path(opts.report)
    refuse_input_as_output(opts.report, opts.exported, opts.checkpoint, "--report")
    rep, outputs, inputs = run_suite(opts, log)
    if opts.report:
        write_report(rep, outputs, inputs, Path(opts.report))
    return rep


def write_report(rep: Report, outputs: dict[str, np.ndarray], inputs: Inputs, path: Path) -> None:
    """The sidecar first (atomically), then the report that names it and its sha256."""
    import hashlib

    from .fsutil import atomic_write_bytes, write_errors
    from .record import sidecar_bytes, sidecar_path

    approximate = {n for n, b in rep.backends.items() if b.precision != "fp32"}
    data = sidecar_bytes(outputs, inputs.labels, rep.reference, approximate)
    side = sidecar_path(path)
    with write_errors(side):
        atomic_write_bytes(side, data)
    rep.sidecar = {"file": side.name, "sha256": hashlib.sha256(data).hexdigest()}
    rep.write(path)
