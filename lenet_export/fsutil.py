"""Atomic file and folder writes, folder locks, and hashing. Never leaves a truncated file behind."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import ConfigError, ExportError, LenetExportError, first_line


def current_umask() -> int:
    """The process umask (read by setting and restoring it: POSIX has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename over ``path`` (same folder, so atomic)."""
    path = Path(path)
    if path.is_dir():  # else the rename would fail naming the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        try:  # mkstemp makes the file private (0600); the result is an ordinary file, as open() makes them
            os.fchmod(fd, 0o666 & ~current_umask())
        finally:
            os.close(fd)
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_bytes_if_changed(path: str | os.PathLike, data: bytes) -> bool:
    """Atomically write ``data`` unless ``path`` already holds exactly these bytes (then leave it, mtime
    included). Returns whether the file was written."""
    path = Path(path)
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data)
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish_cache_dir(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` to the cache entry ``dest``. Entries are keyed by what they were made
    from, so when another process published ``dest`` first (a folder that is not empty cannot be replaced), its
    folder is as good as ours: keep it (the caller removes ``tmp``)."""
    try:
        os.replace(tmp, dest)
    except OSError:
        if not dest.is_dir():
            raise


def recover_staged(final: Path) -> None:
    """Clean what a killed ``staged_dir`` left beside ``final``: its temporary folders, and the previous
    folder it had moved aside (``.NAME.old-PID``), which is put back if ``final`` is missing (killed between
    the two renames) and removed otherwise. Call with the folder's lock held (see ``locked``)."""
    name = glob.escape(final.name)
    for p in final.parent.glob(f".{name}.*.tmp"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    for old in sorted(final.parent.glob(f".{name}.old-*")):
        if not final.exists() and old.is_dir():
            os.replace(old, final)
        else:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, *, replace: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success move it to ``final``.

    An existing ``final`` is only swapped out (and then removed) once the new folder is complete,
    so a failed run never destroys a good one. Leftovers of a killed earlier run are cleaned first (the
    caller holds the folder's lock, so no live writer owns them).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_staged(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        if final.exists():
            if not replace:
                raise FileExistsError(final)
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``.*.tmp`` files and folders that killed writers left in ``folder``. Only call this while
    holding the folder's lock (see ``locked``): a live writer's temporaries look the same."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def locked(lock_file: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if needed) for the ``with`` block.

    Another process holding it makes this raise ``ConfigError`` naming its PID at once (no waiting). The
    kernel drops the lock when its holder exits, however it dies (``kill -9`` included), so a stale lock
    cannot block later runs. The holder removes the file when it is done (a user should not find lock files
    beside their output); a process that opened the file before that removal sees, once it holds the lock,
    that the name now points elsewhere or nowhere, and locks anew.
    """
    lock_file = Path(lock_file)
    what = what or str(lock_file.parent)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(f"{what} is in use by another process (pid {holder or 'unknown'}, lock "
                              f"{lock_file}); wait for it to finish or choose another folder") from None
        try:
            if os.stat(lock_file).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_file
    finally:
        try:
            lock_file.unlink()  # while holding the lock: see above
        except OSError:
            pass
        os.close(fd)  # releases the lock


# errno -> what the user should read; any other OSError is a bug and keeps its traceback
WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for this file system or process limit",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.ENOTDIR: "a path component is not a folder",
                errno.EEXIST: "exists and is not a folder", errno.EISDIR: "is a folder"}


FULL_BELOW = 4 * 2**20  # bytes free under which a native writer's failure is taken for a full disk


@contextlib.contextmanager
def native_errors(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Native writers (ONNX's and OpenVINO's C++ serialisers, converters) fail on a full disk with their own
    exception types (``basic_ios::clear: iostream error``): such a failure on a (nearly) full disk becomes the
    ``OSError`` it is, for ``write_errors`` to report as "no space left on device"; any other failure is one line
    ``ExportError`` naming ``what``. OSErrors pass through."""
    try:
        yield
    except (OSError, LenetExportError):  # the disk's own errors, and the writers' one-line ones
        raise
    except Exception as e:
        try:
            full = shutil.disk_usage(folder).free < FULL_BELOW
        except OSError:
            full = False
        if full or "No space left" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from None
        raise ExportError(f"{what} failed: {first_line(e)}") from None


@contextlib.contextmanager
def write_errors(where: str | os.PathLike) -> Iterator[None]:
    """Turn the OSErrors of writing into ``where`` (full disk, read-only, no permission, a file where a
    folder should be) into a one-line ``ConfigError`` that names the file."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise ConfigError(f"cannot write {e.filename or where}: {WRITE_ERRNOS[e.errno]}") from None
