"""ExecuTorch: ``model.pte`` run by ExecuTorch's own runtime (the Python bindings of the C++ runtime that
Android, iOS and embedded apps link), with the XNNPACK delegate the program was lowered to.

The batch range comes from the program: its ``metadata`` method records the smallest batch, the memory plan
of ``forward`` the largest. ExecuTorch's Python runtime takes torch tensors, so this backend needs torch
(the on-device runtime does not).
"""

from __future__ import annotations

import numpy as np

from ..formats.executorch import DELEGATE, INSTALL, load_pte
from ..native import captured_stderr
from .base import Backend, Context, Runner, cpu_name


def _open(artefact: str):
    def open_(ctx: Context) -> Runner:
        return _runner(ctx, artefact)
    return open_


def _runner(ctx: Context, artefact: str) -> Runner:
    import torch

    from ..formats import check_calibration

    program, meta = load_pte(ctx.artefact(artefact), delegate=DELEGATE)
    check_calibration(meta.get("calibration"))  # the INT8 program's; the FP32 one records none
    from executorch.version import __version__  # after load_pte, whose imports quieten ExecuTorch's warning
    with captured_stderr():
        forward = program.load_method("forward")
    planned = forward.metadata.input_tensor_meta(0).sizes()[0]  # memory is planned for the largest batch
    lo = int(meta.get("batch_range", [1])[0])

    def run(x: np.ndarray) -> list[np.ndarray]:
        return [o.numpy().copy() for o in forward.execute([torch.from_numpy(x)])]  # outputs live in planned memory

    recorded = (ctx.metadata.get(artefact) or {})
    info = {"executorch": __version__, "delegate": DELEGATE, "delegated_ops": recorded.get("delegated_ops"),
            "delegated_op_types": recorded.get("delegated_op_types"),
            "portable_ops": recorded.get("portable_ops"), "device": cpu_name()}
    return Runner(run, info, batch_range=(lo, int(planned)))


BACKENDS = (Backend("executorch-cpu", "model.pte", "executorch", INSTALL, _open("model.pte")),
            Backend("executorch-cpu-int8", "model.int8.pte", "executorch", INSTALL, _open("model.int8.pte"),
                    precision="int8"))
