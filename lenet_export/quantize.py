"""Reduced-precision variants of an export, made by ONNX Runtime's own tools: ``model.fp16.onnx`` (float16
weights and arithmetic, float32 input and output) and ``model.int8.onnx`` (static INT8, QDQ format); with the
openvino extra also ``model.int8.xml`` + ``.bin``, NNCF's INT8 quantisation of the FP32 IR.

    lenet-export quantize --exported exported/fashion-mnist-lenet-modern

Calibration uses a seeded subset of the checkpoint's *training* part of the training set: never the
validation split the checkpoint was selected on, never the test set ``verify`` judges on. Seed, size,
method and the exact rule are recorded in each variant's metadata (``metadata_props`` and ``metadata.json``),
and ``verify`` refuses a variant whose calibration says otherwise.

INT8 granularity: per-tensor weights, chosen by measurement on the shipped models (whole test sets, same 500
calibration images): per-tensor kept Fashion-MNIST at 0.9164 (FP32 0.9160; 9,903 classes equal to FP32) and
CIFAR-10 at 0.7756 (FP32 0.7761; 9,821 equal), per-channel lost 0.52 and 2.26 points (0.9108, 0.7535; 9,788
and 9,006 equal), beyond the INT8 budget. ``--per-channel`` is there to re-measure.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ConfigError, ExportError, first_line
from .metadata import METADATA_FILE, metadata_props, read_onnx_metadata

VARIANTS = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
OPENVINO_INT8 = ("model.int8.xml", "model.int8.bin")  # with the openvino extra (NNCF)
CALIBRATION_SPLIT = "train"  # the only split a variant may be calibrated on
CALIBRATION_BATCH = 50  # images per calibration batch, for both quantisers


@dataclass
class QuantizeOptions:
    exported: Path
    checkpoint: Path | None = None  # default: <exported>/best.pth
    data_dir: str | None = None
    calibration_size: int = 500
    seed: int = 0
    per_channel: bool = False
    calibration_split: str = CALIBRATION_SPLIT  # "test" exists only so the tests can show verify refusing it


def check_calibration(calibration) -> None:
    """A variant's recorded calibration (None: not recorded) must name the training split; the backends refuse
    anything else, since the test split is what verify judges on."""
    if isinstance(calibration, dict) and calibration.get("split") != CALIBRATION_SPLIT:
        raise ValueError(f"calibrated on the {calibration.get('split')!r} split: refused (only the training "
                         "split may be used; the test split is what verify judges on)")


def calibration_batches(x: np.ndarray) -> list[np.ndarray]:
    return [x[i:i + CALIBRATION_BATCH] for i in range(0, len(x), CALIBRATION_BATCH)]


def calibration_images(ckpt: dict, opts: QuantizeOptions) -> tuple[np.ndarray, dict]:
    """Normalised calibration batch and its description for the metadata."""
    import torch

    from .data import load_split, normalize, train_val_indices

    if opts.calibration_size <= 0:
        raise ConfigError(f"--calibration-size must be positive, got {opts.calibration_size}")
    split = load_split(ckpt["dataset"], train=opts.calibration_split != "test", data_dir=opts.data_dir)
    if opts.calibration_split == "test":
        pool = torch.arange(len(split))
    else:  # the training part of the checkpoint's own train/validation split
        pool, _ = train_val_indices(len(split), ckpt["split"]["val_fraction"], ckpt["split"]["seed"])
    g = torch.Generator().manual_seed(opts.seed)
    idx = pool[torch.randperm(len(pool), generator=g)[:opts.calibration_size]]
    x = normalize(split.images[idx], ckpt["mean"], ckpt["std"]).numpy()
    return x, {"split": opts.calibration_split, "size": int(len(idx)), "seed": opts.seed,
               "rule": "seeded random subset of the training split minus the checkpoint's validation split",
               "method": "MinMax", "format": "QDQ", "per_channel": opts.per_channel,
               "activations": "QInt8", "weights": "QInt8"}


def _with_metadata(model, meta: dict) -> None:
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata_props(meta))


def write_fp16(src: Path, dst: Path, meta: dict) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)  # float32 in and out, as model.onnx
    _with_metadata(model, {**meta, "precision": "fp16", "converter": "onnxruntime.transformers.float16"})
    onnx.save_model(model, str(dst))


def write_int8(src: Path, dst: Path, x: np.ndarray, calibration: dict, meta: dict, per_channel: bool) -> None:
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": b} for b in calibration_batches(x)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # ORT's recommended clean-up first
        quantize_static(str(pre), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        model = onnx.load(str(Path(tmp) / "q.onnx"))
    _with_metadata(model, {**meta, "precision": "int8", "calibration": calibration})
    onnx.save_model(model, str(dst))


@contextlib.contextmanager
def _tool_errors(what: str) -> Iterator[None]:
    """The quantisation tools raise many exception types: report the first line as ``ExportError``. OSErrors
    pass through, for ``write_errors`` to turn into a one-line message about the disk."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        raise ExportError(f"{what} failed: {first_line(e)}") from None


def _nncf_ready(exported: Path, meta: dict) -> bool:
    """The OpenVINO INT8 variant needs the FP32 IR and the openvino extra (which brings NNCF)."""
    import importlib.util

    return ("openvino" in meta.get("formats", {}) and (exported / "model.xml").is_file()
            and all(importlib.util.find_spec(p) is not None for p in ("openvino", "nncf")))


def write_openvino_int8(exported: Path, x: np.ndarray, calibration: dict, meta: dict) -> None:
    """NNCF's post-training INT8 quantisation of the FP32 IR, on the same calibration images; the two IR files
    are written beside each other in a temporary folder, then renamed into place."""
    import shutil
    import tempfile

    from .native import quiet_logger

    with quiet_logger("torch.utils.cpp_extension"):  # NNCF imports it; it warns about CUDA_HOME on CPU machines
        import nncf
    import openvino as ov

    from .formats.openvino import RT_INFO_KEY

    model = ov.Core().read_model(str(exported / "model.xml"))
    batches = calibration_batches(x)
    # subset_size counts the dataset's items, here batches: all of them, i.e. every calibration image
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    for k, v in metadata_props({**meta, "precision": "int8", "calibration": {**calibration, "tool": "nncf"}}).items():
        quantized.set_rt_info(v, [RT_INFO_KEY, k])
    tmp = Path(tempfile.mkdtemp(prefix=".int8.", suffix=".tmp", dir=exported))
    try:
        ov.save_model(quantized, str(tmp / OPENVINO_INT8[0]), compress_to_fp16=False)
        for f in OPENVINO_INT8[::-1]:  # .bin first: a reader never finds a new .xml beside an old .bin
            (tmp / f).replace(exported / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def quantize(opts: QuantizeOptions, log=print) -> dict[str, str]:
    """Write the variants into the export folder (under its lock); returns {variant: file}."""
    from .fsutil import atomic_write, atomic_write_json, locked, write_errors
    from .verify import COMPANIONS, load_artefacts

    exported = Path(opts.exported)
    meta, ckpt, _, _ = load_artefacts(exported, opts.checkpoint)
    x, calibration = calibration_images(ckpt, opts)
    base = read_onnx_metadata(exported / "model.onnx")
    with write_errors(exported), locked(exported.parent / f".{exported.name}.lock", what=str(exported)):
        with _tool_errors("quantisation"):
            atomic_write(exported / VARIANTS["fp16"], lambda p: write_fp16(exported / "model.onnx", p, base))
            atomic_write(exported / VARIANTS["int8"], lambda p: write_int8(exported / "model.onnx", p, x, calibration,
                                                                            base, opts.per_channel))
        written = dict(VARIANTS)
        meta["formats"] = {**meta.get("formats", {}), **{k: [v] for k, v in VARIANTS.items()}}
        if _nncf_ready(exported, meta):
            with _tool_errors("OpenVINO INT8 quantisation"):
                write_openvino_int8(exported, x, calibration, base)
            written["openvino-int8"] = OPENVINO_INT8[0]
            meta["formats"]["openvino-int8"] = list(OPENVINO_INT8)
        meta["calibration"] = calibration
        atomic_write_json(exported / METADATA_FILE, meta)
    for name, f in written.items():
        files = (f, *COMPANIONS.get(f, ()))
        size = sum((exported / g).stat().st_size for g in files)
        log(f"wrote {' + '.join(str(exported / g) for g in files)} ({size / 1024:,.0f} KiB)")
    log(f"calibration: {calibration['size']} images of the {calibration['split']} split, seed {calibration['seed']}")
    return written
