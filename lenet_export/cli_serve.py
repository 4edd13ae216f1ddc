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


def serve_bench(exported: Path, seconds: float, json_out: Path | None, markdown: Path | None) -> None:
    """``bench --serve``: the endpoint under load beside in-process ORT (``serve_bench``); errors fail it."""
    from .errors import LenetExportError
    from .fsutil import atomic_write_json, atomic_write_text, write_errors
    from .machine import this_machine
    from .serve_bench import bench_serve
    from .serve_bench import markdown as to_markdown
    from .ui import log

    rows = bench_serve(exported, seconds, log)
    with write_errors(json_out or markdown or "."):
        if json_out:
            atomic_write_json(json_out, {"machine": this_machine().to_dict(), "seconds": seconds,
                                         "rows": [r.to_dict() for r in rows]})
        if markdown:
            atomic_write_text(markdown, to_markdown(rows, this_machine().summary))
    if failed := [r for r in rows if r.errors]:
        raise LenetExportError(f"{sum(r.errors for r in failed)} requests failed under load "
                               f"({failed[0].protocol}, batch {failed[0].batch}: {failed[0].first_error})")
