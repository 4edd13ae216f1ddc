"""Checkpoint files: the same content gives the same bytes; fields are validated, not only the format tag."""

import hashlib

import pytest

from conftest import REPO, assert_clean_error, run_cli
from lenet_export.checkpoint import load_checkpoint, save_checkpoint
from lenet_export.errors import CheckpointError

SHIPPED = REPO / "exported" / "fashion-mnist-lenet-modern" / "best.pth"


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def shipped() -> dict:
    ck = load_checkpoint(SHIPPED)
    return {k: v for k, v in ck.items() if k not in ("format", "format_version")}


def test_same_content_gives_the_same_bytes(tmp_path):
    ck = shipped()
    save_checkpoint(ck, tmp_path / "a.pth")
    save_checkpoint(ck, tmp_path / "other-name.pth")
    assert sha(tmp_path / "a.pth") == sha(tmp_path / "other-name.pth")
    save_checkpoint(load_checkpoint(tmp_path / "a.pth"), tmp_path / "b" / "best.pth")  # a round trip too
    assert sha(tmp_path / "b" / "best.pth") == sha(tmp_path / "a.pth")


def test_resaving_unchanged_content_keeps_the_file(tmp_path):
    p = tmp_path / "best.pth"
    save_checkpoint(shipped(), p)
    before = p.stat()
    save_checkpoint(shipped(), p)
    assert p.stat().st_mtime_ns == before.st_mtime_ns and p.stat().st_ino == before.st_ino


def _broken(tmp_path, **changes) -> object:
    ck = shipped()
    for k, v in changes.items():
        if v is KeyError:
            del ck[k]
        else:
            ck[k] = v
    path = tmp_path / "bad.pth"
    save_checkpoint(ck, path)
    return path


@pytest.mark.parametrize("changes, fragment", [
    ({"epoch": KeyError}, "lacks epoch"),
    ({"epoch": "4"}, "'epoch'"),
    ({"input_shape": [28, 28]}, "'input_shape' must be 3 positive integers"),
    ({"input_shape": [1, 28, -28]}, "'input_shape' must be 3 positive integers"),
    ({"input_shape": [3, 28, 28]}, "'mean' must be 3 number(s)"),
    ({"classes": ["a", "b", "c"]}, "names 3 classes but the model's last layer has 10 outputs"),
    ({"mean": [0.1, 0.2]}, "'mean' must be 1 number(s)"),
    ({"std": [0.0]}, "'std' must be positive"),
    ({"classes": "T-shirt"}, "'classes'"),
    ({"state_dict": {"w": [1, 2]}}, "'state_dict'"),
    ({"model_args": "lenet"}, "'model_args'"),
    ({"val_acc": KeyError}, "lacks val_acc"),
    ({"split": KeyError}, "lacks split"),
    ({"split": {"seed": 0}}, "'split' must hold val_fraction"),
    ({"val_acc": 7.0}, "'val_acc' must be an accuracy"),
    ({"input_shape": [1, 3163, 3163], "model_args": {"in_channels": 1, "image_size": 3163}}, "out of range"),
    ({"input_shape": [2, 28, 28], "mean": [0.1, 0.1], "std": [0.3, 0.3]}, "out of range"),
])
def test_wrong_fields_are_one_line_errors(tmp_path, changes, fragment):
    path = _broken(tmp_path, **changes)
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint(path)
    assert_clean_error(run_cli("onnx", "--checkpoint", path, "--out", tmp_path / "export"), fragment)
    assert not (tmp_path / "export").exists()


def test_every_verb_refuses_a_checkpoint_without_split(tmp_path):
    """quantize reads the split (calibration images come from its training part): refused in one line."""
    import shutil

    export = tmp_path / "export"
    shutil.copytree(SHIPPED.parent, export)
    ck = shipped()
    del ck["split"]
    save_checkpoint(ck, tmp_path / "bad.pth")
    import json

    meta = json.loads((export / "metadata.json").read_text())  # an export that claims to come from it
    meta["checkpoint_sha256"] = sha(tmp_path / "bad.pth")
    (export / "metadata.json").write_text(json.dumps(meta))
    for verb in ("quantize", "verify"):
        assert_clean_error(run_cli(verb, "--exported", export, "--checkpoint", tmp_path / "bad.pth"), "lacks split")


@pytest.mark.parametrize("content", [b"\x00\x01random bytes" * 100, b"PK\x03\x04 truncated zip"])
def test_random_bytes_are_not_a_checkpoint(tmp_path, content):
    (tmp_path / "x.pth").write_bytes(content)
    r = run_cli("onnx", "--checkpoint", tmp_path / "x.pth", "--out", tmp_path / "e")
    assert_clean_error(r, str(tmp_path / "x.pth"))
    assert "Python objects" not in r.stderr


def test_checkpoint_that_is_a_folder(tmp_path):
    assert_clean_error(run_cli("onnx", "--checkpoint", tmp_path, "--out", tmp_path / "e"), "is a folder")


def test_resume_from_a_state_with_wrong_fields(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    ck = shipped()
    ck["input_shape"] = [1, 28]
    save_checkpoint(ck, out / "last.pth")
    assert_clean_error(run_cli("train", "--resume", "--out", out), "'input_shape'")
    ck = shipped()  # a best.pth where a last.pth belongs: no optimizer state
    save_checkpoint(ck, out / "last.pth")
    assert_clean_error(run_cli("train", "--resume", "--out", out), "not a resumable training state", "optimizer")


def test_train_header_says_epoch_in_the_singular_for_one():
    from lenet_export.training.train import header_line

    meta = {"model": "m", "num_parameters": 1, "dataset": "d", "data_source": "s",
            "split": {"n_train": 9, "n_val": 1}, "config": {"optimizer": "adamw", "lr": 0.1, "batch_size": 2}}
    assert header_line(meta, 1, "cpu").endswith(", 1 epoch, float32")
    assert header_line(meta, 3, "cpu").endswith(", 3 epochs, float32")
    meta["config"]["precision"] = "bf16"
    assert header_line(meta, 3, "cpu").endswith(", 3 epochs, bfloat16 autocast")
