"""Running per-layer statistics of reference vs runtime activations: updated batch by batch, so no
activation outlives its batch (memory stays bounded whatever ``--samples`` is). numpy only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..parity import Tolerance


@dataclass
class LayerStats:
    """One comparable point: the output of torch module ``layer`` vs runtime tensor ``tensor``."""

    layer: str  # torch module path as in the state dict (``features.5``), or ``input`` (normalised input)
    tensor: str  # the runtime's name for the same value (ONNX tensor, IR tensor, TorchScript submodule)
    modules: list[str]  # torch modules this point covers (a conv and the batch norm folded into it)
    shape: list[int] = field(default_factory=list)  # per sample
    max_abs: float = 0.0
    mean_abs: float = 0.0
    rel_l2: float = 0.0  # ||runtime - reference|| / ||reference||
    sqnr_db: float = math.inf  # 10 log10(||reference||^2 / ||runtime - reference||^2)
    beyond_tolerance: int = 0  # elements outside atol + rtol * |reference|
    nonfinite: int = 0  # NaN / Inf in the runtime's values
    within_tolerance: bool = True
    note: str = ""

    @property
    def label(self) -> str:
        return "+".join(self.modules) if len(self.modules) > 1 else self.layer


class Accumulator:
    """Sums for one layer over batches; ``finish()`` gives its ``LayerStats``."""

    def __init__(self, stats: LayerStats, tol: Tolerance):
        self.s, self.tol = stats, tol
        self.n = 0
        self.sum_abs = self.sum_d2 = self.sum_r2 = 0.0

    def add(self, ref: np.ndarray, out: np.ndarray) -> None:
        s = self.s
        if s.note:  # already not comparable
            return
        out = np.asarray(out)
        if out.shape != ref.shape:
            if out.size == ref.size and out.shape[:1] == ref.shape[:1]:
                out = out.reshape(ref.shape)  # e.g. a flatten the runtime left as N x C x 1 x 1
            else:
                s.note = f"shape {list(out.shape[1:])} vs reference {list(ref.shape[1:])}"
                s.within_tolerance = False
                return
        s.shape = list(ref.shape[1:])
        r, o = ref.astype(np.float64), out.astype(np.float64)
        bad = ~np.isfinite(o)
        s.nonfinite += int(bad.sum())
        d = np.where(bad, np.inf, np.abs(o - r))
        s.beyond_tolerance += int((~self.tol.allows(r, o)).sum())  # NaN / Inf are never allowed
        s.max_abs = max(s.max_abs, float(d.max()) if d.size else 0.0)
        self.n += d.size
        self.sum_abs += float(d.sum())
        self.sum_d2 += float(np.square(d).sum())
        self.sum_r2 += float(np.square(r).sum())

    def finish(self) -> LayerStats:
        s = self.s
        if s.note:
            return s
        s.mean_abs = self.sum_abs / self.n if self.n else 0.0
        s.rel_l2 = math.sqrt(self.sum_d2 / self.sum_r2) if self.sum_r2 else (0.0 if not self.sum_d2 else math.inf)
        if not self.sum_d2:
            s.sqnr_db = math.inf
        elif not self.sum_r2 or math.isinf(self.sum_d2):
            s.sqnr_db = -math.inf
        else:
            s.sqnr_db = 10 * math.log10(self.sum_r2 / self.sum_d2)
        s.within_tolerance = s.beyond_tolerance == 0 and s.nonfinite == 0
        return s
