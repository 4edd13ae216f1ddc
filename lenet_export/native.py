"""Native runtimes' own logging. ExecuTorch (ET_LOG), TFLite/LiteRT and absl write to file descriptor 2
directly, past Python's ``sys.stderr``: a CPU-probe line or "Created TensorFlow Lite XNNPACK delegate" on
every load. ``captured_stderr`` holds that output back while they load; when the block fails, the end of it is
added to the exception as a note (shown in a traceback for library users; the CLI keeps its one-line error)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager

KEPT_ON_FAILURE = 4000  # characters of the captured output attached to the exception


@contextmanager
def captured_stderr():
    with _captured(2):
        yield


@contextmanager
def captured_output():
    """Both standard streams: for runtimes that print to stdout too (MNN announces the CPU's features)."""
    with _captured(1), _captured(2):
        yield


@contextmanager
def _captured(fd: int):
    (sys.stdout if fd == 1 else sys.stderr).flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no such file descriptor (a daemon): nothing to capture
        yield
        return
    try:
        with tempfile.TemporaryFile() as f:
            os.dup2(f.fileno(), fd)
            try:
                yield
            except Exception as e:
                f.seek(0)
                log = f.read().decode(errors="replace").strip()
                if log and hasattr(e, "add_note"):  # Python 3.11+
                    e.add_note(f"native log:\n{log[-KEPT_ON_FAILURE:]}")
                raise
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)


@contextmanager
def quiet_logger(name: str):
    """Python logger ``name`` shows errors only inside the block: warnings a library's import logs that are
    neither ours to fix nor the user's to read."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def executorch_imports():
    """ExecuTorch's imports load torchao, which registers an enum with torch's pytree; torch 2.14 answers with a
    deprecation warning through its logger in every process."""
    return quiet_logger("torch.utils._pytree")
