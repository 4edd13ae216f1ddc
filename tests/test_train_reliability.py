"""lenet-export train under adverse conditions: concurrent runs in one folder, killed runs, full and
read-only disks, an --out that is a file, out-of-range seeds, resuming a finished run, file modes.
Real processes, real file systems (tmpfs), real Fashion-MNIST."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest


from conftest import assert_clean_error, run_cli
from disks import fill, remount, tmpfs  # noqa: F401  (fixture)
from lenet_export.checkpoint import load_checkpoint
from lenet_export.training.train import TrainConfig, train

SMALL = ["--model", "lenet-classic", "--epochs", "1", "--batch-size", "256", "--train-limit", "1000"]


def small(out, data_dir, **kw):
    return TrainConfig(**{**dict(dataset="fashion-mnist", model="lenet-classic", epochs=1, batch_size=256,
                                 train_limit=1000, data_dir=str(data_dir), out=str(out)), **kw})


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def cli_args(out, data_dir, *extra):
    return [sys.executable, "-m", "lenet_export", "train", "--data-dir", str(data_dir), "--out", str(out), *extra]


def wait_for_lock(out, proc, timeout=120):
    """Until ``proc`` holds the run folder's lock (its pid is in .lock)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if (out / ".lock").read_text().strip() == str(proc.pid):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"process {proc.pid} never took the lock: {proc.communicate()}")


# -- 2. one run per folder -------------------------------------------------------------------------------


@pytest.mark.heavy  # real training or a whole data set: not in the quick tier
def test_two_runs_started_together_one_is_refused(tmp_path, fmnist_dir):
    out = tmp_path / "race"
    args = cli_args(out, fmnist_dir, "--model", "lenet-modern", "--epochs", "2", "--train-limit", "3000")
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p, p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for _, rc, _ in results)
    assert codes == [0, 2], results
    (winner, _, _), = [r for r in results if r[1] == 0]
    (_, _, err), = [r for r in results if r[1] == 2]
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert f"run folder {out} is in use by another process (pid {winner.pid}" in err
    assert load_checkpoint(out / "best.pth")["epoch"] in (1, 2)


@pytest.mark.heavy  # real training or a whole data set: not in the quick tier
def test_a_killed_holder_does_not_block_the_folder(tmp_path, fmnist_dir):
    out = tmp_path / "killed"
    holder = subprocess.Popen(cli_args(out, fmnist_dir, *SMALL, "--epochs", "30"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_lock(out, holder)
        assert_clean_error(run_cli("train", "--data-dir", fmnist_dir, "--out", out, *SMALL),
                           f"in use by another process (pid {holder.pid}")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # its lock file stays, its lock does not
    (out / ".best.pth.half.tmp").write_bytes(b"PK half")  # what a kill during a save leaves
    if (out / "last.pth").exists():
        r = run_cli("train", "--resume", "--data-dir", fmnist_dir, "--out", out, "--epochs", "1")
    else:
        r = run_cli("train", "--data-dir", fmnist_dir, "--out", out, *SMALL)
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out / "best.pth")["epoch"] >= 1
    assert not list(out.glob(".*.tmp"))


# -- 3, 5, 9. reproducible bytes, leftovers, file modes ------------------------------------------------------


def test_resume_of_a_finished_run_leaves_best_pth_alone(tmp_path, fmnist_dir):
    out = tmp_path / "done"
    old = os.umask(0o002)
    try:
        train(small(out, fmnist_dir), log=lambda _: None)
    finally:
        os.umask(old)
    for name in ("best.pth", "last.pth", "metrics.json", "history.json", "run.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o664, name  # 0666 & ~umask, as open() gives
    best = out / "best.pth"
    before = (sha(best), best.stat().st_mtime_ns)
    ck = load_checkpoint(best)
    assert ck["test_acc"] is not None and "data_dir" not in ck["config"]  # the model, not the machine
    (out / ".last.pth.x1y2.tmp").write_bytes(b"PK half")  # a killed save's leftover
    r = run_cli("train", "--resume", "--out", out, "--data-dir", fmnist_dir)
    assert r.exit_code == 0, r.output
    assert (sha(best), best.stat().st_mtime_ns) == before
    assert not list(out.glob(".*.tmp"))


# -- 4. full disk, read-only disk, --out that is a file --------------------------------------------------------


def _snapshot(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "filler"}


def test_full_disk_is_a_one_line_error_and_keeps_the_run(tmpfs, fmnist_dir):
    disk = tmpfs("disk", 4096)
    out = disk / "run"
    train(small(out, fmnist_dir), log=lambda _: None)
    before = _snapshot(out)
    fill(disk, 48 * 1024)  # less than one checkpoint
    r = run_cli("train", "--resume", "--epochs", "2", "--out", out, "--data-dir", fmnist_dir)
    assert_clean_error(r, "cannot write", str(out), "no space left on device")
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    (disk / "filler").unlink()
    r = run_cli("train", "--resume", "--epochs", "2", "--out", out, "--data-dir", fmnist_dir)
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out / "last.pth")["epoch"] == 2


def test_read_only_out_is_a_one_line_error(tmpfs, fmnist_dir):
    disk = tmpfs("ro", 4096)
    out = disk / "run"
    train(small(out, fmnist_dir), log=lambda _: None)
    before = _snapshot(out)
    remount(disk, read_only=True)
    r = run_cli("train", "--resume", "--epochs", "2", "--out", out, "--data-dir", fmnist_dir)
    assert_clean_error(r, "cannot write", "read-only file system")
    assert _snapshot(out) == before
    assert_clean_error(run_cli("train", "--out", disk / "new", "--data-dir", fmnist_dir, *SMALL),
                       "read-only file system")


def test_out_that_is_a_file(tmp_path, fmnist_dir):
    (tmp_path / "f").write_text("keep")
    assert_clean_error(run_cli("train", "--out", tmp_path / "f", "--data-dir", fmnist_dir, *SMALL),
                       "exists and is not a folder")
    assert_clean_error(run_cli("train", "--out", tmp_path / "f" / "run", "--data-dir", fmnist_dir, *SMALL),
                       "not a folder")
    assert (tmp_path / "f").read_text() == "keep"


@pytest.mark.heavy  # real training or a whole data set: not in the quick tier
def test_file_size_limit_is_a_one_line_error(tmp_path, fmnist_dir):
    """RLIMIT_FSIZE (no root needed): writes past it fail with EFBIG once SIGXFSZ is ignored."""
    import resource

    from lenet_export.data import load_split

    load_split("fashion-mnist", True, fmnist_dir)  # the unpacked cache is written here, without the limit

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = tmp_path / "run"
    r = subprocess.run(cli_args(out, fmnist_dir, *SMALL), preexec_fn=limit, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: cannot write") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "file too large" in r.stderr
    assert not list(out.glob(".*.tmp"))


# -- 10. seeds -------------------------------------------------------------------------------------------------


def test_seed_out_of_range_is_refused_before_anything_is_written(tmp_path, fmnist_dir):
    for seed in (str(2**64), "-1"):
        assert_clean_error(run_cli("train", "--seed", seed, "--out", tmp_path / "r", "--data-dir", fmnist_dir, *SMALL),
                           "--seed must be an integer from 0 to 2**64-1")
        assert not (tmp_path / "r").exists()
    r = run_cli("train", "--seed", "200000000000000000", "--out", tmp_path / "r", "--data-dir", fmnist_dir, *SMALL)
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "r" / "best.pth")["split"]["seed"] == 200000000000000000
    assert json.loads((tmp_path / "r" / "run.json").read_text())["seed"] == 200000000000000000
