"""What every data-set reader shares: the data sets' names and shapes, the in-memory ``Split``, the cache
folder and the one-line "how to get it" messages. Below ``data`` and ``cifar10``; imports neither."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import DataError, first_line

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


@contextlib.contextmanager
def download_errors(name: str, data_dir: Path):
    """torchvision downloads (with their md5 checks) raise network and checksum errors of many types."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"download of {name} failed ({first_line(e)}); {how_to_get(name, data_dir)}") from None


def check_split(images: torch.Tensor, labels: torch.Tensor, shape: tuple, where: str) -> None:
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape:
        raise DataError(f"{where}: images have shape {tuple(images.shape)}, expected N x {' x '.join(map(str, shape))}")
    if len(images) == 0 or len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{where}: labels outside 0..9")
