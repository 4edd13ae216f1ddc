"""ONNX: ``model.onnx`` (normalised float32 ``input`` N x C x H x W -> ``logits``) and ``model.raw.onnx``
(uint8 ``images`` as decoders give them -> ``logits``, ``probabilities``; normalisation in the graph).
Both pass ``onnx.checker`` (full check) and strict shape inference; metadata in ``metadata_props``."""

from __future__ import annotations

import io
import warnings

from pathlib import Path

from ..errors import ExportError, first_line
from ..metadata import metadata_props, parse_prop
from .base import Format, MetadataCopy, Target


def read_onnx_metadata(path: Path) -> dict:
    """The ``metadata_props`` of an ONNX file, values decoded (torch-free)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: parse_prop(p.value) for p in model.metadata_props}


def to_onnx(module, sample, path, input_name: str, output_names: list[str], t: Target, meta: dict):
    import onnx
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if t.exporter == "dynamo":
                # A sample batch of 2 and an explicit Dim keep the batch axis symbolic (a batch of 1 would be
                # specialised away by torch.export).
                program = torch.onnx.export(module, (sample,), None, dynamo=True, opset_version=t.opset,
                                            input_names=[input_name], output_names=output_names,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
                proto = program.model_proto
            else:
                buf = io.BytesIO()
                axes = {name: {0: "batch"} for name in [input_name, *output_names]}
                torch.onnx.export(module, (sample,), buf, dynamo=False, opset_version=t.opset,
                                  input_names=[input_name], output_names=output_names, dynamic_axes=axes)
                proto = onnx.load_from_string(buf.getvalue())
    except Exception as e:  # exporter internals raise many types; report the first line
        raise ExportError(f"{t.exporter} export failed: {first_line(e)}") from None
    proto.doc_string = f"lenet-export {meta['model_name']} trained on {meta['dataset']}"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata_props(meta))
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path.name} fails the ONNX checker: {first_line(e)}") from None
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return proto


def _float(t: Target) -> dict:
    from ..layermap import layer_map

    proto = to_onnx(t.model, t.sample, t.folder / "model.onnx", "input", ["logits"], t, t.metadata)
    return {"layer_map": layer_map(proto)}  # torch module -> ONNX tensor, for `lenet-export diff`


def _raw(t: Target) -> dict:
    from ..layermap import layer_map

    m = t.metadata
    meta = {**m, "input_name": "images", "input_layout": m["raw_input_layout"], "input_shape": m["raw_input_shape"],
            "input_dtype": "uint8"}
    proto = to_onnx(t.raw_model, t.raw_sample, t.folder / "model.raw.onnx", "images", ["logits", "probabilities"],
                    t, meta)
    return {"raw_layer_map": layer_map(proto, prefix="model.")}


PROPS = MetadataCopy("metadata_props", read_onnx_metadata, package="onnx")

FORMATS = (
    Format("onnx", ("model.onnx",), _float, required=True, metadata=PROPS,
           summary="ONNX, float32 `input` N x C x H x W (normalised) -> `logits`"),
    Format("raw-onnx", ("model.raw.onnx",), _raw, required=True,
           metadata=MetadataCopy("metadata_props", read_onnx_metadata, package="onnx", raw=True),
           summary="ONNX, uint8 `images` as an image decoder gives them -> `logits`, `probabilities` "
                   "(normalisation inside)"),
)
