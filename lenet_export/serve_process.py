"""A ``lenet-export serve`` process on free loopback ports, for verify's oip backends, ``bench --serve`` and the
tests: started, waited for (``/v2/health/ready``), stopped with SIGTERM (KILL after a grace period).

KServe cannot share the toolchain's environment (pyproject.toml, extra ``serve``), so the server runs under the
Python named by ``LENET_EXPORT_SERVE_PYTHON``; else this one when it has kserve; else ``.venv-serve`` beside this
environment (where ``scripts/install.sh`` puts it). ``LENET_EXPORT_SERVE_PYTHON=`` (empty) starts none.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import LenetExportError

ENV = "LENET_EXPORT_SERVE_PYTHON"
HOW = (f"bash scripts/install.sh serve makes .venv-serve, found beside .venv; or set {ENV}; or start "
       "`lenet-export serve` yourself and pass --endpoint")


class ServerUnavailable(LenetExportError):
    """No Python with kserve to start a server with, or the server did not come up."""


@dataclass
class Server:
    http: str  # host:port
    grpc: str
    process: subprocess.Popen
    log: Path

    def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def server_python() -> str:
    chosen = os.environ.get(ENV)
    if chosen == "":
        raise ServerUnavailable(f"{ENV} is empty: no server is started ({HOW})")
    if chosen:
        if not Path(chosen).is_file():
            raise ServerUnavailable(f"{ENV}={chosen} does not exist ({HOW})")
        return chosen
    if importlib.util.find_spec("kserve") is not None:
        return sys.executable
    beside = Path(sys.prefix).parent / ".venv-serve" / "bin" / "python"
    if beside.is_file():
        return str(beside)
    raise ServerUnavailable(f"no Python with kserve to start lenet-export serve ({HOW})")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_server(exported: Path, log: Path, *args: str, python: str | None = None, timeout: float = 90.0) -> Server:
    """A server on two free loopback ports, ready; its output goes to ``log``; ``python``: ``server_python()``."""
    python = python or server_python()
    port, grpc_port = free_port(), free_port()
    cmd = [python, "-m", "lenet_export", "serve", "--exported", str(exported), "--host", "127.0.0.1",
           "--port", str(port), "--grpc-port", str(grpc_port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = Server(f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", proc, log)
    atexit.register(server.stop, 5.0)  # a caller that never closes its runner (predict) leaves no server behind
    deadline = time.monotonic() + timeout
    while not _ready(server.http):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop(1.0)
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ServerUnavailable(f"lenet-export serve did not come up ({tail[0]}; log: {log})")
        time.sleep(0.1)
    return server


@contextlib.contextmanager
def running_server(exported: Path, log: Path, *args: str, python: str | None = None):
    server = start_server(exported, log, *args, python=python)
    try:
        yield server
    finally:
        server.stop()
