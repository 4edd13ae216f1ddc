"""``lenet-export bench``: parsing and printing only (``bench`` and ``serve_bench`` do the work). Registered by
``cli``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_options import SHIPPED, DataDir, ExportCheckpoint, Exported, Fit, Images, Invert, check_images
from .cli_support import CPU_BACKENDS, backend_names, cli_errors
from .errors import ParityError


@cli_errors
def bench(
    exported: Exported = SHIPPED,
    checkpoint: ExportCheckpoint = None,
    data_dir: DataDir = None,
    backends: Annotated[str, typer.Option(help=f"Comma-separated CPU backends ({CPU_BACKENDS}), or all.")] = "all",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the rows as JSON here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write the table as Markdown here.")] = None,
    images: Images = None,
    fit: Fit = "exact",
    invert: Invert = False,
    serve: Annotated[bool, typer.Option(help="Instead: load a `lenet-export serve` endpoint (gRPC and HTTP, batch 1 "
                                             "and 64, concurrency 1, 8, 32) beside in-process ONNX Runtime.")] = False,
    seconds: Annotated[float, typer.Option(help="--serve: seconds of load per row.")] = 3.0,
):
    """Compare the CPU runtimes side by side: size, latency, best-batch throughput, and parity (or, with --serve,
    the endpoint under load)."""
    import dataclasses

    from .artefacts import refuse_input_as_output
    from .bench import bench as run_bench
    from .bench import markdown as to_markdown
    from .bench import row
    from .fsutil import atomic_write_json, atomic_write_text, write_errors
    from .ui import bench_table, console, log
    from .verify import VerifyOptions

    check_images(images, fit, invert, data_dir)
    refuse_input_as_output(json_out, exported, checkpoint, "--json")
    refuse_input_as_output(markdown, exported, checkpoint, "--markdown")
    if serve:
        return serve_bench(exported, seconds, json_out, markdown)
    opts = VerifyOptions(exported=exported, checkpoint=checkpoint, data_dir=str(data_dir) if data_dir else None,
                         backends=backend_names(backends), images=images, fit=fit, invert=invert)
    results, samples = run_bench(opts, log=log)
    title = f"{exported}" + (f", images {images}" if images else "")
    console.print(bench_table(results, samples, title))
    with write_errors(json_out or markdown or "."):
        if json_out:
            atomic_write_json(json_out, [dataclasses.asdict(row(r, exported)) for r in results])
        if markdown:
            atomic_write_text(markdown, to_markdown(results, samples, f"Runtimes on {title}") + "\n")
    if failed := [r.name for r in results if r.status == "failed"]:  # a benchmark of a wrong model is no success
        raise ParityError(f"parity failed for {', '.join(failed)}: these figures are of a model that differs")


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
