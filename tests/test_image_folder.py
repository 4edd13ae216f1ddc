"""`verify --images` and `bench --images`: the user's own labelled folder (ImageFolder layout), decoded as
`predict` decodes it, on the shipped Fashion-MNIST export. The folder is written from the real test split as PNG
(lossless), so every backend must give exactly what the shipped record says for those samples."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, assert_clean_error, run_cli

EXPORT = REPO / "exported" / "fashion-mnist-lenet-modern"


def _record():
    from lenet_export.record import load_record

    rep = json.loads((EXPORT / "verify.json").read_text())
    return load_record(EXPORT / rep["sidecar"]["file"], rep["sidecar"]["sha256"])


def _write_folder(root, fmnist_dir, indices):
    """Test samples ``indices`` as PNG files under root/<class folder>/, as a user would lay them out."""
    from lenet_export.data import load_split
    from lenet_export.image_folder import folder_name

    split = load_split("fashion-mnist", train=False, data_dir=fmnist_dir)
    classes = json.loads((EXPORT / "metadata.json").read_text())["classes"]
    files = {}
    for i in indices:
        label = int(split.labels[i])
        d = root / folder_name(classes[label])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(split.images[i, 0].numpy()).save(d / f"{i:05d}.png")
        files[i] = d / f"{i:05d}.png"
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory, fmnist_dir):
    """The first 40 test samples, and every sample where the shipped record's INT8 model flips a right class to a
    wrong one (a flip that costs accuracy: on those, INT8 is over its budget whichever way the others went)."""
    rec = _record()
    flips = np.flatnonzero((rec.classes["ort-cpu-int8"] != rec.classes["torch-cpu"])
                           & (rec.classes["torch-cpu"] == rec.labels))
    root = tmp_path_factory.mktemp("mine") / "images"
    return root, _write_folder(root, fmnist_dir, sorted({*range(40), *flips.tolist()}))


def test_verify_on_a_folder_gives_what_the_record_says_for_those_samples(folder, tmp_path):
    root, files = folder
    out = tmp_path / "mine.json"
    r = run_cli("verify", "--exported", EXPORT, "--images", root, "--backends", "ort-cpu,ort-cpu-raw", "--report", out)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["samples"] == len(files) and rep["images"]["folder"] == str(root)
    order = [int(p.split("/")[-1][:5]) for p in rep["images"]["files"]]
    rec = _record()
    expected = float(np.mean(rec.classes["torch-cpu"][order] == rec.labels[order]))
    for name in ("torch-cpu", "ort-cpu", "ort-cpu-raw"):
        assert rep["backends"][name]["accuracy"] == pytest.approx(expected, abs=1e-9), name


def test_the_flip_ledger_names_the_files(folder, tmp_path):
    """The folder holds every sample where the record's INT8 model flips a right class: INT8 fails its budget on
    it (on any CPU), and the ledger names the files."""
    root, files = folder
    out = tmp_path / "int8.json"
    r = run_cli("verify", "--exported", EXPORT, "--images", root, "--backends", "ort-cpu-int8", "--report", out)
    assert r.exit_code == 1 and "parity failed for ort-cpu-int8" in r.output, r.output
    rep = json.loads(out.read_text())
    flips = rep["pairwise"]["flips"]["torch-cpu | ort-cpu-int8"]
    assert flips["count"] > 0
    assert str(rep["images"]["files"][flips["samples"][0]]) in r.stdout.replace("\n", "")


def test_a_folder_that_names_no_class_is_refused(folder, tmp_path, fmnist_dir):
    root = tmp_path / "typo"
    _write_folder(root, fmnist_dir, range(3))
    (root / "Sneakers").mkdir()
    r = run_cli("verify", "--exported", EXPORT, "--images", root, "--backends", "ort-cpu")
    assert_clean_error(r, "folder 'Sneakers' is not a class of the model", "T-shirt_top")
    assert_clean_error(run_cli("verify", "--exported", EXPORT, "--images", tmp_path / "none"), "is not a folder")
    assert_clean_error(run_cli("verify", "--exported", EXPORT, "--images", root, "--data-dir", fmnist_dir),
                       "--images replaces the test split")
    assert_clean_error(run_cli("verify", "--exported", EXPORT, "--fit", "letterbox"), "apply to --images")


def test_folders_may_be_named_by_index_and_images_are_fitted(tmp_path):
    """Class folders by index; a 56x40 image is refused by --fit exact and taken by --fit letterbox."""
    from lenet_export.image_folder import load_image_folder

    classes = json.loads((EXPORT / "metadata.json").read_text())["classes"]
    (tmp_path / "7").mkdir()
    Image.fromarray(np.full((40, 56), 200, np.uint8)).save(tmp_path / "7" / "wide.png")
    with pytest.raises(Exception, match="56x40"):
        load_image_folder(tmp_path, classes, 1, (28, 28))
    got = load_image_folder(tmp_path, classes, 1, (28, 28), fit="letterbox", invert=True)
    assert got.labels.tolist() == [7] and got.images.shape == (1, 28, 28)
    assert (got.images == 55).all()  # inverted, and the letterbox filled with the (inverted) border


def test_bench_on_a_folder(folder, tmp_path):
    root, files = folder
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--exported", EXPORT, "--images", root, "--backends", "ort-cpu", "--json", out,
                "--markdown", tmp_path / "bench.md")
    assert r.exit_code == 0, r.output
    rows = {row["backend"]: row for row in json.loads(out.read_text())}
    rec, order = _record(), sorted(files)
    expected = float(np.mean(rec.classes["torch-cpu"][order] == rec.labels[order]))
    assert rows["ort-cpu"]["status"] == "passed" and rows["ort-cpu"]["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert rows["ort-cpu"]["argmax_agree"] == len(files) and f"images {root}" in (tmp_path / "bench.md").read_text()
