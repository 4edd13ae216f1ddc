"""LiteRT: ``model.tflite`` in LiteRT's ``Interpreter`` (package ai-edge-litert, the TensorFlow Lite runtime
without TensorFlow or torch), on the CPU with the XNNPACK delegate the interpreter applies by default.

The batch comes from the model's input shape: this export fixes it at 1, so the runner refuses any other
batch and verify's batch-invariance check says "fixed batch 1".
"""

from __future__ import annotations


import numpy as np

from ..formats.litert import forward, module_path, quantize_input, quantizer_of
from ..machine import available_threads
from ..native import captured_stderr
from .base import Backend, Context, Probe, Runner, cpu_name

INSTALL = "pip install ai-edge-litert (the runtime alone), or 'lenet-export[litert]' to export model.tflite too"


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
        step = forward(interpreter)  # what an app does, a fully quantised model's int8 input and output included

        def run(x: np.ndarray) -> list[np.ndarray]:
            return [step(x)]

        info = {"ai_edge_litert": ai_edge_litert.__version__, "delegate": "XNNPACK (interpreter default)",
                "threads": threads, "device": cpu_name()}
        if q_in or q_out:
            info["io"] = f"int8: input scale {q_in[0]:.6g} zero point {q_in[1]}, output scale {q_out[0]:.6g} " \
                         f"zero point {q_out[1]}" if q_in and q_out else "int8"
        return Runner(run, info, batch_range=(batch, batch))
    return open_


def _points(details: list[dict], shapes: dict[str, tuple], order: list[str], graph_in: int, graph_out: int,
            transposed: set[int] = frozenset()):
    """{torch module: (tensor index, layout)} for the tensors whose value is a module's output; the graph's
    output is the model's (``OUTPUT``). A fused tensor (conv + batch norm + ReLU) names every module it covers,
    ``;;``-separated: it is the output of the last one in execution order, and the others have none.
    ``layout``: ``nchw`` (as torch), ``nhwc`` (LiteRT's, transposed back), skipped else. A 4-D tensor whose
    shape reads both ways (16x16x16) is LiteRT's NHWC unless a TRANSPOSE made it (``transposed``: the tensors
    TRANSPOSE ops output)."""
    from ..layermap import INPUT, OUTPUT

    points = {INPUT: (graph_in, "nchw"), OUTPUT: (graph_out, "nchw")}
    for d in details:  # in tensor order, which follows execution here; a later tensor of a module replaces it
        mods = [m for m in (module_path(n.split(";")[0]) for n in d["name"].split(";;")) if m in shapes]
        if not mods or d["index"] in (graph_in, graph_out):
            continue
        mod = max(mods, key=order.index)
        for fused in set(mods) - {mod}:  # its own tensors so far were pieces of it (a batch norm's SUB and MULs
            points.pop(fused, None)  # before an ADD that carries the ReLU): it has no output of its own
        shape, want = tuple(d["shape"][1:]), shapes[mod]
        if len(shape) == 3 and (shape[2], shape[0], shape[1]) == want and d["index"] not in transposed:
            points[mod] = (d["index"], "nhwc")
        elif shape == want:
            points[mod] = (d["index"], "nchw")
    rank = {INPUT: -1, OUTPUT: len(order)}
    return dict(sorted(points.items(), key=lambda kv: rank[kv[0]] if kv[0] in rank else order.index(kv[0])))


def _probe(artefact: str):
    def open_(ctx: Context) -> Probe:
        import torch
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from ..checkpoint import model_from_checkpoint
        from .torch_eager import hooked, leaves

        model = model_from_checkpoint(ctx.checkpoint)
        order = leaves(model)
        c, h, w = ctx.checkpoint["input_shape"]
        shapes = {k: tuple(v.shape[1:]) for k, v in hooked(model, order)(torch.zeros(1, c, h, w)).items()}
        # Without the XNNPACK delegate: a delegated subgraph keeps no intermediate tensors
        with captured_stderr():
            it = Interpreter(model_path=str(ctx.artefact(artefact)), experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        q_in = quantizer_of(inp)
        details = {d["index"]: d for d in it.get_tensor_details()}
        # the interpreter's op list (no public accessor; used by LiteRT's own visualiser and analyzer)
        ops = getattr(it, "_get_ops_details", lambda: [])()  # without it, an NCHW-and-NHWC shape reads as NHWC
        transposed = {o for op in ops if op["op_name"] == "TRANSPOSE" for o in op["outputs"]}
        points = _points(list(details.values()), shapes, order, inp["index"], out["index"], transposed)

        def value(index: int, layout: str) -> np.ndarray:
            d, v = details[index], it.get_tensor(index)
            if d["dtype"] == np.int8:  # a quantised tensor: its real value
                v = (v.astype(np.float32) - d["quantization"][1]) * np.float32(d["quantization"][0])
            return v.transpose(0, 3, 1, 2) if layout == "nhwc" else v

        def run(xf: np.ndarray, xu: np.ndarray) -> dict[str, np.ndarray]:
            rows = []
            for x in xf:  # the model takes batch 1
                x = x[None]
                if q_in:
                    x = quantize_input(x, q_in)
                it.set_tensor(inp["index"], x)
                it.invoke()
                rows.append({str(i): value(i, layout).copy() for i, layout in points.values()})
            return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}

        import ai_edge_litert

        return Probe(artefact, {m: str(i) for m, (i, _) in points.items()}, run,
                     f"ai_edge_litert {ai_edge_litert.__version__} (builtin kernels)",
                     notes=["LiteRT ran without its XNNPACK delegate (builtin kernels) so that every intermediate "
                            "tensor is kept (experimental_preserve_all_tensors); verify runs it with XNNPACK"])
    return open_


BACKENDS = (Backend("litert-cpu", "model.tflite", "ai_edge_litert", INSTALL, _open("model.tflite"),
                    probe=_probe("model.tflite")),
            Backend("litert-cpu-int8", "model.int8.tflite", "ai_edge_litert", INSTALL, _open("model.int8.tflite"),
                    precision="int8", probe=_probe("model.int8.tflite")))
