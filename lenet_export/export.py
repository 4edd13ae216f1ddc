"""Checkpoint -> deployable artefacts: ONNX (normalised and raw-uint8 input), golden data, and every other
format in ``lenet_export.formats`` (TorchScript, .pt2, OpenVINO IR, ExecuTorch .pte, LiteRT .tflite).

Everything is written into a temporary sibling folder, checked against eager PyTorch on real test
images, and only then renamed into place, so a failed export never destroys a good one.

Artefacts in the output folder:

* ``model.onnx``       float32 NCHW ``input`` (dynamic batch) -> ``logits``
* ``model.raw.onnx``   uint8 ``images`` as decoders give them (N x H x W grey, N x H x W x C colour),
                       normalisation in the graph -> ``logits``, ``probabilities``
* ``model.pt``         TorchScript (scripted, or traced when scripting fails; recorded in the metadata)
* ``model.pt2``, ``model.xml``/``.bin``, ``model.pte``, ``model.tflite``: see their modules in ``formats/``
* ``test_data_set_0/`` golden ``input_0.pb`` / ``output_0.pb`` for ``model.onnx`` (ONNX test-data layout)
* ``raw_test_data_set_0/`` golden ``input_0.pb`` / ``output_0.pb`` / ``output_1.pb`` for ``model.raw.onnx``
* ``metadata.json``    the metadata also stored in the ONNX ``metadata_props`` and TorchScript extra files
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from . import __version__
from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import load_split, normalize, to_raw_layout
from .errors import ConfigError, ExportError
from .formats import select
from .fsutil import locked, native_errors, recover_staged, sha256_file, staged_dir, write_errors
from .metadata import METADATA_FILE, raw_layout
from .parity import Tolerance

if TYPE_CHECKING:
    from .report import BackendResult

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
REQUIRED_CHECKS = ("torch-cpu", "ort-cpu", "ort-cpu-raw")  # must pass at export time; others may skip
CHECK_IMAGES = 256  # real test images used for the export-time check
GOLDEN_PER_CLASS = 1  # golden test data: the first test image of each class


def opset_range(exporter: str) -> tuple[int, int]:
    """Opsets each exporter produces reliably: dynamo starts at 18, the TorchScript exporter stops at 20."""
    import onnx

    return (18, onnx.defs.onnx_opset_version()) if exporter == "dynamo" else (9, 20)


@dataclass
class ExportOptions:
    out: Path | None = None  # default: runs/<dataset>-<model>/export
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    formats: str = "all"  # "all" or a comma-separated list (see lenet_export.formats)
    torchscript: bool = True  # False drops torchscript from the formats
    force: bool = False
    data_dir: str | None = None


@dataclass
class ExportResult:
    out: Path
    files: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    torchscript_method: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it was not written


class RawInputModel(nn.Module):
    """uint8 images as decoded (N x H x W or N x H x W x C) -> (logits, probabilities); normalisation inside."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.channels = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(torch.float32)
        x = x.unsqueeze(1) if self.channels == 1 else x.permute(0, 3, 1, 2)
        # Same operations, in the same order, as lenet_export.data.normalize.
        x = (x / 255.0 - self.mean) / self.std
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


def build_metadata(ckpt: dict, checkpoint_sha256: str, opts: ExportOptions) -> dict:
    import onnx

    c, h, w = ckpt["input_shape"]
    raw_name, raw_shape = raw_layout(ckpt["input_shape"])
    return {
        "lenet_export_version": __version__,
        "model_name": ckpt["model"],
        "model_args": ckpt["model_args"],
        "dataset": ckpt["dataset"],
        "data_source": ckpt.get("data_source", ""),
        "classes": ckpt["classes"],
        "input_name": "input",
        "input_layout": "NCHW",
        "input_shape": ["N", c, h, w],
        "input_dtype": "float32",
        "raw_input_name": "images",
        "raw_input_layout": raw_name,
        "raw_input_shape": raw_shape,
        "raw_input_dtype": "uint8",
        "normalization": "x = (pixel / 255 - mean) / std, per channel",
        "mean": ckpt["mean"],
        "std": ckpt["std"],
        "checkpoint_sha256": checkpoint_sha256,
        "best_epoch": ckpt["epoch"],
        "val_accuracy": ckpt["val_acc"],
        "test_accuracy": ckpt.get("test_acc"),
        "producer_torch": str(torch.__version__),
        "producer_onnx": onnx.__version__,
        "exporter": opts.exporter,
        "opset": opts.opset,
    }


def _write_golden(folder: Path, inputs: list[tuple[str, np.ndarray]], outputs: list[tuple[str, np.ndarray]]) -> None:
    from onnx import numpy_helper

    folder.mkdir()
    for i, (name, arr) in enumerate(inputs):
        (folder / f"input_{i}.pb").write_bytes(numpy_helper.from_array(arr, name).SerializeToString())
    for i, (name, arr) in enumerate(outputs):
        (folder / f"output_{i}.pb").write_bytes(numpy_helper.from_array(arr, name).SerializeToString())


def golden_indices(labels: torch.Tensor, per_class: int = GOLDEN_PER_CLASS) -> torch.Tensor:
    return torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(int(labels.max()) + 1)])


def check_artefacts(folder: Path, ckpt: dict, checkpoint_sha256: str, images: torch.Tensor, labels: torch.Tensor,
                    formats: dict[str, list[str]]) -> dict[str, "BackendResult"]:
    """The fresh artefacts against eager PyTorch on real images, by verify's own backends and parity rules:
    every CPU backend whose artefact was written (and whose runtime is installed) runs."""
    from . import backends as registry
    from .artefacts import Export, Inputs, check_metadata
    from .verify import Context, evaluate, requested

    inputs = Inputs(normalize(images, ckpt["mean"], ckpt["std"]).numpy(), to_raw_layout(images).numpy(), labels.numpy())
    meta = json.loads((folder / METADATA_FILE).read_text())
    ctx = Context(folder, meta, ckpt)
    written = {f for files in formats.values() for f in files}
    names = [n for n in registry.names("cpu") if registry.get(n).artefact in written]
    results, ref = {}, None
    for b in requested(tuple(names)):
        results[b.name], logits = evaluate(b, ctx, inputs, ref, Tolerance(), measure=False)
        ref = logits if ref is None else ref
    md = check_metadata(Export(folder, meta, ckpt, folder / "best.pth", checkpoint_sha256))
    if not md.passed:
        raise ExportError(f"exported metadata disagrees with the checkpoint: {md.failures[0]}")
    return results


def _is_export(folder: Path) -> bool:
    try:
        meta = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and "checkpoint_sha256" in meta and "model_name" in meta


def check_out(out: Path, checkpoint: Path, force: bool) -> None:
    """``--out`` may be new, an empty folder, or (with ``--force``) an earlier export; nothing else is replaced."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not force:
        raise ConfigError(f"{out} already exists; pass --force to replace it (it is kept if the new export fails)")
    refuse = f"refusing to replace {out}: "
    if not out.is_dir():
        raise ConfigError(refuse + "it is a file, not an export folder")
    if out.resolve() in Path(checkpoint).resolve().parents:
        raise ConfigError(refuse + f"it holds the checkpoint being exported ({checkpoint})")
    run_files = [n for n in ("last.pth", "run.json", "history.json") if (out / n).exists()]
    if run_files:
        raise ConfigError(refuse + f"it holds a training run ({run_files[0]}); --force only replaces export folders")
    if not _is_export(out):
        raise ConfigError(refuse + f"it is not a lenet-export export folder (no valid {METADATA_FILE}); "
                          "--force only replaces export folders")


def write_artefacts(tmp: Path, model: nn.Module, ckpt: dict, test, meta: dict, opts: ExportOptions,
                    formats: list) -> dict:
    """Write the chosen formats, golden data and metadata.json into ``tmp``; returns what the writers recorded."""
    from .formats import Target

    raw = RawInputModel(model, ckpt["mean"], ckpt["std"]).eval()
    c, h, w = ckpt["input_shape"]
    target = Target(tmp, model, raw, torch.zeros(2, c, h, w),
                    torch.zeros((2, h, w) if c == 1 else (2, h, w, c), dtype=torch.uint8), meta, opts.exporter,
                    opts.opset)
    made = {}
    for f in formats:
        with native_errors(tmp, f"writing {f.name}"):
            made |= f.write(target)
    gi = golden_indices(test.labels)
    gx = normalize(test.images[gi], ckpt["mean"], ckpt["std"])
    graw = to_raw_layout(test.images[gi])
    with torch.inference_mode():
        glogits = model(gx)
        rlogits, rprobs = raw(graw)
    _write_golden(tmp / "test_data_set_0", [("input", gx.numpy())], [("logits", glogits.numpy())])
    _write_golden(tmp / "raw_test_data_set_0", [("images", graw.numpy())],
                  [("logits", rlogits.numpy()), ("probabilities", rprobs.numpy())])
    (tmp / METADATA_FILE).write_text(json.dumps({**meta, "torchscript_method": None, **made,
                                                 "golden_test_indices": gi.tolist()}, indent=2) + "\n")
    return made


def _check_written(tmp: Path, ckpt: dict, meta: dict, test, opts: ExportOptions, result: ExportResult, log) -> None:
    images, labels = test.images[:CHECK_IMAGES], test.labels[:CHECK_IMAGES]
    checks = check_artefacts(tmp, ckpt, meta["checkpoint_sha256"], images, labels, meta["formats"])
    tol = Tolerance()
    for name, r in list(checks.items())[1:]:
        if r.logits is not None:
            result.max_abs_diff[name] = r.logits.max_abs
            log(f"check {name:<16} max |logit diff| vs eager on {len(images)} test images: {r.logits.max_abs:.3e} "
                f"(atol {tol.atol:g} rtol {tol.rtol:g}) {r.status}")
        elif r.status == "skipped":
            log(f"check {name:<16} skipped: {r.reason}")
    # A runtime that is not installed (OpenVINO, onnxruntime-web) skips its check; ONNX Runtime must run, since
    # the ONNX files are what every other runtime and app builds on.
    bad = {n: r for n, r in checks.items() if r.status == "failed" or (n in REQUIRED_CHECKS and r.status != "passed")}
    if bad:
        raise ExportError("exported model disagrees with the checkpoint: "
                          + "; ".join(f"{n}: {r.failures[0] if r.failures else r.reason}" for n, r in bad.items())
                          + f"; nothing written to {result.out}")


def export(checkpoint: str | Path, opts: ExportOptions, log=print) -> ExportResult:
    """Export ``checkpoint`` per ``opts``; raise ``ExportError`` if an artefact disagrees with eager PyTorch.

    The output folder is locked for the export, written as a staged sibling, checked, and only then renamed
    into place; ``--force`` replaces only an earlier export, never a training run or another folder.
    """
    if opts.exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {opts.exporter!r}; choose one of: {', '.join(EXPORTERS)}")
    lo, hi = opset_range(opts.exporter)
    if not lo <= opts.opset <= hi:
        raise ConfigError(f"opset {opts.opset} is not supported by the {opts.exporter} exporter; use {lo}..{hi}")
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    # the default is under runs/, never exported/: `--force` there must not replace a shipped model
    out = Path(opts.out) if opts.out else Path("runs") / f"{ckpt['dataset']}-{ckpt['model']}" / "export"
    check_out(out, Path(checkpoint), opts.force)
    formats, skipped = select(opts.formats)
    if not opts.torchscript:
        formats, skipped = [f for f in formats if f.name != "torchscript"], {**skipped, "torchscript": "--no-torchscript"}
    meta = build_metadata(ckpt, sha256_file(checkpoint), opts) | {"formats": {f.name: list(f.files) for f in formats},
                                                                   "skipped_formats": skipped}
    test = load_split(ckpt["dataset"], train=False, data_dir=opts.data_dir)
    if list(test.images.shape[1:]) != list(ckpt["input_shape"]):
        raise ConfigError(f"test images are {tuple(test.images.shape[1:])}, the model expects {tuple(ckpt['input_shape'])}")
    result = ExportResult(out=out, files=[], skipped=skipped)
    with write_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        with locked(out.parent / f".{out.name}.lock", what=str(out)):
            recover_staged(out)  # what a killed export left: temporaries go, a moved-aside export comes back
            check_out(out, Path(checkpoint), opts.force)  # again, now that no other export can change it
            with staged_dir(out, replace=True) as tmp:
                made = write_artefacts(tmp, model, ckpt, test, meta, opts, formats)
                result.torchscript_method = made.get("torchscript_method")
                _check_written(tmp, ckpt, meta, test, opts, result, log)
                result.files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return result
