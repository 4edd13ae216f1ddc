"""The models shipped in exported/: complete, and passing verify against their own checkpoints."""

import importlib.util
import json

import pytest

from conftest import REPO, data_dir_for
from lenet_export import backends as registry
from lenet_export.verify import VerifyOptions, verify

SHIPPED = {"fashion-mnist": REPO / "exported" / "fashion-mnist-lenet-modern",
           "cifar10": REPO / "exported" / "cifar10-lenet-modern-cifar"}
FILES = ["best.pth", "model.onnx", "model.raw.onnx", "model.pt", "model.pt2", "model.xml", "model.bin", "model.pte",
         "model.tflite", "metadata.json", "metrics.json", "verify.json",
         "MODEL_CARD.md", "test_data_set_0/input_0.pb", "test_data_set_0/output_0.pb",
         "raw_test_data_set_0/input_0.pb", "raw_test_data_set_0/output_0.pb", "raw_test_data_set_0/output_1.pb"]


@pytest.mark.parametrize("dataset", list(SHIPPED))
def test_shipped_folder_is_complete(dataset):
    folder = SHIPPED[dataset]
    missing = [f for f in FILES if not (folder / f).is_file()]
    assert not missing, missing
    card = (folder / "MODEL_CARD.md").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert f"{metrics['test_acc']:.4f}" in card
    if dataset == "cifar10":
        assert metrics["data_source"] == "jpeg-image-folder" and "JPEG copy" in card
    rep = json.loads((folder / "verify.json").read_text())
    assert rep["passed"] is True and rep["report_format"] == 2
    passed = {n for n, b in rep["backends"].items() if b["status"] == "passed"}
    assert {"ort-cpu-raw", "torchscript-cpu", "ort-cpu", "pt2-cpu", "openvino-cpu", "executorch-cpu", "litert-cpu"} <= passed


@pytest.mark.parametrize("dataset", list(SHIPPED))
def test_shipped_models_pass_verify_on_the_real_test_set(dataset, request):
    folder = SHIPPED[dataset]
    rep = verify(VerifyOptions(exported=folder, data_dir=str(data_dir_for(dataset, request)),
                               backends=registry.names("cpu")), log=lambda _: None)
    assert rep.passed, rep.problems
    assert rep.backends["ort-cpu-raw"].status == "passed" and rep.metadata.passed
    for backend, package in (("executorch-cpu", "executorch"), ("litert-cpu", "ai_edge_litert")):
        if importlib.util.find_spec(package):  # the mobile artefacts pass wherever their runtime is installed
            assert rep.backends[backend].status == "passed", rep.backends[backend]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert rep.reference_accuracy == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert rep.reference_accuracy >= (0.915 if dataset == "fashion-mnist" else 0.75)
