"""ONNX Runtime: ``model.onnx`` (normalised float input) and ``model.raw.onnx`` (uint8 images in, logits
and probabilities out), each on the CPU and the CUDA execution provider.

A CUDA session whose providers show it fell back to CPU fails (``Fallback``): it must never pass as CUDA.
"""

from __future__ import annotations

import numpy as np

from .. import ort_session
from .base import UINT8, Backend, Context, Fallback, Runner, Skip, cpu_name, cuda_device

INSTALL_CPU = "pip install 'lenet-export[cpu]' (onnxruntime)"
INSTALL_GPU = "pip install 'lenet-export[gpu]' (onnxruntime-gpu instead of onnxruntime)"


def _open(artefact: str, device: str):
    def open_(ctx: Context) -> Runner:
        import onnxruntime as ort

        if device == "cuda":
            gpu = cuda_device()
            if ort_session.CUDA not in ort_session.available_providers():
                raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider ({INSTALL_GPU})")
        sess = ort_session.open_session(ctx.artefact(artefact), device)
        used = ort_session.used_providers(sess)
        info = {"onnxruntime": ort.__version__, "providers": used}
        if device == "cuda":
            if not used or used[0] != ort_session.CUDA:
                raise Fallback(f"ONNX Runtime CUDA session fell back to CPU (session providers: {used})")
            tf32 = ort_session.cuda_tf32(sess)
            info |= {"device": gpu, "tf32": tf32}
        else:
            info["device"] = cpu_name()
        input_name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> list[np.ndarray]:
            return sess.run(None, {input_name: x})

        return Runner(run, info)
    return open_


def _open_variant(artefact: str):
    """A reduced-precision variant: refused when calibrated on anything but the training split."""
    open_ = _open(artefact, "cpu")

    def check(ctx: Context) -> Runner:
        from ..metadata import read_onnx_metadata
        from ..quantize import check_calibration

        check_calibration(read_onnx_metadata(ctx.artefact(artefact)).get("calibration"))
        return open_(ctx)
    return check


BACKENDS = (
    Backend("ort-cpu", "model.onnx", "onnxruntime", INSTALL_CPU, _open("model.onnx", "cpu")),
    Backend("ort-cpu-fp16", "model.fp16.onnx", "onnxruntime", INSTALL_CPU, _open_variant("model.fp16.onnx"),
            precision="fp16"),
    Backend("ort-cpu-int8", "model.int8.onnx", "onnxruntime", INSTALL_CPU, _open_variant("model.int8.onnx"),
            precision="int8"),
    Backend("ort-cpu-raw", "model.raw.onnx", "onnxruntime", INSTALL_CPU, _open("model.raw.onnx", "cpu"), input=UINT8),
    Backend("ort-cuda", "model.onnx", "onnxruntime", INSTALL_GPU, _open("model.onnx", "cuda"), device="cuda"),
    Backend("ort-cuda-raw", "model.raw.onnx", "onnxruntime", INSTALL_GPU, _open("model.raw.onnx", "cuda"),
            device="cuda", input=UINT8),
)
