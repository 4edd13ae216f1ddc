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
from .base import QUANTIZE, Format, MetadataCopy, Target

INSTALL = "pip install 'lenet-export[litert]'"
INSTALL_INT8 = "pip install 'lenet-export[litert]' (ai-edge-quantizer)"
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


def _int8(t: Target) -> dict:
    """LiteRT's own quantizer (ai-edge-quantizer, torch-free) on the float ``model.tflite``: its static recipe,
    int8 weights and activations with min-max ranges from the calibration images. The graph's input and output
    become int8 too, as a fully quantised phone or microcontroller model takes them: the runtime quantises the
    normalised input with the input tensor's scale and zero point and dequantises the logits with the output's
    (``backends.litert``)."""
    import ai_edge_quantizer
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    from ..machine import available_threads

    source = t.input("model.tflite")
    signature, io = next(iter(Interpreter(model_path=str(source)).get_signature_list().items()))
    images = t.calibration.images
    qt = quantizer.Quantizer(str(source))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    with captured_stderr():  # calibration draws a progress bar
        ranges = qt.calibrate({signature: [{io["inputs"][0]: images[i:i + 1]} for i in range(len(images))]},
                              num_threads=available_threads())
        quantized = qt.quantize(ranges, enable_progress_bar=False, enable_progress_report=False).quantized_model
    version = getattr(ai_edge_quantizer, "__version__", None) or _dist_version("ai-edge-quantizer")
    info = {"batch_range": [BATCH, BATCH], "quantizer": f"ai-edge-quantizer {version} static_wi8_ai8",
            "io": "int8 (scale and zero point in the input and output tensors' quantization parameters)"}
    meta = {**t.metadata, **info, "precision": "int8",
            "calibration": {**t.calibration.description, "tool": "ai-edge-quantizer"}}
    (t.folder / "model.int8.tflite").write_bytes(with_metadata(bytes(quantized), meta))
    return {"model.int8.tflite": info}


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# Written last (order=1): litert-torch loads JAX, and a later fork (OpenVINO's import sends its usage event
# from a forked process) would then warn that it may deadlock.
FORMATS = (Format("litert", ("model.tflite",), _write, package="litert_torch", install=INSTALL,
                  batch_range=(BATCH, BATCH), order=1, summary="LiteRT (TensorFlow Lite) flatbuffer",
                  metadata=MetadataCopy(TFLITE_METADATA_KEY, read_tflite_metadata, package="ai_edge_litert")),
           Format("litert-int8", ("model.int8.tflite",), _int8, package="ai_edge_quantizer", install=INSTALL_INT8,
                  made_from=("litert",), stage=QUANTIZE, variant_of="litert", precision="int8",
                  batch_range=(BATCH, BATCH), summary="INT8 LiteRT flatbuffer (ai-edge-quantizer, int8 input and "
                  "output), calibrated on training images",
                  metadata=MetadataCopy(TFLITE_METADATA_KEY, read_tflite_metadata, package="ai_edge_litert")))
