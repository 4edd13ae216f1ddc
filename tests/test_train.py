"""lenet-export train: real short runs, checkpoint contents, determinism, resume, atomic writes, bad input."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import assert_clean_error, run_cli
from lenet_export.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from lenet_export.data import load_split, normalize
from lenet_export.errors import CheckpointError, ConfigError
from lenet_export.training.train import TrainConfig, train


def small_cfg(out, data_dir, **kw):
    base = dict(dataset="fashion-mnist", model="lenet-classic", epochs=2, batch_size=256, lr=3e-3,
                train_limit=3000, data_dir=str(data_dir), out=str(out))
    return TrainConfig(**{**base, **kw})


def test_short_real_run_learns(fmnist_run):
    m = json.loads((fmnist_run / "metrics.json").read_text())
    assert m["val_acc"] >= 0.85, m  # one epoch of the default model on 20k real images
    assert m["test_acc"] >= 0.84, m
    assert sum(map(sum, m["confusion_matrix"])) == 10000
    hist = json.loads((fmnist_run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1]
    assert (fmnist_run / "history.csv").read_text().startswith("epoch,train_loss,train_acc,val_loss,val_acc")


def test_cifar_short_real_run_learns(cifar_run):
    m = json.loads((cifar_run / "metrics.json").read_text())
    assert m["data_source"] == "jpeg-image-folder"
    assert m["val_acc"] >= 0.45, m  # two epochs on 20k real images: far above chance (0.10)


def test_checkpoint_contents_and_weights_only_loading(fmnist_run, fmnist_dir):
    raw = torch.load(fmnist_run / "best.pth", map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_args", "dataset", "classes", "input_shape", "mean", "std",
                "split", "epoch", "val_acc", "test_acc", "versions", "config"):
        assert key in raw, key
    assert raw["dataset"] == "fashion-mnist" and raw["input_shape"] == [1, 28, 28]
    assert raw["classes"][9] == "Ankle boot" and len(raw["mean"]) == 1
    assert raw["split"]["seed"] == 0 and raw["split"]["val_fraction"] == 0.1
    assert set(raw["versions"]) >= {"torch", "torchvision", "lenet_export"}
    m = json.loads((fmnist_run / "metrics.json").read_text())
    assert raw["test_acc"] == m["test_acc"] and raw["val_acc"] == m["val_acc"]
    # Rebuilt from the file alone, the model reproduces the recorded test accuracy.
    model = model_from_checkpoint(load_checkpoint(fmnist_run / "best.pth"))
    test = load_split("fashion-mnist", False, fmnist_dir)
    with torch.inference_mode():
        acc = (model(normalize(test.images, raw["mean"], raw["std"])).argmax(1) == test.labels).float().mean().item()
    assert acc == pytest.approx(raw["test_acc"], abs=1e-6)


def test_plots_are_written(fmnist_run):
    pytest.importorskip("matplotlib")
    for name in ("curves.png", "confusion.png"):
        assert (fmnist_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.heavy  # real training or a whole data set: not in the quick tier
def test_deterministic_on_cpu(tmp_path, fmnist_dir):
    a = train(small_cfg(tmp_path / "a", fmnist_dir), log=lambda _: None)
    b = train(small_cfg(tmp_path / "b", fmnist_dir), log=lambda _: None)
    sa = load_checkpoint(tmp_path / "a" / "best.pth")["state_dict"]
    sb = load_checkpoint(tmp_path / "b" / "best.pth")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["val_acc"] == b["val_acc"]
    train(small_cfg(tmp_path / "c", fmnist_dir, seed=1), log=lambda _: None)
    c = load_checkpoint(tmp_path / "c" / "best.pth")
    assert not all(torch.equal(sa[k], c["state_dict"][k]) for k in sa)


def test_best_checkpoint_is_the_best_epoch(tmp_path, fmnist_dir):
    train(small_cfg(tmp_path / "r", fmnist_dir, epochs=3, lr=3e-2), log=lambda _: None)
    hist = json.loads((tmp_path / "r" / "history.json").read_text())
    best = load_checkpoint(tmp_path / "r" / "best.pth")
    top = max(hist, key=lambda h: h["val_acc"])
    assert best["epoch"] == top["epoch"] and best["val_acc"] == top["val_acc"]


@pytest.mark.heavy  # real training or a whole data set: not in the quick tier
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, fmnist_dir):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "lenet_export", "train", "--dataset", "fashion-mnist", "--model",
            "lenet-modern", "--epochs", "3", "--batch-size", "256", "--lr", "0.003", "--train-limit", "6000",
            "--data-dir", str(fmnist_dir), "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "last.pth").exists() and load_checkpoint(out / "last.pth")["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(out / "last.pth")["epoch"] < 3
    r = run_cli("train", "--resume", "--out", out, "--data-dir", fmnist_dir)
    assert r.exit_code == 0, r.output
    assert "resuming" in r.stdout
    ref2 = tmp_path / "ref2"
    train(small_cfg(ref2, fmnist_dir, epochs=3, model="lenet-modern", train_limit=6000), log=lambda _: None)
    for name in ("best.pth", "last.pth"):
        a = load_checkpoint(out / name)["state_dict"]
        b = load_checkpoint(ref2 / name)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # not only the weights: the bytes (the checkpoint records no folder and no --resume)
    assert hashlib.sha256((out / "best.pth").read_bytes()).digest() == hashlib.sha256((ref2 / "best.pth").read_bytes()).digest()
    assert [h["val_acc"] for h in json.loads((out / "history.json").read_text())] == \
           [h["val_acc"] for h in json.loads((ref2 / "history.json").read_text())]


def test_resume_extends_a_finished_run(tmp_path, fmnist_dir):
    train(small_cfg(tmp_path / "r", fmnist_dir, epochs=1), log=lambda _: None)
    train(TrainConfig(out=str(tmp_path / "r"), resume=True, epochs=2, data_dir=str(fmnist_dir)), log=lambda _: None)
    assert [h["epoch"] for h in json.loads((tmp_path / "r" / "history.json").read_text())] == [1, 2]


def test_resume_of_a_state_from_before_precision_continues_in_float32(tmp_path, fmnist_dir, monkeypatch):
    from lenet_export.machine import Machine
    from lenet_export.training import config as C

    # a CPU where auto would pick bfloat16, so that the test fails on any machine if resume fell back to auto
    monkeypatch.setattr(C, "this_machine", lambda: Machine("cpu", "x86_64", ["amx_bf16"], 2))
    train(small_cfg(tmp_path / "r", fmnist_dir, epochs=1, model="lenet-modern", train_limit=512, precision="fp32"),
          log=lambda _: None)
    state = load_checkpoint(tmp_path / "r" / "last.pth")
    for key in ("precision", "translate"):  # as written before these keys existed
        del state["config"][key]
    save_checkpoint(state, tmp_path / "r" / "last.pth")
    train(TrainConfig(out=str(tmp_path / "r"), resume=True, epochs=2, data_dir=str(fmnist_dir)), log=lambda _: None)
    assert load_checkpoint(tmp_path / "r" / "last.pth")["config"]["precision"] == "fp32"  # not auto's bf16


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch, fmnist_dir):
    train(small_cfg(tmp_path / "r", fmnist_dir, epochs=1), log=lambda _: None)
    good = (tmp_path / "r" / "best.pth").read_bytes()

    def broken_save(obj, f, *a, **k):  # f is a path or a file object: write half a checkpoint to it
        f.write(b"PK\x03\x04 half a checkpoint") if hasattr(f, "write") else open(f, "wb").write(b"PK\x03\x04")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"model": "x"}, tmp_path / "r" / "best.pth")
    assert (tmp_path / "r" / "best.pth").read_bytes() == good
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


# -- bad input ----------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors(tmp_path, fmnist_dir, monkeypatch):
    from lenet_export import data as D

    assert_clean_error(run_cli("train", "--dataset", "mnist", "--out", tmp_path / "a"), "fashion-mnist, cifar10")
    assert_clean_error(run_cli("train", "--model", "vgg", "--out", tmp_path / "a"), "lenet-classic")
    assert_clean_error(run_cli("train", "--epochs", "0", "--out", tmp_path / "a"), "--epochs must be positive")
    assert_clean_error(run_cli("train", "--batch-size", "-3", "--out", tmp_path / "a"), "--batch-size must be positive")
    assert_clean_error(run_cli("train", "--precision", "fp16", "--out", tmp_path / "a"), "--precision must be one of")
    assert_clean_error(run_cli("train", "--dataset", "fashion-mnist", "--model", "lenet-cifar", "--out", tmp_path / "a"),
                       "built for cifar10")
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    assert_clean_error(run_cli("train", "--data-dir", tmp_path / "empty", "--out", tmp_path / "a"),
                       "apt-get install dataset-fashion-mnist")


def test_out_with_another_run_is_refused(tmp_path, fmnist_dir):
    train(small_cfg(tmp_path / "r", fmnist_dir, epochs=1), log=lambda _: None)
    before = (tmp_path / "r" / "best.pth").read_bytes()
    r = run_cli("train", "--model", "lenet5", "--epochs", "1", "--data-dir", fmnist_dir, "--out", tmp_path / "r")
    assert_clean_error(r, "already holds a run", "--resume", "--force")
    r = run_cli("train", "--resume", "--model", "lenet5", "--data-dir", fmnist_dir, "--out", tmp_path / "r")
    assert_clean_error(r, "different run", "model: lenet-classic vs lenet5")
    assert (tmp_path / "r" / "best.pth").read_bytes() == before


def test_resume_with_corrupt_or_foreign_checkpoint(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    assert_clean_error(run_cli("train", "--resume", "--out", out), "nothing to resume")
    (out / "last.pth").write_bytes(b"PK\x03\x04 truncated")
    assert_clean_error(run_cli("train", "--resume", "--out", out), "truncated or not a checkpoint")
    torch.save({"weights": torch.zeros(3)}, out / "last.pth")
    assert_clean_error(run_cli("train", "--resume", "--out", out), "not a lenet-export checkpoint")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, out / "last.pth")
    assert_clean_error(run_cli("train", "--resume", "--out", out), "weights_only")


def test_resume_and_force_together_is_refused(tmp_path):
    with pytest.raises(ConfigError):
        train(TrainConfig(out=str(tmp_path), resume=True, force=True))


def test_load_checkpoint_rejects_a_wrong_architecture(fmnist_run, tmp_path):
    ck = load_checkpoint(fmnist_run / "best.pth")
    ck["model_args"] = {**ck["model_args"], "channels": [8, 8]}
    save_checkpoint({k: v for k, v in ck.items() if k not in ("format", "format_version")}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(load_checkpoint(tmp_path / "x.pth"))


@pytest.mark.slow
def test_default_recipes_reach_their_targets(tmp_path, fmnist_dir, cifar_dir):
    """The full default recipes (2 and 3 minutes on 2 cores with AMX, twice that without): the README's accuracy
    targets, less a margin for another CPU's arithmetic (float32 where there is no AMX)."""
    m = train(TrainConfig(dataset="fashion-mnist", data_dir=str(fmnist_dir), out=str(tmp_path / "f")), log=lambda _: None)
    assert m["test_acc"] >= 0.933, m["test_acc"]
    m = train(TrainConfig(dataset="cifar10", data_dir=str(cifar_dir), out=str(tmp_path / "c")), log=lambda _: None)
    assert m["test_acc"] >= 0.80, m["test_acc"]  # on the JPEG copy


@pytest.mark.parametrize("limit", [100, 600, 1500])
def test_very_short_runs_work(tmp_path, fmnist_dir, limit):
    """One-cycle schedules on a handful of steps (1, 3 and 6 batches) must not crash."""
    m = train(small_cfg(tmp_path / "r", fmnist_dir, epochs=1, train_limit=limit), log=lambda _: None)
    assert 0.0 <= m["test_acc"] <= 1.0 and (tmp_path / "r" / "best.pth").exists()


def test_malformed_data_is_a_one_line_error(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03 truncated")
    assert_clean_error(run_cli("train", "--data-dir", tmp_path, "--out", tmp_path / "out"), "malformed Fashion-MNIST")
    assert not (tmp_path / "out" / "best.pth").exists()


def test_time_budget_stops_after_the_crossing_epoch(tmp_path, fmnist_dir):
    m = train(small_cfg(tmp_path / "r", fmnist_dir, epochs=5, time_budget=0.001), log=lambda _: None)
    assert m["epochs_run"] == 1 and m["best_epoch"] == 1


def test_force_starts_over_but_keeps_the_previous_best(tmp_path, fmnist_dir):
    train(small_cfg(tmp_path / "r", fmnist_dir, epochs=1), log=lambda _: None)
    old = (tmp_path / "r" / "best.pth").read_bytes()
    train(small_cfg(tmp_path / "r", fmnist_dir, epochs=1, seed=5, force=True), log=lambda _: None)
    assert (tmp_path / "r" / "previous-best.pth").read_bytes() == old
    assert load_checkpoint(tmp_path / "r" / "best.pth")["split"]["seed"] == 5


def test_resume_with_another_runs_last_pth_says_so(fmnist_run, tmp_path):
    """A last.pth copied in from another run (here: a CIFAR-10 run) is named as such, not reported as a missing
    data set."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(fmnist_run, out)
    state = load_checkpoint(out / "last.pth")
    state = {k: v for k, v in state.items() if k not in ("format", "format_version")}
    state["config"] = {**state["config"], "dataset": "cifar10", "model": "lenet-modern-cifar"}
    save_checkpoint(state, out / "last.pth")
    assert_clean_error(run_cli("train", "--resume", "--out", out),
                       "belongs to another run (lenet-modern-cifar on cifar10)", "lenet-modern on fashion-mnist")


@pytest.mark.heavy  # real training or a whole data set: not in the quick tier
def test_same_command_into_two_folders_gives_the_same_bytes(tmp_path, fmnist_dir):
    for name in ("a", "b"):
        r = run_cli("train", "--out", tmp_path / name, "--data-dir", fmnist_dir, "--epochs", "1", "--train-limit", "2000")
        assert r.exit_code == 0, r.output
    # best.pth is the model; last.pth also holds the run's history with each epoch's wall-clock seconds
    assert (tmp_path / "a" / "best.pth").read_bytes() == (tmp_path / "b" / "best.pth").read_bytes()
    assert "out" not in load_checkpoint(tmp_path / "a" / "best.pth")["config"]


def test_auto_precision_is_bfloat16_only_on_a_cpu_with_amx(monkeypatch):
    from lenet_export.machine import Machine
    from lenet_export.training import config as C

    def machine(features):
        monkeypatch.setattr(C, "this_machine", lambda: Machine("cpu", "x86_64", features, 2))

    machine(["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"])
    assert TrainConfig(device="cpu").resolved().precision == "bf16"
    assert TrainConfig(device="cpu", model="lenet-classic").resolved().precision == "fp32"  # the tutorial's
    assert TrainConfig(device="cpu", precision="fp32").resolved().precision == "fp32"
    machine(["avx2", "avx512f", "avx512_bf16"])  # bfloat16 dot products without AMX: not measured, so float32
    assert TrainConfig(device="cpu").resolved().precision == "fp32"
    machine(["avx2"])
    assert TrainConfig(device="cpu", precision="bf16").resolved().precision == "bf16"  # asked for: emulated


def test_precision_is_what_trains_and_is_recorded(tmp_path, fmnist_dir):
    """bfloat16 autocast really changes the arithmetic (other weights than float32), and best.pth says which ran."""
    ck = {}
    for p in ("fp32", "bf16"):
        train(small_cfg(tmp_path / p, fmnist_dir, epochs=1, model="lenet-modern", train_limit=512, precision=p),
              log=lambda _: None)
        ck[p] = load_checkpoint(tmp_path / p / "best.pth")
        assert ck[p]["config"]["precision"] == p
    a, b = ck["fp32"]["state_dict"], ck["bf16"]["state_dict"]
    assert not all(torch.equal(a[k], b[k]) for k in a)
    r = run_cli("train", "--resume", "--out", tmp_path / "bf16", "--precision", "fp32", "--data-dir", fmnist_dir)
    assert_clean_error(r, "precision: bf16 vs fp32")  # resuming keeps the run's arithmetic


def test_flip_only_augmentation_mirrors_and_never_shifts():
    from lenet_export.training.steps import augment_batch

    x = torch.randn(64, 1, 28, 28)
    y = augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64
    shifted = augment_batch(x, torch.Generator().manual_seed(0), pad=2)
    assert not bool(((shifted == x).flatten(1).all(1) | (shifted == x.flip(3)).flatten(1).all(1)).all())


def test_benchmark_runs_the_previous_default_beside_the_new_and_says_how_each_trained(fmnist_dir, monkeypatch):
    from lenet_export import models
    from lenet_export.training import benchmark, config

    for registry in (models.VARIANTS, config.RECIPES):  # registered for this test only
        monkeypatch.setitem(registry, "previous-lenet-modern", None)
    name = benchmark.previous_variant("fashion-mnist")
    prev = benchmark.ours("fashion-mnist", name, fmnist_dir, 0.935, epochs=1, train_limit=500)
    new = benchmark.ours("fashion-mnist", "lenet-modern", fmnist_dir, 0.935, epochs=1, train_limit=500)
    assert prev["num_parameters"] == 220_330 and new["num_parameters"] == 232_378
    rows = benchmark.table({"modern": {"previous": prev, "default": new}}).splitlines()
    assert "no augmentation, label smoothing 0.1, fp32" in rows[2]
    assert f"1 epochs, batch 128, adamw 0.006, flips, label smoothing 0.1, {new['recipe']['precision']}" in rows[3]
