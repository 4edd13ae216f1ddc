"""ExecuTorch: ``model.pte`` run by ExecuTorch's own runtime (the Python bindings of the C++ runtime that
Android, iOS and embedded apps link), with the XNNPACK delegate the program was lowered to.

The batch range comes from the program: its ``metadata`` method records the smallest batch, the memory plan
of ``forward`` the largest. ExecuTorch's Python runtime takes torch tensors, so this backend needs torch
(the on-device runtime does not).
"""

from __future__ import annotations

import numpy as np

from ..metadata import PTE_METADATA_METHOD
from ..native import captured_stderr
from .base import Backend, Context, Runner, cpu_name

INSTALL = "pip install 'lenet-export[executorch]'"
DELEGATE = "XnnpackBackend"


def _open(ctx: Context) -> Runner:
    import json

    import torch

    from ..native import executorch_imports

    with executorch_imports():
        from executorch.runtime import Runtime
        from executorch.version import __version__

    with captured_stderr():  # the runtime's CPU probe logs a few lines when it starts
        runtime = Runtime.get()
        if not runtime.backend_registry.is_available(DELEGATE):
            raise RuntimeError(f"this ExecuTorch build has no {DELEGATE} (registered: "
                               f"{', '.join(runtime.backend_registry.registered_backend_names)})")
        program = runtime.load_program(ctx.artefact("model.pte"))
        missing = {"forward", PTE_METADATA_METHOD} - set(program.method_names)
        if missing:
            raise ValueError(f"the program has no method {sorted(missing)[0]!r} (not written by lenet-export?)")
        forward = program.load_method("forward")
        meta = json.loads(program.load_method(PTE_METADATA_METHOD).execute([])[0])
    planned = forward.metadata.input_tensor_meta(0).sizes()[0]  # memory is planned for the largest batch
    lo = int(meta.get("batch_range", [1])[0])

    def run(x: np.ndarray) -> list[np.ndarray]:
        return [o.numpy().copy() for o in forward.execute([torch.from_numpy(x)])]  # outputs live in planned memory

    recorded = (ctx.metadata.get("model.pte") or {})
    info = {"executorch": __version__, "delegate": DELEGATE, "batch_range": [lo, int(planned)],
            "portable_ops": recorded.get("portable_ops"), "device": cpu_name()}
    return Runner(run, info, batch_range=(lo, int(planned)))


BACKENDS = (Backend("executorch-cpu", "model.pte", "executorch", INSTALL, _open),)
