"""TorchScript: ``model.pt``, scripted (traced where scripting fails; recorded), metadata in the extra file
``metadata.json``. Deprecated in current torch (its successor is ``model.pt2``), still what many apps load."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import warnings
import zipfile
from pathlib import Path

from ..metadata import METADATA_FILE
from .base import Format, MetadataCopy, Target


def read_torchscript_metadata(path: Path) -> dict:
    import torch

    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_FILE] or "null")


_FINAL = re.compile(rb"^  \w+ : Final\[.*\] = .*$")
_ID = "archive/.data/serialization_id"
_ALIGN = 64  # torch aligns each record's data to 64 bytes (padding in an "FB" extra field): the copy does too


def _sorted_finals(code: bytes) -> bytes:
    """The module's ``Final`` constant lines in sorted order: TorchScript writes them in the iteration order of a
    Python set of names, which follows PYTHONHASHSEED. The block keeps its length, so source ranges stay valid."""
    lines, out, run = code.split(b"\n"), [], []
    for line in lines + [None]:
        if line is not None and _FINAL.match(line):
            run.append(line)
            continue
        out += sorted(run) + ([] if line is None else [line])
        run = []
    return b"\n".join(out)


def canonical_archive(data: bytes) -> bytes:
    """``torch.jit.save``'s archive made byte-reproducible (torch has no option for it): ``Final`` constants in
    sorted order and the random ``serialization_id`` replaced by one derived from the other records, at the
    same length. Records keep their order, names and 64-byte data alignment; nothing is compressed."""
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        records = [(i.filename, src.read(i)) for i in src.infolist()]
    records = [(n, _sorted_finals(b) if n.endswith(".py") else b) for n, b in records]
    digest = hashlib.sha256(b"".join(n.encode() + b"\0" + b for n, b in records if n != _ID))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, body in records:
            if name == _ID:
                body = str(int(digest.hexdigest(), 16))[:len(body)].zfill(len(body)).encode()
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            header = out.tell() + 30 + len(name.encode())
            pad = -(header + 4) % _ALIGN
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            dst.writestr(info, body)
    return out.getvalue()


def _write(t: Target) -> dict:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks TorchScript deprecated; the artefact is still asked for
        try:
            scripted, method = torch.jit.script(t.model), "scripted"
        except Exception:  # scripting rejects some Python constructs; tracing is exact for these static graphs
            scripted, method = torch.jit.trace(t.model, t.sample), "traced"
        extra = {METADATA_FILE: json.dumps({**t.metadata, "torchscript_method": method})}
        # Saved to memory, then written by Python: torch.jit.save straight to a full disk aborts the whole
        # process (an uncaught c10::Error), where a Python write raises OSError (ENOSPC) like any other.
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files=extra)
    (t.folder / "model.pt").write_bytes(canonical_archive(buf.getvalue()))
    return {"torchscript_method": method}


FORMATS = (Format("torchscript", ("model.pt",), _write, summary="TorchScript (scripted, or traced where scripting fails)",
                  metadata=MetadataCopy(METADATA_FILE, read_torchscript_metadata)),)
