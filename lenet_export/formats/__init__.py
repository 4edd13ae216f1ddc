"""The artefact formats: one module each, found by ``registry()``. ``lenet-export onnx`` writes the EXPORT
formats (``--formats`` chooses among them), ``lenet-export quantize`` the QUANTIZE ones (approximate variants).

Adding a format = adding a module here that defines ``FORMATS`` (see ``base.Format``); nothing else names it.
Writing order follows ``Format.made_from`` (OpenVINO converts model.onnx, so it comes after it).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from ..errors import ConfigError
from .base import EXPORT, QUANTIZE, Calibration, Format, MetadataCopy, Target, check_calibration

__all__ = ["EXPORT", "QUANTIZE", "Calibration", "Format", "MetadataCopy", "Target", "check_calibration", "discover",
           "registry", "select", "owner", "files_of"]


def discover(package: str, attribute: str) -> list:
    """Every entry of ``attribute`` in the modules of ``package`` (modules without it are helpers)."""
    pkg = importlib.import_module(package)
    out = []
    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        out += getattr(importlib.import_module(f"{package}.{m.name}"), attribute, ())
    return out


@functools.cache
def _ordered() -> tuple[Format, ...]:
    pending = sorted(discover(__name__, "FORMATS"), key=lambda f: (not f.required, f.stage != EXPORT, f.order, f.name))
    names = [f.name for f in pending]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two formats share a name: {sorted(n for n in names if names.count(n) > 1)}")
    done: list[Format] = []
    while pending:  # made_from first; otherwise the order above
        ready = next((f for f in pending if all(d in {g.name for g in done} for d in f.made_from)), None)
        if ready is None:
            raise RuntimeError(f"format {pending[0].name} is made from a format that does not exist or is circular")
        done.append(ready)
        pending.remove(ready)
    return tuple(done)


def registry(stage: str | None = None) -> dict[str, Format]:
    """Formats by name, in writing order; ``stage``: only those that verb writes."""
    return {f.name: f for f in _ordered() if stage is None or f.stage == stage}


def owner(file: str) -> Format | None:
    """The format that writes ``file`` (its artefact or a companion)."""
    return next((f for f in _ordered() if file in f.files), None)


def files_of(artefact: str) -> tuple[str, ...]:
    """``artefact`` and the companions a runtime loads with it."""
    f = owner(artefact)
    return f.files if f else (artefact,)


def select(spec: str) -> tuple[list[Format], dict[str, str]]:
    """``all`` or a comma-separated list -> (EXPORT formats to write, {format: why skipped}).

    The required formats are always written. With ``all``, a format whose package is missing is skipped with
    the reason; a format named explicitly whose package is missing is an error (it was asked for).
    """
    reg = registry(EXPORT)
    names = list(reg) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise ConfigError(f"unknown format {unknown[0]!r}; choose from: {', '.join(reg)} (or all)")
    chosen, skipped = [], {}
    for f in reg.values():
        if not (f.required or f.name in names):
            skipped[f.name] = "not requested (--formats)"
            continue
        why = f.missing()
        if why and spec.strip() != "all":
            raise ConfigError(f"cannot write format {f.name}: {why}")
        if why:
            skipped[f.name] = why
        elif any(d not in {c.name for c in chosen} for d in f.made_from):
            skipped[f.name] = f"made from {', '.join(f.made_from)}, which is not written"
        else:
            chosen.append(f)
    return chosen, skipped
