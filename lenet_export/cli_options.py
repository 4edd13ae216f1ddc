"""The options several verbs share, typed once (typer ``Annotated`` aliases), and their checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import ConfigError
from .predict import FITS

Exported = Annotated[Path, typer.Option(help="Export folder written by `lenet-export onnx`.")]
ExportCheckpoint = Annotated[Optional[Path], typer.Option(help="The checkpoint it was exported from; "
                                                               "default: <exported>/best.pth.")]
SHIPPED = Path("exported/fashion-mnist-lenet-modern")
DataDir = Annotated[Optional[Path], typer.Option(help="Folder with the data set (see README, 'Data'); a folder given "
                                                      "must hold it. Default: $LENET_EXPORT_DATA or ./data, then "
                                                      "system copies.")]
Images = Annotated[Optional[Path], typer.Option(help="Your own labelled images instead of the test split: a folder "
                                                     "of class folders (DIR/<class>/<image>; see README).",
                                                show_default=False)]
Fit = Annotated[str, typer.Option(help="exact (refuse other sizes), stretch, or letterbox (keep the aspect ratio, "
                                       "fill with the border's median).")]
Invert = Annotated[bool, typer.Option(help="Invert the pixels (dark drawings on a light background).")]


def check_images(images: Path | None, fit: str, invert: bool, data_dir: Path | None = None,
                 dataset: str | None = None) -> None:
    """``--fit``/``--invert`` go with ``--images``; ``--data-dir``/``--dataset`` do not."""
    if fit not in FITS:
        raise ConfigError(f"--fit must be one of {', '.join(FITS)}, got {fit!r}")
    if images is None and (fit != "exact" or invert):
        raise ConfigError("--fit and --invert apply to --images (the test split is already the model's size)")
    if images is not None and (data_dir is not None or dataset):
        raise ConfigError("--images replaces the test split: --data-dir and --dataset do not apply")
