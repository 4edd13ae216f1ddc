"""Parity suite orchestration: data -> reference -> each backend -> parity rules -> report.

``verify(opts)`` runs every requested backend (``lenet_export.backends``) on the whole test split, judges each
one against the eager PyTorch reference with the rules in ``lenet_export.parity``, checks the metadata every
artefact carries (``lenet_export.metadata``), and returns a typed ``Report`` (written to ``opts.report`` even
when something fails). ``Report.check()`` turns the verdict into ``ParityError``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, backends as registry
from .backends import FLOAT, REFERENCE, Backend, Context, Fallback, Runner, Skip
from .errors import ConfigError, first_line
from .parity import (BATCH_INVARIANCE_SAMPLES, BATCH_INVARIANCE_SIZES, BUDGETS, Tolerance, batch_invariance, judge,
                     judge_approximate, pairwise)
from .report import FAILED, PASSED, SKIPPED, BackendResult, Report, Timing

EVAL_BATCH = 256  # the "full batch" of the whole-test-set pass and of the throughput figure: the best batch
# size of eager torch in `lenet-export bench` on these 2-core machines (1000 ran it at half the speed: cache misses)
LATENCY_RUNS = 50


@dataclass
class Inputs:
    """One split, as each kind of backend takes it."""

    float: np.ndarray  # normalised N x C x H x W
    uint8: np.ndarray  # decoded images in model.raw.onnx's layout (N x H x W grey, N x H x W x C colour)
    labels: np.ndarray

    def for_backend(self, b: Backend) -> np.ndarray:
        return self.float if b.input == FLOAT else self.uint8


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


COMPANIONS = {"model.xml": ("model.bin",), "model.int8.xml": ("model.int8.bin",)}  # files a runtime loads together with its artefact


def artefact_size(exported: Path, artefact: str | None) -> tuple[str, int | None]:
    """What a backend loads, as text, and its size on disk (None: the checkpoint, or missing files)."""
    if artefact is None:
        return "best.pth", None  # eager torch runs the checkpoint's weights; not a deployable artefact
    files = [artefact, *COMPANIONS.get(artefact, ())]
    paths = [exported / f for f in files]
    return " + ".join(files), sum(p.stat().st_size for p in paths) if all(p.is_file() for p in paths) else None


def open_backend(b: Backend, ctx: Context, require_cuda: bool) -> tuple[BackendResult, Runner | None]:
    res = BackendResult(b.name, SKIPPED, artefact=b.artefact, input=b.input)
    try:
        b.require_package()
        return res, b.open(ctx)
    except Skip as e:
        res.reason = str(e)
        if require_cuda and b.device == "cuda":
            res.fail(f"--require-cuda: {e}")
    except Fallback as e:
        res.fail(str(e))
    except Exception as e:  # a runtime that cannot load its artefact raises its own types: fail with one line
        res.fail(f"cannot load {b.artefact or 'the checkpoint'}: {first_line(e)}")
    return res, None


def evaluate(b: Backend, ctx: Context, inputs: Inputs, ref: np.ndarray | None, tol: Tolerance, *,
             require_cuda: bool = False, measure: bool = True) -> tuple[BackendResult, np.ndarray | None]:
    """Run backend ``b`` on ``inputs`` and judge it against ``ref`` (None: it *is* the reference)."""
    res, runner = open_backend(b, ctx, require_cuda)
    if runner is None:
        return res, None
    res.runtime = runner.runtime
    x = inputs.for_backend(b)
    try:
        t, batch_times = time.perf_counter(), []
        full, sizes = batch_plan(runner)
        outs = run_batched(runner, x, full, batch_times)
        res.seconds_full_pass = round(time.perf_counter() - t, 3)
        k = min(BATCH_INVARIANCE_SAMPLES, len(x))
        by_batch = None if sizes is None else {s: run_batched(runner, x[:k], s)[0] for s in sizes}
        timing = measure_timing(runner, x, batch_times) if measure else None
    except Exception as e:  # as above: the runtime's own error types, reported in one line
        return res.fail(f"cannot run {b.artefact or 'the checkpoint'}: {first_line(e)}"), None
    logits = outs[0]
    if logits.shape != (len(x), len(ctx.checkpoint["classes"])):
        return res.fail(f"outputs {logits.shape[1:]} logits per sample; the model has "
                        f"{len(ctx.checkpoint['classes'])} classes"), None
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
        res.failures.append(f"not batch-invariant: max diff {res.batch_invariance.max_abs_diff:.3e} across batch sizes")
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
    parent = path.parent if path.parent != Path("") else Path(".")
    probe = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ConfigError(f"--report {path} cannot be written ({probe} is not a writable folder)")


def load_artefacts(exported: Path, checkpoint: Path | None) -> tuple[dict, dict, Path, str]:
    """Metadata of the export and the checkpoint it came from; refuse a pair that does not belong together."""
    from .checkpoint import load_checkpoint
    from .fsutil import sha256_file

    meta_file = exported / "metadata.json"
    if not (exported / "model.onnx").is_file() or not meta_file.is_file():
        raise ConfigError(f"{exported} is not an export folder (missing model.onnx or metadata.json); "
                          "run `lenet-export onnx` first")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{meta_file} is not valid JSON: {first_line(e)}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{meta_file} holds a JSON {type(meta).__name__}, not the metadata object lenet-export writes")
    ckpt_path = Path(checkpoint) if checkpoint else exported / "best.pth"
    if not ckpt_path.is_file():
        raise ConfigError(f"no checkpoint: pass --checkpoint (none at {ckpt_path})")
    sha = sha256_file(ckpt_path)
    if sha != meta.get("checkpoint_sha256"):
        raise ConfigError(f"{exported} was not exported from {ckpt_path} (checkpoint sha256 {sha[:12]}... "
                          f"vs recorded {str(meta.get('checkpoint_sha256'))[:12]}...)")
    return meta, load_checkpoint(ckpt_path), ckpt_path, sha


def load_inputs(name: str, ckpt: dict, data_dir: str | None, train: bool = False) -> tuple[Inputs, str]:
    from .data import dataset_info, load_split, normalize, to_raw_layout

    info = dataset_info(name)
    if list(info.input_shape) != list(ckpt["input_shape"]):
        raise ConfigError(f"data set {name} has {info.channels}x{info.size}x{info.size} images but the model "
                          f"expects {'x'.join(map(str, ckpt['input_shape']))}")
    split = load_split(name, train=train, data_dir=data_dir)
    x = normalize(split.images, ckpt["mean"], ckpt["std"]).numpy()
    return Inputs(x, to_raw_layout(split.images).numpy(), split.labels.numpy()), split.source


def requested(names: tuple[str, ...] | None) -> list[Backend]:
    chosen = registry.names() if names is None else names
    return [registry.get(n) for n in dict.fromkeys([REFERENCE, *chosen])]


def verify(opts: VerifyOptions, log=print) -> Report:
    """Run the suite and return the report (also written to ``opts.report``); ``Report.check()`` is the verdict."""
    from .metadata import check_metadata

    _check_report_path(opts.report)
    chosen = requested(opts.backends)
    exported = Path(opts.exported)
    meta, ckpt, ckpt_path, sha = load_artefacts(exported, opts.checkpoint)
    name = opts.dataset or ckpt["dataset"]
    inputs, source = load_inputs(name, ckpt, opts.data_dir)
    ctx = Context(exported, meta, ckpt)
    rep = Report(model=ckpt["model"], dataset=name, data_source=source, samples=len(inputs.labels),
                 exported=str(exported), checkpoint=str(ckpt_path), checkpoint_sha256=sha, tolerance=opts.tolerance,
                 reference=REFERENCE, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 lenet_export_version=__version__)
    rep.metadata = check_metadata(exported, ckpt, sha, meta, backends=[b.name for b in chosen])
    outputs: dict[str, np.ndarray] = {}
    for b in chosen:
        res, logits = evaluate(b, ctx, inputs, outputs.get(REFERENCE), opts.tolerance, require_cuda=opts.require_cuda)
        rep.backends[b.name] = res
        if logits is not None:
            outputs[b.name] = logits
        log(f"{b.name:<17} {res.status:<7} " + (f"acc {res.accuracy:.4f}  max|diff| {res.logits.max_abs:.2e}  "
                                                  if res.ran else "") + "; ".join(res.failures or [res.reason or ""]))
    if REFERENCE not in outputs:
        raise ConfigError(f"the reference ({REFERENCE}) could not run: {rep.backends[REFERENCE].reason}")
    rep.reference_accuracy = rep.backends[REFERENCE].accuracy
    from .diff import attach

    attach(rep, ctx, inputs, opts.tolerance)  # first diverging layer of each failed backend; never raises
    rep.pairwise = pairwise(outputs)
    if opts.report:
        rep.write(opts.report)
    return rep
