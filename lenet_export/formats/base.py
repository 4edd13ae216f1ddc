"""What an artefact format is: everything about one kind of file an export holds.

A ``Format`` says which files it writes (the first is what a runtime loads, the rest its companions), how it
writes them, which package that needs, where the artefact keeps its copy of the metadata and how that copy is
read, the batches it takes, and whether it is an approximate variant (FP16 / INT8) of another format. Every
other module (export, quantize, the metadata check, sizes, the model card, CLI help) reads these entries
instead of naming formats. Each module in this package defines ``FORMATS``; ``formats.registry()`` finds them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

EXPORT, QUANTIZE = "export", "quantize"  # the verb that writes a format: `lenet-export onnx` or `quantize`
CALIBRATION_SPLIT = "train"  # the only split a variant may be calibrated on


@dataclass
class Calibration:
    """Calibration images for a quantised variant (normalised float32 N x C x H x W) and their description,
    recorded in the variant's metadata (split, size, seed, rule, granularity)."""

    images: object  # numpy array
    description: dict
    # the checkpoint's validation part (normalised images, labels): what accuracy control judges a variant on,
    # never the test split; None: no accuracy control
    validation: tuple | None = None
    max_drop: float = 0.25  # accuracy points a variant may lose on it before layers are kept in float


@dataclass
class Target:
    """What a format writer gets: the folder to write into, the modules to export, the metadata to embed.
    ``source``: the export folder whose artefacts a writer converts (default: ``folder`` itself)."""

    folder: Path
    model: object  # torch.nn.Module taking normalised float32 N x C x H x W
    raw_model: object  # torch.nn.Module taking uint8 images (model.raw.onnx's input)
    sample: object  # a float32 example batch (batch 2: a batch of 1 would be specialised away)
    raw_sample: object  # a uint8 example batch
    metadata: dict
    exporter: str = "dynamo"
    opset: int = 18
    source: Path | None = None
    calibration: Calibration | None = None  # QUANTIZE formats only

    def input(self, name: str) -> Path:
        """An artefact this writer converts (``Format.made_from``)."""
        return (self.source or self.folder) / name


@dataclass(frozen=True)
class MetadataCopy:
    """Where an artefact keeps its copy of the metadata, and how to read it back."""

    where: str  # inside the artefact, as reports name it: "metadata_props", "rt_info", "metadata.json", ...
    read: Callable[[Path], dict] = field(compare=False, repr=False)
    package: str | None = None  # import name the reader needs
    read_with: str | None = None  # a backend whose runtime reads it: read only when that backend runs (its
    # import costs seconds), else listed as not checked
    raw: bool = False  # the copy describes model.raw.onnx's uint8 input


@dataclass(frozen=True)
class Format:
    name: str
    files: tuple[str, ...]  # the artefact a runtime loads, then its companions (model.xml, model.bin)
    write: Callable[[Target], dict] = field(compare=False, repr=False)  # -> what metadata.json records about it
    summary: str = ""  # one line for the model card
    package: str | None = None  # import name of what the writer needs beyond the core dependencies
    install: str = ""
    required: bool = False  # always written (verify and the golden data build on it)
    made_from: tuple[str, ...] = ()  # formats whose files the writer converts: written before it
    stage: str = EXPORT
    variant_of: str | None = None  # an approximate variant of this format (judged by parity budgets)
    precision: str = "fp32"
    metadata: MetadataCopy | None = None
    not_embedded: str = ""  # with metadata None: why the artefact cannot hold a copy
    batch_range: tuple[int, int] | None = None  # None: any batch; (1, 1): a fixed batch of 1
    order: int = 0  # writing order among formats free to go in any order: lower first

    @property
    def artefact(self) -> str:
        return self.files[0]

    @property
    def label(self) -> str:
        """The metadata copy's name in reports: ``model.xml:rt_info``."""
        return f"{self.artefact}:{self.metadata.where}" if self.metadata else self.artefact

    def missing(self) -> str | None:
        """Why this format cannot be written here (its package is missing), or None."""
        if self.package and importlib.util.find_spec(self.package) is None:
            return f"{self.package} is not installed ({self.install})"
        return None

    def card_line(self, meta: dict) -> str:
        """This format's line in a model card's file list (``meta``: the export's metadata.json)."""
        recorded = (meta.get(self.artefact) or {}).get("batch_range") or self.batch_range
        batch = "any batch" if not recorded else (f"batch {recorded[0]} only" if recorded[0] == recorded[1]
                                                  else f"batch {recorded[0]}..{recorded[1]}")
        where = (f"metadata copy `{self.label}`" if self.metadata
                 else f"metadata not embedded ({self.not_embedded}; see metadata.json)")
        return f"- `{' + '.join(self.files)}`: {self.summary}; {batch}; {where}."


def check_calibration(calibration) -> None:
    """A variant's recorded calibration (None: not recorded) must name the training split; the backends refuse
    anything else, since the test split is what verify judges on."""
    if isinstance(calibration, dict) and calibration.get("split") != CALIBRATION_SPLIT:
        raise ValueError(f"calibrated on the {calibration.get('split')!r} split: refused (only the training "
                         "split may be used; the test split is what verify judges on)")
