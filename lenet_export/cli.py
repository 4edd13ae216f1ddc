"""The ``lenet-export`` command: one typer function per verb, each delegating to library code.

Library errors (``LenetExportError``) become a one-line ``error: ...`` on stderr and a non-zero exit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_bench import bench
from .cli_options import (SHIPPED, DataDir, Endpoint, ExportCheckpoint, Exported, Fit, Images, Invert, check_images,
                          parse_endpoints)
from .cli_serve import serve
from .cli_ship import ship, sign
from .cli_support import (BACKENDS, CPU_BACKENDS, OPTIONAL_FORMATS, PROBED, VARIANT_FORMATS, VARIANTS, OneLineErrors,
                          backend_names, cli_errors, run_replay)
from .errors import ConfigError

app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Train LeNet-family networks, export them to every portable format and verify parity.")

def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"lenet-export {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """Train LeNet-family networks, export them to every portable format and verify parity."""


@app.command()
@cli_errors
def data(
    dataset: Annotated[str, typer.Option(help="fashion-mnist or cifar10.")] = "fashion-mnist",
    data_dir: DataDir = None,
    download: Annotated[bool, typer.Option(help="Download with torchvision (md5-checked) if not found.")] = False,
):
    """Find (or download) a data set, check it, and print what was found."""
    from .data import channel_stats, load_split, resolve_data_dir
    from .ui import log

    folder = resolve_data_dir(dataset, data_dir, download)
    for train in (True, False):
        split = load_split(dataset, train=train, data_dir=folder, download=download)
        mean, std = channel_stats(split.images)
        log(f"{dataset} {'train' if train else 'test'}: {len(split)} images {tuple(split.images.shape[1:])} "
            f"from {split.source} in {folder}; mean {mean} std {std}")


@app.command()
@cli_errors
def train(
    dataset: Annotated[Optional[str], typer.Option(help="fashion-mnist or cifar10 (default: fashion-mnist).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model variant (see `lenet-export models`); default: "
                                                      "lenet-modern / lenet-modern-cifar.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs; default: the model's recipe.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size; default: the model's recipe.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate; default: the model's recipe.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adam, adamw or sgd; default: the model's recipe.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for weights, split, shuffling and augmentation "
                                                     "(default: 0).")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share of the training set held out for "
                                                               "validation (default: 0.1).")] = None,
    data_dir: DataDir = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Run folder; default: runs/<dataset>.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last.pth.")] = False,
    force: Annotated[bool, typer.Option(help="Start over in an --out that holds another run (deletes it).")] = False,
    time_budget: Annotated[Optional[float], typer.Option(help="Stop after the epoch that passes this many "
                                                              "seconds of training.")] = None,
    train_limit: Annotated[Optional[int], typer.Option(help="Train on a seeded random N images of the training "
                                                              "split only (smoke runs).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, bf16 (autocast) or auto: bf16 on a CPU with AMX, "
                                                          "else fp32; default: the model's recipe.")] = None,
):
    """Train a LeNet variant and keep the best-validation checkpoint (best.pth) in --out."""
    from .training.train import TrainConfig
    from .training.train import train as run_training
    from .ui import epoch_progress, log

    cfg = TrainConfig(dataset=dataset, model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                      optimizer=optimizer, seed=seed, val_fraction=val_fraction,
                      data_dir=str(data_dir) if data_dir else None, device=device,
                      out=str(out or Path("runs") / (dataset or "fashion-mnist")), resume=resume, force=force, time_budget=time_budget,
                      train_limit=train_limit, precision=precision)
    with epoch_progress() as progress:
        run_training(cfg, progress=progress, log=log)


@app.command()
@cli_errors
def onnx(
    checkpoint: Annotated[Path, typer.Option(help="best.pth written by `lenet-export train`.")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder; default: runs/<dataset>-<model>/export (never "
                                                     "the shipped exported/ folders).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (dynamo: 18 and up; torchscript: 9..20).")] = 18,
    exporter: Annotated[str, typer.Option(help="dynamo (torch.export based) or torchscript (legacy).")] = "dynamo",
    formats: Annotated[str, typer.Option(help=f"Comma-separated formats to write besides onnx and raw-onnx "
                                              f"({OPTIONAL_FORMATS}), or all (skipping those whose "
                                              "package is missing).")] = "all",
    torchscript: Annotated[bool, typer.Option("--torchscript/--no-torchscript",
                                              help="Write model.pt (TorchScript) when --formats includes it.")] = True,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder (only once the new export "
                                             "has passed its checks).")] = False,
    data_dir: DataDir = None,
):
    """Export a checkpoint to every format (ONNX, its raw-uint8 twin, golden data, ...), checked against eager."""
    from .export import ExportOptions, export
    from .ui import log

    res = export(checkpoint, ExportOptions(out=out, opset=opset, exporter=exporter, formats=formats,
                                           torchscript=torchscript, force=force,
                                           data_dir=str(data_dir) if data_dir else None), log=log)
    for name, why in res.skipped.items():
        log(f"skipped format {name}: {why}")
    how = f" (TorchScript {res.torchscript_method})" if res.torchscript_method else ""
    log(f"wrote {res.out}{how}: {', '.join(f for f in res.files if '/' not in f)}")


@app.command()
@cli_errors
def verify(
    exported: Exported = SHIPPED,
    checkpoint: ExportCheckpoint = None,
    data_dir: DataDir = None,
    dataset: Annotated[Optional[str], typer.Option(help="Test set to use; default: the checkpoint's.")] = None,
    backends: Annotated[str, typer.Option(help=f"Comma-separated backends ({BACKENDS}), or all.")] = "all",
    atol: Annotated[float, typer.Option(help="Absolute logit tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative logit tolerance.")] = 1e-4,
    report: Annotated[Optional[Path], typer.Option(help="Write the JSON report here, and its replayable record "
                                                        "beside it (.npz).")] = None,
    require_cuda: Annotated[bool, typer.Option(help="Fail when a CUDA backend cannot run.")] = False,
    replay: Annotated[Optional[Path], typer.Option(help="Rerun the backends of this report (written by verify "
                                                        "--report, here or on another machine) and compare them "
                                                        "with it sample by sample.")] = None,
    public_key: Annotated[Optional[Path], typer.Option(help="Refuse the export if any file differs from what "
                                                            "this key signed (lenet-export sign).")] = None,
    images: Images = None,
    fit: Fit = "exact",
    invert: Invert = False,
    endpoint: Endpoint = None,
):
    """Check that every runtime gives the checkpoint's logits and accuracy on the whole test set (or your images)."""
    check_images(images, fit, invert, data_dir, dataset)
    endpoints = parse_endpoints(endpoint)
    if public_key is not None:
        from .signing import check_files

        check_files(exported, public_key)
    if replay is not None:
        if backends != "all" or dataset or require_cuda or (atol, rtol) != (1e-4, 1e-4) or images:
            raise ConfigError("--replay reruns what the record says (its backends, data set and tolerance); "
                              "--backends, --dataset, --images, --atol, --rtol and --require-cuda do not apply")
        return run_replay(replay, exported, checkpoint, data_dir, report)
    from .diff import attach
    from .parity import Tolerance
    from .ui import print_report
    from .verify import VerifyOptions
    from .verify import verify as run_verify

    names = backend_names(backends)
    rep = run_verify(VerifyOptions(exported=exported, checkpoint=checkpoint, data_dir=str(data_dir) if data_dir else None,
                                   dataset=dataset, backends=names, tolerance=Tolerance(atol, rtol),
                                   require_cuda=require_cuda, report=report, localise=attach, images=images, fit=fit,
                                   invert=invert, endpoints=endpoints), log=lambda _: None)
    print_report(rep, report)
    rep.check()


@app.command(help=f"Write the reduced-precision variants ({VARIANTS}) with each runtime's own tools; those whose "
                   "package is missing are skipped with the reason.")
@cli_errors
def quantize(
    exported: Exported = SHIPPED,
    checkpoint: ExportCheckpoint = None,
    data_dir: DataDir = None,
    calibration_size: Annotated[int, typer.Option(help="Training images used for INT8 calibration.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the calibration subset.")] = 0,
    per_channel: Annotated[bool, typer.Option(help="Per-channel INT8 weights (default: per-tensor, measured "
                                                   "better here).")] = False,
    max_drop: Annotated[float, typer.Option(help="Accuracy points an INT8 variant may lose on the validation split "
                                                 "before its most sensitive layers are kept in float (half the "
                                                 "INT8 budget: the rest is for validation vs test).")] = 0.25,
    formats: Annotated[str, typer.Option(help=f"Comma-separated variants to write ({VARIANT_FORMATS}), or "
                                              "all.")] = "all",
):
    from .quantize import QuantizeOptions
    from .quantize import quantize as run_quantize
    from .ui import log

    names = None if formats.strip() == "all" else tuple(n.strip() for n in formats.split(",") if n.strip())
    run_quantize(QuantizeOptions(exported=exported, checkpoint=checkpoint, data_dir=str(data_dir) if data_dir else None,
                                 calibration_size=calibration_size, seed=seed, per_channel=per_channel,
                                 max_drop=max_drop, formats=names), log=log)


@app.command()
@cli_errors
def diff(
    backend: Annotated[str, typer.Option(help=f"Runtime to localise: {PROBED}.")],
    exported: Exported = SHIPPED,
    checkpoint: ExportCheckpoint = None,
    data_dir: DataDir = None,
    samples: Annotated[int, typer.Option(help="Run the first N test images.")] = 64,
    atol: Annotated[float, typer.Option(help="Absolute tolerance per activation (as verify's per logit).")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance per activation.")] = 1e-4,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the table as JSON here.")] = None,
):
    """Find the first layer where a runtime's values leave eager PyTorch's (exit 1 when one does)."""
    from .artefacts import refuse_input_as_output
    from .diff import DiffOptions
    from .diff import diff as run_diff
    from .fsutil import atomic_write_json, write_errors
    from .parity import Tolerance
    from .ui import console, diff_line, diff_table

    refuse_input_as_output(json_out, exported, checkpoint, "--json")
    res = run_diff(DiffOptions(exported=exported, backend=backend, checkpoint=checkpoint, samples=samples,
                               data_dir=str(data_dir) if data_dir else None, tolerance=Tolerance(atol, rtol)))
    console.print(diff_table(res))
    console.print(diff_line(backend, res.to_dict()), markup=False, soft_wrap=True)
    if json_out:
        with write_errors(json_out):
            atomic_write_json(json_out, res.to_dict())
    if res.first_divergent_layer:
        raise typer.Exit(1)


app.command()(bench)


@app.command()
@cli_errors
def predict(
    images: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.",
                                                show_default=False)],
    model: Annotated[Path, typer.Option(help="An artefact in an export folder: model.onnx, model.raw.onnx (ONNX "
                                             "Runtime, torch-free) or any other (model.xml, model.tflite, ...: run "
                                             "by its backend).")] = Path("exported/fashion-mnist-lenet-modern/model.onnx"),
    backend: Annotated[Optional[str], typer.Option(help=f"The CPU backend to run --model with ({CPU_BACKENDS}); "
                                                        "default: ONNX Runtime for .onnx, else the one for the "
                                                        "artefact.", show_default=False)] = None,
    fit: Fit = "exact",
    resize: Annotated[bool, typer.Option(help="Same as --fit stretch.")] = False,
    invert: Invert = False,
    top_k: Annotated[int, typer.Option(help="How many classes to give per image.")] = 1,
    min_confidence: Annotated[float, typer.Option(help="Flag a result low_confidence below this top-1 "
                                                       "probability.")] = 0.5,
    output_format: Annotated[str, typer.Option("--format", help="text, json, jsonl or csv.")] = "text",
    json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    save_inputs: Annotated[Optional[Path], typer.Option(help="Save each image as the model saw it (PNG) here.",
                                                        show_default=False)] = None,
    public_key: Annotated[Optional[Path], typer.Option(help="Refuse the model unless it is what this key signed "
                                                            "(model.sig beside it).", show_default=False)] = None,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data actors; pip install "
                                             "'lenet-export[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option(help="--engine ray: an existing Ray cluster (default: a local "
                                                        "Ray).", show_default=False)] = None,
    num_cpus: Annotated[Optional[int], typer.Option(help="--engine ray: actors (and CPUs of a local Ray); default: "
                                                         "every CPU.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the results here instead of to stdout; *.parquet: a "
                                                     "Parquet table.", show_default=False)] = None,
):
    """Classify your own images with an exported model (ONNX Runtime, torch-free; or any backend)."""
    import sys

    from .backend_classifier import open_classifier
    from .predict import FITS, OUTPUT_FORMATS, expand, render, score, write_output
    from .ui import counter

    fit = "stretch" if resize else fit
    fmt = "json" if json_out else output_format
    if fit not in FITS or fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"--fit must be one of {', '.join(FITS)} and --format one of {', '.join(OUTPUT_FORMATS)}")
    if engine not in ("local", "ray") or (engine == "local" and (address or num_cpus)) or (
            engine == "ray" and save_inputs):
        raise ConfigError("--engine must be local or ray; --address and --num-cpus go with --engine ray, "
                          "--save-inputs with --engine local")
    files = expand(images)
    clf = open_classifier(model, backend, public_key)
    with counter(len(files), "images") as advance:
        if engine == "ray":
            from .ray_engine import score_with_ray

            rows = list(score_with_ray(files, model, clf.classes, backend, public_key, fit, invert, top_k,
                                       min_confidence, address, num_cpus, advance))
        else:
            rows = list(score(clf, files, fit, invert, top_k, min_confidence, save_inputs, advance))
    if out is not None:
        write_output(rows, fmt, out, str(model), clf.provider)
    else:
        sys.stdout.write(render(rows, fmt, str(model), clf.provider))


app.command()(sign)
app.command()(ship)
app.command()(serve)


@app.command()
@cli_errors
def models():
    """List the model variants with their parameter counts."""
    from .models import VARIANTS, build_model, count_parameters
    from .ui import log

    for v in VARIANTS.values():
        log(f"{v.name:<20} {v.dataset:<14} {count_parameters(build_model(v.args)):>9,} params  {v.description}")


