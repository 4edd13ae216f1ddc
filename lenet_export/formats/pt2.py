"""torch.export: ``model.pt2``, an ExportedProgram with a dynamic batch axis (1..MAX_BATCH), metadata in its
extra file ``metadata.json``. Loads with ``torch.export.load(path).module()`` without this package."""

from __future__ import annotations

import io
import json

from ..metadata import METADATA_FILE
from .base import Format, Target

MAX_BATCH = 65536


def _write(t: Target) -> dict:
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(t.model, (t.sample,), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()  # as for TorchScript: Python does the writing, so a full disk is an OSError
    torch.export.save(program, buf, extra_files={METADATA_FILE: json.dumps(t.metadata)})
    (t.folder / "model.pt2").write_bytes(buf.getvalue())
    return {"model.pt2": {"batch_range": [1, MAX_BATCH]}}


FORMATS = (Format("pt2", ("model.pt2",), _write),)
