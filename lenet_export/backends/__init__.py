"""The backend registry: every runtime lenet-export can verify, one module each.

Adding a runtime = adding a module that defines ``BACKENDS`` (see ``base.Backend``) and naming it in
``MODULES``. Runtime packages are imported inside ``Backend.open``, so a missing one costs nothing until
that backend is asked for, and then skips it with the install command.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import FLOAT, UINT8, Backend, BatchRangeError, Context, Fallback, Runner, Skip

MODULES = ("torch_eager", "torchscript", "onnxruntime", "pt2", "openvino", "opencv", "ort_web", "executorch", "litert")
REFERENCE = "torch-cpu"

__all__ = ["FLOAT", "UINT8", "Backend", "BatchRangeError", "Context", "Fallback", "Runner", "Skip", "REFERENCE", "registry", "get",
           "names"]


def registry() -> dict[str, Backend]:
    out: dict[str, Backend] = {}
    for m in MODULES:
        for b in importlib.import_module(f"{__name__}.{m}").BACKENDS:
            out[b.name] = b
    return out


def names(device: str | None = None) -> tuple[str, ...]:
    """Backend names in table order: CPU backends first, then CUDA ones."""
    bs = sorted(registry().values(), key=lambda b: b.device != "cpu")
    return tuple(b.name for b in bs if device is None or b.device == device)


def get(name: str) -> Backend:
    reg = registry()
    if name not in reg:
        raise ConfigError(f"unknown backend {name!r}; choose from: {', '.join(names())}")
    return reg[name]
