"""Data sets: find them, read them with torchvision, keep each split as one in-memory uint8 tensor.

Formats understood (all read by torchvision, none by hand-written parsers):

* Fashion-MNIST: torchvision's layout ``<dir>/FashionMNIST/raw/*-ubyte``; a folder holding the four
  original ``*-ubyte.gz`` files (Debian's ``dataset-fashion-mnist`` puts them in
  ``/usr/share/datasets/fashion-mnist``), which are checked against torchvision's md5 sums and unpacked
  into the cache; or a download by torchvision (``download=True``) on a connected machine.
* CIFAR-10: torchvision's ``<dir>/cifar-10-batches-py`` (or ``cifar-10-python.tar.gz``, md5-checked);
  an image-folder tree ``<dir>/{train,test}/<class>/*.jpg|png``; or a ``.tar.gz`` of such a tree (the
  JPEG copy described in ``shared/datasets/README.md``), unpacked into the cache.

Images come back as uint8 ``N x C x H x W`` tensors; labels as int64 ``N``.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tarfile
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


def how_to_get(name: str, data_dir: Path) -> str:
    if name == "fashion-mnist":
        return (f"no Fashion-MNIST found in {data_dir} or {DEBIAN_FASHION_MNIST}; get it with "
                f"`apt-get install dataset-fashion-mnist`, or `lenet-export data --dataset fashion-mnist --download` "
                f"on a connected machine, or pass --data-dir DIR holding the four *-ubyte.gz files")
    return (f"no CIFAR-10 found in {data_dir}; get it with `lenet-export data --dataset cifar10 --download` on a "
            f"connected machine, or pass --data-dir DIR holding cifar-10-batches-py/, an image folder with "
            f"train/ and test/, or a .tar.gz of one (e.g. shared/datasets/cifar10-jpeg.tar.gz)")


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def _fmnist_root(data_dir: Path, download: bool) -> Path:
    """Return a root that torchvision's FashionMNIST can read, preparing it if needed."""
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import check_integrity

    raw_names = [Path(f).stem for f, _ in FashionMNIST.resources]  # names without .gz
    if all((data_dir / "FashionMNIST" / "raw" / n).is_file() for n in raw_names):
        return data_dir
    for src in (data_dir, data_dir / "fashion-mnist", DEBIAN_FASHION_MNIST):
        if all((src / f).is_file() for f, _ in FashionMNIST.resources):
            root = cache_dir() / "fashion-mnist"
            raw = root / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for fname, md5 in FashionMNIST.resources:
                target = raw / Path(fname).stem
                if target.is_file():
                    continue
                # torchvision reads only the unpacked files; gzip (stdlib) unpacks, atomically.
                tmp = raw / f".{target.name}.{os.getpid()}.tmp"
                try:
                    with gzip.open(src / fname, "rb") as fin, open(tmp, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                except (OSError, EOFError) as e:
                    tmp.unlink(missing_ok=True)
                    raise DataError(f"cannot unpack {src / fname}: {e}") from None
                if not (check_integrity(str(src / fname), md5)
                        or check_integrity(str(tmp), FASHION_MNIST_UNPACKED_MD5[target.name])):
                    tmp.unlink(missing_ok=True)
                    raise DataError(f"{src / fname} is not the original Fashion-MNIST file (md5 mismatch)")
                os.replace(tmp, target)
            return root
    if download:
        with _download_errors("fashion-mnist", data_dir):
            FashionMNIST(str(data_dir), train=True, download=True)
            FashionMNIST(str(data_dir), train=False, download=True)
        return data_dir
    raise DataError(how_to_get("fashion-mnist", data_dir))


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


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def _find_image_folder(d: Path) -> Path | None:
    for cand in (d, d / "cifar10-jpeg", d / "cifar10"):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


def _cifar_source(data_dir: Path, download: bool) -> tuple[str, Path]:
    from torchvision.datasets import CIFAR10

    if (data_dir / CIFAR10.base_folder).is_dir():
        return "torchvision-cifar10", data_dir
    if (data_dir / CIFAR10.filename).is_file():  # canonical archive: torchvision md5-checks and unpacks
        CIFAR10(str(data_dir), train=True, download=True)
        return "torchvision-cifar10", data_dir
    folder = _find_image_folder(data_dir)
    if folder is not None:
        return "image-folder", folder
    archives = [data_dir] if data_dir.is_file() else sorted(data_dir.glob("cifar10*.tar.gz")) if data_dir.is_dir() else []
    for archive in archives:
        if tarfile.is_tarfile(archive):
            return "image-folder", _unpack_image_folder(archive)
        raise DataError(f"{archive} is not a readable .tar.gz archive")
    if download:
        with _download_errors("cifar10", data_dir):
            CIFAR10(str(data_dir), train=True, download=True)
        return "torchvision-cifar10", data_dir
    raise DataError(how_to_get("cifar10", data_dir))


def _unpack_image_folder(archive: Path) -> Path:
    from torchvision.datasets.utils import extract_archive

    st = archive.stat()
    dest = cache_dir() / f"{archive.name.removesuffix('.tar.gz')}-{st.st_size}-{int(st.st_mtime)}"
    if not dest.is_dir():
        tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
        try:
            extract_archive(str(archive), str(tmp))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot unpack {archive}: {e}") from None
        os.replace(tmp, dest)
    folder = _find_image_folder(dest)
    if folder is None:
        raise DataError(f"{archive} does not hold an image folder with train/ and test/")
    return folder


def _load_image_folder(root: Path, classes: list[str], channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        ds = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"bad image folder {root}: {e}") from None
    if ds.classes != classes:
        raise DataError(f"image folder {root} has classes {ds.classes}, expected {classes}")
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    images = torch.empty((len(ds.samples), channels, size, size), dtype=torch.uint8)
    for i, (path, _) in enumerate(ds.samples):
        try:
            img = decode_image(read_file(path), mode=mode)
        except RuntimeError as e:
            raise DataError(f"cannot decode image {path}: {e}") from None
        if img.shape[1:] != (size, size):
            raise DataError(f"image {path} is {img.shape[2]}x{img.shape[1]}, expected {size}x{size}")
        images[i] = img
    labels = torch.tensor(ds.targets, dtype=torch.long)
    return images, labels


def _load_cifar(data_dir: Path, train: bool, download: bool) -> Split:
    from torchvision.datasets import CIFAR10

    kind, root = _cifar_source(data_dir, download)
    split = "train" if train else "test"
    if kind == "torchvision-cifar10":
        try:
            ds = CIFAR10(str(root), train=train, download=False)
        except Exception as e:  # md5 mismatch or unreadable pickle
            raise DataError(f"malformed CIFAR-10 batches under {root}: {e}") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(ds.targets, dtype=torch.long)
        source = "torchvision-cifar10"
    else:
        images, labels = _load_image_folder(root / split, CIFAR10_CLASSES, 3, 32)
        source = "jpeg-image-folder"
    _check_split(images, labels, (3, 32, 32), f"CIFAR-10 under {root}")
    return Split(images, labels, list(CIFAR10_CLASSES), source)


def _check_split(images: torch.Tensor, labels: torch.Tensor, shape: tuple, where: str) -> None:
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape:
        raise DataError(f"{where}: images have shape {tuple(images.shape)}, expected N x {' x '.join(map(str, shape))}")
    if len(images) == 0 or len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{where}: labels outside 0..9")


def load_split(name: str, train: bool, data_dir: str | os.PathLike | None = None, download: bool = False) -> Split:
    """Load the train (``train=True``) or test split of data set ``name`` into memory."""
    dataset_info(name)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "fashion-mnist":
        return _load_fmnist(data_dir, train, download)
    return _load_cifar(data_dir, train, download)


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
