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
from .base import Backend, Context, Probe, Runner, cpu_name


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


def _twin(ctx: Context, folder, artefact: str) -> str | None:
    """Write the artefact's model as a program without the XNNPACK partitioner (ExecuTorch's portable kernels, one
    op per layer), its ETRecord beside it: what ETDump can log intermediate outputs of, mapped to modules. For
    the INT8 program: the checkpoint quantised again by the writer's own function, on the calibration images
    its metadata records (same split, size and seed). Returns what to tell the user about how it was made."""
    from ..checkpoint import model_from_checkpoint
    from ..formats import owner
    from ..formats.executorch import export_program, load_pte, pt2e_int8
    from ..native import executorch_imports

    with executorch_imports():
        import executorch.kernels.quantized  # noqa: F401  (the out variants of quantize/dequantize)
        from executorch.exir import to_edge

    model = model_from_checkpoint(ctx.checkpoint).eval()
    shape = (1, *ctx.checkpoint["input_shape"])
    note = None
    if owner(artefact).precision == "int8":  # (an FP32 program written after quantize may carry the ORT one's)
        from ..accuracy_control import kept_in_float
        from ..calibration import calibration_subset

        meta = load_pte(ctx.artefact(artefact))[1]
        cal, kept = meta["calibration"], kept_in_float(meta)
        model = pt2e_int8(model, shape, calibration_subset(ctx.checkpoint, cal["size"], cal["seed"], cal["split"])[0],
                          kept)
        note = (f"The twin of {artefact} is the checkpoint quantised again by the writer's own function "
                f"(XNNPACKQuantizer, PT2E) on the calibration images its metadata records ({cal['size']} "
                f"from the {cal['split']} split, seed {cal['seed']})"
                + (f", with {', '.join(kept)} kept in float as accuracy control did)." if kept else ")."))
    program = to_edge(export_program(model, shape), generate_etrecord=True).to_executorch()
    (folder / "twin.pte").write_bytes(program.buffer)
    program.get_etrecord().save(str(folder / "twin.etrecord"))
    return note


def _logged(folder, x) -> dict[str, np.ndarray]:
    """One run of the twin with ETDump: {module path: the output of the last op ETRecord maps to it}."""
    import torch
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    with captured_stderr():
        program = Runtime.get().load_program(folder / "twin.pte", enable_etdump=True,
                                             debug_buffer_size=400 * x.nbytes + (1 << 24))  # every intermediate output
        program.load_method("forward").execute([torch.from_numpy(x)])
        program.write_etdump_result_to_file(str(folder / "run.etdp"), str(folder / "run.bin"))
        inspector = Inspector(etdump_path=str(folder / "run.etdp"), etrecord=str(folder / "twin.etrecord"),
                              debug_buffer_path=str(folder / "run.bin"))
    out = {}
    for event in inspector.event_blocks[-1].events:
        stack = next(iter((event.module_hierarchy or {}).values()), None)
        module = list(stack.values())[-1][0] if stack else ""  # "" : the model itself (the input's quantize)
        if module and event.debug_data and event.debug_data[0].is_floating_point():  # INT8: the dequantised value
            out[module] = event.debug_data[0].numpy().copy()
    return out


def _probe(artefact: str):
    def open_(ctx: Context) -> Probe:
        import tempfile
        from pathlib import Path

        from ..checkpoint import model_from_checkpoint
        from .torch_eager import leaves

        last = leaves(model_from_checkpoint(ctx.checkpoint))[-1]  # the logits: compared with the artefact's own
        scratch = tempfile.TemporaryDirectory(prefix="lenet-export-etdump-")  # removed with the probe
        folder = Path(scratch.name)
        made = _twin(ctx, folder, artefact)
        runner = _runner(ctx, artefact)
        c, h, w = ctx.checkpoint["input_shape"]
        mapped = [m for m in _logged(folder, np.zeros((1, c, h, w), np.float32)) if m != last]

        def run(xf: np.ndarray, xu: np.ndarray, _keep=scratch) -> dict[str, np.ndarray]:
            values = _logged(folder, xf)
            return {**{f"twin:{m}": values[m] for m in mapped}, f"{artefact}:output": runner.run(xf)[0]}

        points = {**{m: f"twin:{m}" for m in mapped}, last: f"{artefact}:output"}
        return Probe(artefact, points, run, f"executorch {runner.runtime['executorch']}",
                     notes=[f"{artefact} is lowered to XNNPACK: the delegated graph is one call, with no "
                            "intermediate values to log. The rows before the output are the same model without "
                            "the delegate (ExecuTorch's portable kernels, intermediate outputs from ETDump, mapped "
                            f"to modules through ETRecord); the output row is {artefact} itself. A divergence "
                            "only at the output is inside the delegated program.", *filter(None, [made])])
    return open_


BACKENDS = (Backend("executorch-cpu", "model.pte", "executorch", INSTALL, _open("model.pte"),
                    probe=_probe("model.pte")),
            Backend("executorch-cpu-int8", "model.int8.pte", "executorch", INSTALL, _open("model.int8.pte"),
                    precision="int8", probe=_probe("model.int8.pte")))
