"""Hostile inputs to the verbs, on the shipped model (no training): each is one line `error: ...`, a non-zero exit,
and no file touched."""

from __future__ import annotations

import hashlib
import shutil

import onnx
import pytest
from onnx import numpy_helper

from conftest import REPO, assert_clean_error, run_cli

SHIPPED = REPO / "exported" / "fashion-mnist-lenet-modern"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def export(tmp_path):
    """A copy of the shipped Fashion-MNIST export (so no test can change the real one)."""
    dst = tmp_path / "export"
    shutil.copytree(SHIPPED, dst)
    return dst


@pytest.mark.parametrize("verb,option,target", [
    ("verify", "--report", "best.pth"), ("verify", "--report", "model.onnx"), ("verify", "--report", "metadata.json"),
    ("diff", "--json", "model.onnx"), ("diff", "--json", "model.xml"), ("bench", "--json", "model.raw.onnx"),
    ("bench", "--markdown", "test_data_set_0/input_0.pb"),
])
def test_output_that_is_an_input_is_refused(verb, option, target, export, fmnist_dir):
    before = _sha(export / target)
    extra = ("--backend", "ort-cpu") if verb == "diff" else ()
    r = run_cli(verb, "--exported", export, "--data-dir", fmnist_dir, option, export / target, *extra)
    assert_clean_error(r, f"{option} {export / target} is one of the files this command reads")
    assert _sha(export / target) == before


def test_report_beside_the_artefacts_is_fine(export, fmnist_dir):
    r = run_cli("verify", "--exported", export, "--data-dir", fmnist_dir, "--backends", "ort-cpu",
                "--report", export / "verify.json")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("spec", [" , ", ","])
def test_backends_naming_nothing_is_bad_input(spec, export, fmnist_dir):
    for verb in ("verify", "bench"):
        assert_clean_error(run_cli(verb, "--exported", export, "--data-dir", fmnist_dir, "--backends", spec),
                           "names no backend")


@pytest.mark.parametrize("args,message", [
    (("--val-fraction", "0.99999999"), "leaves no training images"),
    (("--time-budget", "nan"), "--time-budget must be a positive number"),
    (("--time-budget", "-5"), "--time-budget must be a positive number"),
])
def test_train_option_values(args, message, tmp_path, fmnist_dir):
    r = run_cli("train", "--data-dir", fmnist_dir, "--out", tmp_path / "run", "--epochs", "1", *args)
    assert_clean_error(r, message)


def test_quantize_seed_out_of_range(export, fmnist_dir):
    before = {p.name: _sha(p) for p in export.iterdir() if p.is_file()}
    r = run_cli("quantize", "--exported", export, "--data-dir", fmnist_dir, "--seed", str(2**64))
    assert_clean_error(r, "--seed must be an integer from 0 to 2**63-1")
    assert {p.name: _sha(p) for p in export.iterdir() if p.is_file()} == before


def test_bench_of_a_wrong_model_fails(export, fmnist_dir):
    """Figures of a model that differs from its checkpoint are no success: exit 1, after the table."""
    m = onnx.load(export / "model.onnx")
    w = m.graph.initializer[-1]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + 0.5, w.name))
    onnx.save(m, export / "model.onnx")
    r = run_cli("bench", "--exported", export, "--data-dir", fmnist_dir, "--backends", "ort-cpu")
    assert r.exit_code == 1 and "parity failed for ort-cpu" in r.stderr and "Traceback" not in r.output
    assert "ort-cpu" in r.stdout  # the table is still printed
