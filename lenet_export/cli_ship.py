"""``lenet-export sign`` and ``ship``: parsing and printing only. Registered by ``cli``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_options import SHIPPED, DataDir, Exported
from .cli_support import cli_errors


@cli_errors
def sign(
    exported: Exported = SHIPPED,
    key: Annotated[Path, typer.Option(help="Elliptic-curve private key (PEM, unencrypted) to sign with.")] = Path(
        "signing-key.pem"),
):
    """Sign a verified export folder (OpenSSF model-signing) and its verify verdict (in-toto, same key)."""
    from .signing import sign as run_sign
    from .ui import log

    res = run_sign(exported, key)
    log(f"signed {res.files} files: {res.signature}; verdict {res.verdict}: {res.attestation}")


@cli_errors
def ship(
    dataset: Annotated[str, typer.Option(help="fashion-mnist or cifar10.")] = "fashion-mnist",
    data_dir: DataDir = None,
    root: Annotated[Path, typer.Option(help="Where the model folders go.")] = Path("exported"),
    from_run: Annotated[Optional[Path], typer.Option(help="Package this finished training run (best.pth, "
                                                          "metrics.json, history.csv) instead of training.")] = None,
):
    """Regenerate a shipped model folder: train the default model, export, verify, write MODEL_CARD.md."""
    from .ship import ship as run_ship
    from .ui import log

    run_ship(dataset, str(data_dir) if data_dir else None, root=root, log=log, from_run=from_run)
