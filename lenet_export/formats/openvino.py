"""OpenVINO IR: ``model.xml`` + ``model.bin`` in FP32, converted from ``model.onnx`` (which keeps the input
and output names; converting the torch module would go through ``torch.jit.trace`` and rename the input).
The metadata is stored in the model's ``rt_info`` under ``lenet_export``. With ``lenet-export quantize``, also
``model.int8.xml`` + ``.bin``: NNCF's post-training INT8 quantisation of the FP32 IR.

``openvino.save_model`` compresses weights to FP16 by default, which moves these logits by ~5e-3: the IR is
saved with ``compress_to_fp16=False`` (and verify fails an FP16-compressed IR).

The ONNX file is read with ``Core.read_model`` (OpenVINO's ONNX frontend) rather than ``convert_model``: the
latter also sends OpenVINO's usage telemetry (opt-out, ``opt_in_out --opt_out``) from a forked process on every
call, which an export should not do on the user's behalf, and which forks a process that has JAX loaded
(litert-torch) in ``ship`` and the tests.
"""

from __future__ import annotations

from pathlib import Path

from ..metadata import metadata_props, parse_prop
from .base import QUANTIZE, Format, MetadataCopy, Target

INSTALL = "pip install 'lenet-export[openvino]'"
RT_INFO_KEY = "lenet_export"  # where an OpenVINO IR keeps the metadata in its rt_info


def openvino_rt_info(model) -> dict:
    """The metadata in an OpenVINO model's ``rt_info`` (under ``lenet_export``)."""
    if not model.has_rt_info([RT_INFO_KEY]):
        return {}
    keys = model.get_rt_info([RT_INFO_KEY]).astype(dict)
    return {k: parse_prop(model.get_rt_info([RT_INFO_KEY, k]).astype(str)) for k in keys}


def read_openvino_metadata(path: Path) -> dict:
    import openvino as ov

    from ..native import captured_stderr

    with captured_stderr():  # on a file it cannot parse, every frontend it tries logs its own error
        return openvino_rt_info(ov.Core().read_model(str(path)))


def _set_rt_info(model, meta: dict) -> None:
    for k, v in metadata_props(meta).items():
        model.set_rt_info(v, [RT_INFO_KEY, k])


def _write(t: Target) -> dict:
    import openvino as ov

    model = ov.Core().read_model(str(t.input("model.onnx")))
    _set_rt_info(model, t.metadata)
    ov.save_model(model, str(t.folder / "model.xml"), compress_to_fp16=False)
    return {"openvino_version": ov.get_version()}


def _int8(t: Target) -> dict:
    """NNCF's post-training INT8 quantisation of the FP32 IR, on the same calibration images as ONNX Runtime's;
    with validation images, NNCF's own accuracy control (``quantize_with_accuracy_control``)."""
    from ..native import captured_output, quiet_logger
    from .onnx_quantized import calibration_batches

    with quiet_logger("torch.utils.cpp_extension"):  # NNCF imports it; it warns about CUDA_HOME on CPU machines
        import nncf
    import openvino as ov

    model = ov.Core().read_model(str(t.input("model.xml")))
    batches = calibration_batches(t.calibration.images)
    cal, control = t.calibration, None
    with quiet_logger("nncf"), quiet_logger("torch.utils.cpp_extension"), captured_output():  # progress bars
        if cal.validation is None or cal.max_drop >= 100:
            # subset_size counts the dataset's items, here batches: all of them, i.e. every calibration image
            quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
        else:
            quantized, control = _with_accuracy_control(nncf, ov, model, batches, cal)
    meta = {**t.metadata, "precision": "int8", "calibration": {**cal.description, "tool": "nncf"}}
    if control:
        meta["accuracy_control"] = control
    _set_rt_info(quantized, meta)
    ov.save_model(quantized, str(t.folder / "model.int8.xml"), compress_to_fp16=False)
    return {"model.int8.xml": {"accuracy_control": control}} if control else {}


VALIDATION_BATCH = 100  # images per validation item: NNCF ranks the items when it looks for what to revert


def _with_accuracy_control(nncf, ov, model, batches, cal):
    """``nncf.quantize_with_accuracy_control`` judged on the checkpoint's validation part (never test) with at
    most ``cal.max_drop`` points of accuracy lost; returns (model, what was done), as the ONNX variant records it."""
    x, y = cal.validation
    items = [(x[i:i + VALIDATION_BATCH], y[i:i + VALIDATION_BATCH]) for i in range(0, len(y), VALIDATION_BATCH)]

    def accuracy(compiled, data) -> tuple[float, list[float]]:
        """(accuracy, per item): what NNCF's validation_fn returns."""
        data = list(data)
        hits = [int((compiled(xb)[0].argmax(1) == yb).sum()) for xb, yb in data]
        return sum(hits) / sum(len(yb) for _, yb in data), [h / len(yb) for h, (_, yb) in zip(hits, data)]

    core = ov.Core()
    plain = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(batches), nncf.Dataset(items, lambda item: item[0]), validation_fn=accuracy,
        max_drop=cal.max_drop / 100, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(batches))
    fp32, first, acc = (accuracy(core.compile_model(m, "CPU"), items)[0] for m in (model, plain, quantized))
    kept = sorted(set(float_ops(quantized)) - set(float_ops(plain)))
    return quantized, {"max_drop": cal.max_drop, "split": "validation", "samples": int(len(y)),
                       "validation_accuracy": {"fp32": fp32, "int8_all_layers": first, "int8": acc},
                       "kept_in_float": kept, "tool": "nncf.quantize_with_accuracy_control"}


def float_ops(model) -> list[str]:
    """The convolutions and matrix products whose input is not quantised (no FakeQuantize before them)."""
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in ("Convolution", "MatMul")
            and op.input_value(0).get_node().get_type_name() != "FakeQuantize"]


RT_INFO = MetadataCopy("rt_info", read_openvino_metadata, package="openvino")

FORMATS = (
    Format("openvino", ("model.xml", "model.bin"), _write, package="openvino", install=INSTALL, made_from=("onnx",),
           metadata=RT_INFO, summary="OpenVINO IR in FP32 (`lenet_export` in rt_info)"),
    Format("openvino-int8", ("model.int8.xml", "model.int8.bin"), _int8, package="nncf", install=INSTALL,
           made_from=("openvino",), stage=QUANTIZE, variant_of="openvino", precision="int8", metadata=RT_INFO,
           summary="INT8 OpenVINO IR (NNCF), calibrated on training images"),
)
