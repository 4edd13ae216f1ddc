"""``lenet-export serve``: parsing and printing only (``serve`` does the work). Registered by ``cli``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_options import SHIPPED, Exported
from .cli_support import cli_errors


@cli_errors
def serve(
    exported: Exported = SHIPPED,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server to the network.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="REST (HTTP) port.")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8081,
    max_body_mb: Annotated[float, typer.Option(help="Largest request accepted (MiB), REST body or gRPC "
                                                    "message.")] = 64.0,
    max_batch: Annotated[int, typer.Option(help="Largest batch accepted in one request.")] = 4096,
    public_key: Annotated[Optional[Path], typer.Option(help="Serve only files this key signed (lenet-export "
                                                            "sign).", show_default=False)] = None,
):
    """Serve the export over the Open Inference Protocol v2 (KServe; REST and gRPC) until SIGTERM or Ctrl-C."""
    from .serve import ServeOptions, check_options, load_models, start
    from .ui import log

    opts = ServeOptions(exported, host, port, grpc_port, max_body_mb, max_batch, public_key)
    check_options(opts)
    models = load_models(opts)
    names = ", ".join(f"{m.name} ({m.input.datatype} {m.input.shape})" for m in models)

    def ready() -> None:
        log(f"serving {names} on http://{host}:{port} and grpc {host}:{grpc_port} (Open Inference Protocol v2)")
    start(opts, models, ready)

