"""ONNX Runtime: ``model.onnx`` (normalised float input) and ``model.raw.onnx`` (uint8 images in, logits
and probabilities out), each on the CPU and the CUDA execution provider, and the FP16 / INT8 variants on the CPU.

A CUDA session whose providers show it fell back to CPU fails (``Fallback``): it must never pass as CUDA.
The diff probe adds the mapped tensors (``layermap``) as graph outputs of an in-memory copy of the model (their
types from the graph's ``value_info``, i.e. shape inference at export time).
"""

from __future__ import annotations

import numpy as np

from .. import ort_session
from ..errors import ArtefactError
from ..formats import check_calibration, owner
from .base import FLOAT, UINT8, Backend, Context, Fallback, Probe, Runner, Skip, cpu_name, cuda_device

INSTALL_CPU = "pip install 'lenet-export[cpu]' (onnxruntime)"
INSTALL_GPU = "pip install 'lenet-export[gpu]' (onnxruntime-gpu instead of onnxruntime)"


def _open(artefact: str, device: str):
    def open_(ctx: Context) -> Runner:
        import onnxruntime as ort

        from ..formats.onnx import read_onnx_metadata

        if device == "cuda":
            gpu = cuda_device()
            if ort_session.CUDA not in ort_session.available_providers():
                raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider ({INSTALL_GPU})")
        path = ctx.artefact(artefact)
        if owner(artefact).variant_of:  # a variant calibrated on anything but the training split is refused
            check_calibration(read_onnx_metadata(path).get("calibration"))
        sess = ort_session.open_session(path, device)
        used = ort_session.used_providers(sess)
        info = {"onnxruntime": ort.__version__, "providers": used,
                "disabled_optimizers": list(ort_session.DISABLED_OPTIMIZERS)}
        if device == "cuda":
            if not used or used[0] != ort_session.CUDA:
                raise Fallback(f"ONNX Runtime CUDA session fell back to CPU (session providers: {used})")
            info |= {"device": gpu, "tf32": ort_session.cuda_tf32(sess)}
        else:
            info["device"] = cpu_name()
        input_name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> list[np.ndarray]:
            return sess.run(None, {input_name: x})

        return Runner(run, info)
    return open_


def _probe(artefact: str, device: str, raw: bool = False):
    def open_(ctx: Context) -> Probe:
        import onnx
        import onnxruntime as ort

        from ..layermap import recorded_map, with_outputs

        if device == "cuda":
            cuda_device()
        proto = onnx.load(str(ctx.artefact(artefact)))
        points = recorded_map(ctx.metadata, artefact, proto, quantized=owner(artefact).variant_of is not None)
        names = list(dict.fromkeys(points.values()))
        sess = ort_session.open_session(with_outputs(proto, names).SerializeToString(), device)
        used = ort_session.used_providers(sess)
        if device == "cuda" and used[0] != ort_session.CUDA:
            raise ArtefactError(f"ONNX Runtime CUDA session fell back to CPU (providers: {used})")
        feed = sess.get_inputs()[0].name

        def run(xf: np.ndarray, xu: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(names, sess.run(names, {feed: xu if raw else xf})))
        return Probe(artefact, points, run, f"onnxruntime {ort.__version__} {used[0]}")
    return open_


def _backend(name: str, artefact: str, device: str = "cpu", raw: bool = False, precision: str = "fp32") -> Backend:
    return Backend(name, artefact, "onnxruntime", INSTALL_GPU if device == "cuda" else INSTALL_CPU,
                   _open(artefact, device), device=device, input=UINT8 if raw else FLOAT, precision=precision,
                   probe=_probe(artefact, device, raw))


BACKENDS = (
    _backend("ort-cpu", "model.onnx"),
    _backend("ort-cpu-fp16", "model.fp16.onnx", precision="fp16"),
    _backend("ort-cpu-int8", "model.int8.onnx", precision="int8"),
    _backend("ort-cpu-raw", "model.raw.onnx", raw=True),
    _backend("ort-cuda", "model.onnx", device="cuda"),
    _backend("ort-cuda-raw", "model.raw.onnx", device="cuda", raw=True),
)
