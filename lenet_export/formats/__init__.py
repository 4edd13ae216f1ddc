"""The artefact formats ``lenet-export onnx`` writes, one module each; ``--formats`` chooses among them.

Adding a format = a module defining ``FORMATS`` (see ``base.Format``) named in ``MODULES``, in writing order
(OpenVINO converts the ONNX file, so it comes after it).
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import Format, Target

MODULES = ("onnx", "torchscript", "pt2", "openvino", "executorch", "litert")

__all__ = ["Format", "Target", "registry", "select"]


def registry() -> dict[str, Format]:
    out: dict[str, Format] = {}
    for m in MODULES:
        for f in importlib.import_module(f"{__name__}.{m}").FORMATS:
            out[f.name] = f
    return out


def select(spec: str) -> tuple[list[Format], dict[str, str]]:
    """``all`` or a comma-separated list -> (formats to write, {format: why skipped}).

    The required formats are always written. With ``all``, a format whose package is missing is skipped with
    the reason; a format named explicitly whose package is missing is an error (it was asked for).
    """
    reg = registry()
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
        else:
            chosen.append(f)
    return chosen, skipped
