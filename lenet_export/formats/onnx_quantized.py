"""Reduced-precision variants of ``model.onnx``, made by ONNX Runtime's own tools (``lenet-export quantize``):
``model.fp16.onnx`` (float16 weights and arithmetic, float32 input and output) and ``model.int8.onnx``
(static INT8, QDQ format, calibrated on the checkpoint's training part). Metadata in ``metadata_props``.

INT8 granularity: per-tensor weights by default, chosen by measurement on the shipped models (whole test sets,
same 500 calibration images): per-channel lost 0.52 and 2.26 points on Fashion-MNIST and CIFAR-10, beyond the
INT8 budget; ``quantize --per-channel`` is there to re-measure.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from ..accuracy_control import accuracy_of, keep_sensitive_in_float as control
from ..metadata import metadata_props
from .base import QUANTIZE, Format, Target
from .onnx import PROPS

INSTALL = "pip install 'lenet-export[cpu]' (onnxruntime)"
CALIBRATION_BATCH = 50  # images per calibration batch (the OpenVINO variant uses the same)


def calibration_batches(x) -> list:
    return [x[i:i + CALIBRATION_BATCH] for i in range(0, len(x), CALIBRATION_BATCH)]


def with_props(model, meta: dict) -> None:
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata_props(meta))


def _fp16(t: Target) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # keep_io_types: float32 in and out, as model.onnx
    model = convert_float_to_float16(onnx.load(str(t.input("model.onnx"))), keep_io_types=True)
    with_props(model, {**t.metadata, "precision": "fp16", "converter": "onnxruntime.transformers.float16"})
    onnx.save_model(model, str(t.folder / "model.fp16.onnx"))
    return {}


def _int8(t: Target) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cal = t.calibration

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": b} for b in calibration_batches(cal.images)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(t.input("model.onnx")), str(pre), skip_symbolic_shape=True)  # ORT's recommended clean-up

        trial = itertools.count()

        def make(exclude: list[str]) -> Path:
            out = Path(tmp) / f"q{next(trial)}.onnx"  # one file per trial: the chosen one is loaded at the end
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=bool(cal.description.get("per_channel")), activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
            return out

        q, control = keep_sensitive_in_float(pre, make, cal)
        model = onnx.load(str(q))
    _merge_identical_initializers(model)
    meta = {"precision": "int8", "calibration": cal.description}
    if control:
        meta["accuracy_control"] = control
    with_props(model, {**t.metadata, **meta})
    onnx.save_model(model, str(t.folder / "model.int8.onnx"))
    return {"model.int8.onnx": {"accuracy_control": control}} if control else {}


def _merge_identical_initializers(model) -> None:
    """Point every use of an initializer at the first one with the same type, shape and bytes, and drop the rest.

    ORT's pre-processing folds batch norm into each convolution on its own, so a weight two convolutions share
    (the image's and the mirror image's pass of test-time flip) became two, quantised alike: the CIFAR-10 INT8
    file held every weight twice (222 KiB, 108 KiB merged). Exact comparison, unlike onnxruntime.transformers'
    ``remove_duplicated_initializer``, which merges values within a tolerance."""
    from onnx import numpy_helper

    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for t in model.graph.initializer:
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if key in first:
            rename[t.name] = first[key]
        else:
            first[key] = t.name
            keep.append(t)
    if not rename:
        return
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)


QUANTISABLE = ("Conv", "Gemm", "MatMul")


def _accuracy(path: Path, x, y) -> float:
    import numpy as np

    from ..ort_session import open_session

    sess = open_session(path, "cpu")
    return accuracy_of(np.concatenate([sess.run(None, {"input": x[i:i + 1000]})[0] for i in range(0, len(x), 1000)]), y)


def keep_sensitive_in_float(pre: Path, make, cal) -> tuple[Path, dict | None]:
    """Accuracy control (``lenet_export.accuracy_control``) over the quantisable nodes of ``pre``: ORT's quantiser
    has no accuracy-aware mode of its own; ``nodes_to_exclude`` is its per-node switch."""
    import onnx

    nodes = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in QUANTISABLE]
    # (the measures are called only when there is a validation part)
    return control(make, lambda q: _accuracy(q, *cal.validation), nodes, lambda: _accuracy(pre, *cal.validation),
                   cal, tool="onnxruntime.quantization nodes_to_exclude (greedy per node)")


FORMATS = (
    Format("onnx-fp16", ("model.fp16.onnx",), _fp16, package="onnxruntime", install=INSTALL, made_from=("onnx",),
           stage=QUANTIZE, variant_of="onnx", precision="fp16", metadata=PROPS,
           summary="FP16 variant of model.onnx (float32 input and output)"),
    Format("onnx-int8", ("model.int8.onnx",), _int8, package="onnxruntime", install=INSTALL, made_from=("onnx",),
           stage=QUANTIZE, variant_of="onnx", precision="int8", metadata=PROPS,
           summary="INT8 QDQ variant of model.onnx, calibrated on training images"),
)
