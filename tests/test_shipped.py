"""The models shipped in exported/: complete, and passing verify against their own checkpoints."""

import importlib.util
import json

import pytest

from conftest import REPO, assert_clean_error, data_dir_for, run_cli, serving_on
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
    withheld = json.loads((folder / "metadata.json").read_text()).get("withheld_variants") or {}
    expected = [f for f in FILES if not any(f in formats.registry()[w].files for w in withheld)]
    missing = [f for f in expected if not (folder / f).is_file()]
    assert not missing, missing
    rep = json.loads((folder / "verify.json").read_text())
    gone = {n for n, b in registry.registry().items() for w in withheld if b.artefact == formats.registry()[w].artefact}
    for b in gone:  # a withheld variant is gone, and verify says why instead of passing or failing it
        assert rep["backends"][b]["status"] == "skipped" and "withheld by lenet-export ship" in rep["backends"][b]["reason"]
    card = (folder / "MODEL_CARD.md").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert f"{metrics['test_acc']:.4f}" in card
    assert "![training curves](curves.png)" in card and "![test confusion matrix](confusion.png)" in card
    if dataset == "cifar10":
        assert metrics["data_source"] == "jpeg-image-folder" and "JPEG copy" in card
    rep = json.loads((folder / "verify.json").read_text())
    assert rep["passed"] is True and rep["report_format"] == 3
    passed = {n for n, b in rep["backends"].items() if b["status"] == "passed"}
    assert set(registry.names("cpu")) - gone <= passed  # every CPU runtime passed on the machine that built it


@pytest.mark.slow  # every CPU backend on both whole test sets (72 s); the shipped reports are checked in CI
@pytest.mark.parametrize("dataset", list(SHIPPED))
def test_shipped_models_pass_verify_on_the_real_test_set(dataset, request, monkeypatch):
    folder = SHIPPED[dataset]
    serving_on(monkeypatch)  # the endpoint too, where .venv-serve is installed
    rep = verify(VerifyOptions(exported=folder, data_dir=str(data_dir_for(dataset, request)),
                               backends=registry.names("cpu")), log=lambda _: None)
    assert rep.passed, rep.problems
    assert rep.backends["ort-cpu-raw"].status == "passed" and rep.metadata.passed
    for name in registry.names("cpu"):  # every artefact passes wherever its runtime is installed
        b = registry.get(name)
        if "withheld by lenet-export ship" in (rep.backends[name].reason or ""):
            continue  # not shipped (test_shipped_folder_is_complete checks why)
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


def test_ship_withholds_a_failing_variant_and_nothing_else(tmp_path, zero_calibration, request):
    """A variant broken by all-zero calibration images fails verify: ship removes it, records why, and verify
    then reports it skipped with that reason; an FP32 failure is never withheld."""
    import shutil

    from lenet_export.quantize import QuantizeOptions, quantize
    from lenet_export.report import FAILED
    from lenet_export.ship import withhold_failed_variants

    out = tmp_path / "export"
    shutil.copytree(SHIPPED["fashion-mnist"], out)
    data = str(data_dir_for("fashion-mnist", request))
    quantize(QuantizeOptions(exported=out, data_dir=data, max_drop=100, formats=("onnx-int8",)), log=lambda _: None)
    opts = VerifyOptions(exported=out, data_dir=data, backends=("ort-cpu", "ort-cpu-int8"))
    rep = verify(opts, log=lambda _: None)
    assert rep.backends["ort-cpu-int8"].status == "failed"
    fp32_failure = rep.backends["ort-cpu"]
    fp32_failure.status = FAILED
    assert withhold_failed_variants(out, rep, log=lambda _: None) == {}  # an FP32 failure: nothing withheld
    fp32_failure.status = "passed"
    withheld = withhold_failed_variants(out, rep, log=lambda _: None)
    assert list(withheld) == ["onnx-int8"] and not (out / "model.int8.onnx").exists()
    again = verify(opts, log=lambda _: None)
    assert again.passed and again.backends["ort-cpu-int8"].status == "skipped"
    assert "withheld by lenet-export ship" in again.backends["ort-cpu-int8"].reason
