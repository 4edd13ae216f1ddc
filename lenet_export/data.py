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

import contextlib
import functools
import gzip
import os
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import DataError, first_line
from .fsutil import atomic_write, write_errors

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# md5 of the *unpacked* files of the Fashion-MNIST release. torchvision lists md5 sums of the .gz files,
# but Debian re-compresses them without the embedded file name, so the .gz bytes differ while the
# content is identical: we accept either.
FASHION_MNIST_UNPACKED_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    size: int
    classes: list[str] = field(hash=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


DATASETS = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 28, FASHION_MNIST_CLASSES),
    "cifar10": DatasetInfo("cifar10", 3, 32, CIFAR10_CLASSES),
}


@dataclass
class Split:
    """One split in memory. ``source`` names the on-disk format it came from."""

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}") from None


def default_data_dir() -> Path:
    return Path(os.environ.get("LENET_EXPORT_DATA", "data"))


def cache_dir() -> Path:
    base = os.environ.get("LENET_EXPORT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lenet-export"
    return Path(base)


NAMES = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
HOW_TO_GET = {
    "fashion-mnist": "get it with `apt-get install dataset-fashion-mnist` (no --data-dir needed then), or "
                     "`lenet-export data --dataset fashion-mnist --download` on a connected machine, or pass "
                     "--data-dir DIR holding the four *-ubyte.gz files",
    "cifar10": "get it with `lenet-export data --dataset cifar10 --download` on a connected machine, or pass "
               "--data-dir DIR holding cifar-10-batches-py/, an image folder with train/ and test/, or a .tar.gz "
               "of one (e.g. shared/datasets/cifar10-jpeg.tar.gz)",
}


def how_to_get(name: str, data_dir: Path, explicit: bool = True) -> str:
    where = (f"--data-dir {data_dir} does not exist" if explicit and not data_dir.exists()
             else f"no {NAMES[name]} in {data_dir}" if explicit
             else f"no {NAMES[name]} found in {data_dir}" + (f" or {DEBIAN_FASHION_MNIST}" if name == "fashion-mnist" else ""))
    return f"{where}; {HOW_TO_GET[name]}"


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
        with _download_errors("fashion-mnist", data_dir):
            FashionMNIST(str(data_dir), train=True, download=True)
            FashionMNIST(str(data_dir), train=False, download=True)
        return data_dir
    raise DataError(how_to_get("fashion-mnist", data_dir))


def _unpack_fmnist(src: Path) -> Path:
    """Unpack (stdlib gzip) and md5-check the four .gz files into the cache; torchvision reads only those."""
    from torchvision.datasets import FashionMNIST

    root = cache_dir() / "fashion-mnist"
    raw = root / "FashionMNIST" / "raw"
    for fname, md5 in FashionMNIST.resources:
        target = raw / Path(fname).stem
        if not target.is_file():
            with write_errors(raw):
                atomic_write(target, functools.partial(_gunzip_checked, src / fname, md5, target.name))
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


@contextlib.contextmanager
def _download_errors(name: str, data_dir: Path):
    """torchvision downloads (with their md5 checks) raise network and checksum errors of many types."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"download of {name} failed ({first_line(e)}); {how_to_get(name, data_dir)}") from None


def _load_fmnist(data_dir: Path, train: bool, download: bool) -> Split:
    from torchvision.datasets import FashionMNIST

    root = _fmnist_root(data_dir, download)
    try:
        ds = FashionMNIST(str(root), train=train, download=False)
    except Exception as e:  # torchvision raises bare RuntimeError/ValueError on malformed idx files
        raise DataError(f"malformed Fashion-MNIST files under {root}: {e}") from None
    images = ds.data.unsqueeze(1).contiguous()
    labels = ds.targets.long()
    _check_split(images, labels, (1, 28, 28), f"Fashion-MNIST under {root}")
    return Split(images, labels, list(FASHION_MNIST_CLASSES), "torchvision-fashion-mnist")


def _check_split(images: torch.Tensor, labels: torch.Tensor, shape: tuple, where: str) -> None:
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape:
        raise DataError(f"{where}: images have shape {tuple(images.shape)}, expected N x {' x '.join(map(str, shape))}")
    if len(images) == 0 or len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{where}: labels outside 0..9")


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
