"""Replay a parity record on this machine: ``lenet-export verify --replay verify.json``.

The record (a report and its sidecar, ``record``) says what every backend gave on the recording machine. Here
the same backends run again on the same test split and are compared with it sample by sample:

* an exact (FP32) backend reproduces when every logit is within the record's tolerance of the recorded
  reference logits and every sample keeps the class it had in the record;
* an approximate variant (FP16, INT8) reproduces when its accuracy here is within its budget of the recorded
  one (either way) and, judged against its *own* recorded logits (``parity.judge_approximate``), no confident
  prediction changes class. INT8 kernels differ between CPUs (VNNI or not), so a few near-tie samples may change: they
  are listed, with both machines' margins.

A backend that cannot run here is reported as skipped, never as reproduced. The machines' kernel-relevant
difference is named (``machine.difference``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import backends as registry
from .errors import ConfigError, LenetExportError, first_line
from .machine import Machine, difference, this_machine
from .parity import BUDGETS, Failure, Tolerance, judge_approximate, top2_margin
from .record import Record, load_record

REPRODUCED, DIFFERS, SKIPPED = "reproduced", "differs", "skipped"
MAX_LISTED = 50  # differing samples kept per backend


@dataclass
class SampleDiff:
    index: int
    there_class: int
    here_class: int
    there_margin: float
    here_margin: float


@dataclass
class BackendReplay:
    name: str
    status: str
    precision: str = "fp32"
    reason: str = ""
    accuracy_there: float | None = None
    accuracy_here: float | None = None
    max_abs: float | None = None  # exact: vs the recorded reference; approximate: vs its own recorded logits
    differing_count: int = 0
    differing: list[SampleDiff] = field(default_factory=list)  # the first MAX_LISTED
    failures: list[Failure] = field(default_factory=list)


@dataclass
class Replay:
    record: str
    there: Machine
    here: Machine
    difference: str
    backends: dict[str, BackendReplay] = field(default_factory=dict)
    record_sha256: str = ""  # of the report replayed: says which record a kept replay is of

    @property
    def passed(self) -> bool:
        statuses = [b.status for b in self.backends.values()]
        return REPRODUCED in statuses and all(s in (REPRODUCED, SKIPPED) for s in statuses)

    def to_dict(self) -> dict:
        from .report import json_safe

        d = asdict(self)
        for b in d["backends"].values():
            b["failures"] = [{**f, "text": str(Failure(**f))} for f in b["failures"]]
        return json_safe({"passed": self.passed, **d})


def _load_report(path: Path) -> dict:
    """The report, its fields checked: it is the user's input."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"--replay {path}: not a readable report ({first_line(e)})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("backends"), dict) or not isinstance(rec.get("sidecar"), dict):
        raise ConfigError(f"--replay {path}: not a replayable lenet-export report (no sidecar; verify writes one "
                          "with --report since report format 3)")
    backends = rec["backends"]
    if not all(isinstance(b, dict) and b.get("precision", "fp32") in ("fp32", *BUDGETS) for b in backends.values()):
        raise ConfigError(f"--replay {path}: its backends are not lenet-export results")
    try:
        Tolerance(**(rec.get("tolerance") or {}))
        Machine.from_dict(rec.get("machine"))
    except (TypeError, ValueError, LenetExportError) as e:
        raise ConfigError(f"--replay {path}: malformed tolerance or machine ({first_line(e)})") from None
    return rec


def _diffs(record: Record, name: str, here: np.ndarray) -> tuple[int, list[SampleDiff]]:
    there_cls, here_cls = record.classes[name], here.argmax(1)
    idx = np.nonzero(there_cls != here_cls)[0]
    margin = top2_margin(here)
    return len(idx), [SampleDiff(int(i), int(there_cls[i]), int(here_cls[i]), float(record.margins[name][i]),
                                 float(margin[i])) for i in idx[:MAX_LISTED]]


def compare(name: str, precision: str, here: np.ndarray, record: Record, tol: Tolerance) -> BackendReplay:
    """One backend's logits here against the record."""
    r = BackendReplay(name, REPRODUCED, precision)
    r.differing_count, r.differing = _diffs(record, name, here)
    if precision == "fp32":
        ref = record.reference_logits
        r.max_abs = float(np.abs(here.astype(np.float64) - ref).max())
        if not tol.allows(ref, here).all():
            r.failures.append(Failure("logits", {"max_abs": r.max_abs, "atol": tol.atol, "rtol": tol.rtol}))
        if r.differing_count:
            r.failures.append(Failure("replay-classes", {"count": r.differing_count}, r.differing[0].index))
    r.accuracy_here = float((here.argmax(1) == record.labels).mean())
    r.accuracy_there = float((record.classes[name] == record.labels).mean())
    if precision != "fp32":
        budget = BUDGETS[precision].accuracy_drop
        j = judge_approximate(record.logits[name], here, record.labels, BUDGETS[precision])
        r.max_abs, r.failures = j.logits.max_abs, j.failures
        if abs(r.accuracy_here - r.accuracy_there) > budget + 1e-12:  # a gain here is a difference too
            r.failures.append(Failure("replay-accuracy", {"here": r.accuracy_here, "there": r.accuracy_there,
                                                          "points": 100 * abs(r.accuracy_here - r.accuracy_there),
                                                          "budget": 100 * budget}))
    r.status = DIFFERS if r.failures else REPRODUCED
    return r


def replay(report: Path, exported: Path, checkpoint: Path | None, data_dir: str | None, log=print) -> Replay:
    from .artefacts import load_export
    from .verify import VerifyOptions, run_suite

    rec = _load_report(report)
    if rec.get("images"):
        raise ConfigError(f"--replay {report} was recorded on an image folder ({rec['images'].get('folder')}); "
                          "replay reruns test-split records: run verify --images there instead")
    export = load_export(Path(exported), checkpoint)
    if rec.get("checkpoint_sha256") != export.checkpoint_sha256:
        raise ConfigError(f"--replay {report} is the record of another export (checkpoint sha256 "
                          f"{str(rec.get('checkpoint_sha256'))[:12]}..., this export's {export.checkpoint_sha256[:12]}...)")
    record = load_record(Path(report).parent / str(rec["sidecar"].get("file")), rec["sidecar"].get("sha256"))
    tol = Tolerance(**(rec.get("tolerance") or {}))
    ran = [n for n in rec["backends"] if n in record.classes]
    known = [n for n in ran if n in registry.registry()]
    here_rep, outputs, inputs = run_suite(VerifyOptions(exported=export.folder, checkpoint=checkpoint,
                                                        data_dir=data_dir, dataset=rec.get("dataset"),
                                                        backends=tuple(known), tolerance=tol), log)
    if len(inputs.labels) != len(record.labels) or not np.array_equal(inputs.labels, record.labels):
        raise ConfigError(f"the test split here is not the one {report} was recorded on (labels differ)")
    here = this_machine()
    there = Machine.from_dict(rec.get("machine"))
    out = Replay(str(report), there, here, difference(here, there),
                 record_sha256=hashlib.sha256(Path(report).read_bytes()).hexdigest())
    for name in ran:
        precision = rec["backends"][name].get("precision", "fp32")
        if precision != "fp32" and name not in record.logits:
            raise ConfigError(f"--replay {report}: the record has no logits for the variant {name}")
        if name not in outputs:
            res = here_rep.backends.get(name)
            why = (res.reason if res else None) or f"{name} is not a backend of this lenet-export"
            status = DIFFERS if res is not None and res.status == "failed" else SKIPPED
            out.backends[name] = BackendReplay(name, status, precision, why)
            continue
        out.backends[name] = compare(name, precision, outputs[name], record, tol)
    return out
