"""`lenet-export predict` on the user's own files: folders and globs, top-k, output formats, letterbox, invert,
low confidence, what the model saw; on the shipped Fashion-MNIST model (torch-free)."""

import csv
import importlib.util
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, assert_clean_error, run_cli

EXPORT = REPO / "exported" / "fashion-mnist-lenet-modern"
MODEL = EXPORT / "model.raw.onnx"
IMAGES = sorted((REPO / "examples" / "images").glob("fashion-mnist-*.png"))


def predict(*args):
    r = run_cli("predict", "--model", MODEL, *args)
    assert r.exit_code == 0, r.output
    return r.stdout


def jsonl(*args):
    return [json.loads(line) for line in predict("--format", "jsonl", *args).splitlines()]


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for i, p in enumerate(IMAGES):
        shutil.copy(p, (d / "sub" if i == 0 else d) / p.name)
    (d / "notes.txt").write_text("not an image")
    return d


def test_folders_globs_and_files_expand_once_in_order(folder):
    rows = jsonl(str(folder), str(folder / "*.png"), str(folder / "sub" / IMAGES[0].name))
    names = [r["file"] for r in rows]
    assert len(names) == len(IMAGES) == len(set(names))  # each file once, the text file skipped
    assert names == sorted(names)


def test_labels_are_names_and_indices_with_top_k(folder):
    classes = json.loads((EXPORT / "metadata.json").read_text())["classes"]
    rows = jsonl(str(folder), "--top-k", "3")
    for r in rows:
        assert r["label"] == classes[r["index"]] and [t["label"] for t in r["top_k"]][0] == r["label"]
        probs = [t["probability"] for t in r["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    table = list(csv.DictReader(io.StringIO(predict(str(folder), "--top-k", "2", "--format", "csv"))))
    assert [t["label"] for t in table] == [r["label"] for r in rows]
    assert set(table[0]) == {"file", "label", "index", "probability", "low_confidence", "label_2", "probability_2"}
    assert_clean_error(run_cli("predict", "--model", MODEL, str(folder), "--top-k", "11"), "--top-k")


def test_low_confidence_is_flagged_below_the_threshold(folder):
    rows = jsonl(str(folder))
    low = min(r["probability"] for r in rows)  # the shirt: the least sure of the examples
    assert not any(r["low_confidence"] for r in rows)  # default 0.5: all examples are confident enough
    flagged = jsonl(str(folder), "--min-confidence", str(low + 1e-3))
    assert [r["low_confidence"] for r in flagged] == [r["probability"] < low + 1e-3 for r in rows]
    assert sum(r["low_confidence"] for r in flagged) == 1
    assert "low confidence" in predict(str(folder), "--min-confidence", "0.99")


def test_invert_undoes_an_inverted_file(tmp_path):
    src = IMAGES[0]
    Image.fromarray(255 - np.asarray(Image.open(src))).save(tmp_path / "inverted.png")
    plain, inverted = jsonl(str(src))[0], jsonl(str(tmp_path / "inverted.png"), "--invert")[0]
    assert (plain["label"], plain["probability"]) == (inverted["label"], inverted["probability"])
    assert jsonl(str(tmp_path / "inverted.png"))[0]["probability"] != plain["probability"]  # without: another input


def test_letterbox_keeps_the_aspect_ratio_and_saves_what_the_model_saw(tmp_path):
    a = np.asarray(Image.open(IMAGES[0]))
    wide = np.zeros((28, 56), np.uint8)
    wide[:, 14:42] = a  # the image centred on a black canvas twice as wide
    Image.fromarray(wide).save(tmp_path / "wide.png")
    seen = tmp_path / "seen"
    assert_clean_error(run_cli("predict", "--model", MODEL, str(tmp_path / "wide.png")), "--fit")
    jsonl(str(tmp_path / "wide.png"), "--fit", "letterbox", "--save-inputs", str(seen))
    boxed = np.asarray(Image.open(seen / "wide.seen.png"))
    assert boxed.shape == (28, 28)
    assert (boxed[:7] == 0).all() and (boxed[-7:] == 0).all()  # 28x56 -> 14x28 in the middle, black above and below
    jsonl(str(tmp_path / "wide.png"), "--fit", "stretch", "--save-inputs", str(seen))
    stretched = np.asarray(Image.open(seen / "wide.seen.png"))
    assert stretched.shape == (28, 28) and not np.array_equal(stretched, boxed)


def test_batches_beyond_one_chunk_keep_order(tmp_path):
    for i in range(300):  # more than predict.BATCH
        shutil.copy(IMAGES[i % len(IMAGES)], tmp_path / f"{i:03d}.png")
    rows = jsonl(str(tmp_path))
    assert len(rows) == 300
    first = {r["file"].split("/")[-1]: r["probability"] for r in jsonl(*map(str, IMAGES))}
    for i, r in enumerate(rows):
        assert r["probability"] == first[IMAGES[i % len(IMAGES)].name]


def _artefacts():
    """Every CPU artefact of the shipped export with its backend, the float ones first."""
    from lenet_export import backends

    listed = {f for fs in json.loads((EXPORT / "metadata.json").read_text())["formats"].values() for f in fs}
    found = {b.artefact: b for b in reversed(backends.registry().values())
             if b.device == "cpu" and b.artefact in listed and b.name != "ort-web"}
    return sorted(found.values(), key=lambda b: (b.precision != "fp32", b.name))


@pytest.mark.parametrize("backend", _artefacts(), ids=lambda b: b.artefact)
def test_every_artefact_runs_through_its_backend(backend):
    """predict --model <any artefact> gives the ONNX model's classes (FP32 artefacts: its probabilities too)."""
    if importlib.util.find_spec(backend.package) is None:
        pytest.skip(f"{backend.package} is not installed ({backend.install})")
    onnx_rows = jsonl(*map(str, IMAGES))
    r = run_cli("predict", "--model", EXPORT / backend.artefact, "--format", "json", *map(str, IMAGES))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["provider"].split(" ")[0] in (backend.name, "CPUExecutionProvider")
    for mine, ref in zip(out["predictions"], onnx_rows):
        if backend.precision == "fp32":
            assert mine["label"] == ref["label"] and mine["probability"] == pytest.approx(ref["probability"], abs=1e-4)
        else:
            assert 0.0 < mine["probability"] <= 1.0


def test_an_artefact_without_its_runtime_or_backend_is_a_one_line_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "MNN", None)  # as if MNN were not installed
    assert_clean_error(run_cli("predict", "--model", EXPORT / "model.mnn", str(IMAGES[0])),
                       "mnn-cpu cannot run model.mnn here", "pip install")
    assert_clean_error(run_cli("predict", "--model", EXPORT / "model.xml", "--backend", "tract-cpu", str(IMAGES[0])),
                       "runs model.nnef.tar, not model.xml")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    assert_clean_error(run_cli("predict", "--model", tmp_path / "weights.bin", str(IMAGES[0])),
                       "not an artefact lenet-export runs")
    shutil.copy(EXPORT / "model.tflite", tmp_path / "model.tflite")  # outside its export folder
    assert_clean_error(run_cli("predict", "--model", tmp_path / "model.tflite", str(IMAGES[0])), "metadata.json")


@pytest.mark.parametrize("args,fragment", [(("--format", "yaml"), "--format"), (("--fit", "crop"), "--fit")])
def test_bad_options_are_one_line_errors(args, fragment):
    assert_clean_error(run_cli("predict", *(args if args[0] == "--model" else ("--model", MODEL, *args)),
                               str(IMAGES[0])), fragment)


def test_missing_inputs_are_one_line_errors(tmp_path):
    assert_clean_error(run_cli("predict", "--model", MODEL, str(tmp_path / "none.png")), "no such file")
    assert_clean_error(run_cli("predict", "--model", MODEL, str(tmp_path)), "no image files")
    (tmp_path / "a-file").write_text("keep me")  # --save-inputs naming a file: refused, the file untouched
    assert_clean_error(run_cli("predict", "--model", MODEL, str(IMAGES[0]), "--save-inputs", str(tmp_path / "a-file")),
                       "a-file", "not a folder")
    assert (tmp_path / "a-file").read_text() == "keep me"
