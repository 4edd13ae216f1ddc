"""Which runtime tensor holds which torch module's output: read from an exported ONNX graph.

The dynamo exporter records, on every node, the module path it came from (``pkg.torch.onnx.name_scopes``:
``['', 'features', 'features.5', '_native_batch_norm_legit_no_training_1']``); the legacy TorchScript exporter
names nodes after it (``/features/features.5/Conv``). A module's output is the output of the last node in
its scope. ``layer_map(proto)`` is recorded in metadata.json at export time (``layer_map`` for model.onnx,
``raw_layer_map`` for model.raw.onnx) and recomputed from the file for exports made before that.

Batch norm: the exporter folds each ``BatchNorm2d`` into the convolution before it. The dynamo exporter then
attributes the single Conv node to the batch norm (``features.1``), so the conv's own output
(``features.0``) has no tensor and the stage's output *after* batch norm is the comparable point; ``diff``
reports such a row as covering both modules. (The legacy exporter attributes the fused Conv to the conv
module; ``diff`` moves it to the batch norm, where its value belongs.)

Only the ``onnx`` package's protobuf classes are touched; nothing here imports torch. Used by the ONNX format
(the map is recorded at export time) and by the diff probes of the runtimes that run ONNX-derived graphs.
"""

from __future__ import annotations

import ast

from .errors import ArtefactError

INPUT = "input"  # the key of the normalised input inside model.raw.onnx (its uint8 -> float prefix)
# The key of the model's own output (the logits) among diff's points: the last layer's output, except in a model
# whose forward combines several passes (test-time flip: the mean of two), where only this is the artefact's.
OUTPUT = "output"
SCOPES = "pkg.torch.onnx.name_scopes"


def _module_of(node, prefix: str) -> str | None:
    """The torch module path a node came from, without ``prefix`` (``model.`` in model.raw.onnx), or None
    for nodes outside the model (the raw model's normalisation and softmax)."""
    props = {p.key: p.value for p in node.metadata_props}
    if SCOPES in props:
        try:
            scopes = ast.literal_eval(props[SCOPES])
        except (ValueError, SyntaxError):
            return None
        path = scopes[-2] if len(scopes) >= 2 else ""  # the last entry is the op itself
    elif node.name.startswith("/"):  # legacy exporter: /features/features.5/Conv, /model/features/features.5/Conv
        parts = node.name.strip("/").split("/")
        if len(parts) < 2 or (prefix and parts[0] != prefix.rstrip(".")):
            return None  # a top-level node (the raw model's normalisation and softmax)
        return parts[-2]  # the module path, relative to the model in both files
    else:
        return None
    if not path.startswith(prefix):
        return None
    return path[len(prefix):] or None


def layer_map(proto, prefix: str | None = None) -> dict[str, str]:
    """``{torch module path: ONNX tensor name}`` in graph order, plus ``input`` -> the normalised input where
    the graph computes it (model.raw.onnx). ``prefix``: the model's path inside the exported module
    (default: ``model.`` when the graph's modules all sit under it, as in model.raw.onnx)."""
    nodes = list(proto.graph.node)
    if prefix is None:
        paths = [p for n in nodes if (p := _module_of(n, "")) is not None]
        prefix = "model." if paths and all(p == "model" or p.startswith("model.") for p in paths) else ""
    out: dict[str, str] = {}
    inits = {t.name for t in proto.graph.initializer}
    graph_inputs = {i.name for i in proto.graph.input}
    for n in nodes:
        mod = _module_of(n, prefix)
        if mod is None or not n.output:
            continue
        if not out:  # the first node of the model: what it reads is the model's input
            first = next((i for i in n.input if i and i not in inits), None)
            if first and first not in graph_inputs:
                out[INPUT] = first
        out.pop(mod, None)  # re-insert: keep the order of each module's *last* node
        out[mod] = n.output[0]
    return out


def recorded_map(metadata: dict, artefact: str, proto, quantized: bool = False) -> dict[str, str]:
    """The map recorded at export time (``metadata``: metadata.json), or (exports made before it was recorded)
    the file's own. ``quantized``: a QDQ variant of model.onnx, whose tensors are matched as described below."""
    key = "raw_layer_map" if artefact == "model.raw.onnx" else "layer_map"
    points = metadata.get(key) or layer_map(proto)
    if not points:
        raise ArtefactError(f"{artefact} does not name the torch modules its nodes came from (neither the dynamo "
                            "nor the legacy exporter's naming); cannot map its tensors to layers")
    produced = {o for n in proto.graph.node for o in n.output}
    output = proto.graph.output[0].name  # the model's own output: a point of its own where no layer's (OUTPUT)
    points = {**points, OUTPUT: output} if output not in points.values() else dict(points)
    if quantized:
        # INT8 QDQ: a tensor's dequantised copy is the value the next layer really consumes (the quantiser also
        # drops a Relu whose clipping the quantisation does, so the raw tensor can be the pre-clip value).
        # Nodes fused by its pre-processing have no tensor of their own: compare what remains.
        points = {k: f"{t}_DequantizeLinear_Output" if f"{t}_DequantizeLinear_Output" in produced else t
                  for k, t in points.items()}
        return {k: t for k, t in points.items() if t in produced}
    missing = [t for t in points.values() if t not in produced]
    if missing:
        raise ArtefactError(f"metadata.json's {key} names tensor {missing[0]!r}, which {artefact} does not have "
                            "(was the model replaced after export?)")
    return dict(points)


def with_outputs(proto, names: list[str]):
    """A copy of ``proto`` that also outputs ``names``."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output}
    if any(n not in have for n in names):
        info = {v.name: v for v in m.graph.value_info}
        if any(n not in info and n not in have for n in names):
            m = onnx.shape_inference.infer_shapes(m)
            info = {v.name: v for v in m.graph.value_info}
        for n in names:
            if n not in have:
                m.graph.output.append(info[n] if n in info else onnx.helper.make_empty_tensor_value_info(n))
    return m
