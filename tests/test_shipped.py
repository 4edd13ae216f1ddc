"""The models shipped in exported/: complete, and passing verify against their own checkpoints."""

import importlib.util
import json

import pytest

from conftest import REPO, assert_clean_error, data_dir_for, run_cli
from lenet_export import backends as registry, formats
from lenet_export.verify import VerifyOptions, verify

SHIPPED = {"fashion-mnist": REPO / "exported" / "fashion-mnist-lenet-modern",
           "cifar10": REPO / "exported" / "cifar10-lenet-modern-cifar"}
# every format and variant of the registry, and what ship adds
FILES = [f for fmt in formats.registry().values() for f in fmt.files] + [
         "best.pth", "metadata.json", "metrics.json", "verify.json", "verify.npz", "curves.png", "confusion.png",
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
    assert "![training curves](curves.png)" in card and "![test confusion matrix](confusion.png)" in card
    if dataset == "cifar10":
        assert metrics["data_source"] == "jpeg-image-folder" and "JPEG copy" in card
    rep = json.loads((folder / "verify.json").read_text())
    assert rep["passed"] is True and rep["report_format"] == 3
    passed = {n for n, b in rep["backends"].items() if b["status"] == "passed"}
    assert set(registry.names("cpu")) <= passed  # every CPU runtime passed on the machine that built it


@pytest.mark.heavy  # real training or a whole data set: not in the quick tier
@pytest.mark.parametrize("dataset", list(SHIPPED))
def test_shipped_models_pass_verify_on_the_real_test_set(dataset, request):
    folder = SHIPPED[dataset]
    rep = verify(VerifyOptions(exported=folder, data_dir=str(data_dir_for(dataset, request)),
                               backends=registry.names("cpu")), log=lambda _: None)
    assert rep.passed, rep.problems
    assert rep.backends["ort-cpu-raw"].status == "passed" and rep.metadata.passed
    for name in registry.names("cpu"):  # every artefact passes wherever its runtime is installed
        b = registry.get(name)
        if b.package == "onnxruntime-web" or importlib.util.find_spec(b.package):
            assert rep.backends[name].status in (("passed", "skipped") if b.package == "onnxruntime-web"
                                                 else ("passed",)), rep.backends[name]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert rep.reference_accuracy == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert rep.reference_accuracy >= (0.92 if dataset == "fashion-mnist" else 0.78)


def test_ship_refuses_bad_input(tmp_path):
    assert_clean_error(run_cli("ship", "--dataset", "foo"), "unknown data set 'foo'")
    assert_clean_error(run_cli("ship", "--from-run", tmp_path), "is not a finished training run (no best.pth)")
    assert_clean_error(run_cli("ship", "--dataset", "cifar10", "--from-run", SHIPPED["fashion-mnist"]),
                       "holds lenet-modern on fashion-mnist, not the default lenet-modern-cifar on cifar10")
