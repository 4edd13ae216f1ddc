"""lenet-export onnx under faults: --force never replaces what is not an export, one export per folder at a
time, a killed export's leftovers are cleaned, a full or read-only disk is a one-line error."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, assert_clean_error, run_cli
from disks import tmpfs  # noqa: F401  (fixture)
from lenet_export.fsutil import sha256_file


@pytest.fixture
def ckpt(runs, tmp_path):
    """A copy of the session's trained Fashion-MNIST run (its checkpoint and training files)."""
    run = tmp_path / "run"
    shutil.copytree(runs("fashion-mnist"), run)
    return run / "best.pth"


def _onnx(ckpt, out, fmnist_dir, *extra):
    return run_cli("onnx", "--checkpoint", ckpt, "--out", out, "--data-dir", fmnist_dir, "--no-torchscript", *extra)


def test_force_never_replaces_a_training_run(ckpt, fmnist_dir):
    run = ckpt.parent
    before = {p.name: sha256_file(p) for p in run.iterdir() if p.is_file()}
    r = _onnx(ckpt, run, fmnist_dir, "--force")
    assert_clean_error(r, "refusing to replace", "holds the checkpoint being exported")
    other = run.parent / "other-run"
    shutil.copytree(run, other)
    assert_clean_error(_onnx(ckpt, other, fmnist_dir, "--force"), "refusing to replace", "holds a training run")
    assert {p.name: sha256_file(p) for p in run.iterdir() if p.is_file()} == before


def test_force_never_replaces_other_folders_or_files(ckpt, fmnist_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("years of work")
    assert_clean_error(_onnx(ckpt, docs, fmnist_dir, "--force"), "not a lenet-export export folder")
    assert (docs / "thesis.tex").read_text() == "years of work"
    (tmp_path / "afile").write_text("x")
    assert_clean_error(_onnx(ckpt, tmp_path / "afile", fmnist_dir, "--force"), "it is a file")
    assert_clean_error(_onnx(ckpt, docs, fmnist_dir), "already exists", "--force")


def test_force_replaces_an_earlier_export(ckpt, fmnist_dir, tmp_path):
    out = tmp_path / "export"
    assert _onnx(ckpt, out, fmnist_dir).exit_code == 0
    first = json.loads((out / "metadata.json").read_text())
    r = _onnx(ckpt, out, fmnist_dir, "--force")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "metadata.json").read_text())["checkpoint_sha256"] == first["checkpoint_sha256"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []  # no lock file left


def test_second_export_to_the_same_folder_is_refused_while_one_runs(ckpt, fmnist_dir, tmp_path):
    out = tmp_path / "export"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lenet_export.fsutil import locked\n"
         f"with locked({str(tmp_path / '.export.lock')!r}):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_clean_error(_onnx(ckpt, out, fmnist_dir), "in use by another process", f"pid {holder.pid}")
        holder.send_signal(signal.SIGKILL)  # a killed holder's lock is gone with it
        holder.wait(10)
        r = _onnx(ckpt, out, fmnist_dir)
        assert r.exit_code == 0, r.output
    finally:
        holder.kill()


def _export_proc(ckpt, out, fmnist_dir):
    return subprocess.Popen([str(REPO / ".venv" / "bin" / "lenet-export") if (REPO / ".venv").exists() else "lenet-export",
                             "onnx", "--checkpoint", str(ckpt), "--out", str(out), "--data-dir", str(fmnist_dir), "--force"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_9_mid_export_keeps_the_old_export_and_the_next_run_cleans_up(ckpt, fmnist_dir, tmp_path):
    out = tmp_path / "export"
    assert _onnx(ckpt, out, fmnist_dir).exit_code == 0
    good = sha256_file(out / "model.onnx")
    proc = _export_proc(ckpt, out, fmnist_dir)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".export.*.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert list(tmp_path.glob(".export.*.tmp")), "the export finished before it could be killed"
    assert sha256_file(out / "model.onnx") == good  # the earlier export is untouched
    # killed between the two renames: the earlier export sits at .export.old-PID and export/ is gone
    os.replace(out, tmp_path / ".export.old-4242")
    r = _onnx(ckpt, out, fmnist_dir)
    assert_clean_error(r, "already exists")  # the moved-aside export came back, and is not replaced without --force
    assert sha256_file(out / "model.onnx") == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []


def test_full_disk_is_a_one_line_error_and_keeps_the_earlier_export(ckpt, fmnist_dir, tmpfs):
    disk = tmpfs("small", 1200)
    out = disk / "export"
    out.mkdir()
    (out / "metadata.json").write_text(json.dumps({"checkpoint_sha256": "x", "model_name": "lenet-modern"}))
    r = run_cli("onnx", "--checkpoint", ckpt, "--out", out, "--data-dir", fmnist_dir, "--force")
    assert_clean_error(r, "no space left on device")
    assert json.loads((out / "metadata.json").read_text())["model_name"] == "lenet-modern"
    assert not list(disk.glob(".export.*.tmp")) and not list(disk.glob(".export.old-*"))


@pytest.mark.parametrize("size_kb", [2000, 3500, 5200])
def test_disk_full_in_any_writer_is_one_line_and_leaves_nothing(size_kb, ckpt, fmnist_dir, tmpfs):
    """Disks that fill up in a later writer (TorchScript, OpenVINO's or a converter's C++ code): one line saying
    the disk is full, no staged folder, no lock file, no output folder."""
    disk = tmpfs(f"d{size_kb}", size_kb)
    r = _onnx(ckpt, disk / "export", fmnist_dir)
    assert_clean_error(r, "no space left on device")
    assert sorted(p.name for p in disk.iterdir()) == [], list(disk.iterdir())


def test_quantize_on_a_full_disk_writes_each_variant_whole_or_not_at_all(ckpt, fmnist_dir, tmpfs, tmp_path):
    from disks import fill

    src = tmp_path / "export"
    assert _onnx(ckpt, src, fmnist_dir, "--formats", "openvino").exit_code == 0
    disk = tmpfs("q", 8000)
    out = disk / "export"
    shutil.copytree(src, out)
    fill(disk, 600 * 1024)  # room for the FP16 variant (~420 KiB), not for the next
    r = run_cli("quantize", "--exported", out, "--checkpoint", ckpt, "--data-dir", fmnist_dir)
    assert_clean_error(r, "no space left on device")
    listed = {f for files in json.loads((out / "metadata.json").read_text())["formats"].values() for f in files}
    present = {p.name for p in out.iterdir() if p.is_file()}
    for variant in ("model.fp16.onnx", "model.int8.onnx", "model.int8.xml", "model.int8.bin"):
        assert (variant in listed) == (variant in present), variant  # listed exactly when it is there, whole
    assert not [p for p in out.iterdir() if p.name.startswith(".")] and not list(disk.glob(".*lock"))


def test_read_only_out_is_a_one_line_error(ckpt, fmnist_dir, tmpfs):
    disk = tmpfs("ro", 1000, read_only=True)
    assert_clean_error(_onnx(ckpt, disk / "export", fmnist_dir), "cannot write", "read-only file system")
