"""MNN: ``model.mnn``, Alibaba's mobile runtime format, converted from ``model.onnx`` by MNN's own converter, in
FP32 (the converter's default: no ``--fp16``, no weight quantisation). The metadata is stored in the model's
``bizCode`` string (JSON), which ``Module.get_info()`` returns.

No telemetry: MNN's Python converter (``mnnconvert``, anything under ``MNN.tools``) imports a logger that
pip-installs ``aliyun-log-python-sdk`` when it is missing and, when it is present, fetches credentials from an
Alibaba Cloud endpoint and uploads each conversion (machine id, OS, every converter argument) to Alibaba Cloud
Log Service; there is no switch to turn it off. lenet-export calls the C++ converter behind it (the extension
module ``_tools``) directly, which opens no socket and starts no process (checked with strace), and never
imports ``MNN.tools``.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from ..errors import ExportError
from ..native import captured_output
from .base import Format, MetadataCopy, Target

INSTALL = "pip install 'lenet-export[mnn]'"
INPUTS, OUTPUTS = ["input"], ["logits"]
# MNN's Interpreter::HintMode::WINOGRAD_MEMORY_LEVEL: how many Winograd tile sizes its CPU convolutions may pick
# from (default 3). With the default, the 5x5 convolutions of lenet-classic ran with a large tile whose
# rounding moved logits by 5.5e-4 (the second conv's output by 5.7e-3, where ONNX Runtime agrees with torch to
# 4e-6), failing the export's 1e-4 check; level 0 keeps the small tiles: 3.3e-6. Measured 2026-11-30.
WINOGRAD_MEMORY_LEVEL = (3, 0)


def load_module(path: Path, threads: int = 1):
    """An MNN ``Module`` on the CPU in high (float32) precision, with small Winograd tiles only (see above)."""
    with captured_output():  # MNN prints the CPU's features and its precision on import and load
        import MNN

        runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "precision": "high", "numThread": threads},))
        runtime.set_hint(*WINOGRAD_MEMORY_LEVEL)
        return MNN.nn.load_module_from_file(str(path), INPUTS, OUTPUTS, runtime_manager=runtime)


def read_mnn_metadata(path: Path) -> dict:
    return json.loads(load_module(path).get_info()["bizCode"])


def _write(t: Target) -> dict:
    with captured_output():
        import _tools  # MNN's C++ converter, without MNN.tools' telemetry (see above)

        from MNN import version

        with tempfile.TemporaryDirectory() as tmp:
            src = _reversals_as_gathers(t.input("model.onnx"), Path(tmp))
            args = ["mnnconvert", "-f", "ONNX", "--modelFile", str(src),
                    "--MNNModel", str(t.folder / "model.mnn"), "--bizCode", json.dumps(t.metadata)]
            if not _tools.mnnconvert(args) or not (t.folder / "model.mnn").is_file():
                raise ExportError("MNN's converter could not convert model.onnx")
    _content_uuid(t.folder / "model.mnn")
    return {"model.mnn": {"converter": f"MNN {version()} mnnconvert -f ONNX (C++ converter, FP32)"}}


def _reversals_as_gathers(onnx_path: Path, tmp: Path) -> Path:
    """``model.onnx``, or a copy in ``tmp`` where each full reversal of an axis is a Gather of the reversed indices.

    torch.flip (the mirror image of test-time augmentation) exports as a Slice with step -1. MNN 3.6 converts
    it, but its CPU Slice then crashes the process (SIGSEGV) from batch 64 on (batch 9 and 16 ran; measured
    2026-11-30); a Gather along the axis computes the same values and runs at every batch."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    if not any(n.op_type == "Slice" for n in model.graph.node):
        return onnx_path  # (every model without test-time flip: no shape inference, no copy)
    model = onnx.shape_inference.infer_shapes(model)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    dims = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.value_info]}
    changed = False
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Slice" or len(node.input) != 5 or not all(n in consts for n in node.input[1:]):
            continue
        starts, ends, axes, steps = (consts[n].tolist() for n in node.input[1:])
        shape = dims.get(node.input[0])
        if len(axes) != 1 or steps != [-1] or starts != [-1] or not shape or not shape[axes[0]]:
            continue
        size = shape[axes[0]]
        if ends[0] > -size - 1:
            continue  # not the whole axis
        name = f"{node.output[0]}_reversed_indices"
        model.graph.initializer.append(numpy_helper.from_array(np.arange(size - 1, -1, -1, dtype=np.int64), name))
        model.graph.node[i].CopyFrom(helper.make_node("Gather", [node.input[0], name], list(node.output),
                                                      name=node.name, axis=axes[0]))
        changed = True
    if not changed:
        return onnx_path
    onnx.save(model, str(tmp / "model.onnx"))
    return tmp / "model.onnx"


UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _content_uuid(path: Path) -> None:
    """MNN's converter writes a random UUID near the start of each model (the ``mnn_uuid`` string that MNN's
    telemetry reports as ``model_guid``): the same model gave different bytes on every export. It is replaced, in
    place and at the same length, by a UUID derived from the model's bytes without it. Found in the bytes, not
    through MNN's parser: that crashes on a file the converter truncated (a full disk), which is left as it is
    for the checks that follow."""
    import hashlib
    import uuid

    data = path.read_bytes()
    found = list(UUID.finditer(data[:1024]))
    if len(found) != 1:
        return
    old = found[0].group()
    digest = hashlib.sha256(data.replace(old, b"0" * 36, 1)).hexdigest()
    new = str(uuid.uuid5(uuid.NAMESPACE_OID, f"lenet-export model.mnn {digest}")).encode()
    path.write_bytes(data.replace(old, new, 1))


FORMATS = (Format("mnn", ("model.mnn",), _write, package="MNN", install=INSTALL, made_from=("onnx",),
                  summary="MNN model, FP32 weights", metadata=MetadataCopy("bizCode", read_mnn_metadata, package="MNN")),)
