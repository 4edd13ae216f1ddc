"""TorchScript: ``model.pt``, scripted (traced where scripting fails; recorded), metadata in the extra file
``metadata.json``. Deprecated in current torch (its successor is ``model.pt2``), still what many apps load."""

from __future__ import annotations

import io
import json
import warnings

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
    (t.folder / "model.pt").write_bytes(buf.getvalue())
    return {"torchscript_method": method}


FORMATS = (Format("torchscript", ("model.pt",), _write, summary="TorchScript (scripted, or traced where scripting fails)",
                  metadata=MetadataCopy(METADATA_FILE, read_torchscript_metadata)),)
