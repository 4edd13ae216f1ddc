"""lenet-export verify: parity over data set x backend on real data, and the failures it must catch."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import assert_clean_error, data_dir_for, run_cli
from lenet_export.verify import BACKENDS, CUDA_BACKENDS, Tolerance, VerifyOptions, verify

DATASETS = ["fashion-mnist", "cifar10"]


@pytest.fixture(scope="module")
def reports(runs, exports, request):
    cache = {}

    def get(dataset):
        if dataset not in cache:
            cache[dataset] = verify(VerifyOptions(exported=exports(dataset), checkpoint=runs(dataset) / "best.pth",
                                                  data_dir=str(data_dir_for(dataset, request))), log=lambda _: None)
        return cache[dataset]
    return get


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_parity(dataset, backend, reports):
    rep = reports(dataset)
    e = rep["backends"][backend]
    if backend in CUDA_BACKENDS and not torch.cuda.is_available():
        assert e["status"] == "skipped" and e["reason"], e  # reported as skipped, never as passed
        pytest.skip(f"{backend}: {e['reason']}")
    assert e["status"] == "passed", e.get("failures")
    assert rep["samples"] == 10000
    assert e["accuracy"] == rep["reference_accuracy"]
    tol = Tolerance()
    assert e["logits"]["max_abs"] <= tol.atol + tol.rtol * 100
    assert e["argmax_agree"] + len(e["disagreements"]) == 10000
    assert e["batch_invariance"]["passed"] and e["batch_invariance"]["batch_sizes"] == [1, 2, 7, 1000]
    assert e["latency_ms_batch1"]["median"] > 0 and e["throughput_img_s"] > 0
    if backend.startswith("ort"):
        assert e["runtime"]["providers"][0] == ("CUDAExecutionProvider" if backend == "ort-cuda" else "CPUExecutionProvider")
    if backend.endswith("cuda"):
        assert e["runtime"]["tf32"] is False


def test_report_accuracy_matches_training(reports, runs):
    from lenet_export.checkpoint import load_checkpoint

    for ds in DATASETS:
        assert reports(ds)["reference_accuracy"] == pytest.approx(load_checkpoint(runs(ds) / "best.pth")["test_acc"], abs=1e-6)


def test_cli_passes_and_writes_report(runs, exports, fmnist_dir, tmp_path):
    r = run_cli("verify", "--exported", exports("fashion-mnist"), "--checkpoint", runs("fashion-mnist") / "best.pth",
                "--data-dir", fmnist_dir, "--backends", "torch-cpu,ort-cpu,ort-cuda", "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "parity passed" in r.stdout and "ort-cpu" in r.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert set(rep["backends"]) == {"torch-cpu", "ort-cpu", "ort-cuda"} and rep["passed"] is True
    for key in ("checkpoint_sha256", "dataset", "data_source", "samples", "tolerance", "reference"):
        assert key in rep


def _perturbed_copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    m = onnx.load(dst / "model.onnx")
    init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5  # one weight
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, dst / "model.onnx")


def test_perturbed_onnx_weight_fails_and_names_backend(runs, exports, fmnist_dir, tmp_path):
    _perturbed_copy(exports("fashion-mnist"), tmp_path / "bad")
    r = run_cli("verify", "--exported", tmp_path / "bad", "--checkpoint", runs("fashion-mnist") / "best.pth",
                "--data-dir", fmnist_dir, "--backends", "ort-cpu,torchscript-cpu", "--report", tmp_path / "r.json")
    assert r.exit_code == 1
    assert "parity failed for ort-cpu" in r.stderr and "torchscript-cpu" not in r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["passed"] is False and rep["backends"]["ort-cpu"]["status"] == "failed"
    assert rep["backends"]["torchscript-cpu"]["status"] == "passed"


def test_export_from_another_checkpoint_is_caught(exports, fmnist_dir, tmp_path):
    from lenet_export.training.train import TrainConfig, train

    train(TrainConfig(model="lenet-classic", epochs=1, train_limit=1000, data_dir=str(fmnist_dir),
                      out=str(tmp_path / "other")), log=lambda _: None)
    r = run_cli("verify", "--exported", exports("fashion-mnist"), "--checkpoint", tmp_path / "other" / "best.pth",
                "--data-dir", fmnist_dir)
    assert_clean_error(r, "was not exported from", "sha256")


def test_bad_inputs(runs, exports, fmnist_dir, tmp_path):
    ck = runs("fashion-mnist") / "best.pth"
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("verify", "--exported", tmp_path / "empty", "--checkpoint", ck), "missing model.onnx")
    assert_clean_error(run_cli("verify", "--exported", exports("fashion-mnist"), "--checkpoint", ck,
                               "--backends", "tensorrt"), "unknown backend 'tensorrt'")
    assert_clean_error(run_cli("verify", "--exported", exports("fashion-mnist"), "--checkpoint", ck,
                               "--dataset", "cifar10"), "3x32x32", "expects 1x28x28")
    assert_clean_error(run_cli("verify", "--exported", exports("fashion-mnist")), "pass --checkpoint")


def test_require_cuda_fails_without_cuda(runs, exports, fmnist_dir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = run_cli("verify", "--exported", exports("fashion-mnist"), "--checkpoint", runs("fashion-mnist") / "best.pth",
                "--data-dir", fmnist_dir, "--backends", "ort-cpu,ort-cuda", "--require-cuda")
    assert r.exit_code == 1 and "ort-cuda" in r.stderr


def test_ort_cuda_fallback_to_cpu_fails(runs, exports, fmnist_dir, monkeypatch):
    """A CUDA session that silently runs on CPU must fail, not pass as CUDA."""
    import onnxruntime as ort

    import lenet_export.verify as V

    monkeypatch.setattr(V, "_cuda_device", lambda: "fake GPU")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession

    def session(path, opts, providers):  # what onnxruntime does when CUDA cannot initialise: CPU only
        return real(path, opts, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", session)
    rep = verify(VerifyOptions(exported=exports("fashion-mnist"), checkpoint=runs("fashion-mnist") / "best.pth",
                               data_dir=str(fmnist_dir), backends=("ort-cuda",)), log=lambda _: None)
    e = rep["backends"]["ort-cuda"]
    assert e["status"] == "failed" and "fell back to CPU" in e["reason"] and rep["passed"] is False
