"""The Triton model repository ship writes: parsed with tritonclient's model_config_pb2 and compared, field by
field, with the ONNX graphs read by onnx (not by the writer's own code); a repository that disagrees is caught."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO

SHIPPED = {"fashion-mnist": REPO / "exported" / "fashion-mnist-lenet-modern",
           "cifar10": REPO / "exported" / "cifar10-lenet-modern-cifar"}

pytest.importorskip("tritonclient.grpc", reason="tritonclient missing (pip install 'lenet-export[serve-client]')")


def _parse(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()), model_config_pb2


def _onnx_tensors(values):
    import onnx

    types = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.UINT8: "TYPE_UINT8"}
    out = []
    for v in values:
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value  # a symbolic batch axis: Triton's max_batch_size
        out.append((v.name, types[v.type.tensor_type.elem_type], [d.dim_value for d in dims[1:]]))
    return out


@pytest.mark.parametrize("dataset", list(SHIPPED))
def test_shipped_triton_repository_matches_the_onnx_files(dataset):
    import onnx

    folder = SHIPPED[dataset]
    meta = json.loads((folder / "metadata.json").read_text())
    names = {"model.onnx": meta["model_name"], "model.raw.onnx": f"{meta['model_name']}-raw"}
    assert sorted(p.name for p in (folder / "triton").iterdir()) == sorted(names.values())
    for artefact, name in names.items():
        model = folder / "triton" / name
        cfg, pb = _parse(model / "config.pbtxt")
        graph = onnx.load(str(folder / artefact)).graph
        assert cfg.name == name and cfg.backend == "onnxruntime" and cfg.max_batch_size > 0
        assert cfg.HasField("dynamic_batching")
        assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in cfg.input] == _onnx_tensors(graph.input)
        assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in cfg.output] == _onnx_tensors(graph.output)
        assert all(t.label_filename == "labels.txt" for t in cfg.output)
        assert (model / "labels.txt").read_text().splitlines() == meta["classes"]
        assert (model / "1" / "model.onnx").read_bytes() == (folder / artefact).read_bytes()


def test_a_repository_that_disagrees_with_the_export_is_caught(tmp_path):
    from lenet_export.triton import check_repository, write_repository

    folder = tmp_path / "export"
    shutil.copytree(SHIPPED["fashion-mnist"], folder, ignore=shutil.ignore_patterns("triton"))
    meta = json.loads((folder / "metadata.json").read_text())
    write_repository(folder, meta)
    assert check_repository(folder, meta) == []
    cfg = folder / "triton" / "lenet-modern" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: 28", "dims: 32", 1))
    (folder / "triton" / "lenet-modern-raw" / "labels.txt").write_text("a\nb\n")
    problems = check_repository(folder, meta)
    assert any("lenet-modern/config.pbtxt: input" in p for p in problems), problems
    assert any("lenet-modern-raw/labels.txt" in p for p in problems), problems
    cfg.write_text("not_a_field: 1\n")
    assert any("does not parse" in p for p in check_repository(folder, meta))
