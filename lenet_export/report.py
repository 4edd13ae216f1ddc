"""The parity report: typed results for one backend and for a whole run, their JSON form, and the verdict.

The JSON keys are the README's ("The JSON report"); ``report_format`` changes when they do.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigError, ParityError
from .metadata import MetadataCheck
from .parity import BatchInvariance, Flip, LogitStats, Pairwise, Tolerance

REPORT_FORMAT = 2
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
    failures: list[str] = field(default_factory=list)
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

    def fail(self, reason: str) -> "BackendResult":
        self.status, self.reason = FAILED, reason
        self.failures.append(reason)
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("name")
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
