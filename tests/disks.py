"""Real small file systems for tests of full and read-only disks: tmpfs mounts (needs root; skipped with
the reason otherwise). Import the fixture into a test module: ``from disks import tmpfs``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def _mount(where: Path, size_kb: int, read_only: bool = False) -> None:
    opts = f"size={size_kb}k,mode=0755" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.strip() or r.returncode}")


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(name, size_kb, read_only=False) -> Path``: a fresh tmpfs under tmp_path, unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, size_kb: int, read_only: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        _mount(where, size_kb, read_only)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path, leave_bytes: int) -> None:
    """Fill the file system of ``folder`` until about ``leave_bytes`` are free."""
    import os

    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free > leave_bytes:
        (folder / "filler").write_bytes(b"\0" * (free - leave_bytes))


def remount(where: Path, read_only: bool) -> None:
    r = subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount {where}: {r.stderr.strip()}")
