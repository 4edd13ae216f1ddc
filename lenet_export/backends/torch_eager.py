"""Eager PyTorch on the checkpoint: ``torch-cpu`` (the reference every other backend is judged against)
and ``torch-cuda`` (TF32 off). Also the torch helpers the other torch runtimes share: a ``Runner`` for any
module, and forward hooks on a module's leaves (``diff``'s reference and the ``.pt2`` probe)."""

from __future__ import annotations

import numpy as np

from typing import Callable

from .base import Backend, Context, Runner, cpu_name, cuda_device

INSTALL = "pip install lenet-export (torch is a core dependency)"


def tf32_off() -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return {"tf32": False, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def module_runner(module, device: str, to_eval: bool = True) -> Runner:
    """A Runner for any torch module (eager, TorchScript, ExportedProgram.module()) on ``device``.
    ``to_eval=False`` for an ExportedProgram's module: it was exported in eval mode and refuses ``.eval()``."""
    import torch

    if to_eval:
        module = module.to(device).eval()

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device))
        return [o.float().cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]

    info = {"torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "device": cpu_name() if device == "cpu" else cuda_device()}
    if device == "cuda":
        info |= tf32_off()
    return Runner(run, info, torch.cuda.synchronize if device == "cuda" else (lambda: None))


def leaves(module) -> list[str]:
    return [n for n, m in module.named_modules() if n and not list(m.children())]


def hooked(module, names: list[str], with_output: bool = False) -> Callable:
    """``run(x) -> {leaf path: output}`` with forward hooks on ``module``'s leaves (torch eager, pt2); a leaf
    called twice (test-time flip) keeps its last call. ``with_output``: the module's own output as well, under
    ``layermap.OUTPUT``, after the leaves."""
    import torch

    mods = dict(module.named_modules())
    acts: dict = {}
    for n in names:
        mods[n].register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out.detach().float().cpu()))

    def run(x: torch.Tensor) -> dict:
        acts.clear()
        with torch.inference_mode():
            out = module(x)
        if with_output:
            from ..layermap import OUTPUT

            return {**acts, OUTPUT: out.detach().float().cpu()}
        return dict(acts)
    return run


def _open(device: str):
    def open_(ctx: Context) -> Runner:
        from ..checkpoint import model_from_checkpoint

        if device == "cuda":
            cuda_device()
        return module_runner(model_from_checkpoint(ctx.checkpoint), device)
    return open_


BACKENDS = (
    Backend("torch-cpu", None, "torch", INSTALL, _open("cpu")),
    Backend("torch-cuda", None, "torch", INSTALL, _open("cuda"), device="cuda"),
)
