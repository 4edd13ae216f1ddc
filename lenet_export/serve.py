"""``lenet-export serve``: an export folder behind the Open Inference Protocol v2 (REST and gRPC), served by
KServe's ``ModelServer`` over the torch-free ONNX Runtime session.

Two models per export: ``<model>`` (``model.onnx``: FP32 [-1, C, H, W] -> logits) and ``<model>-raw``
(``model.raw.onnx``: UINT8 images as decoders give them -> logits and probabilities). Names, datatypes and shapes
come from the ONNX graphs; class names through the classification extension (``serve_model``).

What lenet-export adds to KServe, each because KServe 0.21 has no option for it:
- the listening address: ``RESTServer`` binds ``0.0.0.0`` and ``GRPCServer`` ``[::]``, hard-coded; this binds
  ``--host`` (loopback by default: nothing is exposed unless asked);
- a bound request size: a REST body over ``max_body`` bytes is refused (413) before it is read, one without a
  length too (411); gRPC messages are bounded by the same number (RESOURCE_EXHAUSTED);
- one log line per refused request instead of KServe's traceback.
SIGTERM and SIGINT stop it gracefully (KServe's and uvicorn's handlers): in-flight requests are answered.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, LenetExportError

INSTALL = ("pip install 'lenet-export[cpu,serve]' in an environment of its own "
           "(bash scripts/install.sh serve makes .venv-serve; see the README, 'Serving')")
MIB = 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    exported: Path
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = 8081
    max_body_mb: float = 64.0  # largest request accepted, REST body or gRPC message
    max_batch: int = 4096
    public_key: Path | None = None  # serve only what this key signed (lenet-export sign)


def model_names(metadata: dict) -> dict[str, str]:
    """Artefact -> the name it is served under, for an export's metadata."""
    name = str(metadata.get("model_name") or "lenet")
    return {"model.onnx": name, "model.raw.onnx": f"{name}-raw"}


def _import_kserve():
    """kserve parses ``sys.argv`` when imported (``kserve.model_server.args``): lenet-export's own options
    must not reach that parser, so it sees an empty command line."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve  # noqa: F401

        from . import serve_model
    except ImportError as e:
        raise ConfigError(f"serving needs kserve ({e.name} is missing): {INSTALL}") from None
    finally:
        sys.argv = argv
    return serve_model


def load_models(opts: ServeOptions) -> list:
    """The export's models as KServe models; with ``public_key`` only bytes that key signed are loaded."""
    import json

    from .ort_session import open_session

    serve_model = _import_kserve()
    meta_path = opts.exported / "metadata.json"
    if not meta_path.is_file():
        raise ConfigError(f"{opts.exported} is not an export folder (no metadata.json); "
                          "run lenet-export onnx first, or pass the folder it wrote")
    if opts.public_key is not None:
        from .signing import check_files, signed_bytes

        check_files(opts.exported, opts.public_key, ["metadata.json", *model_names({})])
        read = lambda p: signed_bytes(p, opts.public_key)  # noqa: E731
    else:
        read = lambda p: p.read_bytes()  # noqa: E731
    try:
        meta = json.loads(read(meta_path))
    except ValueError as e:
        raise ConfigError(f"{meta_path} is not valid JSON: {e}") from None
    classes = [str(c) for c in meta.get("classes") or []]
    models = []
    for artefact, name in model_names(meta).items():
        path = opts.exported / artefact
        if not path.is_file():
            raise ConfigError(f"{path} is missing: the export folder is incomplete")
        models.append(serve_model.OnnxModel(name, open_session(read(path), "cpu"), classes, opts.max_batch))
    return models


def start(opts: ServeOptions, models: list, on_ready=None) -> None:
    """Serve ``models`` until SIGTERM or SIGINT; ``on_ready()`` is called once the REST server listens."""
    from . import serve_server

    serve_server.run(opts.host, opts.port, opts.grpc_port, int(opts.max_body_mb * MIB), models, on_ready)


def check_options(opts: ServeOptions) -> None:
    """Before anything is loaded: the options a server cannot start with."""
    if not 1 <= opts.port <= 65535 or not 1 <= opts.grpc_port <= 65535 or opts.port == opts.grpc_port:
        raise ConfigError(f"ports {opts.port} (REST) and {opts.grpc_port} (gRPC) must be two ports from 1 to 65535")
    if opts.max_body_mb <= 0:
        raise ConfigError("--max-body-mb must be positive")
    if opts.max_batch < 1:
        raise ConfigError("--max-batch must be at least 1")
    if not opts.exported.is_dir():
        raise LenetExportError(f"{opts.exported} is not a folder")
    for what, port in (("--port", opts.port), ("--grpc-port", opts.grpc_port)):
        _check_free(opts.host, port, what)


def _check_free(host: str, port: int, what: str) -> None:
    """uvicorn and gRPC answer a taken port with a traceback from a closing event loop: ask first."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(f"--host {host}: {e}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ConfigError(f"{what} {port}: cannot listen on {host}:{port} ({e.strerror})") from None
