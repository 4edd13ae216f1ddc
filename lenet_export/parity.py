"""The parity rules, and nothing else: how one runtime's outputs are judged against the reference's.

Knows no runtime and no file format (numpy only). Used by the export-time check, ``verify`` and ``ship``.

A backend passes when
  1. every output is finite (no NaN or Inf);
  2. every logit is within ``atol + rtol * |reference|`` (numpy ``allclose`` semantics);
  3. its accuracy equals the reference's;
  4. no sample changes class where the reference's top-1/top-2 margin exceeds ``confident_bound``: twice
     the 99th percentile of |difference| (at least twice atol). A flip needs a difference of at least half
     the margin on that sample, so such a flip means that sample's error is far beyond what the runtime does
     elsewhere; a flip on a near-tie is listed, but is not a defect. (Twice the *max* difference, the
     earlier rule, can never be exceeded by a flip, so it could not fail.)
  5. it is batch-invariant: the first samples give the same logits (same tolerance) at batch sizes
     1, 2, 7 and at the full evaluation batch;
  6. where the artefact also outputs probabilities, they equal softmax(logits) within the tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Tolerance:
    """Parity tolerance for float32 logits.

    Runtimes compute the same float32 graph with different kernels and summation orders. For these layer
    sizes (dot products of at most a few thousand terms, logits of magnitude ~10) that moves logits by
    ~1e-6..1e-5. 1e-4 absolute plus 1e-4 relative leaves ten times that margin, while a real defect (a
    changed weight, wrong layout or normalisation, TF32 left on) moves logits by 1e-3 or far more.
    """

    atol: float = 1e-4
    rtol: float = 1e-4

    def __post_init__(self):
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"--{name} must be a finite number >= 0, got {v}")

    def allows(self, ref: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Elementwise: is ``out`` within tolerance of ``ref``?"""
        return np.abs(out.astype(np.float64) - ref.astype(np.float64)) <= self.atol + self.rtol * np.abs(ref)


# Every way a backend can fail, as text: the one place a ``Failure`` becomes words.
MESSAGES = {
    "nonfinite": "{count} NaN or Inf values in the outputs",
    "logits": "logits differ by up to {max_abs:.3e} (> atol {atol:g} + rtol {rtol:g}*|ref|)",
    "accuracy": "accuracy {accuracy:.4f} != reference {reference:.4f}",
    "confident-flips": "{count} confident predictions changed class (margin > {bound:.3g}, e.g. sample {sample}, "
                       "reference margin {margin:.3g})",
    "probabilities": "probabilities differ from softmax(logits) by up to {max_abs:.3e}",
    "accuracy-drop": "accuracy {accuracy:.4f} is {drop:.2f} points below the reference {reference:.4f} "
                     "(budget {budget:.2f})",
    "batch-invariance": "not batch-invariant: max diff {max_abs:.3e} across batch sizes",
    "outputs": "outputs {shape} logits per sample; the model has {classes} classes",
    "load": "cannot load {what}: {message}",
    "run": "cannot run {what}: {message}",
    "fallback": "{message}",
    "require-cuda": "--require-cuda: {message}",
    "replay-classes": "{count} samples changed class against the record (e.g. sample {sample})",
    "replay-accuracy": "accuracy {here:.4f} here, {there:.4f} in the record: {points:.2f} points apart "
                       "(budget {budget:.2f})",
}


@dataclass
class Failure:
    """One broken rule: which (a key of ``MESSAGES``), its numbers, and the sample it names, if any."""

    rule: str
    numbers: dict = field(default_factory=dict)
    sample: int | None = None

    def __str__(self) -> str:
        return MESSAGES[self.rule].format(**self.numbers, sample=self.sample)


CONFIDENT_MARGIN_FACTOR = 2.0  # rule 4: a flip counts when the reference margin exceeds this x p99 |diff|
BATCH_INVARIANCE_SIZES = (1, 2, 7)
BATCH_INVARIANCE_SAMPLES = 70  # the first samples of the split, re-run at each of the sizes above


@dataclass
class LogitStats:
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float  # over logits with |reference| > atol: relative error is meaningless near 0
    within_tolerance: bool


@dataclass
class Flip:
    """A sample whose top-1 class differs between two runs, with the reference's top-1/top-2 margin."""

    index: int
    reference_class: int
    backend_class: int
    reference_margin: float


@dataclass
class BatchInvariance:
    batch_sizes: list[int]
    samples: int
    max_abs_diff: float
    passed: bool
    fixed_batch: int | None = None  # the artefact takes this batch only: there was nothing to compare

    @property
    def summary(self) -> str:
        return f"fixed batch {self.fixed_batch}" if self.fixed_batch is not None else f"{self.max_abs_diff:.1e}"


@dataclass
class Judgement:
    """Everything the rules found about one backend's outputs; ``failures`` empty means it passed."""

    accuracy: float
    logits: LogitStats
    argmax_agree: int  # samples whose class equals the reference's
    flips: list[Flip]
    nonfinite: int
    failures: list[Failure] = field(default_factory=list)


def compare_logits(ref: np.ndarray, out: np.ndarray, tol: Tolerance) -> LogitStats:
    d = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    big = np.abs(ref) > tol.atol
    rel = d[big] / np.abs(ref[big]) if big.any() else np.zeros(1)
    return LogitStats(max_abs=float(d.max()), mean_abs=float(d.mean()), p99_abs=float(np.percentile(d, 99)),
                      max_rel=float(rel.max()), within_tolerance=bool(tol.allows(ref, out).all()))


def top2_margin(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def find_flips(ref: np.ndarray, out: np.ndarray) -> list[Flip]:
    rp, op = ref.argmax(1), out.argmax(1)
    margin = top2_margin(ref)
    return [Flip(int(i), int(rp[i]), int(op[i]), float(margin[i])) for i in np.nonzero(rp != op)[0]]


def confident_bound(stats: LogitStats, tol: Tolerance) -> float:
    return CONFIDENT_MARGIN_FACTOR * max(stats.p99_abs, tol.atol)


def confident_flips(flips: list[Flip], bound: float) -> list[Flip]:
    return [f for f in flips if f.reference_margin > bound]


def nonfinite_count(*arrays: np.ndarray) -> int:
    return int(sum(np.count_nonzero(~np.isfinite(a)) for a in arrays))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def batch_invariance(outs: dict[int, np.ndarray] | None, full: np.ndarray, full_batch: int,
                     tol: Tolerance) -> BatchInvariance:
    """``outs[b]``: the first samples run at batch size ``b``; ``full``: the same samples from the full pass.
    ``outs`` None: a fixed-batch artefact, reported as such rather than as a pass over compared batch sizes."""
    if outs is None:
        return BatchInvariance([full_batch], 0, 0.0, True, fixed_batch=full_batch)
    worst, ok = 0.0, True
    for out in outs.values():
        ref = full[:len(out)]
        worst = max(worst, float(np.abs(out.astype(np.float64) - ref).max()))
        ok &= bool(tol.allows(ref, out).all())
    samples = len(next(iter(outs.values()))) if outs else 0
    return BatchInvariance([*outs, full_batch], samples, worst, ok)


def judge(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, tol: Tolerance,
          probabilities: np.ndarray | None = None) -> Judgement:
    """Rules 1-4 and 6 on one backend's logits (and probabilities, if it has them) against the reference's."""
    bad = nonfinite_count(out) + (nonfinite_count(probabilities) if probabilities is not None else 0)
    if bad:  # every other statistic would be NaN: say what is wrong and stop there
        stats = LogitStats(math.inf, math.inf, math.inf, math.inf, False)
        classes = np.nan_to_num(out).argmax(1)
        j = Judgement(float((classes == labels).mean()), stats, int((classes == ref.argmax(1)).sum()), [], bad)
        j.failures.append(Failure("nonfinite", {"count": bad}))
        return j
    stats = compare_logits(ref, out, tol)
    flips = find_flips(ref, out)
    acc, ref_acc = float((out.argmax(1) == labels).mean()), float((ref.argmax(1) == labels).mean())
    j = Judgement(acc, stats, len(out) - len(flips), flips, 0)
    if not stats.within_tolerance:
        j.failures.append(Failure("logits", {"max_abs": stats.max_abs, "atol": tol.atol, "rtol": tol.rtol}))
    if acc != ref_acc:
        j.failures.append(Failure("accuracy", {"accuracy": acc, "reference": ref_acc}))
    bound = confident_bound(stats, tol)
    if confident := confident_flips(flips, bound):
        j.failures.append(_flips_failure(confident, bound))
    if probabilities is not None:
        p_ok = np.abs(probabilities.astype(np.float64) - softmax(out)) <= tol.atol + tol.rtol * np.abs(probabilities)
        if not p_ok.all():
            worst = float(np.abs(probabilities - softmax(out)).max())
            j.failures.append(Failure("probabilities", {"max_abs": worst}))
    return j


def _flips_failure(confident: list[Flip], bound: float) -> Failure:
    return Failure("confident-flips", {"count": len(confident), "bound": bound,
                                       "margin": confident[0].reference_margin}, confident[0].index)


@dataclass(frozen=True)
class Budget:
    """Rules for an *approximate* variant (FP16, INT8), judged against the FP32 reference instead of rules 2-5:

    * every output finite;
    * accuracy may drop by at most ``accuracy_drop`` (a fraction: 0.005 = 0.5 points); a gain is fine;
    * no *confident* flip: a flip needs an error of at least half the sample's reference margin, so a flip
      whose margin exceeds ``FLIP_FACTOR`` x the 99th percentile of the variant's per-sample max |Δ| means that
      sample's error is far beyond the variant's typical error (every flip is listed with its margin);
    * where the artefact calibrates, on the training split only (checked by verify from the metadata).
    """

    accuracy_drop: float


BUDGETS = {"fp16": Budget(0.0005), "int8": Budget(0.005)}  # FP16: 0.05 points; INT8: 0.5 points
FLIP_FACTOR = 2.0


def judge_approximate(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, budget: Budget) -> Judgement:
    bad = nonfinite_count(out)
    stats = compare_logits(ref, np.nan_to_num(out), Tolerance(0.0, 0.0))
    stats.within_tolerance = True  # no elementwise tolerance for approximate variants; see Budget
    flips = find_flips(ref, out)
    acc, ref_acc = float((out.argmax(1) == labels).mean()), float((ref.argmax(1) == labels).mean())
    j = Judgement(acc, stats, len(out) - len(flips), flips, bad)
    if bad:
        j.failures.append(Failure("nonfinite", {"count": bad}))
    if ref_acc - acc > budget.accuracy_drop + 1e-12:
        j.failures.append(Failure("accuracy-drop", {"accuracy": acc, "drop": 100 * (ref_acc - acc), "reference": ref_acc,
                                                    "budget": 100 * budget.accuracy_drop}))
    per_sample = np.abs(out.astype(np.float64) - ref).max(axis=1)
    bound = FLIP_FACTOR * float(np.percentile(per_sample, 99))
    if confident := confident_flips(flips, bound):
        j.failures.append(_flips_failure(confident, bound))
    return j


@dataclass
class Pairwise:
    """Backend x backend agreement over the backends that ran."""

    backends: list[str]
    argmax_agree: list[list[int]]
    max_abs: list[list[float]]
    flips: dict[str, dict]  # "a | b" -> {"count", "samples": the first indices} where the classes differ


def pairwise(outputs: dict[str, np.ndarray], max_listed: int = 50) -> Pairwise:
    names = list(outputs)
    classes = {n: o.argmax(1) for n, o in outputs.items()}
    agree = [[int((classes[a] == classes[b]).sum()) for b in names] for a in names]
    diff = [[float(np.abs(outputs[a].astype(np.float64) - outputs[b]).max()) for b in names] for a in names]
    flips = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            idx = np.nonzero(classes[a] != classes[b])[0]
            if len(idx):
                flips[f"{a} | {b}"] = {"count": int(len(idx)), "samples": [int(k) for k in idx[:max_listed]]}
    return Pairwise(names, agree, diff, flips)
