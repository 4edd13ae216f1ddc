"""Data loading: every supported format on small files written here, and the real data sets."""

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from lenet_export import data as D
from lenet_export.errors import DataError


def idx_images(imgs: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x0803, len(imgs), 28, 28) + imgs.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x0801, len(labels)) + labels.astype(np.uint8).tobytes()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("LENET_EXPORT_CACHE", str(c))
    return c


@pytest.fixture
def small_fmnist():
    rng = np.random.default_rng(0)
    return {"train": (rng.integers(0, 256, (12, 28, 28)), np.arange(12) % 10),
            "t10k": (rng.integers(0, 256, (5, 28, 28)), np.array([3, 1, 4, 1, 5]))}


def test_fmnist_torchvision_layout(tmp_path, small_fmnist):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, (x, y) in small_fmnist.items():
        (raw / f"{split}-images-idx3-ubyte").write_bytes(idx_images(x))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(idx_labels(y))
    s = D.load_split("fashion-mnist", train=False, data_dir=tmp_path)
    assert s.images.shape == (5, 1, 28, 28) and s.images.dtype == torch.uint8
    assert torch.equal(s.images[:, 0], torch.from_numpy(small_fmnist["t10k"][0].astype(np.uint8)))
    assert s.labels.tolist() == [3, 1, 4, 1, 5]
    assert s.classes[0] == "T-shirt/top"


def _write_gz_folder(folder, small, monkeypatch):
    folder.mkdir()
    md5 = {}
    for split, (x, y) in small.items():
        for kind, blob in (("images-idx3", idx_images(x)), ("labels-idx1", idx_labels(y))):
            name = f"{split}-{kind}-ubyte"
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            md5[name] = hashlib.md5(blob).hexdigest()
    # These small files stand in for the release: accept their checksums, as the real ones are accepted.
    monkeypatch.setattr(D, "FASHION_MNIST_UNPACKED_MD5", md5)


def test_fmnist_gz_folder_is_checked_and_unpacked_to_cache(tmp_path, small_fmnist, monkeypatch, cache):
    _write_gz_folder(tmp_path / "debian", small_fmnist, monkeypatch)
    s = D.load_split("fashion-mnist", train=True, data_dir=tmp_path / "debian")
    assert len(s) == 12 and s.labels.tolist() == (np.arange(12) % 10).tolist()
    (entry,) = cache.glob("fashion-mnist-*")  # keyed by the files it was made from
    assert (entry / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert not list(cache.rglob("*.tmp"))


def test_fmnist_cache_is_keyed_by_its_source(tmp_path, small_fmnist, monkeypatch, cache):
    """A warm cache made from one folder never stands in for another folder's (corrupt) files."""
    _write_gz_folder(tmp_path / "good", small_fmnist, monkeypatch)
    assert len(D.load_split("fashion-mnist", train=True, data_dir=tmp_path / "good")) == 12
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "good", bad)
    blob = gzip.decompress((bad / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(blob[:-1] + b"\x09"))  # one label changed
    with pytest.raises(DataError, match="md5 mismatch"):
        D.load_split("fashion-mnist", train=False, data_dir=bad)
    assert len(list(cache.glob("fashion-mnist-*"))) == 1  # the good one only: nothing of the bad one stays


def test_fmnist_gz_with_wrong_checksum_is_refused(tmp_path, small_fmnist, monkeypatch, cache):
    _write_gz_folder(tmp_path / "debian", small_fmnist, monkeypatch)
    monkeypatch.setattr(D, "FASHION_MNIST_UNPACKED_MD5", {k: "0" * 32 for k in D.FASHION_MNIST_UNPACKED_MD5})
    with pytest.raises(DataError, match="md5 mismatch"):
        D.load_split("fashion-mnist", train=True, data_dir=tmp_path / "debian")
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no unpacked file stays in the cache


def test_fmnist_truncated_files_are_a_data_error(tmp_path, small_fmnist):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, (x, y) in small_fmnist.items():
        (raw / f"{split}-images-idx3-ubyte").write_bytes(idx_images(x)[:100])
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(idx_labels(y))
    with pytest.raises(DataError, match="malformed Fashion-MNIST"):
        D.load_split("fashion-mnist", train=True, data_dir=tmp_path)


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        D.load_split("fashion-mnist", train=True, data_dir=tmp_path)
    with pytest.raises(DataError, match="--download"):
        D.load_split("cifar10", train=True, data_dir=tmp_path)


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError, match="fashion-mnist, cifar10"):
        D.load_split("mnist", train=True)


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), "labels": [int(v) for v in rng.integers(0, 10, n)],
            "batch_label": "x", "filenames": ["f"] * n}


def test_cifar_torchvision_batches(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    train_list, batches = [], {}
    for i, (name, _) in enumerate(CIFAR10.train_list + CIFAR10.test_list):
        batches[name] = _cifar_batch(4, i)
        (base / name).write_bytes(pickle.dumps(batches[name]))
        train_list.append([name, hashlib.md5((base / name).read_bytes()).hexdigest()])
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": D.CIFAR10_CLASSES}))
    # torchvision md5-checks every batch: accept the small files written here.
    monkeypatch.setattr(CIFAR10, "train_list", train_list[:5])
    monkeypatch.setattr(CIFAR10, "test_list", train_list[5:])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": hashlib.md5((base / "batches.meta").read_bytes()).hexdigest()})
    s = D.load_split("cifar10", train=False, data_dir=tmp_path)
    assert s.source == "torchvision-cifar10" and s.images.shape == (4, 3, 32, 32)
    expected = batches["test_batch"]["data"].reshape(4, 3, 32, 32)
    assert np.array_equal(s.images.numpy(), expected)
    assert s.labels.tolist() == batches["test_batch"]["labels"]
    assert len(D.load_split("cifar10", train=True, data_dir=tmp_path)) == 20


def _image_folder(root, n_per_class=2, size=32, fmt="png"):
    rng = np.random.default_rng(1)
    pixels = {}
    for split in ("train", "test"):
        for ci, c in enumerate(D.CIFAR10_CLASSES):
            (root / split / c).mkdir(parents=True)
            for k in range(n_per_class):
                a = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
                Image.fromarray(a).save(root / split / c / f"{k:04d}.{fmt}")
                pixels[(split, ci, k)] = a
    return pixels


def test_cifar_image_folder(tmp_path):
    pixels = _image_folder(tmp_path / "cifar")
    s = D.load_split("cifar10", train=False, data_dir=tmp_path / "cifar")
    assert s.source == "jpeg-image-folder" and s.images.shape == (20, 3, 32, 32)
    assert s.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert np.array_equal(s.images[0].permute(1, 2, 0).numpy(), pixels[("test", 0, 0)])  # PNG is lossless


def _cifar_archive(tmp_path):
    """A small CIFAR-10 image folder (train/ and test/) packed as dl/cifar10-jpeg.tar.gz."""
    _image_folder(tmp_path / "src")
    archive = tmp_path / "dl" / "cifar10-jpeg.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "train", arcname="train")
        tar.add(tmp_path / "src" / "test", arcname="test")
    return archive


def test_cifar_tar_gz_archive_unpacks_to_cache(tmp_path, cache):
    archive = _cifar_archive(tmp_path)
    s = D.load_split("cifar10", train=True, data_dir=archive.parent)
    assert len(s) == 20 and any(cache.iterdir())


def test_cifar_archive_unpacked_by_two_processes_at_once(tmp_path, cache, monkeypatch):
    """Two runs unpacking the same archive into an empty cache (pytest-xdist workers, two `train`s): the one that
    renames second uses the first one's folder instead of failing."""
    import lenet_export.cifar10 as C

    archive = _cifar_archive(tmp_path)
    real = os.replace

    def other_process_first(src, dst):
        shutil.copytree(src, dst)  # the other process's rename lands just before ours
        real(src, dst)  # raises: dst is a folder that is not empty

    monkeypatch.setattr(C.os, "replace", other_process_first)
    s = D.load_split("cifar10", train=True, data_dir=archive.parent)
    assert len(s) == 20
    assert [p.name for p in cache.iterdir()] == [f"cifar10-jpeg-{archive.stat().st_size}-{int(archive.stat().st_mtime)}"]


def test_image_folder_with_wrong_classes_or_sizes(tmp_path):
    _image_folder(tmp_path / "a")
    (tmp_path / "a" / "test" / "truck").rename(tmp_path / "a" / "test" / "lorry")
    with pytest.raises(DataError, match="classes"):
        D.load_split("cifar10", train=False, data_dir=tmp_path / "a")
    _image_folder(tmp_path / "b", size=30)
    with pytest.raises(DataError, match="expected 32x32"):
        D.load_split("cifar10", train=False, data_dir=tmp_path / "b")
    _image_folder(tmp_path / "c")
    (tmp_path / "c" / "test" / "cat" / "0000.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode"):
        D.load_split("cifar10", train=False, data_dir=tmp_path / "c")


@pytest.mark.parametrize("member", ["../../canary", "ABSOLUTE", "link"])
def test_archive_member_outside_the_cache_is_refused(member, tmp_path, cache):
    """A crafted cifar10*.tar.gz (path traversal, an absolute path, a symlink out): one-line error through the
    CLI, nothing written outside the cache, nothing left in it."""
    import io

    from conftest import assert_clean_error, run_cli

    canary = tmp_path / "canary"
    canary.write_text("keep")
    absolute = tmp_path / "absolute-canary"
    member = str(absolute) if member == "ABSOLUTE" else member
    archive = tmp_path / "dl" / "cifar10-jpeg.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, str(canary)
            tar.addfile(info)
            info = tarfile.TarInfo("link")  # then a file written through the link
        data = b"overwritten"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    r = run_cli("data", "--dataset", "cifar10", "--data-dir", archive.parent)
    # tarfile's data filter refuses the traversal and the link, and unpacks an absolute name inside the cache
    assert_clean_error(r, str(archive), "does not hold an image folder" if member.startswith("/") else "cannot unpack")
    assert canary.read_text() == "keep" and not absolute.exists()
    if not member.startswith("/"):
        assert not cache.exists() or not any(cache.iterdir())  # nothing half-unpacked stays


def test_offline_cifar_batches_archive_of_random_bytes(tmp_path, cache, monkeypatch):
    """A cifar-10-python.tar.gz that is not the original: one line, and no download is attempted."""
    from conftest import assert_clean_error, run_cli

    (tmp_path / "cifar-10-python.tar.gz").write_bytes(np.random.default_rng(0).bytes(4096))
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("a download was attempted"))
    assert_clean_error(run_cli("data", "--dataset", "cifar10", "--data-dir", tmp_path), "md5 mismatch")


def _png(width: int, height: int, depth: int, colour: int = 2) -> bytes:
    """A PNG header (signature, IHDR, IEND) declaring these dimensions: what a decoder reads first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_image_folder_png_header_is_checked_before_decoding(tmp_path):
    """A few bytes declaring 20000 x 20000 pixels are refused from the header (the decoder would allocate ~1.2 GB
    first); a 16-bit PNG is refused, not wrapped modulo 256."""
    _image_folder(tmp_path / "a")
    (tmp_path / "a" / "test" / "cat" / "0000.png").write_bytes(_png(20000, 20000, 8))
    with pytest.raises(DataError, match="is 20000x20000, expected 32x32"):
        D.load_split("cifar10", train=False, data_dir=tmp_path / "a")
    _image_folder(tmp_path / "b")
    rgb16 = (np.arange(32 * 32 * 3, dtype=np.uint16).reshape(32, 32, 3) * 40).astype(">u2")
    path = tmp_path / "b" / "test" / "cat" / "0000.png"
    _save_png16(path, rgb16)
    with pytest.raises(DataError, match="16-bit samples"):
        D.load_split("cifar10", train=False, data_dir=tmp_path / "b")


def _save_png16(path, rgb16) -> None:
    """A real 16-bit RGB PNG (zlib-compressed scanlines, filter 0)."""
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb16)
    data = _png(32, 32, 16)[:-12]  # without IEND
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(data + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_corrupt_archive(tmp_path, cache):
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError):
        D.load_split("cifar10", train=False, data_dir=tmp_path)


def test_split_is_seeded_disjoint_and_complete():
    a_tr, a_va = D.train_val_indices(1000, 0.1, seed=3)
    b_tr, b_va = D.train_val_indices(1000, 0.1, seed=3)
    c_tr, _ = D.train_val_indices(1000, 0.1, seed=4)
    assert torch.equal(a_tr, b_tr) and torch.equal(a_va, b_va) and not torch.equal(a_tr, c_tr)
    assert len(a_va) == 100 and set(a_tr.tolist()).isdisjoint(a_va.tolist())
    assert sorted(a_tr.tolist() + a_va.tolist()) == list(range(1000))


def test_channel_stats_and_normalize():
    x = torch.tensor([[[[0, 255]]], [[[255, 255]]]], dtype=torch.uint8)  # 2 images, 1 channel, 1x2
    mean, std = D.channel_stats(x)
    assert mean == [0.75] and abs(std[0] - 0.5) < 1e-6
    z = D.normalize(x, mean, std)
    assert abs(float(z.mean())) < 1e-6


# -- real data -------------------------------------------------------------------------------


def test_real_fashion_mnist(fmnist_dir):
    tr = D.load_split("fashion-mnist", train=True, data_dir=fmnist_dir)
    te = D.load_split("fashion-mnist", train=False, data_dir=fmnist_dir)
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(te.labels).tolist() == [1000] * 10
    mean, std = D.channel_stats(tr.images)
    assert abs(mean[0] - 0.2860) < 1e-3 and abs(std[0] - 0.3530) < 1e-3


@pytest.mark.heavy  # real training or a whole data set: not in the quick tier
def test_real_cifar10_jpeg_copy(cifar_dir):
    te = D.load_split("cifar10", train=False, data_dir=cifar_dir)
    assert te.source == "jpeg-image-folder" and te.images.shape == (10000, 3, 32, 32)
    assert te.classes == D.CIFAR10_CLASSES
    assert torch.bincount(te.labels).tolist() == [1000] * 10
    tr = D.load_split("cifar10", train=True, data_dir=cifar_dir)
    assert len(tr) == 50000
    mean, _ = D.channel_stats(tr.images)
    assert np.allclose(mean, [0.4913, 0.4821, 0.4465], atol=1e-3)  # as shared/datasets/README.md states


def test_data_command_reports_the_real_sets(fmnist_dir):
    from conftest import run_cli

    r = run_cli("data", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir)
    assert r.exit_code == 0, r.output
    assert "fashion-mnist train: 60000 images (1, 28, 28)" in r.stdout
    assert "fashion-mnist test: 10000 images (1, 28, 28)" in r.stdout


# -- corrupt files, and which folder is read ----------------------------------------------------------


def test_corrupt_deflate_stream_is_one_line_and_leaves_nothing_in_the_cache(tmp_path, small_fmnist, monkeypatch, cache):
    import zlib

    from conftest import assert_clean_error, run_cli

    _write_gz_folder(tmp_path / "gz", small_fmnist, monkeypatch)
    bad = tmp_path / "gz" / "train-images-idx3-ubyte.gz"
    blob = gzip.compress(bytes(range(256)) * 200)  # compressible, so the stream holds real deflate blocks
    bad.write_bytes(blob[:20] + b"\xff" * 40 + blob[60:])
    with pytest.raises(zlib.error):  # the defect as the standard library reports it
        gzip.decompress(bad.read_bytes())
    assert_clean_error(run_cli("data", "--data-dir", tmp_path / "gz"), "cannot unpack", str(bad))
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no 0-byte temporary, no half file


def test_explicit_data_dir_is_never_replaced_by_the_system_copy(tmp_path, monkeypatch, fmnist_dir, cache):
    from conftest import assert_clean_error, run_cli

    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", fmnist_dir)  # a system copy is present
    typo = tmp_path / "fashion-mnst"
    assert_clean_error(run_cli("data", "--data-dir", typo), f"--data-dir {typo} does not exist")
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("data", "--data-dir", tmp_path / "empty"), f"no Fashion-MNIST in {tmp_path / 'empty'}")
    assert_clean_error(run_cli("train", "--data-dir", typo, "--out", tmp_path / "run"), str(typo))
    assert not (tmp_path / "run").exists()
    # Without --data-dir: $LENET_EXPORT_DATA (empty here), then the system copy.
    monkeypatch.setenv("LENET_EXPORT_DATA", str(tmp_path / "empty"))
    assert D.resolve_data_dir("fashion-mnist") == fmnist_dir
    assert D.resolve_data_dir("fashion-mnist", fmnist_dir) == fmnist_dir
    with pytest.raises(DataError, match="no CIFAR-10 found in"):
        D.resolve_data_dir("cifar10")
    assert D.resolve_data_dir("cifar10", typo, download=True) == typo  # the download's target
