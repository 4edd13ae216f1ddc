"""LiteRT: ``model.tflite`` in LiteRT's ``Interpreter`` (package ai-edge-litert, the TensorFlow Lite runtime
without TensorFlow or torch), on the CPU with the XNNPACK delegate the interpreter applies by default.

The batch comes from the model's input shape: this export fixes it at 1, so the runner refuses any other
batch and verify's batch-invariance check says "fixed batch 1".
"""

from __future__ import annotations


import numpy as np

from ..machine import available_threads
from ..native import captured_stderr
from .base import Backend, Context, Runner, cpu_name

INSTALL = "pip install ai-edge-litert (the runtime alone), or 'lenet-export[litert]' to export model.tflite too"


def quantizer_of(detail: dict):
    """For an int8 tensor (a fully quantised model's input or output): (scale, zero point); else None."""
    if detail["dtype"] != np.int8:
        return None
    scale, zero = detail["quantization"]
    return float(scale), int(zero)


def _open(artefact: str):
    def open_(ctx: Context) -> Runner:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        from ..formats import check_calibration
        from ..formats.litert import read_tflite_metadata

        path = ctx.artefact(artefact)
        if artefact != "model.tflite":  # a variant calibrated on anything but the training split is refused
            check_calibration(read_tflite_metadata(path).get("calibration"))
        threads = available_threads()
        with captured_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        q_in, q_out = quantizer_of(inp), quantizer_of(out)
        batch = int(inp["shape"][0])

        def run(x: np.ndarray) -> list[np.ndarray]:
            if q_in:  # what an app does for a fully quantised model: its input tensor's scale and zero point
                x = np.clip(np.round(x / q_in[0]) + q_in[1], -128, 127).astype(np.int8)
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            y = interpreter.get_tensor(out["index"]).copy()  # get_tensor's array is reused by the next invoke
            return [(y.astype(np.float32) - q_out[1]) * np.float32(q_out[0]) if q_out else y]

        info = {"ai_edge_litert": ai_edge_litert.__version__, "delegate": "XNNPACK (interpreter default)",
                "threads": threads, "device": cpu_name()}
        if q_in or q_out:
            info["io"] = f"int8: input scale {q_in[0]:.6g} zero point {q_in[1]}, output scale {q_out[0]:.6g} " \
                         f"zero point {q_out[1]}" if q_in and q_out else "int8"
        return Runner(run, info, batch_range=(batch, batch))
    return open_


BACKENDS = (Backend("litert-cpu", "model.tflite", "ai_edge_litert", INSTALL, _open("model.tflite")),
            Backend("litert-cpu-int8", "model.int8.tflite", "ai_edge_litert", INSTALL, _open("model.int8.tflite"),
                    precision="int8"))
