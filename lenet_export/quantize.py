"""Reduced-precision variants of an export: every QUANTIZE format of the registry (``lenet_export.formats``):
FP16 and INT8 ONNX by ONNX Runtime's tools, and with the openvino extra the INT8 IR by NNCF.

    lenet-export quantize --exported exported/fashion-mnist-lenet-modern

Calibration uses a seeded subset of the checkpoint's *training* part of the training set: never the
validation split the checkpoint was selected on, never the test set ``verify`` judges on. Seed, size,
method and the exact rule are recorded in each variant's metadata (inside the artefact and in
``metadata.json``), and ``verify`` refuses a variant whose calibration says otherwise.

Each variant is written whole or not at all: its files are staged in a temporary folder inside the export,
then renamed into place (companions first), and ``metadata.json`` lists it only once it is there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .calibration import calibration_subset
from .errors import ConfigError
from .formats import QUANTIZE, Calibration, Format, Target, registry
from .formats.base import CALIBRATION_SPLIT
from .metadata import METADATA_FILE


@dataclass
class QuantizeOptions:
    exported: Path
    checkpoint: Path | None = None  # default: <exported>/best.pth
    data_dir: str | None = None
    calibration_size: int = 500
    seed: int = 0
    per_channel: bool = False
    max_drop: float = 0.25  # accuracy points on the validation split; beyond it, sensitive layers stay in float
    calibration_split: str = CALIBRATION_SPLIT  # "test" exists only so the tests can show verify refusing it
    formats: tuple[str, ...] | None = None  # QUANTIZE format names to write; None: every one this machine can


def calibration_images(ckpt: dict, opts: QuantizeOptions) -> tuple[np.ndarray, tuple | None, dict]:
    """Normalised calibration batch, the validation part (images, labels) and the description for the metadata."""
    if not 0 <= opts.max_drop <= 100:
        raise ConfigError(f"--max-drop must be from 0 to 100 accuracy points, got {opts.max_drop}")
    if opts.calibration_size <= 0:
        raise ConfigError(f"--calibration-size must be positive, got {opts.calibration_size}")
    if not 0 <= opts.seed < 2**63:  # torch.Generator.manual_seed overflows beyond a signed 64-bit integer
        raise ConfigError(f"--seed must be an integer from 0 to 2**63-1, got {opts.seed}")
    x, validation = calibration_subset(ckpt, opts.calibration_size, opts.seed, opts.calibration_split, opts.data_dir)
    return x, validation, {"split": opts.calibration_split, "size": int(len(x)), "seed": opts.seed,
               "rule": "seeded random subset of the training split minus the checkpoint's validation split",
               "method": "MinMax", "format": "QDQ", "per_channel": opts.per_channel,
               "activations": "QInt8", "weights": "QInt8"}


def _write_variant(f: Format, t: Target, exported: Path) -> dict:
    """Write ``f`` into a temporary folder inside the export, then rename its files into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{f.name}.", suffix=".tmp", dir=exported))
    try:
        made = f.write(Target(**{**t.__dict__, "folder": tmp}))
        for name in reversed(f.files):  # companions first: a reader never finds a new .xml beside an old .bin
            os.chmod(tmp / name, 0o644)
            (tmp / name).replace(exported / name)
        return made
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def quantize(opts: QuantizeOptions, log=print) -> dict[str, str]:
    """Write every QUANTIZE format this machine can make into the export folder (under its lock); returns
    {format: artefact}. A format whose package or source artefact is missing is skipped with the reason."""
    from .artefacts import load_export, present_formats
    from .checkpoint import model_from_checkpoint
    from .formats.onnx import read_onnx_metadata
    from .fsutil import atomic_write_json, locked, native_errors, write_errors

    exported = Path(opts.exported)
    known = registry(QUANTIZE)
    if opts.formats is not None and (not opts.formats or set(opts.formats) - set(known)):
        bad = sorted(set(opts.formats) - set(known)) or ["(none)"]
        raise ConfigError(f"--formats: unknown variant {bad[0]}; choose from: {', '.join(known)} (or all)")
    if not exported.is_dir():
        raise ConfigError(f"{exported} is not an export folder (run `lenet-export onnx` first)")
    written: dict[str, str] = {}
    # the lock first: an `onnx --force` replacing this folder is "in use", not a missing export
    with write_errors(exported), locked(exported.parent / f".{exported.name}.lock", what=str(exported)):
        export = load_export(exported, opts.checkpoint)
        meta = export.metadata
        if not isinstance(meta.get("formats"), dict):  # an export made before `formats` was recorded
            meta["formats"] = {n: list(registry()[n].files) for n in present_formats(meta)}
        x, validation, calibration = calibration_images(export.checkpoint, opts)
        c, h, w = export.checkpoint["input_shape"]
        target = Target(exported, model_from_checkpoint(export.checkpoint), None, np.zeros((2, c, h, w), np.float32),
                        None, read_onnx_metadata(exported / "model.onnx"), source=exported,
                        calibration=Calibration(x, calibration, validation, opts.max_drop))
        for f in known.values():
            if opts.formats is not None and f.name not in opts.formats:
                continue
            have = present_formats(meta)
            why = f.missing() or next((f"needs {d}, which the export does not have" for d in f.made_from
                                       if d not in have), None)
            if why:
                log(f"skipped {f.name}: {why}")
                continue
            with native_errors(exported, f"{f.name} quantisation"):
                made = _write_variant(f, target, exported)
            meta["formats"][f.name] = list(f.files)
            (meta.get("withheld_variants") or {}).pop(f.name, None)  # made again: ship's verdict no longer applies
            meta |= made
            meta["calibration"] = calibration
            atomic_write_json(exported / METADATA_FILE, meta)  # lists the variant once its files are in place
            written[f.name] = f.artefact
            size = sum((exported / g).stat().st_size for g in f.files)
            log(f"wrote {' + '.join(str(exported / g) for g in f.files)} ({size / 1024:,.0f} KiB)")
            if kept := made.get(f.artefact, {}).get("accuracy_control", {}).get("kept_in_float"):
                log(f"  kept in float to stay within --max-drop {opts.max_drop} on the validation split: "
                    f"{', '.join(kept)}")
    log(f"calibration: {calibration['size']} images of the {calibration['split']} split, seed {calibration['seed']}")
    return written
