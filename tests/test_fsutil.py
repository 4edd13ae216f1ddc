"""fsutil: file modes of atomic writes, unchanged files left alone, folder locks across real processes,
write errors on real full and read-only file systems."""

import os
import signal
import subprocess
import sys

import pytest

from disks import fill, tmpfs  # noqa: F401  (fixture)
from lenet_export.errors import ConfigError
from lenet_export.fsutil import (atomic_write_bytes, atomic_write_text, locked, remove_temporaries,
                                 write_bytes_if_changed, write_errors)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_write_gives_the_usual_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        (tmp_path / "b.json").write_text("{}")  # what open() gives: the reference
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777


def test_same_bytes_leave_the_file_alone(tmp_path):
    p = tmp_path / "x.bin"
    assert write_bytes_if_changed(p, b"abc") is True
    os.utime(p, (1_000_000, 1_000_000))
    assert write_bytes_if_changed(p, b"abc") is False
    assert p.stat().st_mtime == 1_000_000
    assert write_bytes_if_changed(p, b"abd") is True
    assert p.read_bytes() == b"abd" and p.stat().st_mtime != 1_000_000


def test_remove_temporaries_removes_files_and_folders(tmp_path):
    (tmp_path / ".best.pth.x1.tmp").write_bytes(b"half")
    (tmp_path / ".export.x2.tmp").mkdir()
    (tmp_path / ".export.x2.tmp" / "model.onnx").write_bytes(b"half")
    (tmp_path / "keep.pth").write_bytes(b"whole")
    remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pth"]


HOLD = ("import sys, time\n"
        "from lenet_export.fsutil import locked\n"
        "with locked(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n")


def _holder(lock):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_refuses_a_second_process_and_names_the_holder(tmp_path):
    lock = tmp_path / ".lock"
    proc = _holder(lock)
    try:
        with pytest.raises(ConfigError, match=f"in use by another process \\(pid {proc.pid}"):
            with locked(lock):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_holder_does_not_block(tmp_path):
    lock = tmp_path / ".lock"
    proc = _holder(lock)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock.exists()  # the file stays; the kernel dropped the lock with its process
    with locked(lock):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()  # its holder removes the file when done: no lock files left beside outputs


def test_lock_taken_from_a_removed_file_is_retaken(tmp_path, monkeypatch):
    """A process that opened the lock file just before its holder removed it locks the new file, not the
    orphaned inode (else two processes would both 'hold' the lock)."""
    import lenet_export.fsutil as F

    lock = tmp_path / ".lock"
    real_flock, calls = F.fcntl.flock, []

    def flock(fd, op):
        real_flock(fd, op)
        if not calls:  # the first lock we get: its holder removes the name and another process re-creates it
            calls.append(fd)
            lock.unlink()
            lock.write_text("someone else\n")
    monkeypatch.setattr(F.fcntl, "flock", flock)
    with locked(lock):
        assert lock.read_text().strip() == str(os.getpid())  # we hold the file that has the name now
    assert len(calls) == 1


def test_write_errors_on_a_full_disk(tmpfs):
    disk = tmpfs("full", 256)
    atomic_write_bytes(disk / "keep.bin", b"k" * 1000)
    fill(disk, 8 * 1024)
    with pytest.raises(ConfigError, match="no space left on device") as e:
        with write_errors(disk):
            atomic_write_bytes(disk / "keep.bin", b"x" * 100_000)
    assert str(disk) in str(e.value) and len(str(e.value).splitlines()) == 1
    assert (disk / "keep.bin").read_bytes() == b"k" * 1000  # the previous file is intact
    assert not [p for p in disk.iterdir() if p.name.endswith(".tmp")]


def test_write_errors_on_a_read_only_disk_and_a_file_as_folder(tmpfs, tmp_path):
    disk = tmpfs("ro", 64, read_only=True)
    with pytest.raises(ConfigError, match="read-only file system"):
        with write_errors(disk):
            atomic_write_text(disk / "a.json", "{}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        with write_errors(tmp_path / "file" / "a.json"):
            atomic_write_text(tmp_path / "file" / "a.json", "{}")


def test_other_os_errors_are_not_disguised(tmp_path):
    with pytest.raises(FileNotFoundError):
        with write_errors(tmp_path):
            (tmp_path / "no" / "such").read_text()
