"""torch.export: ``model.pt2`` loaded with ``torch.export.load`` and run as its ``module()`` on CPU."""

from __future__ import annotations

from .base import Backend, Context, Runner
from .torch_eager import INSTALL, module_runner


def _open(ctx: Context) -> Runner:
    import torch

    program = torch.export.load(str(ctx.artefact("model.pt2")))
    runner = module_runner(program.module(), "cpu", to_eval=False)
    runner.runtime["program"] = "torch.export ExportedProgram"
    return runner


BACKENDS = (Backend("pt2-cpu", "model.pt2", "torch", INSTALL, _open),)
