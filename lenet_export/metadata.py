"""The metadata an app reads from the artefacts, and the check that it agrees with the checkpoint.

lenet-export writes the same metadata into every artefact that can hold it: ``metadata.json``, the
``metadata_props`` of ``model.onnx`` and ``model.raw.onnx``, the extra file ``metadata.json`` inside
``model.pt`` (TorchScript) and ``model.pt2`` (torch.export), OpenVINO's ``rt_info`` in ``model.xml``, the
constant method ``metadata`` of ``model.pte`` (ExecuTorch) and the flatbuffer metadata entry ``lenet_export``
of ``model.tflite`` (LiteRT).
Apps read classes and normalisation from them (``lenet_export.runtime`` does), so each copy must agree with
the checkpoint: a wrong class list or mean there mislabels every prediction while the logits stay exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import first_line

METADATA_FILE = "metadata.json"
OPENVINO_RT_INFO_KEY = "lenet_export"  # where an OpenVINO IR keeps the metadata in its rt_info
TFLITE_METADATA_KEY = "lenet_export"  # the name of the entry in a .tflite file's metadata table
PTE_METADATA_METHOD = "metadata"  # the constant method of a .pte program that returns the metadata as JSON
CHECKED_FIELDS = ("classes", "mean", "std", "input_shape", "checkpoint_sha256")


def raw_layout(input_shape) -> tuple[str, list]:
    """Layout and shape of model.raw.onnx's uint8 input for a C x H x W model input."""
    c, h, w = input_shape
    return ("NHW", ["N", h, w]) if c == 1 else ("NHWC", ["N", h, w, c])


def metadata_props(meta: dict) -> dict[str, str]:
    """ONNX metadata_props values are strings: scalars as text, lists and dicts as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def parse_prop(v: str):
    """The inverse of ``metadata_props`` for one value."""
    try:
        return json.loads(v)
    except ValueError:
        return v


@dataclass
class Mismatch:
    file: str
    field: str
    expected: object
    found: object

    def __str__(self) -> str:
        return f"{self.file}: {self.field} is {_short(self.found)}, the checkpoint says {_short(self.expected)}"


@dataclass
class MetadataCheck:
    """The four copies of the metadata against the checkpoint. ``errors``: copies that could not be read."""

    files: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)  # copy -> why it was not read

    @property
    def passed(self) -> bool:
        return not self.mismatches and not self.errors

    @property
    def failures(self) -> list[str]:
        return [*self.errors, *map(str, self.mismatches)]


def _short(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def read_onnx_metadata(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: parse_prop(p.value) for p in model.metadata_props}


def read_torchscript_metadata(path: Path) -> dict:
    import warnings

    import torch

    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_FILE] or "null")


def expected(ckpt: dict, checkpoint_sha256: str, raw: bool) -> dict:
    shape = raw_layout(ckpt["input_shape"])[1] if raw else ["N", *ckpt["input_shape"]]
    return {"classes": list(ckpt["classes"]), "mean": list(ckpt["mean"]), "std": list(ckpt["std"]),
            "input_shape": shape, "checkpoint_sha256": checkpoint_sha256}


def _compare(name: str, meta, want: dict) -> list[Mismatch]:
    if not isinstance(meta, dict):
        return [Mismatch(name, "metadata", "an object", type(meta).__name__)]
    return [Mismatch(name, k, v, meta.get(k, "<missing>")) for k, v in want.items() if meta.get(k) != v]


def read_pt2_metadata(path: Path) -> dict:
    """The extra file of a ``.pt2`` archive. Read with zipfile rather than ``torch.export.load`` (which
    deserialises the whole program, 2 s here) or ``torch.export.pt2_archive.PT2ArchiveReader`` (whose import
    alone takes 1.7 s): a PT2 archive is a zip file that keeps extra files under ``<archive>/extra/``."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
        if len(names) != 1:
            raise ValueError(f"no extra/{METADATA_FILE} in the archive")
        return json.loads(z.read(names[0]))


def read_openvino_metadata(path: Path) -> dict:
    import openvino as ov

    return openvino_rt_info(ov.Core().read_model(str(path)))


def openvino_rt_info(model) -> dict:
    """The metadata in an OpenVINO model's ``rt_info`` (under ``lenet_export``)."""
    if not model.has_rt_info([OPENVINO_RT_INFO_KEY]):
        return {}
    keys = model.get_rt_info([OPENVINO_RT_INFO_KEY]).astype(dict)
    return {k: parse_prop(model.get_rt_info([OPENVINO_RT_INFO_KEY, k]).astype(str)) for k in keys}


def read_tflite_metadata(path: Path) -> dict:
    """The ``lenet_export`` entry of a .tflite file's metadata table; torch-free (LiteRT's flatbuffer schema)."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == TFLITE_METADATA_KEY.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    raise ValueError(f"no {TFLITE_METADATA_KEY!r} entry in its metadata table")


def load_pte(path: Path, delegate: str | None = None):
    """(ExecuTorch ``Program``, its metadata) by ExecuTorch's runtime: the one place that opens a .pte, for the
    metadata check and the ``executorch-cpu`` backend. ``delegate``: a backend the runtime must have."""
    from .native import captured_stderr, executorch_imports

    with executorch_imports():
        from executorch.runtime import Runtime

    with captured_stderr():  # the runtime's CPU probe logs a few lines when it starts
        runtime = Runtime.get()
        if delegate and not runtime.backend_registry.is_available(delegate):
            raise RuntimeError(f"this ExecuTorch build has no {delegate} (registered: "
                               f"{', '.join(runtime.backend_registry.registered_backend_names)})")
        program = runtime.load_program(Path(path))
        missing = {"forward", PTE_METADATA_METHOD} - set(program.method_names)
        if missing:
            raise ValueError(f"the program has no method {sorted(missing)[0]!r} (not written by lenet-export?)")
        return program, json.loads(program.load_method(PTE_METADATA_METHOD).execute([])[0])


def read_pte_metadata(path: Path) -> dict:
    """What the constant method ``metadata`` of a .pte program returns."""
    return load_pte(path)[1]


def copies(meta: dict) -> list[tuple[str, str, object, bool]]:
    """(name, file, reader, raw input?) for every copy of the metadata an export holds."""
    formats = meta.get("formats") or {}
    out = [(METADATA_FILE, METADATA_FILE, lambda p: json.loads(p.read_text()), False),
           ("model.onnx", "model.onnx", read_onnx_metadata, False),
           ("model.raw.onnx", "model.raw.onnx", read_onnx_metadata, True)]
    if "torchscript" in formats or (not formats and meta.get("torchscript_method")):
        out.append((f"model.pt:{METADATA_FILE}", "model.pt", read_torchscript_metadata, False))
    if "pt2" in formats:
        out.append((f"model.pt2:{METADATA_FILE}", "model.pt2", read_pt2_metadata, False))
    for variant in ("fp16", "int8"):
        if variant in formats:
            out.append((f"model.{variant}.onnx", f"model.{variant}.onnx", read_onnx_metadata, False))
    if "openvino" in formats:
        out.append(("model.xml:rt_info", "model.xml", read_openvino_metadata, False))
    if "openvino-int8" in formats:
        out.append(("model.int8.xml:rt_info", "model.int8.xml", read_openvino_metadata, False))
    if "executorch" in formats:
        out.append((f"model.pte:{PTE_METADATA_METHOD}()", "model.pte", read_pte_metadata, False))
    if "litert" in formats:
        out.append((f"model.tflite:{TFLITE_METADATA_KEY}", "model.tflite", read_tflite_metadata, False))
    return out


READERS_PACKAGE = {".xml": "openvino", ".pte": "executorch", ".tflite": "ai_edge_litert"}
# Copies only a runtime can read, and whose import costs seconds (ExecuTorch's Python runtime imports its whole
# compiler, 7 s here): read when that runtime's backend runs anyway, else reported as not checked.
READ_WITH_BACKEND = {".pte": "executorch-cpu"}


def _why_unchecked(file: str, backends) -> str | None:
    import importlib.util

    package = READERS_PACKAGE.get(Path(file).suffix)
    if package and importlib.util.find_spec(package) is None:
        return f"{package} is not installed"
    backend = READ_WITH_BACKEND.get(Path(file).suffix)
    if backend and backends is not None and backend not in backends:
        return f"read by {backend}'s runtime, which was not requested"
    return None


def check_metadata(exported: Path, ckpt: dict, checkpoint_sha256: str, meta: dict,
                   backends=None) -> MetadataCheck:
    """Compare every copy of the metadata in ``exported`` (``meta``: its metadata.json) with the checkpoint;
    name each differing field. ``backends``: the backends that run (None: all). A copy that cannot be read
    here, or only at a cost its backend would pay anyway, is listed in ``unchecked`` with the reason."""
    check = MetadataCheck()
    for name, file, read, raw in copies(meta):
        why = _why_unchecked(file, backends)
        if why:
            check.unchecked[name] = why
            continue
        check.files.append(name)
        try:
            found = read(exported / file)
        except Exception as e:  # json, onnx, torch and openvino raise many types on garbage: report the first line
            check.errors.append(f"{name}: cannot read its metadata ({first_line(e)})")
            continue
        check.mismatches += _compare(name, found, expected(ckpt, checkpoint_sha256, raw))
    return check
