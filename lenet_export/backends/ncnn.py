"""NCNN: ``model.ncnn.param`` + ``.bin`` run by NCNN's Python bindings (the C++ runtime Android and embedded apps
link), on the CPU, in float32.

NCNN turns on FP16 (and BF16) storage and arithmetic where the CPU has them, which moves these logits by ~1e-2:
every such option is switched off *before* the model is loaded (after loading, they corrupt the outputs), and
what ran is recorded. A ``.bin`` holding FP16 weights is refused. A whole batch runs in one extraction
(``Mat`` with a batch axis). One thread: on these 2-core machines more threads than cores ran 14x slower.
"""

from __future__ import annotations

import numpy as np

from ..formats.ncnn import FILES, fp16_blobs
from .base import Backend, Context, Runner, cpu_name

INSTALL = "pip install 'lenet-export[ncnn]' (or pip install ncnn, the runtime alone)"
REDUCED_PRECISION = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_packed",
                     "use_bf16_storage")
THREADS = 1


def _open(ctx: Context) -> Runner:
    import ncnn

    param, weights = (ctx.artefact(f) for f in FILES)
    if half := fp16_blobs(param, weights):
        raise ValueError(f"{weights.name} stores FP16 weights ({', '.join(half)}); export with pnnx fp16=0")
    net = ncnn.Net()
    for option in REDUCED_PRECISION:
        if hasattr(net.opt, option):
            setattr(net.opt, option, False)
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = THREADS
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise ValueError(f"NCNN cannot load {param.name} + {weights.name}")
    inp, out = net.input_names()[0], net.output_names()[0]

    def run(x: np.ndarray) -> list[np.ndarray]:
        ex = net.create_extractor()
        ex.input(inp, ncnn.Mat(np.ascontiguousarray(x, np.float32), batch_index=0))  # axis 0 -> the Mat's batch
        rc, y = ex.extract(out)
        if rc != 0:
            raise RuntimeError(f"NCNN extract {out!r} failed with code {rc}")
        return [np.array(y.numpy(batch_index=0), copy=True).reshape(len(x), -1)]

    off = [o for o in REDUCED_PRECISION if hasattr(net.opt, o) and not getattr(net.opt, o)]
    info = {"ncnn": ncnn.__version__, "threads": THREADS, "vulkan": False, "switched_off": off, "device": cpu_name()}
    return Runner(run, info)


BACKENDS = (Backend("ncnn-cpu", FILES[0], "ncnn", INSTALL, _open),)
