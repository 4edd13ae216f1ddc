"""TorchScript: ``model.pt`` loaded with ``torch.jit.load`` on CPU and CUDA.

The diff probe: a ScriptModule takes no forward hooks, so its submodules are run one after the other
(``named_children``, recursively); the result must equal the module's own forward. A model with test-time flip
(its checkpoint's ``flip_tta``) runs them on the image, then on its mirror image, and compares the mean."""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ArtefactError
from ..layermap import OUTPUT
from .base import Backend, Context, Probe, Runner, Skip, cuda_device
from .torch_eager import INSTALL, leaves, module_runner


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


def _probe(device: str):
    def open_(ctx: Context) -> Probe:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if device == "cuda":
                cuda_device()
            m = torch.jit.load(str(ctx.artefact("model.pt")), map_location=device).eval()

        def chain(mod, x, path: str, acts: dict):
            children = list(mod.named_children())
            if not children:
                acts[path] = y = mod(x)
                return y
            for name, child in children:
                x = chain(child, x, f"{path}.{name}" if path else name, acts)
            return x

        def run(xf: np.ndarray, xu: np.ndarray) -> dict[str, np.ndarray]:
            acts: dict = {}
            with torch.inference_mode():
                x = torch.from_numpy(xf).to(device)
                y, whole = chain(m, x, "", acts), m(x)
                if flip:  # test-time flip: then the mirror image, whose values each layer keeps (as torch's hooks)
                    y = (y + chain(m, x.flip(3), "", acts)) * 0.5
            if y.shape != whole.shape or not torch.allclose(y, whole, rtol=1e-5, atol=1e-5):
                raise ArtefactError("model.pt's forward is not its submodules run in order; cannot localise")
            return {**{k: v.float().cpu().numpy() for k, v in acts.items()}, OUTPUT: whole.float().cpu().numpy()}
        flip = bool(ctx.checkpoint["model_args"].get("flip_tta"))
        names = leaves(m)
        return Probe("model.pt", {**dict(zip(names, names)), **({OUTPUT: OUTPUT} if flip else {})}, run,
                     f"torch.jit {torch.__version__} {device}")
    return open_


BACKENDS = (
    Backend("torchscript-cpu", "model.pt", "torch", INSTALL, _open("cpu"), probe=_probe("cpu")),
    Backend("torchscript-cuda", "model.pt", "torch", INSTALL, _open("cuda"), device="cuda",
            probe=_probe("cuda")),
)
