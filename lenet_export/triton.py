"""A Triton Inference Server model repository for an export (``<export>/triton``), written by ``ship``:

    triton/<model>/config.pbtxt     backend onnxruntime; inputs, outputs, dtypes and dims from the ONNX graph
    triton/<model>/labels.txt       the class names, for Triton's classification extension
    triton/<model>/1/model.onnx     the export's file, byte for byte

for the two models ``serve`` serves under the same names (``serve.model_names``): clients written against
``lenet-export serve`` work against Triton unchanged. ``config.pbtxt`` is a ``ModelConfig`` message from
tritonclient's ``model_config_pb2`` in protobuf text format, so a field Triton does not know cannot be written.
Triton itself does not run on these machines (README, 'Serving'); ``check_repository`` compares every field with
the ONNX files instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import ConfigError
from .fsutil import atomic_write_text
from .serve import model_names

INSTALL = "pip install 'lenet-export[serve-client]' (tritonclient: Triton's model_config_pb2)"
# the largest batch Triton's dynamic batcher forms; the ONNX graphs take any batch (a symbolic axis)
MAX_BATCH = 256
DTYPES = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8"}


def _pb2():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ConfigError(f"writing a Triton model repository needs tritonclient: {INSTALL}") from None
    return model_config_pb2, text_format


def expected_config(onnx_path: Path, name: str):
    """The ``ModelConfig`` the ONNX file calls for (dims without the batch axis: ``max_batch_size`` > 0)."""
    import onnxruntime as ort

    pb, _ = _pb2()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def tensors(args, kind, labels: bool):
        out = []
        for a in args:
            if a.type not in DTYPES or isinstance(a.shape[0], int):
                raise ConfigError(f"{onnx_path.name}: {a.name} ({a.type}, {a.shape}) has no Triton form here")
            t = kind(name=a.name, data_type=pb.DataType.Value(DTYPES[a.type]), dims=list(a.shape[1:]))
            if labels:
                t.label_filename = "labels.txt"
            out.append(t)
        return out
    return pb.ModelConfig(
        name=name, backend="onnxruntime", max_batch_size=MAX_BATCH,
        input=tensors(sess.get_inputs(), pb.ModelInput, False),
        output=tensors(sess.get_outputs(), pb.ModelOutput, True),
        dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=100),
        instance_group=[pb.ModelInstanceGroup(kind=pb.ModelInstanceGroup.KIND_CPU, count=1)])


def write_repository(folder: Path, metadata: dict) -> Path:
    """``folder/triton`` for the export in ``folder``, replacing an older one."""
    _, text_format = _pb2()
    repo = folder / "triton"
    if repo.exists():
        shutil.rmtree(repo)
    for artefact, name in model_names(metadata).items():
        model = repo / name
        (model / "1").mkdir(parents=True)
        shutil.copy2(folder / artefact, model / "1" / "model.onnx")
        atomic_write_text(model / "labels.txt", "".join(f"{c}\n" for c in metadata["classes"]))
        atomic_write_text(model / "config.pbtxt", text_format.MessageToString(expected_config(folder / artefact, name)))
    return repo


def check_repository(folder: Path, metadata: dict) -> list[str]:
    """What in ``folder/triton`` disagrees with the export (each config field, the labels, the model bytes)."""
    pb, text_format = _pb2()
    problems = []
    for artefact, name in model_names(metadata).items():
        model = folder / "triton" / name
        if not (model / "config.pbtxt").is_file():
            problems.append(f"{name}: no config.pbtxt")
            continue
        try:
            got = text_format.Parse((model / "config.pbtxt").read_text(), pb.ModelConfig())
        except text_format.ParseError as e:
            problems.append(f"{name}/config.pbtxt does not parse as a Triton ModelConfig: {e}")
            continue
        want = expected_config(folder / artefact, name)
        for field in sorted({f.name for f, _ in got.ListFields()} | {f.name for f, _ in want.ListFields()}):
            if getattr(got, field) != getattr(want, field):
                problems.append(f"{name}/config.pbtxt: {field} is {getattr(got, field)!r}, the ONNX file says "
                                f"{getattr(want, field)!r}")
        labels = (model / "labels.txt").read_text().splitlines() if (model / "labels.txt").is_file() else None
        if labels != list(metadata["classes"]):
            problems.append(f"{name}/labels.txt is not the export's classes")
        onnx_copy = model / "1" / "model.onnx"
        if not onnx_copy.is_file() or onnx_copy.read_bytes() != (folder / artefact).read_bytes():
            problems.append(f"{name}/1/model.onnx is not the export's {artefact}")
    return problems
