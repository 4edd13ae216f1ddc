"""ExecuTorch: ``model.pte``, the program PyTorch's on-device runtime loads on phones and microcontrollers,
lowered to the XNNPACK delegate (the CPU backend ExecuTorch ships for Android, iOS and Linux).

The batch axis is dynamic within ``BATCH_RANGE``: ExecuTorch plans memory for the largest batch, so the
range is part of the program and a batch outside it is refused at run time. The example batch must not be
small: with an example batch below 16, torch 2.14's export adds a guard that caps the batch at 15 during
XNNPACK lowering (found while building this; an example of 32 with explicit bounds keeps 1..1024).

The metadata is stored in the program itself, as the constant method ``metadata`` (a JSON string that
``Program.load_method("metadata").execute([])`` returns), and under ``model.pte`` in ``metadata.json``.
"""

from __future__ import annotations

import contextlib

import json
from pathlib import Path

import numpy as np

from .base import QUANTIZE, Format, MetadataCopy, Target

INSTALL = "pip install 'lenet-export[executorch]'"
PTE_METADATA_METHOD = "metadata"  # the constant method of a .pte program that returns the metadata as JSON
DELEGATE = "XnnpackBackend"
BATCH_RANGE = (1, 1024)
EXAMPLE_BATCH = 32


def load_pte(path: Path, delegate: str | None = None):
    """(ExecuTorch ``Program``, its metadata) by ExecuTorch's runtime: the one place that opens a .pte, for the
    metadata check and the ``executorch-cpu`` backend. ``delegate``: a backend the runtime must have."""
    from ..native import captured_stderr, executorch_imports

    with executorch_imports():
        from executorch.runtime import Runtime

    with captured_stderr():  # the runtime's CPU probe logs a few lines when it starts
        runtime = Runtime.get()
        if delegate and not runtime.backend_registry.is_available(delegate):
            raise RuntimeError(f"this ExecuTorch build has no {delegate} (registered: "
                               f"{', '.join(runtime.backend_registry.registered_backend_names)})")
        program = runtime.load_program(Path(path))
        missing = {"forward", PTE_METADATA_METHOD} - set(program.method_names)
        if missing:
            raise ValueError(f"the program has no method {sorted(missing)[0]!r} (not written by lenet-export?)")
        return program, json.loads(program.load_method(PTE_METADATA_METHOD).execute([])[0])


def read_pte_metadata(path: Path) -> dict:
    """What the constant method ``metadata`` of a .pte program returns."""
    return load_pte(path)[1]


def pte_constants(path: Path) -> list[np.ndarray]:
    """The float32 constants a program keeps in its named data (where ExecuTorch's XNNPACK lowering stores the
    delegate's weights, batch norm folded in): what the program computes with, read from the file itself."""
    from ..native import executorch_imports

    with executorch_imports():
        from executorch.exir._serialize._program import deserialize_pte_binary

    named = deserialize_pte_binary(Path(path).read_bytes()).named_data
    return [np.frombuffer(bytes(b), np.float32) for b in (named.buffers if named else []) if len(b) % 4 == 0]


def export_program(model, sample_shape):
    """``torch.export`` with the dynamic batch of ``BATCH_RANGE`` (an example batch of ``EXAMPLE_BATCH``)."""
    import torch

    sample = torch.zeros(EXAMPLE_BATCH, *sample_shape[1:])
    batch = torch.export.Dim("batch", min=BATCH_RANGE[0], max=BATCH_RANGE[1])
    return torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))


def _edge(program, constant_methods: dict | None = None):
    """``program`` lowered to XNNPACK (ExecuTorch's edge program manager)."""
    from ..native import executorch_imports

    with executorch_imports():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=constant_methods)


def _lower(program, metadata: dict, info: dict, path: Path) -> dict:
    """Lower an exported program to XNNPACK and write it with ``metadata`` as its constant method."""
    from ..native import executorch_imports

    with executorch_imports():
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.version import __version__

    info = {"batch_range": list(BATCH_RANGE), "delegate": DELEGATE, "executorch": __version__, **info}
    edge = _edge(program, {PTE_METADATA_METHOD: json.dumps({**metadata, **info})})
    # What XNNPACK does not take runs in ExecuTorch's portable kernels: here the flatten between the
    # convolutions and the linear layers (a view over the dynamic batch). Recorded, so the split is visible.
    ops = get_delegation_info(edge.exported_program().graph_module).get_operator_delegation_dataframe()
    rest = ops[(ops.op_type != "Total") & (ops.op_type != "getitem") & (ops.occurrences_in_non_delegated_graphs > 0)]
    info["delegated_ops"] = int(ops[ops.op_type == "Total"].occurrences_in_delegated_graphs.iloc[0])
    taken = ops[(ops.op_type != "Total") & (ops.occurrences_in_delegated_graphs > 0)]
    info["delegated_op_types"] = sorted(taken.op_type)  # what XNNPACK took (INT8: its quantize/dequantize too)
    info["portable_ops"] = sorted(rest.op_type)
    path.write_bytes(edge.to_executorch().buffer)
    return info


def _write(t: Target) -> dict:
    return {"model.pte": _lower(export_program(t.model, t.sample.shape), t.metadata, {}, t.folder / "model.pte")}


def _unshared(model):
    """``model``, or for a model with test-time flip a copy whose mirror-image pass has weights of its own.

    XNNPACK cannot compile an INT8 program whose two convolutions read one quantised weight (``Failed to create
    convolution node ... xnn_status_invalid_parameter``, measured 2026-11-30), which is what the two passes of
    the flip share. The first pass keeps the module names (``features.0``); the mirror pass is ``mirror.*``."""
    import copy

    import torch

    if not getattr(model, "flip_tta", False):
        return model

    class Unshared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.classifier = model.features, model.classifier
            self.mirror = copy.deepcopy(torch.nn.ModuleDict({"features": model.features,
                                                             "classifier": model.classifier}))

        def forward(self, x):
            y = self.mirror["classifier"](self.mirror["features"](x.flip(3)))
            return (self.classifier(self.features(x)) + y) * 0.5

    return Unshared().eval()


def pt2e_int8(model, sample_shape, images, keep_in_float: list[str] | tuple[str, ...] = ()):
    """PT2E INT8 with ExecuTorch's XNNPACKQuantizer (symmetric, per-channel weights): the exported graph is
    prepared (observers), calibrated on ``images`` (normalised float32 batches), converted (quantize/dequantize
    pairs). The writer lowers it to XNNPACK; ``diff`` runs it without the delegate.

    ``keep_in_float``: torch modules (``features.0``) left unquantised, by the quantizer's own filter function:
    a pattern (conv + batch norm + ReLU) is annotated only when none of its nodes comes from such a module."""
    import torch

    from ..native import executorch_imports
    from .onnx_quantized import calibration_batches

    with executorch_imports():  # torchao first: its import is what makes torch warn
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if keep_in_float:
        kept = set(keep_in_float)
        quantizer.set_filter_function(lambda node: not any(
            path.removeprefix("mirror.") in kept for path, _ in (node.meta.get("nn_module_stack") or {}).values()))
    prepared = prepare_pt2e(export_program(_unshared(model.eval()), sample_shape).module(), quantizer)
    with torch.no_grad():
        for batch in calibration_batches(images):
            prepared(torch.from_numpy(batch))
    with _without_qat_folding():
        return convert_pt2e(prepared)


@contextlib.contextmanager
def _without_qat_folding():
    """``convert_pt2e`` without torchao's ``_fold_conv_bn_qat``, which folds the conv + batch norm patterns of
    *QAT* (prepare_qat_pt2e); this is post-training quantisation, which has none. It returns early only when no
    batch norm is left, so for a batch norm that no conv absorbs (``pool_first``) it built its 64 match patterns
    on every call: 16.4 s of a 16.4 s conversion against 1.7 s without it, the converted graph identical and its
    logits bit-equal (lenet-modern, 2026-12-01). A torchao without the name is left as it is."""
    from torchao.quantization.pt2e import quantize_pt2e

    original = getattr(quantize_pt2e, "_fold_conv_bn_qat", None)
    if original is not None:
        quantize_pt2e._fold_conv_bn_qat = lambda graph_module: graph_module
    try:
        yield
    finally:
        if original is not None:
            quantize_pt2e._fold_conv_bn_qat = original


def _int8(t: Target) -> dict:
    """``pt2e_int8`` on the calibration images, exported again and lowered to XNNPACK, which fuses the
    quantize/dequantize pairs into its INT8 kernels. Input and output stay float. Accuracy control keeps the
    most sensitive modules in float (``lenet_export.accuracy_control``), judged on the lowered program."""
    import torch

    from ..accuracy_control import accuracy_of, keep_sensitive_in_float, quantisable_layers

    shape, cal = t.sample.shape, t.calibration
    x, y = cal.validation or (None, None)  # (the measures below are called only when there is a validation part)

    def make(kept: list[str]):
        return pt2e_int8(t.model, shape, cal.images, kept)

    def logits(forward) -> list:
        with torch.no_grad():
            return [forward(torch.from_numpy(x[i:i + BATCH_RANGE[1]])).numpy() for i in range(0, len(x), BATCH_RANGE[1])]

    def accuracy(converted) -> float:
        return accuracy_of(np.concatenate(logits(program_forward(_edge(export_program(converted, shape))))), y)

    converted, control = keep_sensitive_in_float(
        make, accuracy, quantisable_layers(t.model), lambda: accuracy_of(np.concatenate(logits(t.model.eval())), y),
        cal, tool="XNNPACKQuantizer filter function (greedy per module)")
    meta = {**t.metadata, "precision": "int8",
            "calibration": {**cal.description, "tool": "XNNPACKQuantizer (PT2E)"}}
    if control:
        meta["accuracy_control"] = control
    info = {"quantizer": "XNNPACKQuantizer symmetric per-channel (PT2E)"}
    # lowered again: the chosen trial's program was lowered without this metadata, which names what was kept
    info = _lower(export_program(converted, shape), meta, info, t.folder / "model.int8.pte")
    return {"model.int8.pte": {**info, "accuracy_control": control} if control else info}


def program_forward(edge):
    """``forward`` of a lowered program, run in memory by ExecuTorch's runtime: tensor in, tensor out."""
    from ..native import captured_stderr, executorch_imports

    with executorch_imports():
        from executorch.runtime import Runtime

    with captured_stderr():
        program = Runtime.get().load_program(edge.to_executorch().buffer)
        method = program.load_method("forward")

    def forward(x, _program=program):  # held here: the program must outlive its method
        return method.execute([x])[0]
    return forward


# The copy is read only when executorch-cpu runs: ExecuTorch's Python runtime imports its whole compiler (7 s).
FORMATS = (Format("executorch", ("model.pte",), _write, package="executorch", install=INSTALL,
                  batch_range=BATCH_RANGE, summary="ExecuTorch program lowered to XNNPACK",
                  metadata=MetadataCopy(f"{PTE_METADATA_METHOD}()", read_pte_metadata, package="executorch",
                                        read_with="executorch-cpu")),
           Format("executorch-int8", ("model.int8.pte",), _int8, package="executorch", install=INSTALL,
                  made_from=("executorch",), stage=QUANTIZE, variant_of="executorch", precision="int8",
                  batch_range=BATCH_RANGE, summary="INT8 ExecuTorch program (XNNPACKQuantizer, PT2E) lowered to "
                  "XNNPACK, calibrated on training images",
                  metadata=MetadataCopy(f"{PTE_METADATA_METHOD}()", read_pte_metadata, package="executorch",
                                        read_with="executorch-cpu-int8")))
