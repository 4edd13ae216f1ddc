"""What a backend is: one runtime running one artefact. Each module in this package defines some.

A backend says which artefact and package it needs and on which device it runs, and ``open`` returns a
``Runner``: a function from one input batch to the artefact's outputs (logits first), plus what actually ran.
Optionally, ``probe`` opens a ``Probe``: the same runtime with its intermediate values exposed, for ``diff``.
A backend that cannot run on this machine raises ``Skip`` with the reason (and the install command where a
package is missing); one that runs on something other than it claims raises ``Fallback``. Any other
exception from ``open`` or ``run`` fails the backend with its first line.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..artefacts import FLOAT, UINT8  # noqa: F401 (re-exported: the kinds of input a backend takes)
from ..machine import cpu_name  # noqa: F401 (re-exported: what each backend reports it ran on)

class Skip(Exception):
    """The backend cannot run on this machine; the message says why."""


class Fallback(Exception):
    """The backend runs, but not on what it claims (e.g. ONNX Runtime CUDA fell back to CPU)."""


class BatchRangeError(ValueError):
    """A batch size the artefact was not exported for (a fixed batch, or outside a bounded dynamic range)."""


@dataclass
class Context:
    """What a backend may use: the export folder, its metadata and the checkpoint it came from."""

    exported: Path
    metadata: dict
    checkpoint: dict
    endpoints: dict[str, str] = field(default_factory=dict)  # URL scheme (http, grpc) -> a running server's URL

    def artefact(self, name: str) -> Path:
        """The artefact's path; ``Skip`` when the export deliberately left it out (``--formats``, or a variant
        ``quantize`` did not make), an error when it should be there and is not."""
        listed = self.metadata.get("formats")
        if isinstance(listed, dict) and not any(name in files for files in listed.values()):
            from ..formats import QUANTIZE, owner

            fmt = owner(name)
            withheld = (self.metadata.get("withheld_variants") or {}).get(fmt.name) if fmt else None
            if withheld:
                raise Skip(f"{name} was withheld by lenet-export ship: {withheld}")
            if fmt is None or fmt.stage == QUANTIZE:
                how = f" (with {fmt.install})" if fmt and fmt.missing() else ""
                raise Skip(f"the export has no {name} (lenet-export quantize --exported {self.exported}{how})")
            why = (self.metadata.get("skipped_formats") or {}).get(fmt.name)
            raise Skip(f"the export has no {name} (format {fmt.name}: {why or 'not requested'}; "
                       f"lenet-export onnx --formats {fmt.name})")
        from ..formats import files_of

        for f in files_of(name):  # the artefact and its companions (model.bin beside model.xml)
            if not (self.exported / f).is_file():
                raise FileNotFoundError(f"missing {f} in {self.exported}")
        return self.exported / name


@dataclass
class Probe:
    """A runtime with its intermediate values exposed (``lenet-export diff``)."""

    artefact: str
    points: dict[str, str]  # torch module path (or ``input``) -> runtime tensor name, in execution order
    run: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]  # (float, uint8) batch -> {tensor: value}
    runtime: str  # what ran, in words
    notes: list[str] = field(default_factory=list)  # what the probe changed to see inside (shown with the table)


@dataclass
class Runner:
    """``batch_range``: the (smallest, largest) batch the artefact takes, read from the artefact (None: any).
    ``run`` refuses a batch outside it with ``BatchRangeError`` before the runtime sees it: runtimes answer
    with a resize error code (ExecuTorch) or a shape message (LiteRT) that does not say what to do."""

    run: Callable[[np.ndarray], list[np.ndarray]]  # one batch -> outputs, logits first
    runtime: dict  # what actually ran: package version, providers, device, threads, TF32
    sync: Callable[[], None] = lambda: None  # wait for asynchronous devices before reading a clock
    batch_range: tuple[int, int] | None = None
    close: Callable[[], None] = lambda: None  # release what ``open`` started (a server process); called once

    def __post_init__(self):
        if self.batch_range is None:
            return
        lo, hi = self.batch_range
        self.runtime["batch_range"] = [lo, hi]  # reported with what ran
        if lo != 1 or hi < 1:  # verify's latency and last partial batch need batch 1; no artefact here needs more
            raise ValueError(f"batch range {self.batch_range}: lenet-export runs artefacts that take batch 1 to N")
        inner = self.run

        def run(x: np.ndarray) -> list[np.ndarray]:
            if not lo <= len(x) <= hi:
                takes = f"a fixed batch of {lo}" if lo == hi else f"batches of {lo} to {hi}"
                raise BatchRangeError(f"batch of {len(x)} refused: the artefact was exported for {takes}")
            return inner(x)
        self.run = run


@dataclass(frozen=True)
class Backend:
    name: str
    artefact: str | None  # file in the export folder; None: the checkpoint itself
    package: str  # import name of the runtime it needs
    install: str  # how to get that package
    open: Callable[[Context], Runner] = field(compare=False, repr=False)
    device: str = "cpu"
    input: str = FLOAT
    precision: str = "fp32"  # fp32: the strict rules; fp16 / int8: an approximate variant (parity.BUDGETS)
    probe: Callable[[Context], Probe] | None = field(default=None, compare=False, repr=False)  # for diff

    def require_package(self) -> None:
        if importlib.util.find_spec(self.package) is None:
            raise Skip(f"{self.package} is not installed ({self.install})")


def cuda_device() -> str:
    """The CUDA device's name, or ``Skip`` when there is none."""
    import torch

    if not torch.cuda.is_available():
        raise Skip("no CUDA device: torch.cuda.is_available() is False")
    return torch.cuda.get_device_name(0)
