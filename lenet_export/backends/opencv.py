"""OpenCV DNN: ``model.onnx`` read by ``cv2.dnn.readNetFromONNX`` and run by OpenCV's own CPU backend, the
path a C++ app that already links OpenCV takes.

OpenCV 4.x's ONNX importer crashes the whole process (SIGFPE) on some of these graphs at batch > 1; 5.x does
not, so older versions are skipped with the reason rather than allowed to take verify down.
"""

from __future__ import annotations

import numpy as np

from .base import Backend, Context, Runner, Skip, cpu_name

INSTALL = "pip install 'lenet-export[opencv]' (opencv-python-headless 5.x)"
MIN_MAJOR = 5


def _open(ctx: Context) -> Runner:
    import cv2

    if int(cv2.__version__.split(".")[0]) < MIN_MAJOR:
        raise Skip(f"OpenCV {cv2.__version__} is too old: 4.x crashes on these ONNX graphs at batch > 1 ({INSTALL})")
    net = cv2.dnn.readNetFromONNX(str(ctx.artefact("model.onnx")))
    # OpenCV's own CPU backend is the default (5.x: its new graph engine, which takes no target setting).

    def run(x: np.ndarray) -> list[np.ndarray]:
        net.setInput(x)
        return [np.array(net.forward(), dtype=np.float32)]

    info = {"opencv": cv2.__version__, "dnn_backend": "OPENCV (default)", "device": cpu_name(),
            "threads": cv2.getNumThreads()}
    return Runner(run, info)


BACKENDS = (Backend("opencv-cpu", "model.onnx", "cv2", INSTALL, _open),)
