"""The user's own labelled images for ``verify --images`` and ``bench --images``: a folder in torchvision's
ImageFolder layout (``DIR/<class>/<image>``), decoded exactly as ``predict`` decodes them. Torch-free.

A class folder is named as the class, with ``/`` written ``_`` (``T-shirt_top``), or by the class's index
(``0``). A folder that names no class of the model is refused, so that a typo cannot pass as an empty class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConfigError
from .predict import IMAGE_SUFFIXES, fit_image


@dataclass
class LabelledImages:
    images: np.ndarray  # uint8 N x H x W (grey) or N x H x W x 3, as the model sees them (predict.fit_image)
    labels: np.ndarray  # int64 class indices, from the folder names
    files: list[str]  # sample i's file


def folder_name(cls: str) -> str:
    """The folder name of a class (a path cannot hold ``/``)."""
    return cls.replace("/", "_")


def class_index(name: str, classes: list[str]) -> int | None:
    """The class a folder names (its name, its folder name or its index), or None."""
    return next((i for i, c in enumerate(classes) if name in (c, folder_name(c), str(i))), None)


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted."""
    return sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def load_image_folder(root: Path, classes: list[str], channels: int, size: tuple[int, int], fit: str = "exact",
                      invert: bool = False, advance: Callable[[int], None] | None = None) -> LabelledImages:
    """Every image under ``root``'s class folders, labelled by its folder, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--images {root} is not a folder (expected {root}/<class>/<image files>)")
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    names = ", ".join(folder_name(c) for c in classes)
    if not folders:
        raise ConfigError(f"--images {root} has no class folders (expected {root}/<class>/<image files>, "
                          f"<class> one of: {names})")
    unknown = [d.name for d in folders if class_index(d.name, classes) is None]
    if unknown:
        raise ConfigError(f"--images {root}: folder {unknown[0]!r} is not a class of the model (class folders are "
                          f"named {names}, or 0-{len(classes) - 1})")
    files: list[Path] = []
    labels: list[int] = []
    for d in folders:
        found = image_files(d)
        files += found
        labels += [class_index(d.name, classes)] * len(found)
    if not files:
        raise ConfigError(f"--images {root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    images = []
    for f in files:
        images.append(fit_image(f, channels, size, fit, invert))
        if advance is not None:
            advance(1)
    return LabelledImages(np.stack(images), np.asarray(labels, dtype=np.int64), [str(f) for f in files])
