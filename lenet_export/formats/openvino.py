"""OpenVINO IR: ``model.xml`` + ``model.bin`` in FP32, converted from ``model.onnx`` (which keeps the input
and output names; converting the torch module would go through ``torch.jit.trace`` and rename the input).
The metadata is stored in the model's ``rt_info`` under ``lenet_export``.

``openvino.save_model`` compresses weights to FP16 by default, which moves these logits by ~5e-3: the IR is
saved with ``compress_to_fp16=False`` (and verify fails an FP16-compressed IR).

The ONNX file is read with ``Core.read_model`` (OpenVINO's ONNX frontend) rather than ``convert_model``: the
latter also sends OpenVINO's usage telemetry (opt-out, ``opt_in_out --opt_out``) from a forked process on every
call, which an export should not do on the user's behalf, and which forks a process that has JAX loaded
(litert-torch) in ``ship`` and the tests.
"""

from __future__ import annotations

from ..metadata import OPENVINO_RT_INFO_KEY as RT_INFO_KEY, metadata_props
from .base import Format, Target

INSTALL = "pip install 'lenet-export[openvino]'"


def _write(t: Target) -> dict:
    import openvino as ov

    model = ov.Core().read_model(str(t.folder / "model.onnx"))
    for k, v in metadata_props(t.metadata).items():
        model.set_rt_info(v, [RT_INFO_KEY, k])
    ov.save_model(model, str(t.folder / "model.xml"), compress_to_fp16=False)
    return {"openvino_version": ov.get_version()}


FORMATS = (Format("openvino", ("model.xml", "model.bin"), _write, package="openvino", install=INSTALL),)
