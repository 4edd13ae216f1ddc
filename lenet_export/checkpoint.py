"""The checkpoint: a plain dict that rebuilds and explains the model on its own.

Keys (all plain Python data or tensors, so ``torch.load(..., weights_only=True)`` accepts it):

``format`` / ``format_version``  identify the file;  ``model`` / ``model_args``  the registry name and the
``LeNet(**model_args)`` arguments;  ``state_dict``;  ``dataset``, ``data_source``, ``classes``,
``input_shape`` (C, H, W), ``mean`` / ``std`` (per channel, [0, 1] scale);  ``split`` (seed, val_fraction,
sizes);  ``epoch``, ``val_acc``, ``val_loss``, ``test_acc`` (filled in once training ends);  ``config`` (the
training configuration);  ``versions``. ``last.pth`` adds ``optimizer``, ``scheduler``, ``rng``, ``history``,
``best_val_acc`` and ``best_epoch`` for ``--resume``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from .errors import CheckpointError, first_line
from .fsutil import atomic_write
from .models import build_model

FORMAT = "lenet-export/checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("model", "model_args", "state_dict", "dataset", "classes", "input_shape", "mean", "std")


def versions() -> dict:
    import torchvision

    from . import __version__

    return {"lenet_export": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a crash leaves the previous file intact, never a truncated one."""
    ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION, **ckpt}
    return atomic_write(path, lambda p: torch.save(ckpt, p))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a lenet-export checkpoint with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise CheckpointError(f"{path} holds Python objects that weights_only loading refuses; "
                                  "it is not a lenet-export checkpoint") from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({first_line(e)})") from None
    except Exception as e:  # torch.load on arbitrary bytes raises RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lenet-export checkpoint (no '{FORMAT}' format tag)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format_version']}, newer than this "
                              f"lenet-export understands ({FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    """Rebuild the network from ``model_args`` and load its weights (strict), in eval mode."""
    model = build_model(ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights do not fit the recorded architecture {ckpt['model']!r}: {first_line(e)}") from None
    return model.eval()


def recorded_data_dir(ckpt: dict) -> str | None:
    """The data folder the checkpoint was trained from, if it still exists (a default for later steps)."""
    d = (ckpt.get("config") or {}).get("data_dir")
    return d if d and Path(d).exists() else None
