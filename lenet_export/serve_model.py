"""One exported ONNX model as a KServe model: Open Inference Protocol v2 metadata from the ONNX graph, and
``infer`` through the torch-free ONNX Runtime session, with every input checked before it reaches the runtime.

Imported only by ``serve.start`` (kserve parses ``sys.argv`` when imported; ``serve`` clears it first).
A request the model cannot take raises kserve's ``InvalidInput``, which both KServe servers answer as a
protocol error (HTTP 400, gRPC INVALID_ARGUMENT); the runtime never sees it.

Class names: the Triton classification extension. An output requested with ``parameters: {"classification":
K}`` comes back as a BYTES tensor [N, K] of ``"score:index:label"`` strings, the top K classes of each image,
as Triton answers (and as its ``labels.txt`` configures; see ``triton.py``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from kserve import Model
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

# ONNX Runtime type -> (Open Inference Protocol datatype, numpy dtype)
DATATYPES = {"tensor(float)": ("FP32", np.float32), "tensor(uint8)": ("UINT8", np.uint8)}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]  # -1: any size (the batch axis)

    def spec(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


def _tensor(arg) -> Tensor:
    if arg.type not in DATATYPES:
        raise ValueError(f"{arg.name}: {arg.type} has no Open Inference Protocol datatype here")
    return Tensor(arg.name, DATATYPES[arg.type][0], [d if isinstance(d, int) else -1 for d in arg.shape])


class OnnxModel(Model):
    """``session``: an onnxruntime ``InferenceSession`` with one input; ``classes``: the class names."""

    def __init__(self, name: str, session, classes: list[str], max_batch: int):
        super().__init__(name)
        self.session = session
        self.classes = classes
        self.max_batch = max_batch
        (self.input,) = [_tensor(a) for a in session.get_inputs()]
        self.outputs = [_tensor(a) for a in session.get_outputs()]
        self.dtype = {v[0]: v[1] for v in DATATYPES.values()}[self.input.datatype]
        self.ready = True

    def load(self) -> bool:
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [self.input.spec()]

    def get_output_types(self) -> list[dict]:
        return [t.spec() for t in self.outputs]

    def checked_input(self, request: InferRequest) -> np.ndarray:
        """The request's one input as the array the session takes, or ``InvalidInput`` saying what is wrong."""
        want = self.input
        if len(request.inputs) != 1 or request.inputs[0].name != want.name:
            got = [i.name for i in request.inputs]
            raise InvalidInput(f"model {self.name} takes one input named {want.name!r}, got {got}")
        given = request.inputs[0]
        if given.datatype != want.datatype:
            raise InvalidInput(f"input {want.name}: datatype {given.datatype} given, {want.datatype} expected")
        shape = list(given.shape)
        if len(shape) != len(want.shape) or any(w != -1 and s != w for s, w in zip(shape, want.shape)):
            raise InvalidInput(f"input {want.name}: shape {shape} given, {want.shape} expected (-1: any)")
        if not 1 <= shape[0] <= self.max_batch:
            raise InvalidInput(f"input {want.name}: batch of {shape[0]}; this server takes 1 to {self.max_batch}")
        try:
            x = np.asarray(given.as_numpy(), dtype=self.dtype)
        except (ValueError, TypeError, OverflowError) as e:  # JSON data that is not numbers of the datatype
            raise InvalidInput(f"input {want.name}: data is not {want.datatype}: {e}") from None
        if x.size != int(np.prod(shape)):
            raise InvalidInput(f"input {want.name}: {x.size} values for shape {shape} ({int(np.prod(shape))} expected)")
        x = x.reshape(shape)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InvalidInput(f"input {want.name}: NaN or Inf in the data")
        return np.ascontiguousarray(x)

    async def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        x = self.checked_input(payload)
        requested = payload.request_outputs or []
        known = {t.name for t in self.outputs}
        unknown = [o.name for o in requested if o.name not in known]
        if unknown:
            raise InvalidInput(f"model {self.name} has no output {unknown[0]!r}; it has {sorted(known)}")
        # the session releases the GIL: other requests are decoded while this one runs
        try:
            values = await asyncio.get_running_loop().run_in_executor(None, self.session.run, None,
                                                                      {self.input.name: x})
        except Exception as e:  # onnxruntime's own types; an input that passed the checks is the server's problem
            raise InferenceError(f"model {self.name}: the runtime failed: {str(e).splitlines()[0]}") from None
        outputs = []
        for tensor, value in zip(self.outputs, values):
            k = _classification(requested, tensor.name, len(self.classes))
            if k:
                tensor, value = Tensor(tensor.name, "BYTES", [len(value), k]), _top_k(value, k, self.classes)
            out = InferOutput(tensor.name, list(value.shape), tensor.datatype)
            # serialised once here: KServe 0.21's gRPC encoder cannot take an ndarray (it tests its truth value);
            # REST decodes it back to JSON numbers where the client did not ask for binary data
            out.set_data_from_numpy(value, binary_data=True)
            outputs.append(out)
        return InferResponse(payload.id or "", self.name, outputs, use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)


def _classification(requested, name: str, n_classes: int) -> int:
    for o in requested:
        if o.name == name and o.parameters and "classification" in o.parameters:
            k = o.parameters["classification"]
            k = getattr(k, "int64_param", k)  # gRPC parameters arrive as InferParameter messages
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n_classes:
                raise InvalidInput(f"output {name}: classification must be 1 to {n_classes}, got {k!r}")
            return k
    return 0


def _top_k(scores: np.ndarray, k: int, classes: list[str]) -> np.ndarray:
    """Triton's classification extension: for each row, the top ``k`` entries as ``b"score:index:label"``."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = [[f"{scores[i, j]:f}:{j}:{classes[j]}".encode() for j in row] for i, row in enumerate(order)]
    return np.array(rows, dtype=np.object_).reshape(len(order), k)
