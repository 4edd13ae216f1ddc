"""torch.export: ``model.pt2``, an ExportedProgram with a dynamic batch axis (1..MAX_BATCH), metadata in its
extra file ``metadata.json``. Loads with ``torch.export.load(path).module()`` without this package."""

from __future__ import annotations

import io
import json

from pathlib import Path

from ..metadata import METADATA_FILE
from .base import Format, MetadataCopy, Target


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

MAX_BATCH = 65536


def _write(t: Target) -> dict:
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(t.model, (t.sample,), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()  # as for TorchScript: Python does the writing, so a full disk is an OSError
    torch.export.save(program, buf, extra_files={METADATA_FILE: json.dumps(t.metadata)})
    (t.folder / "model.pt2").write_bytes(buf.getvalue())
    return {"model.pt2": {"batch_range": [1, MAX_BATCH]}}


FORMATS = (Format("pt2", ("model.pt2",), _write, summary="torch.export ExportedProgram", batch_range=(1, MAX_BATCH),
                  metadata=MetadataCopy(METADATA_FILE, read_pt2_metadata)),)
