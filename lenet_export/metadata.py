"""The metadata an app reads from the artefacts: its encoding, the fields that must agree with the checkpoint,
and the typed result of that check (``artefacts.check_metadata`` runs it).

lenet-export writes the same metadata into ``metadata.json`` and into every artefact that can hold it; where
and how each artefact keeps its copy is part of its format (``formats.base.MetadataCopy``). Apps read classes
and normalisation from them (``lenet_export.runtime`` does), so each copy must agree with the checkpoint: a
wrong class list or mean there mislabels every prediction while the logits stay exact. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


METADATA_FILE = "metadata.json"
CHECKED_FIELDS = ("classes", "mean", "std", "input_shape", "checkpoint_sha256")


def raw_layout(input_shape) -> tuple[str, list]:
    """Layout and shape of model.raw.onnx's uint8 input for a C x H x W model input."""
    c, h, w = input_shape
    return ("NHW", ["N", h, w]) if c == 1 else ("NHWC", ["N", h, w, c])


def metadata_props(meta: dict) -> dict[str, str]:
    """ONNX metadata_props values are strings: scalars as text, lists and dicts as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def parse_prop(v: str):
    """The inverse of ``metadata_props`` for one value."""
    try:
        return json.loads(v)
    except ValueError:
        return v


@dataclass
class Mismatch:
    file: str
    field: str
    expected: object
    found: object

    def __str__(self) -> str:
        return f"{self.file}: {self.field} is {_short(self.found)}, the checkpoint says {_short(self.expected)}"


@dataclass
class MetadataCheck:
    """Every copy of the metadata against the checkpoint. ``errors``: copies that could not be read;
    ``unchecked``: copies not read here, with the reason."""

    files: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)  # copy -> why it was not read

    @property
    def passed(self) -> bool:
        return not self.mismatches and not self.errors

    @property
    def failures(self) -> list[str]:
        return [*self.errors, *map(str, self.mismatches)]


def _short(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def expected(ckpt: dict, checkpoint_sha256: str, raw: bool) -> dict:
    shape = raw_layout(ckpt["input_shape"])[1] if raw else ["N", *ckpt["input_shape"]]
    return {"classes": list(ckpt["classes"]), "mean": list(ckpt["mean"]), "std": list(ckpt["std"]),
            "input_shape": shape, "checkpoint_sha256": checkpoint_sha256}


def compare(name: str, meta, want: dict) -> list[Mismatch]:
    if not isinstance(meta, dict):
        return [Mismatch(name, "metadata", "an object", type(meta).__name__)]
    return [Mismatch(name, k, v, meta.get(k, "<missing>")) for k, v in want.items() if meta.get(k) != v]
