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

import io
import math
import os
import pickle
from pathlib import Path

import torch

from .errors import CheckpointError, first_line
from .fsutil import write_bytes_if_changed
from .models import build_model

FORMAT = "lenet-export/checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("model", "model_args", "state_dict", "dataset", "classes", "input_shape", "mean", "std", "epoch",
            "val_acc", "split")
CHANNELS = (1, 3)  # grey and colour images: what the data sets and the raw-uint8 model take
MAX_SIDE = 512  # pixels: LeNet-family inputs are small; a larger recorded size is a corrupt or hostile file


def versions() -> dict:
    import torchvision

    from . import __version__

    return {"lenet_export": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def checkpoint_bytes(ckpt: dict) -> bytes:
    """The file's bytes: the same content always gives the same bytes (and sha256).

    ``torch.save`` to a path names the zip archive's records after the file (``best/data.pkl``, or the
    temporary file's random name when writing atomically); to a buffer it always uses ``archive/``.
    """
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **ckpt}, buf)
    return buf.getvalue()


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> Path:
    """Write atomically (a crash leaves the previous file intact, never a truncated one), and only if the
    bytes change: re-saving the same checkpoint keeps the file, its sha256 and its mtime."""
    write_bytes_if_changed(path, checkpoint_bytes(ckpt))
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a lenet-export checkpoint with ``weights_only=True``."""
    import zipfile

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the checkpoint file (e.g. {path / 'best.pth'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save's format; anything else (random bytes, text) is no checkpoint
        raise CheckpointError(f"{path} is truncated or not a checkpoint (not a PyTorch zip archive)")
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
    problem = field_problem(ckpt)
    if problem:
        raise CheckpointError(f"{path} is inconsistent: {problem}")
    return ckpt


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _out_features(state_dict: dict) -> int | None:
    """Rows of the last 2-D weight: the classifier's output size."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None


def field_problem(ckpt: dict) -> str | None:
    """What is wrong with the fields of a checkpoint (types, shapes, agreement), or None."""
    for key in ("model", "dataset"):
        if not isinstance(ckpt[key], str):
            return f"field '{key}' must be a string, got {type(ckpt[key]).__name__}"
    if not isinstance(ckpt["model_args"], dict):
        return "field 'model_args' must be a dict"
    sd = ckpt["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        return "field 'state_dict' must be a non-empty dict of tensors"
    shape = ckpt["input_shape"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)):
        return f"field 'input_shape' must be 3 positive integers (C, H, W), got {shape!r}"
    if shape[0] not in CHANNELS or max(shape[1:]) > MAX_SIDE:
        return (f"field 'input_shape' {list(shape)} is out of range ({' or '.join(map(str, CHANNELS))} channels, "
                f"at most {MAX_SIDE} x {MAX_SIDE} pixels)")
    for key in ("mean", "std"):
        v = ckpt[key]
        if not (isinstance(v, (list, tuple)) and len(v) == shape[0] and all(map(_is_number, v))):
            return f"field '{key}' must be {shape[0]} number(s), one per input channel, got {v!r}"
    if not all(s > 0 for s in ckpt["std"]):
        return f"field 'std' must be positive, got {ckpt['std']!r}"
    classes = ckpt["classes"]
    if not (isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes)):
        return "field 'classes' must be a non-empty list of class names"
    n_out = _out_features(sd)
    if n_out is not None and n_out != len(classes):
        return f"field 'classes' names {len(classes)} classes but the model's last layer has {n_out} outputs"
    args = ckpt["model_args"]
    if args.get("in_channels", shape[0]) != shape[0] or args.get("image_size", shape[1]) not in (shape[1], shape[2]):
        return f"field 'input_shape' {list(shape)} disagrees with model_args (in_channels, image_size)"
    split = ckpt["split"]
    if not (isinstance(split, dict) and _is_number(split.get("val_fraction")) and 0 < split["val_fraction"] < 1
            and _is_int(split.get("seed")) and split["seed"] >= 0):
        return f"field 'split' must hold val_fraction (0..1) and seed (an integer >= 0), got {split!r}"
    if not (_is_int(ckpt["epoch"]) and ckpt["epoch"] >= 0):
        return f"field 'epoch' must be a non-negative integer, got {ckpt['epoch']!r}"
    for key in ("val_acc", "test_acc"):
        if (key == "val_acc" or ckpt.get(key) is not None) and not (_is_number(ckpt[key]) and 0 <= ckpt[key] <= 1):
            return f"field '{key}' must be an accuracy from 0 to 1, got {ckpt[key]!r}"
    return None


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    """Rebuild the network from ``model_args`` and load its weights (strict), in eval mode."""
    model = build_model(ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights do not fit the recorded architecture {ckpt['model']!r}: {first_line(e)}") from None
    return model.eval()
