"""Each runtime with its intermediate values exposed: a ``Probe`` runs one batch and returns every mapped
tensor, so ``diff`` can compare them with the torch modules' outputs.

* ONNX Runtime (``ort-*``): the mapped tensors are added as graph outputs of an in-memory copy of the model
  (their types from the graph's ``value_info``, i.e. shape inference at export time).
* OpenVINO (``openvino-cpu``): ``Model.add_outputs`` on the IR read from model.xml, whose tensors keep the
  ONNX names (it is converted from model.onnx), so model.onnx's map applies.
* TorchScript (``torchscript-*``): a ScriptModule takes no forward hooks, so its submodules are run one after
  the other (``named_children``, recursively); the result must equal the module's own forward.
* torch.export (``pt2-cpu``): ``torch.export.unflatten`` restores the module tree; forward hooks on its leaves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..backends import Context
from ..backends.base import cuda_device
from ..errors import ArtefactError, ConfigError
from .mapping import layer_map


VARIANTS = ("model.fp16.onnx", "model.int8.onnx")  # lenet-export quantize's files; model.onnx's map applies


@dataclass
class Probe:
    artefact: str
    points: dict[str, str]  # torch module path (or ``input``) -> runtime tensor name, in execution order
    run: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]  # (float, uint8) batch -> {tensor: value}
    runtime: str  # what ran, in words


def _recorded_map(ctx: Context, artefact: str, proto) -> dict[str, str]:
    """The map recorded at export time, or (exports made before it was recorded) the file's own."""
    key = "raw_layer_map" if artefact == "model.raw.onnx" else "layer_map"
    points = ctx.metadata.get(key) or layer_map(proto)
    if not points:
        raise ArtefactError(f"{artefact} does not name the torch modules its nodes came from (neither the dynamo "
                            "nor the legacy exporter's naming); cannot map its tensors to layers")
    produced = {o for n in proto.graph.node for o in n.output}
    if artefact in VARIANTS:
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


def _with_outputs(proto, names: list[str]):
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


def _ort(artefact: str, device: str, raw: bool):
    def open_(ctx: Context) -> Probe:
        import onnx
        import onnxruntime as ort

        from .. import ort_session

        proto = onnx.load(str(ctx.artefact(artefact)))
        points = _recorded_map(ctx, artefact, proto)
        names = list(dict.fromkeys(points.values()))
        sess = ort_session.open_session(_with_outputs(proto, names).SerializeToString(), device)
        used = ort_session.used_providers(sess)
        if device == "cuda" and used[0] != ort_session.CUDA:
            raise ArtefactError(f"ONNX Runtime CUDA session fell back to CPU (providers: {used})")
        feed = sess.get_inputs()[0].name

        def run(xf: np.ndarray, xu: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(names, sess.run(names, {feed: xu if raw else xf})))
        return Probe(artefact, points, run, f"onnxruntime {ort.__version__} {used[0]}")
    return open_


def _openvino(ctx: Context) -> Probe:
    import onnx
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(ctx.artefact("model.xml")))
    points = _recorded_map(ctx, "model.onnx", onnx.load(str(ctx.artefact("model.onnx"))))
    tensors = {n for op in model.get_ops() for o in op.outputs() for n in o.get_names()}
    points = {k: t for k, t in points.items() if t in tensors}  # what the converter kept (all, for these models)
    outputs = {n for o in model.outputs for n in o.get_names()}
    names = list(dict.fromkeys(points.values()))
    model.add_outputs([n for n in names if n not in outputs])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    ports = {n: compiled.output(n) for n in names}

    def run(xf: np.ndarray, xu: np.ndarray) -> dict[str, np.ndarray]:
        res = request.infer({0: xf})
        return {n: np.array(res[p]) for n, p in ports.items()}
    return Probe("model.xml", points, run, f"openvino {ov.__version__} CPU f32")


def leaves(module) -> list[str]:
    return [n for n, m in module.named_modules() if n and not list(m.children())]


def _torchscript(device: str):
    def open_(ctx: Context) -> Probe:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if device == "cuda":
                cuda_device()
            m = torch.jit.load(str(ctx.artefact("model.pt")), map_location=device).eval()

        def chain(mod, x, path: str, acts: dict):
            children = list(mod.named_children())
            if not children:
                acts[path] = y = mod(x)
                return y
            for name, child in children:
                x = chain(child, x, f"{path}.{name}" if path else name, acts)
            return x

        def run(xf: np.ndarray, xu: np.ndarray) -> dict[str, np.ndarray]:
            acts: dict = {}
            with torch.inference_mode():
                x = torch.from_numpy(xf).to(device)
                y, whole = chain(m, x, "", acts), m(x)
            if y.shape != whole.shape or not torch.allclose(y, whole, rtol=1e-5, atol=1e-5):
                raise ArtefactError("model.pt's forward is not its submodules run in order; cannot localise")
            return {k: v.float().cpu().numpy() for k, v in acts.items()}
        names = leaves(m)
        return Probe("model.pt", dict(zip(names, names)), run, f"torch.jit {torch.__version__} {device}")
    return open_


def hooked(module, names: list[str]) -> Callable:
    """``run(x) -> {leaf path: output}`` with forward hooks on ``module``'s leaves (torch eager, pt2)."""
    import torch

    mods = dict(module.named_modules())
    acts: dict = {}
    for n in names:
        mods[n].register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out.detach().float().cpu()))

    def run(x: torch.Tensor) -> dict:
        acts.clear()
        with torch.inference_mode():
            module(x)
        return dict(acts)
    return run


def _pt2(ctx: Context) -> Probe:
    import torch

    program = torch.export.load(str(ctx.artefact("model.pt2")))
    module = torch.export.unflatten(program)
    run_t = hooked(module, leaves(module))
    c, h, w = ctx.checkpoint["input_shape"]
    fired = list(run_t(torch.zeros(2, c, h, w)))  # leaves that run, in order (a no-op module has no node)

    def run(xf: np.ndarray, xu: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in run_t(torch.from_numpy(xf)).items()}
    return Probe("model.pt2", dict(zip(fired, fired)), run, f"torch.export {torch.__version__} unflattened, cpu")


PROBES: dict[str, Callable[[Context], Probe]] = {
    "ort-cpu": _ort("model.onnx", "cpu", raw=False),
    "ort-cpu-raw": _ort("model.raw.onnx", "cpu", raw=True),
    "ort-cpu-fp16": _ort("model.fp16.onnx", "cpu", raw=False),
    "ort-cpu-int8": _ort("model.int8.onnx", "cpu", raw=False),
    "ort-cuda": _ort("model.onnx", "cuda", raw=False),
    "ort-cuda-raw": _ort("model.raw.onnx", "cuda", raw=True),
    "openvino-cpu": _openvino,
    "torchscript-cpu": _torchscript("cpu"),
    "torchscript-cuda": _torchscript("cuda"),
    "pt2-cpu": _pt2,
}


def supports(backend: str) -> bool:
    return backend in PROBES


def require_supported(backend: str) -> None:
    if backend not in PROBES:
        raise ConfigError(f"diff does not support backend {backend!r} (its runtime exposes no intermediate "
                          f"values here); supported: {', '.join(PROBES)}")


def open_probe(backend: str, ctx: Context) -> Probe:
    require_supported(backend)
    return PROBES[backend](ctx)
