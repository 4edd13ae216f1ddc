"""TorchScript: ``model.pt`` loaded with ``torch.jit.load`` on CPU and CUDA."""

from __future__ import annotations

import warnings

from .base import Backend, Context, Runner, Skip, cuda_device
from .torch_eager import INSTALL, module_runner


def _open(device: str):
    def open_(ctx: Context) -> Runner:
        import torch

        if "formats" not in ctx.metadata and ctx.metadata.get("torchscript_method", "") is None:
            raise Skip("exported with --no-torchscript: no model.pt")  # exports made before --formats
        if device == "cuda":
            cuda_device()
        path = ctx.artefact("model.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.15 marks TorchScript deprecated
            return module_runner(torch.jit.load(str(path), map_location=device), device)
    return open_


BACKENDS = (
    Backend("torchscript-cpu", "model.pt", "torch", INSTALL, _open("cpu")),
    Backend("torchscript-cuda", "model.pt", "torch", INSTALL, _open("cuda"), device="cuda"),
)
