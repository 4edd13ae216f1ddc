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


def _open(ctx: Context) -> Runner:
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter

    threads = available_threads()
    with captured_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_path=str(ctx.artefact("model.tflite")), num_threads=threads)
        interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    batch = int(inp["shape"][0])

    def run(x: np.ndarray) -> list[np.ndarray]:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return [interpreter.get_tensor(out["index"]).copy()]  # get_tensor's array is reused by the next invoke

    info = {"ai_edge_litert": ai_edge_litert.__version__, "delegate": "XNNPACK (interpreter default)",
            "threads": threads, "device": cpu_name()}
    return Runner(run, info, batch_range=(batch, batch))


BACKENDS = (Backend("litert-cpu", "model.tflite", "ai_edge_litert", INSTALL, _open),)
