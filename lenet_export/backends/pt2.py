"""torch.export: ``model.pt2`` loaded with ``torch.export.load`` and run as its ``module()`` on CPU. The diff probe:
``torch.export.unflatten`` restores the module tree; forward hooks on its leaves."""

from __future__ import annotations

import numpy as np

from ..native import captured_stderr, quiet_logger
from .base import Backend, Context, Probe, Runner
from .torch_eager import INSTALL, hooked, leaves, module_runner


def _open(ctx: Context) -> Runner:
    import torch

    with captured_stderr(), quiet_logger("torch.export"):  # torch logs a traceback before it raises on a bad file
        program = torch.export.load(str(ctx.artefact("model.pt2")))
    runner = module_runner(program.module(), "cpu", to_eval=False)
    runner.runtime["program"] = "torch.export ExportedProgram"
    return runner


def _probe(ctx: Context) -> Probe:
    import torch

    with captured_stderr(), quiet_logger("torch.export"):
        program = torch.export.load(str(ctx.artefact("model.pt2")))
    module = torch.export.unflatten(program)
    flip = bool(ctx.checkpoint["model_args"].get("flip_tta"))  # the output is not the last layer's: a row of its own
    run_t = hooked(module, leaves(module), with_output=flip)
    c, h, w = ctx.checkpoint["input_shape"]
    fired = list(run_t(torch.zeros(2, c, h, w)))  # leaves that run, in order (a no-op module has no node)

    def run(xf: np.ndarray, xu: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in run_t(torch.from_numpy(xf)).items()}
    return Probe("model.pt2", dict(zip(fired, fired)), run, f"torch.export {torch.__version__} unflattened, cpu")


BACKENDS = (Backend("pt2-cpu", "model.pt2", "torch", INSTALL, _open, probe=_probe),)
