"""tract: Sonos' inference engine (Rust), independent of ONNX Runtime. ``tract-cpu`` runs ``model.nnef.tar``
(tract's own format), ``tract-cpu-onnx`` runs ``model.onnx`` through tract's ONNX front end; both optimised by
``into_runnable`` with the batch axis symbolic."""

from __future__ import annotations

import numpy as np

from .base import Backend, Context, Runner, cpu_name

INSTALL = "pip install 'lenet-export[tract]' (or pip install tract, the runtime alone)"


def _open(artefact: str):
    def open_(ctx: Context) -> Runner:
        import tract

        path = str(ctx.artefact(artefact))
        model = (tract.nnef().load(path) if artefact.endswith(".tar") else tract.onnx().load(path).into_model())
        fact = str(model.input_fact(0))
        runnable = model.into_runnable()

        def run(x: np.ndarray) -> list[np.ndarray]:
            return [runnable.run([np.ascontiguousarray(x, np.float32)])[0].to_numpy()]

        return Runner(run, {"tract": tract.version(), "input": fact, "device": cpu_name()})
    return open_


BACKENDS = (
    Backend("tract-cpu", "model.nnef.tar", "tract", INSTALL, _open("model.nnef.tar")),
    Backend("tract-cpu-onnx", "model.onnx", "tract", INSTALL, _open("model.onnx")),
)
