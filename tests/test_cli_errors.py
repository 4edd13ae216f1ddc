"""Hostile inputs to the verbs, on the shipped model (no training): each is one line `error: ...`, a non-zero exit,
and no file touched."""

from __future__ import annotations

import hashlib
import importlib.util
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


@pytest.mark.parametrize("args", [("frobnicate",), ("train", "--epochs", "abc"), ("predict",),
                                  ("verify", "--no-such-option")])
def test_usage_errors_are_one_line(args):
    assert_clean_error(run_cli(*args), "see lenet-export --help")


@pytest.mark.parametrize("artefact,backend", [("model.onnx", "ort-cpu"), ("model.pt", "torchscript-cpu"),
                                              ("model.pt2", "pt2-cpu"), ("model.xml", "openvino-cpu")])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_diff_and_verify_on_a_broken_artefact_name_the_file(artefact, backend, damage, export, fmnist_dir):
    from lenet_export.backends import get

    if get(backend).package == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    path = export / artefact
    path.write_bytes(b"garbage" * 100 if damage == "garbage" else path.read_bytes()[: path.stat().st_size // 2])
    r = run_cli("diff", "--exported", export, "--data-dir", fmnist_dir, "--backend", backend)
    assert_clean_error(r, f"{backend} cannot load {artefact}")
    r = run_cli("verify", "--exported", export, "--data-dir", fmnist_dir, "--backends", backend)
    assert r.exit_code == 1 and f"cannot load {artefact}" in r.stdout
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr  # no log


def test_missing_companion_file_is_named(export, fmnist_dir):
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    (export / "model.bin").unlink()
    r = run_cli("verify", "--exported", export, "--data-dir", fmnist_dir, "--backends", "openvino-cpu")
    assert r.exit_code == 1 and "missing model.bin in" in r.stdout and "core.cpp" not in r.output


def test_json_output_that_is_a_folder_names_the_folder(export, fmnist_dir, tmp_path):
    (tmp_path / "out").mkdir()
    r = run_cli("diff", "--exported", export, "--data-dir", fmnist_dir, "--backend", "ort-cpu", "--samples", "8",
                "--json", tmp_path / "out")
    assert_clean_error(r, f"cannot write {tmp_path / 'out'}: is a folder")


def test_apt_waits_for_a_held_dpkg_lock(tmp_path):
    """scripts/apt-install.sh (what install.sh runs): with the dpkg lock held by another process, it says it
    waits and passes apt its lock timeout, instead of failing at once. apt-get and fuser are stand-ins here that
    record what they were asked (the real apt is not for a test to drive)."""
    import os
    import subprocess

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "fuser").write_text("#!/bin/sh\nexit 0\n")  # "a process holds /var/lib/dpkg/lock-frontend"
    (bin_ / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    r = subprocess.run(["bash", str(REPO / "scripts" / "apt-install.sh"), "dataset-fashion-mnist"], capture_output=True,
                       text=True, env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "APT_LOCK_TIMEOUT": "7"})
    assert r.returncode == 0, r.stderr
    assert "waiting for another apt/dpkg process to release its lock (up to 7 s)" in r.stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["-o DPkg::Lock::Timeout=7 update -qq",
                     "-o DPkg::Lock::Timeout=7 install -y -qq dataset-fashion-mnist"]


def test_quantize_while_the_export_is_being_replaced_says_in_use(export, fmnist_dir):
    """An `onnx --force` holding the folder's lock (another process): quantize says the folder is in use, not
    that there is no checkpoint."""
    import subprocess
    import sys

    lock = export.parent / f".{export.name}.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lenet_export.fsutil import locked\n"
                               f"with locked({str(lock)!r}):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run_cli("quantize", "--exported", export, "--data-dir", fmnist_dir)
        assert_clean_error(r, "is in use by another process", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def test_garbage_openvino_ir_is_one_line_from_the_real_cli(export, fmnist_dir):
    """OpenVINO tries every frontend on a file it cannot parse, and each logs to file descriptor 2 (TensorFlow's
    GraphDef parser: 9 lines): the real command's stderr holds only its own error line."""
    import subprocess
    import sys

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    (export / "model.xml").write_bytes(b"\x00garbage" * 50)
    r = subprocess.run([sys.executable, "-m", "lenet_export", "verify", "--exported", str(export), "--data-dir",
                        str(fmnist_dir), "--backends", "openvino-cpu"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 1 and "cannot load model.xml" in r.stdout
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_version():
    from lenet_export import __version__

    r = run_cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"lenet-export {__version__}"


def test_quantize_an_export_made_before_formats_were_recorded(export, fmnist_dir):
    """metadata.json without `formats`: the variants are made, and the listing keeps the ONNX files."""
    import json

    meta = json.loads((export / "metadata.json").read_text())
    for key in ("formats", "skipped_formats"):
        meta.pop(key)
    (export / "metadata.json").write_text(json.dumps(meta))
    r = run_cli("quantize", "--exported", export, "--data-dir", fmnist_dir, "--formats", "onnx-fp16,onnx-int8")
    assert r.exit_code == 0, r.output
    listed = json.loads((export / "metadata.json").read_text())["formats"]
    assert {"onnx", "raw-onnx", "onnx-fp16", "onnx-int8"} <= set(listed)
    r = run_cli("verify", "--exported", export, "--data-dir", fmnist_dir, "--backends", "ort-cpu,ort-cpu-int8")
    assert r.exit_code == 0, r.output


def test_help_is_conventional():
    """Help labels values as click does (PATH, INTEGER, TEXT) and flags not at all: no typer ``<bool>`` labels."""
    from lenet_export.cli import app
    from typer.main import get_command

    verbs = list(get_command(app).commands)
    for verb in ["", *verbs]:
        r = run_cli(*([verb] if verb else []), "--help")
        assert r.exit_code == 0, r.output
        import re

        assert not re.search(r"<(bool|str|int|float|path|list\[str\])>", r.output), (verb, r.output)
    r = run_cli("predict", "--help")
    assert " PATH " in r.output and " INTEGER " in r.output and " FLOAT " in r.output
