"""Which images calibrate a quantised variant: a seeded subset of the checkpoint's own training part (never
its validation part, never test). ``quantize`` writes variants with it; ``diff`` makes the same subset again
to quantise an INT8 program's non-delegated twin (``backends.executorch``)."""

from __future__ import annotations

import numpy as np

from .formats.base import CALIBRATION_SPLIT


def calibration_subset(ckpt: dict, size: int, seed: int, split: str = CALIBRATION_SPLIT,
                       data_dir: str | None = None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """(normalised images, the validation part as (images, labels)): ``size`` images drawn with ``seed`` from
    the training part of the checkpoint's train/validation split (``split="test"``: from the test set, which
    exists only so the tests can show verify refusing it; then no validation part)."""
    import torch

    from .data import load_split, normalize, train_val_indices

    data = load_split(ckpt["dataset"], train=split != "test", data_dir=data_dir)
    train, val = train_val_indices(len(data), ckpt["split"]["val_fraction"], ckpt["split"]["seed"])
    pool = torch.arange(len(data)) if split == "test" else train  # (test: no validation part either)
    g = torch.Generator().manual_seed(seed)
    idx = pool[torch.randperm(len(pool), generator=g)[:size]]
    x = normalize(data.images[idx], ckpt["mean"], ckpt["std"]).numpy()
    if split == "test":
        return x, None
    return x, (normalize(data.images[val], ckpt["mean"], ckpt["std"]).numpy(), data.labels[val].numpy())
