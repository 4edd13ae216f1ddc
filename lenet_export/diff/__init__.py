"""Layer-wise localisation: find the first layer where a runtime's values leave the reference's.

    lenet-export diff --exported DIR --backend ort-cpu [--samples 64] [--json FILE]

The first ``samples`` test images run through eager PyTorch with forward hooks on every leaf module and
through the backend's runtime with its intermediate values exposed (the backend's ``probe``); the runtime's
tensors are matched to torch modules by the names the exporter records (``lenet_export.layermap``). Each comparable point gets max and
mean |Δ|, relative L2 error and SQNR, accumulated batch by batch (``stats``); the first point beyond the
parity tolerance (``parity.Tolerance``, same defaults as verify) is ``first_divergent_layer``.

``verify`` is given ``attach`` by its callers (``VerifyOptions.localise``) and runs it after the parity pass:
it localises every failing backend that has a probe, and never raises. Nothing here imports ``verify``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backends as registry
from ..backends import Context, Skip
from ..backends.torch_eager import hooked, leaves
from ..errors import ArtefactError, ConfigError, LenetExportError, first_line
from ..layermap import INPUT, OUTPUT
from ..parity import Tolerance
from .stats import Accumulator, LayerStats

DEFAULT_SAMPLES = 64
BATCH = 64  # activations of one batch at a time: memory does not grow with --samples

__all__ = ["DEFAULT_SAMPLES", "DiffOptions", "DiffResult", "LayerStats", "attach", "diff", "localise",
           "require_supported"]


def require_supported(backend: str) -> None:
    """``backend`` exists and its runtime exposes intermediate values (it has a probe)."""
    if registry.get(backend).probe is None:
        raise ConfigError(f"diff does not support backend {backend!r} (its runtime exposes no intermediate "
                          f"values here); supported: {', '.join(registry.probed())}")


@dataclass
class DiffOptions:
    exported: Path
    backend: str
    checkpoint: Path | None = None  # default: <exported>/best.pth
    data_dir: str | None = None
    samples: int = DEFAULT_SAMPLES  # the first N test images
    tolerance: Tolerance = Tolerance()


@dataclass
class DiffResult:
    backend: str
    artefact: str
    runtime: str
    samples: int
    tolerance: Tolerance
    layers: list[LayerStats] = field(default_factory=list)
    first_divergent_layer: str | None = None  # torch module path of the first point beyond tolerance
    first_divergent_modules: list[str] = field(default_factory=list)  # the modules that point covers
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> LayerStats | None:
        return next((s for s in self.layers if not s.within_tolerance), None)

    def to_dict(self) -> dict:
        from ..report import json_safe

        return json_safe(dataclasses.asdict(self))


def _rows(order: list[str], kinds: dict[str, str], points: dict[str, str]) -> tuple[list[LayerStats], list[str]]:
    """Comparable points in execution order; each covers the torch leaves since the previous point, and the
    model's own output (``OUTPUT``), where a probe has it, comes last."""
    points = dict(points)
    # a batch norm folded into the conv before it (see ``lenet_export.layermap``); after pooling (``pool_first``)
    # nothing absorbs it: it joins the point after it (a ReLU fused with it)
    for prev, leaf in zip(order, order[1:]):
        if (kinds[leaf].startswith("BatchNorm") and leaf not in points and prev in points
                and kinds[prev].startswith(("Conv", "Linear"))):
            points[leaf] = points.pop(prev)
    rows = [LayerStats(INPUT, points[INPUT], [INPUT])] if INPUT in points else []
    pending: list[str] = []
    for leaf in order:
        pending.append(leaf)
        if leaf in points:
            rows.append(LayerStats(leaf, points[leaf], pending))
            pending = []
    if OUTPUT in points:  # the artefact's own output: the model's
        rows.append(LayerStats(OUTPUT, points[OUTPUT], pending))
        pending = []
    notes = [f"no runtime tensor for {', '.join(pending)} (after the last mapped layer)"] if pending else []
    unknown = [k for k in points if k not in (INPUT, OUTPUT) and k not in kinds]
    if unknown:
        notes.append(f"runtime names modules the checkpoint's model does not have: {', '.join(unknown)}")
    return rows, notes


def localise(backend: str, ctx: Context, x_float: np.ndarray, x_uint8: np.ndarray,
             tol: Tolerance = Tolerance()) -> DiffResult:
    """Compare ``backend``'s intermediate values with eager PyTorch's on these samples, point by point."""
    import torch

    from ..checkpoint import model_from_checkpoint

    require_supported(backend)
    b = registry.get(backend)
    try:
        b.require_package()
        probe = b.probe(ctx)
    except Skip as e:
        raise ConfigError(f"{backend} cannot run here: {e}") from None
    except LenetExportError:
        raise
    except Exception as e:  # each runtime raises its own types on a broken artefact: one line naming it
        raise ArtefactError(f"{backend} cannot load {b.artefact}: {first_line(e)}") from None
    model = model_from_checkpoint(ctx.checkpoint)
    modules = dict(model.named_modules())
    kinds = {n: type(modules[n]).__name__ for n in leaves(model)}
    if {INPUT, OUTPUT} & set(kinds):  # diff's own keys for the model's input and output
        raise ConfigError(f"the model has a module named {INPUT!r} or {OUTPUT!r}: diff cannot tell it from the model's own")
    ref_run = hooked(model, list(kinds), with_output=True)
    order = [k for k in ref_run(torch.from_numpy(np.ascontiguousarray(x_float[:2]))) if k != OUTPUT]  # execution order
    rows, notes = _rows(order, kinds, probe.points)
    accs = [Accumulator(r, tol) for r in rows]
    for i in range(0, len(x_float), BATCH):
        xf, xu = np.ascontiguousarray(x_float[i:i + BATCH]), np.ascontiguousarray(x_uint8[i:i + BATCH])
        ref = {k: v.numpy() for k, v in ref_run(torch.from_numpy(xf)).items()}
        ref[INPUT] = xf
        try:
            out = probe.run(xf, xu)
        except Exception as e:  # as above
            raise ArtefactError(f"{backend} cannot run {b.artefact}: {first_line(e)}") from None
        for a in accs:
            a.add(ref[a.s.layer], out[a.s.tensor])
    res = DiffResult(backend, probe.artefact, probe.runtime, len(x_float), tol, [a.finish() for a in accs],
                     notes=[*probe.notes, *notes])
    if (first := res.first) is not None:
        res.first_divergent_layer, res.first_divergent_modules = first.layer, list(first.modules)
    return res


def diff(opts: DiffOptions) -> DiffResult:
    """``lenet-export diff``: load the export, its checkpoint and the first ``opts.samples`` test images."""
    from ..artefacts import load_export, load_inputs

    require_supported(opts.backend)
    if not isinstance(opts.samples, int) or opts.samples < 1:
        raise ConfigError(f"--samples must be a positive integer, got {opts.samples}")
    export = load_export(Path(opts.exported), opts.checkpoint)
    ckpt = export.checkpoint
    inputs, _ = load_inputs(ckpt["dataset"], ckpt, opts.data_dir)
    n = min(opts.samples, len(inputs.labels))
    return localise(opts.backend, Context(export.folder, export.metadata, ckpt), inputs.float[:n], inputs.uint8[:n],
                    opts.tolerance)


def attach(report, ctx: Context, inputs, tol: Tolerance, samples: int = DEFAULT_SAMPLES) -> None:
    """For ``verify``: localise every failed backend that ran and that diff supports, into its
    ``layer_diff`` (the table, or ``{"error": ...}``). Never raises: diff must not take verify down."""
    for name, res in report.backends.items():
        if res.status != "failed" or not res.ran or registry.get(name).probe is None:
            continue
        try:
            res.layer_diff = localise(name, ctx, inputs.float[:samples], inputs.uint8[:samples], tol).to_dict()
        except Exception as e:  # any runtime's own error types: one line in the report
            res.layer_diff = {"error": f"diff failed: {first_line(e)}"}
