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

        args = ["mnnconvert", "-f", "ONNX", "--modelFile", str(t.input("model.onnx")),
                "--MNNModel", str(t.folder / "model.mnn"), "--bizCode", json.dumps(t.metadata)]
        if not _tools.mnnconvert(args) or not (t.folder / "model.mnn").is_file():
            raise ExportError("MNN's converter could not convert model.onnx")
    _content_uuid(t.folder / "model.mnn")
    return {"model.mnn": {"converter": f"MNN {version()} mnnconvert -f ONNX (C++ converter, FP32)"}}


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
