"""LiteRT (TensorFlow Lite): ``model.tflite``, batch 1, converted by litert-torch from the torch module.

Batch 1 is what phones run, and the only batch this model keeps through conversion: a dynamic batch fails
in ``nn.Flatten``, and reshape-based variants convert but fail at run time. The input is the float32 NCHW
tensor of ``model.onnx`` (shape 1 x C x H x W); the output is the logits.

The metadata is stored the TFLite way, as a named entry of the flatbuffer's ``metadata`` table (the same
mechanism as the converter's own ``min_runtime_version``), written with LiteRT's own flatbuffer tools, and
under ``model.tflite`` in ``metadata.json``. ``read_tflite_metadata`` (below) reads it without torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import numpy as np

from ..native import captured_stderr
from .base import Format, MetadataCopy, Target

INSTALL = "pip install 'lenet-export[litert]'"
BATCH = 1
TFLITE_METADATA_KEY = "lenet_export"  # the name of the entry in a .tflite file's metadata table


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


def with_metadata(model_bytes: bytes, metadata: dict) -> bytes:
    """``model_bytes`` with ``metadata`` (JSON) as the flatbuffer metadata entry ``lenet_export``."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    data = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    entry = next((m for m in model.metadata or [] if m.name == TFLITE_METADATA_KEY.encode()), None)
    if entry is None:  # a new entry and buffer; a rewrite replaces the entry's buffer in place
        model.buffers.append(schema.BufferT())
        entry = schema.MetadataT()
        entry.name, entry.buffer = TFLITE_METADATA_KEY, len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    model.buffers[entry.buffer].data = data
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _write(t: Target) -> dict:
    import litert_torch
    import torch

    # litert-torch prints a progress tree to stdout unless LITERT_TORCH_SHOW_PROGRESS says no
    with mock.patch.dict(os.environ, {"LITERT_TORCH_SHOW_PROGRESS": "n"}), captured_stderr():
        converted = litert_torch.convert(t.model, (torch.zeros(BATCH, *t.sample.shape[1:]),)).model_content()
    info = {"batch_range": [BATCH, BATCH], "converter": f"litert-torch {litert_torch.__version__}"}
    (t.folder / "model.tflite").write_bytes(with_metadata(converted, {**t.metadata, **info}))
    return {"model.tflite": info}


# Written last (order=1): litert-torch loads JAX, and a later fork (OpenVINO's import sends its usage event
# from a forked process) would then warn that it may deadlock.
FORMATS = (Format("litert", ("model.tflite",), _write, package="litert_torch", install=INSTALL,
                  batch_range=(BATCH, BATCH), order=1, summary="LiteRT (TensorFlow Lite) flatbuffer",
                  metadata=MetadataCopy(TFLITE_METADATA_KEY, read_tflite_metadata, package="ai_edge_litert")),)
