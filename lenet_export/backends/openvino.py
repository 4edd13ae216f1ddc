"""OpenVINO: the FP32 IR ``model.xml`` + ``model.bin`` compiled for the CPU plugin.

The CPU plugin may run float32 models in bf16 on processors with AMX or AVX-512 BF16 ("performance" hint
defaults); parity needs true float32, so ``INFERENCE_PRECISION_HINT`` is set to f32 and the precision the
compiled model reports is recorded.
"""

from __future__ import annotations

import numpy as np

from ..metadata import openvino_rt_info
from ..quantize import check_calibration
from .base import Backend, Context, Runner

INSTALL = "pip install 'lenet-export[openvino]'"


def _open(ctx: Context, artefact: str = "model.xml") -> Runner:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(ctx.artefact(artefact)))
    check_calibration(openvino_rt_info(model).get("calibration"))  # the INT8 IR's; the FP32 IR records none
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: x})
        return [np.array(result[o]) for o in compiled.outputs]

    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    info = {"openvino": ov.__version__, "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "inference_precision": precision.to_string() if hasattr(precision, "to_string") else str(precision),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS"))}
    return Runner(run, info)


BACKENDS = (
    Backend("openvino-cpu", "model.xml", "openvino", INSTALL, _open),
    Backend("openvino-cpu-int8", "model.int8.xml", "openvino", INSTALL, lambda ctx: _open(ctx, "model.int8.xml"),
            precision="int8"),
)
