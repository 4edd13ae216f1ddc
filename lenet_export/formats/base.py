"""What an artefact format is: files written from the checkpoint's model, with the metadata stored inside
where the format allows. Each module in this package defines some; ``formats.registry()`` lists them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Target:
    """What a format writer gets: the staged folder, the modules to export and the metadata to embed."""

    folder: Path
    model: object  # torch.nn.Module taking normalised float32 N x C x H x W
    raw_model: object  # torch.nn.Module taking uint8 images (model.raw.onnx's input)
    sample: object  # a float32 example batch (batch 2: a batch of 1 would be specialised away)
    raw_sample: object  # a uint8 example batch
    metadata: dict
    exporter: str = "dynamo"
    opset: int = 18


@dataclass(frozen=True)
class Format:
    name: str
    files: tuple[str, ...]
    write: Callable[[Target], dict] = field(compare=False, repr=False)  # -> extra metadata about how it was made
    package: str | None = None  # import name of what the writer needs beyond the core dependencies
    install: str = ""
    required: bool = False  # always written (verify and the golden data build on it)

    def missing(self) -> str | None:
        """Why this format cannot be written here (its package is missing), or None."""
        if self.package and importlib.util.find_spec(self.package) is None:
            return f"{self.package} is not installed ({self.install})"
        return None
