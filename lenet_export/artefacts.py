"""An export folder: its metadata, the checkpoint it came from, which formats it holds (from the registry), their
files and sizes, the check of every metadata copy, and the test images as each kind of backend takes them.

``verify``, ``quantize``, ``diff`` and ``bench`` all start here; nothing here runs a runtime.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import formats
from .errors import ConfigError, first_line
from .metadata import METADATA_FILE, MetadataCheck, compare, expected

FLOAT, UINT8 = "float", "uint8"  # float: normalised N x C x H x W; uint8: decoded images (model.raw.onnx layout)


@dataclass
class Export:
    """An export folder and the checkpoint it was made from (checked to belong together)."""

    folder: Path
    metadata: dict  # metadata.json
    checkpoint: dict
    checkpoint_path: Path
    checkpoint_sha256: str


@dataclass
class Inputs:
    """One split, as each kind of backend takes it."""

    float: np.ndarray  # normalised N x C x H x W
    uint8: np.ndarray  # decoded images in model.raw.onnx's layout (N x H x W grey, N x H x W x C colour)
    labels: np.ndarray

    def get(self, kind: str) -> np.ndarray:
        return self.float if kind == FLOAT else self.uint8


def load_export(exported: Path, checkpoint: Path | None) -> Export:
    """The export's metadata and the checkpoint it came from; refuse a pair that does not belong together."""
    from .checkpoint import load_checkpoint
    from .fsutil import sha256_file

    exported = Path(exported)
    meta_file = exported / METADATA_FILE
    if not (exported / "model.onnx").is_file() or not meta_file.is_file():
        raise ConfigError(f"{exported} is not an export folder (missing model.onnx or metadata.json); "
                          "run `lenet-export onnx` first")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{meta_file} is not valid JSON: {first_line(e)}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{meta_file} holds a JSON {type(meta).__name__}, not the metadata object lenet-export writes")
    ckpt_path = Path(checkpoint) if checkpoint else exported / "best.pth"
    if not ckpt_path.is_file():
        raise ConfigError(f"no checkpoint: pass --checkpoint (none at {ckpt_path})")
    sha = sha256_file(ckpt_path)
    if sha != meta.get("checkpoint_sha256"):
        raise ConfigError(f"{exported} was not exported from {ckpt_path} (checkpoint sha256 {sha[:12]}... "
                          f"vs recorded {str(meta.get('checkpoint_sha256'))[:12]}...)")
    return Export(exported, meta, load_checkpoint(ckpt_path), ckpt_path, sha)


def load_inputs(name: str, ckpt: dict, data_dir: str | None, train: bool = False) -> tuple[Inputs, str]:
    """The whole split of data set ``name`` as the model takes it; (inputs, where they came from)."""
    from .data import dataset_info, load_split, normalize, to_raw_layout

    info = dataset_info(name)
    if list(info.input_shape) != list(ckpt["input_shape"]):
        raise ConfigError(f"data set {name} has {info.channels}x{info.size}x{info.size} images but the model "
                          f"expects {'x'.join(map(str, ckpt['input_shape']))}")
    split = load_split(name, train=train, data_dir=data_dir)
    x = normalize(split.images, ckpt["mean"], ckpt["std"]).numpy()
    return Inputs(x, to_raw_layout(split.images).numpy(), split.labels.numpy()), split.source


def folder_inputs(root: Path, ckpt: dict, fit: str, invert: bool) -> tuple[Inputs, list[str]]:
    """The user's labelled image folder (``image_folder``) as each kind of backend takes it; (inputs, files)."""
    import torch

    from .data import normalize
    from .image_folder import load_image_folder

    c, h, w = ckpt["input_shape"]
    found = load_image_folder(root, list(ckpt["classes"]), c, (h, w), fit, invert)
    nchw = torch.from_numpy(found.images[:, None] if c == 1 else found.images.transpose(0, 3, 1, 2))
    x = normalize(nchw, ckpt["mean"], ckpt["std"]).numpy()  # as the test split is normalised (load_inputs)
    return Inputs(x, found.images, found.labels), found.files


def refuse_input_as_output(path: Path | None, exported: Path, checkpoint: Path | None, option: str) -> None:
    """An output path (``--report``, ``--json``, ``--markdown``) must not be one of the command's inputs: the
    checkpoint, metadata.json, an artefact of the export folder (present or not) or its golden data."""
    if path is None:
        return
    out, folder = Path(path).resolve(), Path(exported).resolve()
    inputs = {folder / "best.pth", folder / METADATA_FILE, *(folder / f for fmt in formats.registry().values()
                                                             for f in fmt.files)}
    if checkpoint is not None:
        inputs.add(Path(checkpoint).resolve())
    if out in inputs or any(folder / d in out.parents for d in ("test_data_set_0", "raw_test_data_set_0")):
        raise ConfigError(f"{option} {path} is one of the files this command reads; write it elsewhere")


def present_formats(meta: dict) -> list[str]:
    """The formats an export holds, by the files its metadata.json lists (exports made before ``formats`` was
    recorded hold the ONNX pair, and TorchScript when they say how it was made)."""
    listed = meta.get("formats")
    if not isinstance(listed, dict):
        listed = {"onnx": ["model.onnx"], "raw-onnx": ["model.raw.onnx"],
                  **({"torchscript": ["model.pt"]} if meta.get("torchscript_method") else {})}
    files = {f for fs in listed.values() if isinstance(fs, list) for f in fs}
    return [f.name for f in formats.registry().values() if f.artefact in files]


def artefact_size(exported: Path, artefact: str | None) -> tuple[str, int | None]:
    """What a backend loads, as text, and its size on disk (None: the checkpoint, or missing files)."""
    if artefact is None:
        return "best.pth", None  # eager torch runs the checkpoint's weights; not a deployable artefact
    paths = [Path(exported) / f for f in formats.files_of(artefact)]
    size = sum(p.stat().st_size for p in paths) if all(p.is_file() for p in paths) else None
    return " + ".join(p.name for p in paths), size


def _why_unchecked(copy: formats.MetadataCopy, backends) -> str | None:
    if copy.package and importlib.util.find_spec(copy.package) is None:
        return f"{copy.package} is not installed"
    if copy.read_with and backends is not None and copy.read_with not in backends:
        return f"read by {copy.read_with}'s runtime, which was not requested"
    return None


def check_metadata(export: Export, backends=None) -> MetadataCheck:
    """Compare metadata.json and every copy inside the export's artefacts with the checkpoint; name each
    differing field. ``backends``: the backends that run (None: all). A copy that cannot be read here, or only
    at a cost its backend would pay anyway, is listed in ``unchecked`` with the reason; a format that cannot
    hold a copy is listed there too."""
    check = MetadataCheck()
    copies: list[tuple[str, object, list[Path], bool]] = [(METADATA_FILE, lambda p: json.loads(p.read_text()),
                                                           [export.folder / METADATA_FILE], False)]
    for name in present_formats(export.metadata):
        f = formats.registry()[name]
        if f.metadata is None:
            check.unchecked[f.artefact] = f"not embedded: {f.not_embedded}"
            continue
        why = _why_unchecked(f.metadata, backends)
        if why:
            check.unchecked[f.label] = why
            continue
        copies.append((f.label, f.metadata.read, [export.folder / n for n in f.files], f.metadata.raw))
    for label, read, paths, raw in copies:
        check.files.append(label)
        try:
            if missing := [p.name for p in paths if not p.is_file()]:  # before a runtime's own message about it
                raise FileNotFoundError(f"missing {missing[0]}")
            found = read(paths[0])
        except Exception as e:  # each format's reader raises its own types on garbage: report the first line
            check.errors.append(f"{label}: cannot read its metadata ({first_line(e)})")
            continue
        check.mismatches += compare(label, found, expected(export.checkpoint, export.checkpoint_sha256, raw))
    return check
