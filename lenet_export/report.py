"""The parity report: typed results for one backend and for a whole run, their JSON form, the verdict, and the
one renderer of a backend's row (``cells``) that the terminal table, the model card and the bench table share.

The JSON keys are the README's ("The JSON report"); ``report_format`` changes when they do.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigError, ParityError
from .metadata import MetadataCheck
from .parity import BatchInvariance, Failure, Flip, LogitStats, Pairwise, Tolerance

REPORT_FORMAT = 3  # 3: failures are objects {rule, numbers, sample, text}; machine; sidecar
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class Timing:
    latency_ms_batch1: dict  # {"median", "p90"}
    throughput_img_s: float
    throughput_batch: int


@dataclass
class BackendResult:
    name: str
    status: str  # passed / failed / skipped
    reason: str | None = None  # why skipped, or why it could not run
    failures: list[Failure] = field(default_factory=list)
    artefact: str | None = None
    input: str | None = None  # float (normalised NCHW) or uint8 (decoded images)
    precision: str = "fp32"  # fp16 / int8: an approximate variant, judged by parity.Budget
    size_bytes: int | None = None  # the artefact on disk (with companion files)
    runtime: dict = field(default_factory=dict)  # what actually ran
    accuracy: float | None = None
    argmax_agree: int | None = None
    logits: LogitStats | None = None
    disagreements: list[Flip] = field(default_factory=list)
    batch_invariance: BatchInvariance | None = None
    timing: Timing | None = None
    seconds_full_pass: float | None = None
    layer_diff: dict | None = None  # failed backends: `lenet-export diff`'s table (lenet_export.diff.attach)

    @property
    def ran(self) -> bool:
        return self.logits is not None

    def fail(self, failure: Failure) -> "BackendResult":
        self.status, self.reason = FAILED, str(failure)
        self.failures.append(failure)
        return self

    @property
    def rules(self) -> list[str]:
        """The rules this backend broke."""
        return [f.rule for f in self.failures]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("name")
        d["failures"] = [{**dataclasses.asdict(f), "text": str(f)} for f in self.failures]
        t = d.pop("timing") or {}
        return {**d, **t}


@dataclass
class Report:
    model: str
    dataset: str
    data_source: str
    samples: int
    exported: str
    checkpoint: str
    checkpoint_sha256: str
    tolerance: Tolerance
    reference: str
    created: str
    lenet_export_version: str
    reference_accuracy: float | None = None
    backends: dict[str, BackendResult] = field(default_factory=dict)
    metadata: MetadataCheck = field(default_factory=MetadataCheck)
    pairwise: Pairwise | None = None
    machine: dict = field(default_factory=dict)  # machine.Machine: the CPU and its kernel-relevant features
    sidecar: dict | None = None  # {file, sha256}: the replayable record beside the report (lenet_export.record)
    images: dict | None = None  # verify --images: {folder, fit, invert, files}; sample i is files[i]

    def sample_name(self, i: int) -> str:
        """Sample ``i`` as a user finds it: its file (``--images``), else its index in the test split."""
        return self.images["files"][i] if self.images else str(i)

    @property
    def compared(self) -> list[str]:
        """Backends besides the reference that produced outputs."""
        return [n for n, b in self.backends.items() if n != self.reference and b.ran]

    @property
    def problems(self) -> list[str]:
        """Why the run does not pass; empty when it does."""
        out = [f"parity failed for {', '.join(failed)}"] if (failed := [n for n, b in self.backends.items()
                                                                          if b.status == FAILED]) else []
        if not self.metadata.passed:
            out.append(f"metadata disagrees with the checkpoint ({self.metadata.failures[0]})")
        if not self.compared and not failed:
            out.append("nothing was compared: no backend besides the reference ran")
        return out

    @property
    def passed(self) -> bool:
        return not self.problems

    def check(self) -> None:
        """The verdict as an exception: ``ParityError`` naming what failed."""
        if self.problems:
            raise ParityError("; ".join(self.problems))

    def to_dict(self) -> dict:
        d = {"report_format": REPORT_FORMAT, "passed": self.passed, "problems": self.problems}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "backends":
                v = {n: b.to_dict() for n, b in v.items()}
            elif f.name == "metadata":
                v = {"passed": v.passed, **dataclasses.asdict(v)}
            elif dataclasses.is_dataclass(v):
                v = dataclasses.asdict(v)
            d[f.name] = v
        return d

    def write(self, path) -> None:
        from .fsutil import atomic_write_json

        try:
            atomic_write_json(path, json_safe(self.to_dict()))
        except OSError as e:
            raise ConfigError(f"cannot write the report {path}: {e.strerror or e}") from None


def json_safe(v):
    """Non-finite floats (a backend that output NaN) as strings: strict JSON has no NaN or Infinity."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


COLUMNS = {"backend": "backend", "artefact": "artefact", "size": "size", "status": "status",
           "precision": "precision", "accuracy": "accuracy", "max_abs": "max |Δ| vs torch", "agree": "agree",
           "batch": "batch |Δ|", "latency": "latency b1 (ms)", "throughput": "img/s (batch)", "note": "note"}


def cells(r: BackendResult, samples: int) -> dict[str, str]:
    """One backend's row as text, keyed by ``COLUMNS``: every table of results picks its columns from it."""
    def fmt(v, f: str) -> str:
        return "-" if v is None else format(v, f)

    tm = r.timing
    note = r.reason or (str(r.failures[0]) if r.failures else "") or (
        f"approximate ({r.precision}): budget rules" if r.precision != "fp32" else "")
    from .formats import files_of

    return {"backend": r.name, "artefact": " + ".join(files_of(r.artefact)) if r.artefact else "best.pth",
            "size": "-" if r.size_bytes is None else f"{r.size_bytes / 1024:,.0f} KiB", "status": r.status,
            "precision": r.precision, "accuracy": fmt(r.accuracy, ".4f"),
            "max_abs": fmt(r.logits and r.logits.max_abs, ".1e"),
            "agree": "-" if r.argmax_agree is None else f"{r.argmax_agree}/{samples}",
            "batch": r.batch_invariance.summary if r.batch_invariance else "-",
            "latency": fmt(tm and tm.latency_ms_batch1["median"], ".3f"),
            "throughput": f"{tm.throughput_img_s:,.0f} (b{tm.throughput_batch})" if tm else "-", "note": note}


def markdown_table(results: list[BackendResult], samples: int, columns: tuple[str, ...]) -> str:
    """Results as a Markdown table of ``columns`` (model cards, bench, README)."""
    def esc(v: str) -> str:
        return v.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(COLUMNS[c]) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(esc(cells(r, samples)[c]) for c in columns) + " |" for r in results]
    return "\n".join(lines)
