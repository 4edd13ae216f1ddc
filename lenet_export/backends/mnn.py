"""MNN: ``model.mnn`` run by MNN's Express ``Module`` API (the runtime Android, iOS and embedded apps link) on
the CPU backend in high precision (float32; "low" allows FP16 arithmetic on CPUs that have it) with small
Winograd tiles only (``formats.mnn.WINOGRAD_MEMORY_LEVEL``), dynamic batch.
Inputs are NCHW; MNN's internal NC4HW4 output is converted back to NCHW before it is read."""

from __future__ import annotations


import numpy as np

from ..formats.mnn import WINOGRAD_MEMORY_LEVEL, load_module
from ..machine import available_threads
from .base import Backend, Context, Runner, cpu_name

INSTALL = "pip install 'lenet-export[mnn]' (or pip install MNN, the runtime alone)"


def _open(ctx: Context) -> Runner:
    import MNN
    from MNN import expr as F

    threads = available_threads()
    module = load_module(ctx.artefact("model.mnn"), threads)

    def run(x: np.ndarray) -> list[np.ndarray]:
        y = module.forward(F.const(np.ascontiguousarray(x, np.float32), list(x.shape), F.NCHW))
        return [np.array(F.convert(y, F.NCHW).read(), copy=True).reshape(len(x), -1)]

    info = {"mnn": MNN.version(), "backend": "CPU", "precision": "high", "threads": threads,
            "winograd_memory_level": WINOGRAD_MEMORY_LEVEL[1], "device": cpu_name()}
    return Runner(run, info)


BACKENDS = (Backend("mnn-cpu", "model.mnn", "MNN", INSTALL, _open),)
