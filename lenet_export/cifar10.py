"""CIFAR-10 on disk: torchvision's batches, an image folder, or a .tar.gz of one (see ``data``'s docstring).

Used through ``data.load_split`` / ``data.resolve_data_dir``; nothing here is public.
"""

from __future__ import annotations

import os
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import torch

from .splits import CIFAR10_CLASSES, Split, cache_dir, check_split, download_errors, how_to_get
from .errors import DataError, first_line
from .fsutil import publish_cache_dir, write_errors


def _find_image_folder(d: Path) -> Path | None:
    for cand in (d, d / "cifar10-jpeg", d / "cifar10"):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


def cifar_layout(d: Path) -> tuple[str, Path] | None:
    """Where CIFAR-10 lies in ``d`` (a folder, or a .tar.gz itself) and in which form, without reading it."""
    from torchvision.datasets import CIFAR10

    if (d / CIFAR10.base_folder).is_dir():
        return "batches", d
    if (d / CIFAR10.filename).is_file():
        return "batches-archive", d
    folder = _find_image_folder(d)
    if folder is not None:
        return "image-folder", folder
    archives = [d] if d.is_file() else sorted(d.glob("cifar10*.tar.gz")) if d.is_dir() else []
    return ("archive", archives[0]) if archives else None


def _cifar_source(data_dir: Path, download: bool) -> tuple[str, Path]:
    from torchvision.datasets import CIFAR10

    kind, where = cifar_layout(data_dir) or ("none", data_dir)
    if kind == "batches":
        return "torchvision-cifar10", where
    if kind == "batches-archive":  # canonical archive: md5-checked here, then unpacked by torchvision
        from torchvision.datasets.utils import check_integrity

        archive = where / CIFAR10.filename
        if not check_integrity(str(archive), CIFAR10.tgz_md5):  # else torchvision would try to download it
            raise DataError(f"{archive} is not the original CIFAR-10 archive (md5 mismatch)")
        with download_errors("cifar10", data_dir):
            CIFAR10(str(where), train=True, download=True)
        return "torchvision-cifar10", where
    if kind == "image-folder":
        return "image-folder", where
    if kind == "archive":
        if not tarfile.is_tarfile(where):
            raise DataError(f"{where} is not a readable .tar.gz archive")
        return "image-folder", _unpack_image_folder(where)
    if download:
        with download_errors("cifar10", data_dir):
            CIFAR10(str(data_dir), train=True, download=True)
        return "torchvision-cifar10", data_dir
    raise DataError(how_to_get("cifar10", data_dir))


def _unpack_image_folder(archive: Path) -> Path:
    """Unpack with tarfile's ``data`` filter (PEP 706): a member outside the destination (``../x``, an absolute
    path, a link pointing out), a device file or a setuid bit is refused with ``tarfile.FilterError`` before
    anything is written there. (torchvision's ``extract_archive`` unpacked such members where they pointed.)"""
    if not hasattr(tarfile, "data_filter"):  # PEP 706 arrived in 3.10.12 and 3.11.4
        raise DataError(f"cannot unpack {archive} safely: this Python's tarfile has no extraction filter "
                        "(use Python 3.10.12+ or 3.11.4+)")
    st = archive.stat()
    dest = cache_dir() / f"{archive.name.removesuffix('.tar.gz')}-{st.st_size}-{int(st.st_mtime)}"
    if not dest.is_dir():
        tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
        try:
            with write_errors(dest.parent):
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
                publish_cache_dir(tmp, dest)  # or the folder another process unpacked first
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"cannot unpack {archive}: {first_line(e)}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-unpacked stays in the cache
    folder = _find_image_folder(dest)
    if folder is None:
        raise DataError(f"{archive} does not hold an image folder with train/ and test/")
    return folder


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_HEADER = 26  # signature, IHDR length and type, width, height, bit depth, colour type


def _check_png_header(path: str, head: bytes, size: int) -> None:
    """A PNG's size and bit depth from its IHDR chunk (the PNG specification's fixed layout), before decoding:
    a few kilobytes can declare 20000 x 20000 pixels, which the decoder would allocate first."""
    if head[:8] != PNG_SIGNATURE or len(head) < PNG_HEADER:
        return  # not a PNG: the decoder and the checks after it judge it
    w, h, depth = *struct.unpack(">II", head[16:24]), head[24]
    if (w, h) != (size, size):
        raise DataError(f"image {path} is {w}x{h}, expected {size}x{size}")
    if depth != 8:
        raise DataError(f"image {path} has {depth}-bit samples; lenet-export reads 8-bit images")


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
        data = read_file(path)
        _check_png_header(path, bytes(data[:PNG_HEADER].numpy()), size)
        try:
            img = decode_image(data, mode=mode)
        except RuntimeError as e:
            raise DataError(f"cannot decode image {path}: {e}") from None
        if img.dtype != torch.uint8:  # a 16-bit PNG: its values would wrap modulo 256
            raise DataError(f"image {path} has {img.dtype} pixels; lenet-export reads 8-bit images")
        if img.shape[1:] != (size, size):
            raise DataError(f"image {path} is {img.shape[2]}x{img.shape[1]}, expected {size}x{size}")
        images[i] = img
    labels = torch.tensor(ds.targets, dtype=torch.long)
    return images, labels


def load_cifar(data_dir: Path, train: bool, download: bool) -> Split:
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
    check_split(images, labels, (3, 32, 32), f"CIFAR-10 under {root}")
    return Split(images, labels, list(CIFAR10_CLASSES), source)
