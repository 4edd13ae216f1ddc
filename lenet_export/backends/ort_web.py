"""onnxruntime-web, the npm package browsers load, running ``model.onnx`` on its wasm backend under Node.js.

Starting node per batch costs ~0.5 s, so each runner starts ONE node process (``ort_web_runner.mjs``, shipped
beside this file) and talks to it over pipes: length-prefixed frames, a JSON header then raw bytes (the
protocol is described at the top of the runner). The process ends when the runner is garbage-collected, when
``close()`` is called, or at interpreter exit; node also exits by itself when its stdin closes.

onnxruntime-web is looked for in ``$LENET_EXPORT_ORT_WEB`` (a folder with ``node_modules/onnxruntime-web``),
else in this repository's ``examples/web``. Its wasm files ship inside the npm package: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import Backend, Context, Runner, Skip, cpu_name

ENV = "LENET_EXPORT_ORT_WEB"
INSTALL = "cd examples/web && npm ci --ignore-scripts"
RUNNER = Path(__file__).with_name("ort_web_runner.mjs")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web"
STOP_TIMEOUT = 5.0  # seconds node gets to exit after its stdin closes, before it is killed


class NodeError(RuntimeError):
    """The node runner failed: its one-line message."""


def package_dir() -> Path:
    """The folder whose node_modules holds onnxruntime-web, or ``Skip`` with the install command."""
    folder = Path(os.environ.get(ENV) or EXAMPLE)
    if not (folder / "node_modules" / "onnxruntime-web" / "package.json").is_file():
        where = f"${ENV}={folder}" if os.environ.get(ENV) else str(folder)
        raise Skip(f"onnxruntime-web is not installed in {where} ({INSTALL})")
    return folder


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise Skip(f"node is not installed (install Node.js 20, then {INSTALL})")
    return node


def _stop(proc: subprocess.Popen, stderr) -> None:
    """Close node's stdin (it exits on EOF); kill it if it does not."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()
    stderr.close()


class NodeRunner:
    """One node process holding one onnxruntime-web session."""

    def __init__(self, model: Path, folder: Path | None = None):
        folder = folder or package_dir()
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([node_binary(), str(RUNNER), str(folder), str(model)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._stderr)  # also runs at exit
        self.info = self._receive()[0]
        if not self.info.get("ready"):
            self.close()
            raise NodeError(self.info.get("error", "node runner did not start"))

    def close(self) -> None:
        self._finalizer()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _died(self) -> NodeError:
        try:
            self._proc.wait(STOP_TIMEOUT)  # stdout closed: it is exiting
        except subprocess.TimeoutExpired:
            pass
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace").strip().splitlines()
        return NodeError(f"node runner exited (code {self._proc.returncode}): {err[-1] if err else 'no message'}")

    def _read(self, n: int) -> bytes:
        data = self._proc.stdout.read(n)
        if len(data) != n:
            raise self._died()
        return data

    def _receive(self) -> tuple[dict, bytes]:
        (n,) = struct.unpack("<I", self._read(4))
        header = json.loads(self._read(n))
        return header, self._read(header["nbytes"]) if header["nbytes"] else b""

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        if not self._finalizer.alive:
            raise NodeError("node runner is closed")
        x = np.ascontiguousarray(x)
        header = json.dumps({"dtype": x.dtype.name, "dims": list(x.shape), "nbytes": x.nbytes}).encode()
        try:
            self._proc.stdin.write(struct.pack("<I", len(header)) + header)
            self._proc.stdin.write(memoryview(x).cast("B"))
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._died() from None
        reply, data = self._receive()
        if "error" in reply:
            raise NodeError(f"onnxruntime-web: {reply['error']}")
        outs, at = [], 0
        for o in reply["outputs"]:
            count = int(np.prod(o["dims"]))
            outs.append(np.frombuffer(data, np.float32, count, at).reshape(o["dims"]))
            at += 4 * count  # float32
        return outs


@dataclass(frozen=True)
class NodeBackend(Backend):
    """A backend whose "package" is an npm package run by node, not a Python module."""

    def require_package(self) -> None:
        node_binary()
        package_dir()


def _open(ctx: Context) -> Runner:
    node = NodeRunner(ctx.artefact("model.onnx"))
    i = node.info
    runtime = {"onnxruntime_web": i["onnxruntime_web"], "node": i["node"], "wasm_threads": i["wasm_threads"],
               "backend": "wasm",
               # onnxruntime-web's "wasm" backend is ORT's CPU execution provider compiled to WebAssembly
               "providers": ["CPUExecutionProvider"], "device": cpu_name()}
    return Runner(node.run, runtime)


BACKENDS = (
    NodeBackend("ort-web", "model.onnx", "onnxruntime-web", INSTALL, _open),
)
