"""The Open Inference Protocol endpoint as a runtime: ``model.onnx`` served by ``lenet-export serve`` (KServe,
ONNX Runtime behind it) and reached with tritonclient, over HTTP (``oip-http``) or gRPC (``oip-grpc``), every
tensor in binary form. Same runtime behind the wire as ``ort-cpu``: the logits must be identical.

Without ``--endpoint`` each backend starts its own server on free loopback ports (``serve_process``) and stops
it when done; with ``--endpoint http://HOST:PORT`` / ``grpc://HOST:PORT`` it judges a server already running,
which must serve this export's model under its name (``serve.model_names``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import tempfile
from pathlib import Path

import numpy as np

from ..serve import model_names
from ..serve_process import ServerUnavailable, server_python, start_server
from .base import Backend, Context, Runner, Skip, cpu_name

INSTALL = "pip install 'lenet-export[serve-client]' (tritonclient; the server: bash scripts/install.sh serve)"
ARTEFACT = "model.onnx"
PROTOCOL = {"http": "Open Inference Protocol v2 over HTTP/REST, binary tensor extension",
            "grpc": "Open Inference Protocol v2 over gRPC, raw tensor contents"}


def _server(ctx: Context, scheme: str):
    """(address, server we started or None)."""
    given = ctx.endpoints.get(scheme)
    if given:
        return given.split("://", 1)[-1].rstrip("/"), None
    try:
        python = server_python()
    except ServerUnavailable as e:  # nothing to start it with: skipped; one that does not come up fails
        raise Skip(str(e)) from None
    log = Path(tempfile.mkstemp(prefix=f"lenet-export-serve-{scheme}-", suffix=".log")[1])
    server = start_server(ctx.exported, log, python=python)
    return (server.http if scheme == "http" else server.grpc), server


def _open(scheme: str):
    def open_(ctx: Context) -> Runner:
        client_mod = importlib.import_module(f"tritonclient.{scheme}")
        ctx.artefact(ARTEFACT)  # the export must have it: the endpoint serves it
        name = model_names(ctx.metadata)[ARTEFACT]
        address, server = _server(ctx, scheme)
        client = client_mod.InferenceServerClient(address)
        try:
            meta = client.get_server_metadata(as_json=True) if scheme == "grpc" else client.get_server_metadata()
            model = client.get_model_metadata(name, as_json=True) if scheme == "grpc" else client.get_model_metadata(name)
        except Exception:
            client.close()
            if server is not None:
                server.stop()
            raise
        (spec,) = model["inputs"]
        binary = {"binary_data": True} if scheme == "http" else {}

        def run(x: np.ndarray) -> list[np.ndarray]:
            feed = client_mod.InferInput(spec["name"], list(x.shape), spec["datatype"])
            feed.set_data_from_numpy(np.ascontiguousarray(x, np.float32), **binary)
            wanted = [client_mod.InferRequestedOutput(o["name"], **binary) for o in model["outputs"]]
            result = client.infer(name, [feed], outputs=wanted)
            return [result.as_numpy(o["name"]) for o in model["outputs"]]

        def close() -> None:
            client.close()
            if server is not None:
                server.stop()

        info = {"protocol": PROTOCOL[scheme], "endpoint": f"{scheme}://{address}", "model": name,
                "server": f"{meta['name']} {meta['version']}",
                "client": f"tritonclient {importlib.metadata.version('tritonclient')}",
                "started_by_verify": server is not None, "device": cpu_name()}
        return Runner(run, info, close=close)
    return open_


BACKENDS = tuple(Backend(f"oip-{scheme}", ARTEFACT, "tritonclient", INSTALL, _open(scheme)) for scheme in PROTOCOL)
