"""Native runtimes' own logging. ExecuTorch (ET_LOG), TFLite/LiteRT and absl write to file descriptor 2
directly, past Python's ``sys.stderr``: a CPU-probe line or "Created TensorFlow Lite XNNPACK delegate" on
every load. ``captured_stderr`` holds that output back while they load, and shows it only when the block
fails, where it may say why."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager

SHOWN_ON_FAILURE = 4000  # characters of the captured output replayed when the block raises


@contextmanager
def captured_stderr():
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (a daemon): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            f.seek(0)
            sys.stderr.write(f.read().decode(errors="replace")[-SHOWN_ON_FAILURE:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
