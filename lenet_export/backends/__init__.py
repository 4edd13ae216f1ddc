"""The backend registry: every runtime lenet-export can verify, one module each, found by ``registry()``.

Adding a runtime = adding a module here that defines ``BACKENDS`` (see ``base.Backend``), beside its format in
``lenet_export.formats``; nothing else names it. Runtime packages are imported inside ``Backend.open``, so a
missing one costs nothing until that backend is asked for, and then skips it with the install command.
"""

from __future__ import annotations

import functools

from ..errors import ConfigError
from .base import FLOAT, UINT8, Backend, BatchRangeError, Context, Fallback, Probe, Runner, Skip

REFERENCE = "torch-cpu"

__all__ = ["FLOAT", "UINT8", "Backend", "BatchRangeError", "Context", "Fallback", "Probe", "Runner", "Skip",
           "REFERENCE", "registry", "get", "names", "probed", "base_of"]


@functools.cache
def _ordered() -> tuple[Backend, ...]:
    from ..formats import discover

    found = discover(__name__, "BACKENDS")
    names_ = [b.name for b in found]
    if len(set(names_)) != len(names_):
        raise RuntimeError(f"two backends share a name: {sorted(n for n in names_ if names_.count(n) > 1)}")
    # the reference first, then CPU before CUDA, exact before approximate variants, then by name
    return tuple(sorted(found, key=lambda b: (b.name != REFERENCE, b.device != "cpu", b.precision != "fp32", b.name)))


def registry() -> dict[str, Backend]:
    return {b.name: b for b in _ordered()}


def names(device: str | None = None) -> tuple[str, ...]:
    """Backend names in table order."""
    return tuple(b.name for b in _ordered() if device is None or b.device == device)


def probed() -> tuple[str, ...]:
    """The backends ``diff`` can look inside."""
    return tuple(b.name for b in _ordered() if b.probe is not None)


def get(name: str) -> Backend:
    reg = registry()
    if name not in reg:
        raise ConfigError(f"unknown backend {name!r}; choose from: {', '.join(names())}")
    return reg[name]


def base_of(b: Backend) -> Backend | None:
    """For an approximate variant: the backend running the FP32 artefact it was made from on the same runtime
    and device (``ort-cpu`` for ``ort-cpu-int8``)."""
    from ..formats import owner, registry as formats

    fmt = owner(b.artefact) if b.artefact else None
    if fmt is None or fmt.variant_of is None:
        return None
    artefact = formats()[fmt.variant_of].artefact
    return next((c for c in _ordered() if c.artefact == artefact and c.device == b.device and c.package == b.package
                 and c.input == b.input), None)
