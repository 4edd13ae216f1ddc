"""``lenet-export bench --serve``: the endpoint under load beside in-process ONNX Runtime, in one run.

A ``lenet-export serve`` process on loopback (``serve_process``) takes load from a separate generator process
(``serve_load``) for each protocol, batch and concurrency, ``seconds`` each; the same ``model.onnx`` runs
in this process through ONNX Runtime at the same batches. Rows are typed (``LoadRow``); the ratio that the
README quotes is the endpoint's images/s over in-process ORT's at the same batch.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import LenetExportError
from .serve import model_names
from .serve_process import running_server, server_python

BATCHES = (1, 64)
CONCURRENCY = (1, 8, 32)
PROTOCOLS = ("grpc", "http")
IN_PROCESS = "in-process ORT"


@dataclass
class LoadRow:
    protocol: str  # grpc, http, or IN_PROCESS
    batch: int
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.batch

    def to_dict(self) -> dict:
        return asdict(self) | {"requests_per_s": self.requests_per_s, "images_per_s": self.images_per_s}


def in_process(onnx_path: Path, batch: int, seconds: float) -> LoadRow:
    """ONNX Runtime in this process, one request at a time, on the same kind of input the generator sends."""
    from .ort_session import open_session

    sess = open_session(onnx_path, "cpu")
    spec = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([batch, *spec.shape[1:]], dtype=np.float32)
    for _ in range(3):
        sess.run(None, {spec.name: x})
    lat, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        sess.run(None, {spec.name: x})
        lat.append(time.perf_counter() - t)
    ms = np.array(lat) * 1000
    return LoadRow(IN_PROCESS, batch, 1, len(lat), time.perf_counter() - start, float(np.percentile(ms, 50)),
                   float(np.percentile(ms, 99)), 0)


def _generate(python: str, protocol: str, address: str, model: str, batch: int, concurrency: int,
              seconds: float) -> LoadRow:
    cmd = [python, "-m", "lenet_export.serve_load", "--protocol", protocol, "--address", address,
           "--model", model, "--batch", str(batch), "--concurrency", str(concurrency), "--seconds", str(seconds)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if r.returncode != 0:
        raise LenetExportError(f"the load generator failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return LoadRow(protocol, batch, concurrency, **json.loads(r.stdout.strip().splitlines()[-1]))


def bench_serve(exported: Path, seconds: float = 3.0, log=print) -> list[LoadRow]:
    """Every protocol x batch x concurrency against one server, then in-process ORT at each batch."""
    if seconds <= 0 or seconds > 600:
        raise LenetExportError("--seconds must be above 0 and at most 600")
    meta = json.loads((exported / "metadata.json").read_text())
    model = model_names(meta)["model.onnx"]
    rows, python = [], server_python()  # the generator runs where the server's tritonclient is
    with tempfile.TemporaryDirectory() as tmp, running_server(exported, Path(tmp) / "server.log",
                                                              python=python) as server:
        for protocol in PROTOCOLS:
            address = server.grpc if protocol == "grpc" else server.http
            for batch in BATCHES:
                for c in CONCURRENCY:
                    rows.append(_generate(python, protocol, address, model, batch, c, seconds))
                    log(_line(rows[-1]))
    for batch in BATCHES:
        rows.append(in_process(exported / "model.onnx", batch, seconds))
        log(_line(rows[-1]))
    return rows


def _line(r: LoadRow) -> str:
    return (f"{r.protocol:<15} batch {r.batch:>3} concurrency {r.concurrency:>2}: {r.requests_per_s:>8,.0f} req/s "
            f"{r.images_per_s:>9,.0f} img/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  errors {r.errors}")


def ratio(rows: list[LoadRow], protocol: str, batch: int) -> float | None:
    """The protocol's best images/s over in-process ORT's at ``batch``."""
    best = max((r.images_per_s for r in rows if r.protocol == protocol and r.batch == batch), default=None)
    base = next((r.images_per_s for r in rows if r.protocol == IN_PROCESS and r.batch == batch), None)
    return best / base if best and base else None


def markdown(rows: list[LoadRow], machine: str) -> str:
    out = ["| endpoint | batch | concurrency | requests/s | images/s | p50 ms | p99 ms | errors |",
           "|---|---|---|---|---|---|---|---|"]
    out += [f"| {r.protocol} | {r.batch} | {r.concurrency} | {r.requests_per_s:,.0f} | {r.images_per_s:,.0f} | "
            f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |" for r in rows]
    ratios = [f"{p} {ratio(rows, p, b):.2f}x at batch {b}" for p in PROTOCOLS for b in BATCHES if ratio(rows, p, b)]
    return ("\n".join(out) + f"\n\nBest endpoint images/s over in-process ORT's: {', '.join(ratios)}. "
            f"Server, load generator and ORT share {machine}.\n")
