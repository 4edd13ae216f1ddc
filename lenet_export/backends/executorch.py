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
    the FP32 program: the checkpoint's network with the weights read from the artefact itself. For the INT8
    program: the checkpoint quantised again by the writer's own function, on the calibration images its
    metadata records (same split, size and seed). Returns what to tell the user about how it was made."""
    from ..checkpoint import model_from_checkpoint
    from ..formats import owner
    from ..formats.executorch import export_program, load_pte, pt2e_int8, pte_constants
    from ..native import executorch_imports

    with executorch_imports():
        import executorch.kernels.quantized  # noqa: F401  (the out variants of quantize/dequantize)
        from executorch.exir import to_edge

    model = model_from_checkpoint(ctx.checkpoint).eval()
    shape = (1, *ctx.checkpoint["input_shape"])
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
    else:
        note = _adopt_weights(model, artefact, pte_constants(ctx.artefact(artefact)))
    program = to_edge(export_program(model, shape), generate_etrecord=True).to_executorch()
    (folder / "twin.pte").write_bytes(program.buffer)
    program.get_etrecord().save(str(folder / "twin.etrecord"))
    return note


def _adopt_weights(model, artefact: str, constants: list[np.ndarray]) -> str:
    """Give ``model`` the weights the program computes with, so that a layer changed inside the artefact shows
    in the twin's rows. XNNPACK's lowering folds batch norm into the convolution before it stores the weights
    (in its own layouts): each folded weight is found among the constants by shape, layout and nearest values,
    then unfolded into the convolution and the batch norm's shift. Returns what to tell the user."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    mods, changed, found, pool = list(model.named_modules()), [], [], dict(enumerate(constants))
    try:
        for i, (name, m) in enumerate(mods):  # every layer found before any is changed
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                after = mods[i + 1][1] if i + 1 < len(mods) else None
                bn = after if isinstance(after, nn.BatchNorm2d) else None
                w, b = (fuse_conv_bn_weights(m.weight, m.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                             bn.bias) if bn is not None else (m.weight, m.bias))
                (w2, ew), (b2, eb) = _closest(w.detach(), pool), (None, 0.0) if b is None else _closest(
                    b.detach(), pool)
                found.append((m, bn, w2, b2))
                if max(ew, eb) > 0:
                    changed.append(name)
                if bn is not None and bool((bn.weight == 0).any()):
                    raise LookupError("a batch norm with a zero scale cannot be unfolded")
    except LookupError as e:
        return (f"The weights in {artefact} could not be mapped to the checkpoint's layers ({e}): the twin has the "
                "checkpoint's.")
    with torch.no_grad():
        for m, bn, w2, b2 in found:
            if bn is None:
                m.weight.copy_(w2)
                if b2 is not None:
                    m.bias.copy_(b2)
                continue
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # the folded weight is s * w
            m.weight.copy_(w2 / s.view(-1, 1, 1, 1))
            bn.bias.copy_(b2 - s * ((m.bias if m.bias is not None else 0) - bn.running_mean))
    return (f"The twin has the weights read from {artefact} itself (batch norm folded in by XNNPACK's lowering, "
            "unfolded here); " + (f"they differ from the checkpoint's in {', '.join(changed)}." if changed
                                  else "they are the checkpoint's."))


def _closest(t, pool: dict[int, np.ndarray]):
    """(the constant of ``t``'s size, in ``t``'s layout, that agrees with ``t`` in the most elements; the fraction
    of elements where it does not), taken out of ``pool`` (one layer per constant). XNNPACK stores convolutions as
    OHWI, or IHWO for one input channel. Counting elements, not the largest difference, lets a few corrupted
    weights be found (and named) where a wrong tensor or layout disagrees almost everywhere."""
    import torch

    perms = {4: [(0, 1, 2, 3), (0, 2, 3, 1), (1, 2, 3, 0)], 2: [(0, 1), (1, 0)]}.get(t.dim(), [(0,)])
    near = 1e-5 * (float(t.abs().max()) or 1.0)  # folding rounds in the last bits: equal within this
    best = (None, None, float("inf"))
    for key, c in pool.items():
        for perm in perms if c.size == t.numel() else []:
            view = t.permute(perm)
            off = float(np.mean(np.abs(c - view.reshape(-1).numpy()) > near))
            if off < best[2]:
                best = (key, torch.from_numpy(c.copy()).reshape(view.shape).permute(tuple(np.argsort(perm))), off)
    if best[2] > 0.5:
        raise LookupError(f"no constant of {tuple(t.shape)} agrees with the checkpoint's in most elements")
    del pool[best[0]]
    return best[1], best[2]


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
    out, mirror = {}, {}
    for event in inspector.event_blocks[-1].events:
        stack = next(iter((event.module_hierarchy or {}).values()), None)
        module = list(stack.values())[-1][0] if stack else ""  # "" : the model itself (the input's quantize)
        if module and event.debug_data and event.debug_data[0].is_floating_point():  # INT8: the dequantised value
            (mirror if module.startswith("mirror.") else out)[module.removeprefix("mirror.")] = \
                event.debug_data[0].numpy().copy()
    # the INT8 twin of a test-time flip model runs its mirror pass as ``mirror.*`` (weights of its own), in either
    # order: each layer's value is the mirror pass's, as the reference's hooks keep the later call's
    return {m: mirror.get(m, v) for m, v in out.items()}


def _probe(artefact: str):
    def open_(ctx: Context) -> Probe:
        import tempfile
        from pathlib import Path

        from ..layermap import OUTPUT

        scratch = tempfile.TemporaryDirectory(prefix="lenet-export-etdump-")  # removed with the probe
        folder = Path(scratch.name)
        made = _twin(ctx, folder, artefact)
        runner = _runner(ctx, artefact)
        c, h, w = ctx.checkpoint["input_shape"]
        mapped = list(_logged(folder, np.zeros((1, c, h, w), np.float32)))

        def run(xf: np.ndarray, xu: np.ndarray, _keep=scratch) -> dict[str, np.ndarray]:
            values = _logged(folder, xf)
            return {**{f"twin:{m}": values[m] for m in mapped}, f"{artefact}:output": runner.run(xf)[0]}

        points = {**{m: f"twin:{m}" for m in mapped}, OUTPUT: f"{artefact}:output"}
        return Probe(artefact, points, run, f"executorch {runner.runtime['executorch']}",
                     notes=[f"{artefact} is lowered to XNNPACK: the delegated graph is one call, with no "
                            "intermediate values to log. The rows before the output are the same network without "
                            "the delegate (ExecuTorch's portable kernels, intermediate outputs from ETDump, mapped "
                            f"to modules through ETRecord); the output row is {artefact} itself."
                            + ("" if made and "could not be mapped" in made else
                               " A divergence only at the output is in the delegate's kernels."),
                            *filter(None, [made])])
    return open_


BACKENDS = (Backend("executorch-cpu", "model.pte", "executorch", INSTALL, _open("model.pte"),
                    probe=_probe("model.pte")),
            Backend("executorch-cpu-int8", "model.int8.pte", "executorch", INSTALL, _open("model.int8.pte"),
                    precision="int8", probe=_probe("model.int8.pte")))
