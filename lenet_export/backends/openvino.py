"""OpenVINO: the FP32 IR ``model.xml`` + ``model.bin`` (and the INT8 IR) compiled for the CPU plugin.

The CPU plugin may run float32 models in bf16 on processors with AMX or AVX-512 BF16 ("performance" hint
defaults); parity needs true float32, so ``INFERENCE_PRECISION_HINT`` is set to f32 and the precision the
compiled model reports is recorded. The diff probe adds outputs with ``Model.add_outputs`` to the IR read from
model.xml, whose tensors keep the ONNX names (it is converted from model.onnx), so model.onnx's map applies.
"""

from __future__ import annotations

import numpy as np

from ..formats import check_calibration
from ..native import captured_stderr
from .base import Backend, Context, Probe, Runner

INSTALL = "pip install 'lenet-export[openvino]'"
CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def _open(artefact: str):
    def open_(ctx: Context) -> Runner:
        import openvino as ov

        from ..formats.openvino import openvino_rt_info

        core = ov.Core()
        with captured_stderr():  # on a file it cannot parse, every frontend it tries logs its own error
            model = core.read_model(str(ctx.artefact(artefact)))
        check_calibration(openvino_rt_info(model).get("calibration"))  # the INT8 IR's; the FP32 IR records none
        compiled = core.compile_model(model, "CPU", CONFIG)
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> list[np.ndarray]:
            result = request.infer({0: x})
            return [np.array(result[o]) for o in compiled.outputs]

        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        info = {"openvino": ov.__version__, "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
                "inference_precision": precision.to_string() if hasattr(precision, "to_string") else str(precision),
                "threads": int(compiled.get_property("INFERENCE_NUM_THREADS"))}
        return Runner(run, info)
    return open_


def _probe(ctx: Context) -> Probe:
    import onnx
    import openvino as ov

    from ..layermap import recorded_map

    core = ov.Core()
    with captured_stderr():
        model = core.read_model(str(ctx.artefact("model.xml")))
    points = recorded_map(ctx.metadata, "model.onnx", onnx.load(str(ctx.artefact("model.onnx"))))
    tensors = {n for op in model.get_ops() for o in op.outputs() for n in o.get_names()}
    points = {k: t for k, t in points.items() if t in tensors}  # what the converter kept (all, for these models)
    outputs = {n for o in model.outputs for n in o.get_names()}
    names = list(dict.fromkeys(points.values()))
    model.add_outputs([n for n in names if n not in outputs])
    compiled = core.compile_model(model, "CPU", CONFIG)
    request = compiled.create_infer_request()
    ports = {n: compiled.output(n) for n in names}

    def run(xf: np.ndarray, xu: np.ndarray) -> dict[str, np.ndarray]:
        res = request.infer({0: xf})
        return {n: np.array(res[p]) for n, p in ports.items()}
    return Probe("model.xml", points, run, f"openvino {ov.__version__} CPU f32")


BACKENDS = (
    Backend("openvino-cpu", "model.xml", "openvino", INSTALL, _open("model.xml"), probe=_probe),
    Backend("openvino-cpu-int8", "model.int8.xml", "openvino", INSTALL, _open("model.int8.xml"), precision="int8"),
)
