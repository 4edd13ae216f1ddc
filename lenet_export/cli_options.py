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


Endpoint = Annotated[Optional[list[str]], typer.Option(
    help="A running `lenet-export serve` for the oip backends: http://HOST:PORT (oip-http) and/or grpc://HOST:PORT "
         "(oip-grpc); default: each starts its own on a free loopback port.", show_default=False)]


def parse_endpoints(urls: list[str] | None) -> dict[str, str]:
    """``--endpoint`` URLs by scheme; one per scheme, each with a host and a port."""
    from urllib.parse import urlsplit

    found: dict[str, str] = {}
    for url in urls or []:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("http", "grpc") or not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ConfigError(f"--endpoint {url!r}: give http://HOST:PORT or grpc://HOST:PORT")
        if parts.scheme in found:
            raise ConfigError(f"--endpoint: two {parts.scheme} URLs ({found[parts.scheme]}, {url})")
        found[parts.scheme] = url
    return found
