"""Data sets: find them, read them with torchvision, keep each split as one in-memory uint8 tensor.

Formats understood (all read by torchvision, none by hand-written parsers):

* Fashion-MNIST: torchvision's layout ``<dir>/FashionMNIST/raw/*-ubyte``; a folder holding the four
  original ``*-ubyte.gz`` files (Debian's ``dataset-fashion-mnist`` puts them in
  ``/usr/share/datasets/fashion-mnist``), which are checked against torchvision's md5 sums and unpacked
  into the cache; or a download by torchvision (``download=True``) on a connected machine.
* CIFAR-10: torchvision's ``<dir>/cifar-10-batches-py`` (or ``cifar-10-python.tar.gz``, md5-checked);
  an image-folder tree ``<dir>/{train,test}/<class>/*.jpg|png``; or a ``.tar.gz`` of such a tree (the
  JPEG copy described in ``shared/datasets/README.md``), unpacked into the cache (``cifar10.py``).

Which folder is read is decided in one place, ``resolve_data_dir``: an explicit folder must hold the data
set; only without one are the default folder and the system copy searched. Checkpoints do not record it.
Images come back as uint8 ``N x C x H x W`` tensors; labels as int64 ``N``.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import zlib
from pathlib import Path

import torch

from .errors import DataError, first_line
from .fsutil import atomic_write, publish_cache_dir, write_errors
from .splits import (CIFAR10_CLASSES, DATASETS, DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES,  # noqa: F401
                     FASHION_MNIST_UNPACKED_MD5, HOW_TO_GET, NAMES, DatasetInfo, Split, cache_dir, check_split,
                     dataset_info, default_data_dir, download_errors, how_to_get)


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The one place that decides which folder data set ``name`` is read from.

    An explicit ``data_dir`` must hold the data set (or be the download target with ``download``): a
    mistyped one is an error, never silently replaced. Without one: ``$LENET_EXPORT_DATA`` or ``./data``,
    then the system copy (Debian's, for Fashion-MNIST).
    """
    from .cifar10 import cifar_layout

    dataset_info(name)
    layout = _fmnist_layout if name == "fashion-mnist" else cifar_layout
    if data_dir is not None:
        d = Path(data_dir)
        if download or layout(d) is not None:
            return d
        raise DataError(how_to_get(name, d, explicit=True))
    candidates = [default_data_dir()] + ([DEBIAN_FASHION_MNIST] if name == "fashion-mnist" else [])
    for d in candidates:
        if layout(d) is not None:
            return d
    if download:
        return candidates[0]
    raise DataError(how_to_get(name, candidates[0], explicit=False))


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def _fmnist_layout(d: Path) -> tuple[str, Path] | None:
    """("raw", root) for torchvision's layout, ("gz", folder) for the four original .gz files, or None."""
    from torchvision.datasets import FashionMNIST

    if all((d / "FashionMNIST" / "raw" / Path(f).stem).is_file() for f, _ in FashionMNIST.resources):
        return "raw", d
    for src in (d, d / "fashion-mnist"):
        if all((src / f).is_file() for f, _ in FashionMNIST.resources):
            return "gz", src
    return None


def _fmnist_root(data_dir: Path, download: bool) -> Path:
    """Return a root that torchvision's FashionMNIST can read, preparing it if needed."""
    from torchvision.datasets import FashionMNIST

    layout = _fmnist_layout(data_dir)
    if layout is not None:
        kind, src = layout
        return src if kind == "raw" else _unpack_fmnist(src)
    if download:
        with download_errors("fashion-mnist", data_dir):
            FashionMNIST(str(data_dir), train=True, download=True)
            FashionMNIST(str(data_dir), train=False, download=True)
        return data_dir
    raise DataError(how_to_get("fashion-mnist", data_dir))


def _unpack_fmnist(src: Path) -> Path:
    """Unpack (stdlib gzip) and md5-check the four .gz files into the cache; torchvision reads only those.

    The cache entry is keyed by what it was made from (each file's resolved path, size and mtime), so files in
    another folder, or changed ones, are checked anew; the four are unpacked into a temporary folder and renamed
    into place together, so a failed check leaves nothing in the cache."""
    import hashlib

    from torchvision.datasets import FashionMNIST

    gz = [src / fname for fname, _ in FashionMNIST.resources]
    key = hashlib.sha256(repr([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in gz]).encode())
    root = cache_dir() / f"fashion-mnist-{key.hexdigest()[:16]}"
    if root.is_dir():
        return root
    tmp = root.with_name(f"{root.name}.{os.getpid()}.tmp")
    raw = tmp / "FashionMNIST" / "raw"
    try:
        with write_errors(root.parent):
            raw.mkdir(parents=True, exist_ok=True)
            for path, (_, md5) in zip(gz, FashionMNIST.resources):
                target = raw / path.name.removesuffix(".gz")
                atomic_write(target, functools.partial(_gunzip_checked, path, md5, target.name))
            publish_cache_dir(tmp, root)  # or the folder another process unpacked first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-unpacked stays in the cache
    return root


def _gunzip_checked(gz: Path, gz_md5: str, name: str, out: Path) -> None:
    from torchvision.datasets.utils import check_integrity

    try:
        with gzip.open(gz, "rb") as fin, open(out, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a corrupt deflate stream
        raise DataError(f"cannot unpack {gz}: {first_line(e)}") from None
    if not (check_integrity(str(gz), gz_md5) or check_integrity(str(out), FASHION_MNIST_UNPACKED_MD5[name])):
        raise DataError(f"{gz} is not the original Fashion-MNIST file (md5 mismatch)")


def _load_fmnist(data_dir: Path, train: bool, download: bool) -> Split:
    from torchvision.datasets import FashionMNIST

    root = _fmnist_root(data_dir, download)
    try:
        ds = FashionMNIST(str(root), train=train, download=False)
    except Exception as e:  # torchvision raises bare RuntimeError/ValueError on malformed idx files
        raise DataError(f"malformed Fashion-MNIST files under {root}: {e}") from None
    images = ds.data.unsqueeze(1).contiguous()
    labels = ds.targets.long()
    check_split(images, labels, (1, 28, 28), f"Fashion-MNIST under {root}")
    return Split(images, labels, list(FASHION_MNIST_CLASSES), "torchvision-fashion-mnist")


def load_split(name: str, train: bool, data_dir: str | os.PathLike | None = None, download: bool = False) -> Split:
    """Load the train (``train=True``) or test split of data set ``name`` into memory, from the folder
    ``resolve_data_dir(name, data_dir, download)`` picks."""
    from .cifar10 import load_cifar

    root = resolve_data_dir(name, data_dir, download)
    if name == "fashion-mnist":
        return _load_fmnist(root, train, download)
    return load_cifar(root, train, download)

# ---------------------------------------------------------------------------------------------
# Split and normalisation


def train_val_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, reproducible split of ``range(n)`` into (train, val) index tensors."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise DataError(f"--val-fraction {val_fraction} leaves no training images (all {n} would be validation)")
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    x = images.to(torch.float64).div_(255.0)
    dims = (0, 2, 3)
    mean = x.mean(dim=dims)
    std = x.std(dim=dims)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 N x C x H x W -> float32, scaled to [0, 1] and normalised per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - m) / s


def to_raw_layout(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> what model.raw.onnx takes: N x H x W (grey) or N x H x W x C (colour)."""
    return images[:, 0] if images.shape[1] == 1 else images.permute(0, 2, 3, 1).contiguous()
