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
import re
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
    (``backends.litert``). Accuracy control keeps the most sensitive layers in float with the recipe's own
    ``no_quantize`` entries (``lenet_export.accuracy_control``), judged on the quantised flatbuffer."""
    import ai_edge_quantizer

    from ..accuracy_control import accuracy_of, keep_sensitive_in_float, quantisable_layers

    from ai_edge_litert.interpreter import Interpreter

    source = t.input("model.tflite")
    cal = t.calibration
    scopes = layer_scopes(source, quantisable_layers(t.model))
    signature = next(iter(Interpreter(model_path=str(source)).get_signature_list().items()))

    def accuracy(model: bytes) -> float:  # (called only when there is a validation part)
        x, y = cal.validation
        return accuracy_of(tflite_logits(model, x), y)

    quantized, control = keep_sensitive_in_float(
        lambda kept: _quantize(source, signature, cal.images, [s for k in kept for s in scopes[k]]), accuracy,
        list(scopes),
        lambda: accuracy(source.read_bytes()), cal, tool="ai-edge-quantizer no_quantize recipe entries (greedy per layer)")
    version = getattr(ai_edge_quantizer, "__version__", None) or _dist_version("ai-edge-quantizer")
    info = {"batch_range": [BATCH, BATCH], "quantizer": f"ai-edge-quantizer {version} static_wi8_ai8",
            "io": "int8 (scale and zero point in the input and output tensors' quantization parameters)"}
    meta = {**t.metadata, **info, "precision": "int8",
            "calibration": {**cal.description, "tool": "ai-edge-quantizer"}}
    if control:
        meta["accuracy_control"] = info["accuracy_control"] = control
    (t.folder / "model.int8.tflite").write_bytes(with_metadata(quantized, meta))
    return {"model.int8.tflite": info}


def _quantize(source: Path, signature: tuple[str, dict], images, float_scopes: list[str]) -> bytes:
    """``source`` quantised by the static int8 recipe, calibrated on ``images`` fed to ``signature`` (name, its
    inputs and outputs), with the ops whose scope is in ``float_scopes`` left in float (a later recipe entry
    overrides an earlier one for the ops it matches)."""
    from ai_edge_quantizer import quantizer, recipe

    from ..machine import available_threads

    signature, io = signature
    qt = quantizer.Quantizer(str(source))
    qt.load_quantization_recipe(recipe.static_wi8_ai8() + [
        {"regex": f"^{re.escape(scope)}$", "operation": "*", "algorithm_key": "no_quantize"} for scope in float_scopes])
    with captured_stderr():  # calibration draws a progress bar
        ranges = qt.calibrate({signature: [{io["inputs"][0]: images[i:i + 1]} for i in range(len(images))]},
                              num_threads=available_threads())
        return bytes(qt.quantize(ranges, enable_progress_bar=False, enable_progress_report=False).quantized_model)


QUANTISABLE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def layer_scopes(path: Path, layers: list[str]) -> dict[str, list[str]]:
    """{torch module: the scopes (what ai-edge-quantizer matches recipe entries against) of its stage}: the
    quantisable ops of a float flatbuffer run in module order, and a layer's stage is its op and the ops after
    it up to the next one (activation, pooling, reshape). A stage is kept in float whole: a pooling op left
    quantised would quantise the layer's output anyway. A scope that names a conv or linear module
    (litert-torch's debug names) must name the same one; the last layer's says only ``serving_default_output_0``."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    codes = {getattr(schema.BuiltinOperator, n) for n in QUANTISABLE_OPS}
    model = fb.read_model(str(path))
    graph = model.subgraphs[0]
    stages: list[list[str]] = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) in codes:
            stages.append([])
        if stages:  # (ops before the first layer: the input's own, quantised with it)
            stages[-1].append(fb.get_op_scope(op, graph.tensors))
    named = [[m for seg in s[0].split(";;") if (m := module_path(seg.split(";")[0])) in layers] for s in stages]
    # one pass over the layers, or two for a model with test-time flip (the image's, then its mirror image's)
    passes = len(stages) // len(layers) if layers and len(stages) % len(layers) == 0 else 0
    owners = [layers[i % len(layers)] for i in range(len(stages))]
    if passes not in (1, 2) or any(n and set(n) != {k} for n, k in zip(named, owners)):
        raise ValueError(f"the quantisable ops of {path.name} ({len(stages)}) do not match the model's "
                         f"convolution and linear layers ({', '.join(layers)})")
    scopes: dict[str, list[str]] = {k: [] for k in layers}
    for owner, stage in zip(owners, stages):
        scopes[owner] += stage
    return scopes


def tflite_logits(model: bytes, x: np.ndarray) -> np.ndarray:
    """Float logits of a batch-1 flatbuffer over ``x``, one image at a time, as ``backends.litert`` runs it."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    step = forward(it)
    return np.concatenate([step(x[k:k + 1]) for k in range(len(x))])


def forward(interpreter):
    """One batch through an allocated interpreter as an app runs it: an int8 input is quantised with its tensor's
    scale and zero point and an int8 output dequantised with its own; returns float logits (a copy)."""
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    q_in, q_out = quantizer_of(inp), quantizer_of(out)

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], quantize_input(x, q_in) if q_in else x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).copy()  # get_tensor's array is reused by the next invoke
        return (y.astype(np.float32) - q_out[1]) * np.float32(q_out[0]) if q_out else y
    return run


def quantizer_of(detail: dict):
    """For an int8 tensor (a fully quantised model's input or output): (scale, zero point); else None."""
    if detail["dtype"] != np.int8:
        return None
    scale, zero = detail["quantization"]
    return float(scale), int(zero)


def quantize_input(x: np.ndarray, q: tuple[float, int]) -> np.ndarray:
    """Normalised float input as a fully quantised model's int8 input tensor takes it: (scale, zero point)."""
    return np.clip(np.round(x / q[0]) + q[1], -128, 127).astype(np.int8)


def module_path(name: str) -> str | None:
    """The torch module a litert-torch tensor name records: ``.../Sequential_features/...ReLU_2`` -> features.2
    (each segment is ``<qualified class>_<attribute>``); None for a name without a module stack."""
    parts = name.split("/")[1:]  # the first segment is the root model's class
    if not parts:
        return None
    return ".".join(p.rsplit(".", 1)[-1].split("_", 1)[1] for p in parts if "_" in p.rsplit(".", 1)[-1]) or None


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
