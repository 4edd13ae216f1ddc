"""lenet-export verify: parity over data set x backend on real data, and every rule failing on purpose."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from conftest import assert_clean_error, data_dir_for, run_cli
from lenet_export import backends as registry
from lenet_export.parity import Tolerance
from lenet_export.verify import EVAL_BATCH, VerifyOptions, verify

DATASETS = ["fashion-mnist", "cifar10"]
CUDA_BACKENDS = registry.names("cuda")
CORE = ("torch-cpu", "torchscript-cpu", "ort-cpu", "ort-cpu-raw", "pt2-cpu")  # need only the core dependencies


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
@pytest.mark.parametrize("backend", registry.names())
def test_parity(dataset, backend, reports):
    rep = reports(dataset)
    e = rep.backends[backend]
    if backend in CUDA_BACKENDS and not torch.cuda.is_available():
        assert e.status == "skipped" and e.reason, e  # reported as skipped, never as passed
        pytest.skip(f"{backend}: {e.reason}")
    if backend not in CORE and e.status == "skipped":  # optional runtime or artefact: the reason says how to get it
        assert e.reason, e
        pytest.skip(f"{backend}: {e.reason}")
    assert e.status == "passed", e.failures
    assert rep.samples == 10000
    assert e.accuracy == rep.reference_accuracy
    tol = Tolerance()
    assert e.logits.max_abs <= tol.atol + tol.rtol * 100
    assert e.argmax_agree + len(e.disagreements) == 10000
    if e.runtime.get("batch_range") == [1, 1]:  # a fixed-batch artefact (model.tflite): says so, compares nothing
        assert e.batch_invariance.fixed_batch == 1 and e.batch_invariance.samples == 0
    else:
        assert e.batch_invariance.passed and e.batch_invariance.batch_sizes == [1, 2, 7, EVAL_BATCH]
        assert e.batch_invariance.fixed_batch is None and e.batch_invariance.samples == 70
    assert e.timing.latency_ms_batch1["median"] > 0 and e.timing.throughput_img_s > 0
    assert e.input == ("uint8" if backend.endswith("-raw") else "float")
    if backend.startswith("ort"):
        assert e.runtime["providers"][0] == ("CUDAExecutionProvider" if "cuda" in backend else "CPUExecutionProvider")
    if "cuda" in backend:
        assert e.runtime["tf32"] is False


@pytest.mark.parametrize("dataset", DATASETS)
def test_report_holds_metadata_and_pairwise(dataset, reports, runs):
    from lenet_export.checkpoint import load_checkpoint

    rep = reports(dataset)
    assert rep.passed and rep.metadata.passed and len(rep.metadata.files) >= 5
    ran = [n for n, b in rep.backends.items() if b.ran]
    assert rep.pairwise.backends == ran and len(ran) >= 4
    n = len(ran)
    assert all(rep.pairwise.argmax_agree[i][i] == 10000 for i in range(n))
    assert rep.reference_accuracy == pytest.approx(load_checkpoint(runs(dataset) / "best.pth")["test_acc"], abs=1e-6)


def _cli(folder, runs, fmnist_dir, *extra):
    return run_cli("verify", "--exported", folder, "--checkpoint", runs("fashion-mnist") / "best.pth",
                   "--data-dir", fmnist_dir, *extra)


def test_cli_passes_and_writes_report(runs, exports, fmnist_dir, tmp_path):
    r = _cli(exports("fashion-mnist"), runs, fmnist_dir, "--backends", "torch-cpu,ort-cpu,ort-cpu-raw,ort-cuda",
             "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "parity passed" in r.stdout and "ort-cpu-raw" in r.stdout
    assert "copies agree with the checkpoint" in r.stdout and "no sample changes class" in r.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert set(rep["backends"]) == {"torch-cpu", "ort-cpu", "ort-cpu-raw", "ort-cuda"} and rep["passed"] is True
    assert rep["report_format"] == 3 and rep["metadata"]["passed"] is True
    assert rep["pairwise"]["backends"] == ["torch-cpu", "ort-cpu", "ort-cpu-raw"]
    for key in ("checkpoint_sha256", "dataset", "data_source", "samples", "tolerance", "reference", "reference_accuracy"):
        assert key in rep
    b = rep["backends"]["ort-cpu-raw"]
    for key in ("status", "accuracy", "argmax_agree", "logits", "disagreements", "batch_invariance",
                "latency_ms_batch1", "throughput_img_s", "throughput_batch", "runtime"):
        assert key in b, key


# ---------------------------------------------------------------------------------------------
# Each rule fails on purpose with a real, broken artefact


def _copy(exports, tmp_path, name="bad"):
    dst = tmp_path / name
    shutil.copytree(exports("fashion-mnist"), dst)
    return dst


def _edit_onnx(path, edit):
    m = onnx.load(path)
    edit(m)
    onnx.save(m, path)


def _largest(m):
    return max(m.graph.initializer, key=lambda t: np.prod(t.dims))


def _set_weights(m, change):
    init = _largest(m)
    arr = numpy_helper.to_array(init).copy()
    change(arr)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))


def _report(tmp_path):
    return json.loads((tmp_path / "r.json").read_text())


def test_tolerance_breach_fails_and_names_backend(runs, exports, fmnist_dir, tmp_path):
    bad = _copy(exports, tmp_path)
    _edit_onnx(bad / "model.onnx", lambda m: _set_weights(m, lambda a: a.__iadd__(1e-3)))
    r = _cli(bad, runs, fmnist_dir, "--backends", "ort-cpu,torchscript-cpu", "--report", tmp_path / "r.json")
    assert r.exit_code == 1
    assert "parity failed for ort-cpu" in r.stderr and "torchscript-cpu" not in r.stderr
    rep = _report(tmp_path)
    assert rep["passed"] is False and rep["backends"]["ort-cpu"]["status"] == "failed"
    assert rep["backends"]["ort-cpu"]["failures"][0]["rule"] == "logits"
    assert rep["backends"]["torchscript-cpu"]["status"] == "passed"


def test_accuracy_change_fails_even_within_a_loose_tolerance(runs, exports, fmnist_dir, tmp_path):
    bad = _copy(exports, tmp_path)
    # the largest weight negated: logits move by far less than the tolerance below, and accuracy falls on any CPU
    # (scaled by 1.5 instead, the flips balanced out to the same accuracy on one Intel machine)
    _edit_onnx(bad / "model.onnx", lambda m: _set_weights(m, lambda a: a.__imul__(-1.0)))
    r = _cli(bad, runs, fmnist_dir, "--backends", "ort-cpu", "--atol", "1000", "--report", tmp_path / "r.json")
    assert r.exit_code == 1, r.output
    fails = _report(tmp_path)["backends"]["ort-cpu"]["failures"]
    assert "accuracy" in [f["rule"] for f in fails] and "logits" not in [f["rule"] for f in fails]
    assert "class flips torch-cpu | ort-cpu: " in r.stdout


def test_nan_output_fails(runs, exports, fmnist_dir, tmp_path):
    bad = _copy(exports, tmp_path)
    _edit_onnx(bad / "model.raw.onnx", lambda m: _set_weights(m, lambda a: a.__setitem__(..., np.nan)))
    r = _cli(bad, runs, fmnist_dir, "--backends", "ort-cpu-raw", "--report", tmp_path / "r.json")
    assert r.exit_code == 1
    f = _report(tmp_path)["backends"]["ort-cpu-raw"]["failures"][0]
    assert f["rule"] == "nonfinite" and f["numbers"] == {"count": 200000}
    assert f["text"] == "200000 NaN or Inf values in the outputs"


def _batch_dependent(m):
    """logits += 0.01 * mean of the whole input batch: each sample's logits depend on the rest of its batch."""
    g = m.graph
    producer = next(n for n in g.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_pre"
    g.node.extend([helper.make_node("ReduceMean", ["input"], ["batch_mean"], keepdims=0),
                   helper.make_node("Mul", ["batch_mean", "scale"], ["shift"]),
                   helper.make_node("Add", ["logits_pre", "shift"], ["logits"])])
    g.initializer.append(numpy_helper.from_array(np.array(0.01, np.float32), "scale"))


def test_batch_variance_fails(runs, exports, fmnist_dir, tmp_path):
    bad = _copy(exports, tmp_path)
    _edit_onnx(bad / "model.onnx", _batch_dependent)
    r = _cli(bad, runs, fmnist_dir, "--backends", "ort-cpu", "--report", tmp_path / "r.json")
    assert r.exit_code == 1, r.output
    assert "batch-invariance" in [f["rule"] for f in _report(tmp_path)["backends"]["ort-cpu"]["failures"]]


def _reverse_classes(props):
    for p in props:
        if p.key == "classes":
            p.value = json.dumps(json.loads(p.value)[::-1])


def _torchscript_meta(path, change):
    extra = {"metadata.json": ""}
    ts = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    change(meta)
    torch.jit.save(ts, str(path), _extra_files={"metadata.json": json.dumps(meta)})


def _json_meta(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _pt2_meta(path, change):
    """Rewrite the .pt2 archive with a changed extra/metadata.json (every other entry as it was)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        entries = [(i, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in entries:
            if info.filename.endswith("/extra/metadata.json"):
                meta = json.loads(data)
                change(meta)
                data = json.dumps(meta).encode()
            z.writestr(info, data)


METADATA_EDITS = {
    "model.onnx:metadata_props": ("classes", lambda d: _edit_onnx(d / "model.onnx",
                                                                  lambda m: _reverse_classes(m.metadata_props))),
    "model.raw.onnx:metadata_props": ("mean", lambda d: _edit_onnx(d / "model.raw.onnx", lambda m: [
        p.__setattr__("value", "[0.5]") for p in m.metadata_props if p.key == "mean"])),
    "model.pt:metadata.json": ("std", lambda d: _torchscript_meta(d / "model.pt", lambda m: m.__setitem__("std", [1.0]))),
    "model.pt2:metadata.json": ("checkpoint_sha256", lambda d: _pt2_meta(
        d / "model.pt2", lambda m: m.__setitem__("checkpoint_sha256", "0" * 64))),
    "metadata.json": ("input_shape", lambda d: _json_meta(d / "metadata.json",
                                                          lambda m: m.__setitem__("input_shape", ["N", 1, 32, 32]))),
}


@pytest.mark.parametrize("where", list(METADATA_EDITS))
def test_metadata_mismatch_fails_and_names_file_and_field(where, runs, exports, fmnist_dir, tmp_path):
    field, edit = METADATA_EDITS[where]
    bad = _copy(exports, tmp_path)
    edit(bad)
    r = _cli(bad, runs, fmnist_dir, "--backends", "ort-cpu", "--report", tmp_path / "r.json")
    assert_clean_error(r, "metadata disagrees with the checkpoint", f"{where}: {field} is")
    assert r.exit_code == 1
    rep = _report(tmp_path)
    assert rep["passed"] is False and rep["backends"]["ort-cpu"]["status"] == "passed"
    assert [(m["file"], m["field"]) for m in rep["metadata"]["mismatches"]] == [(where, field)]


def test_predict_reads_the_metadata_verify_checks(exports, tmp_path):
    """Why the metadata matters: reversed classes in model.onnx relabel every prediction."""
    from lenet_export.runtime import Classifier

    bad = _copy(exports, tmp_path)
    METADATA_EDITS["model.onnx:metadata_props"][1](bad)
    good, wrong = Classifier(exports("fashion-mnist") / "model.onnx"), Classifier(bad / "model.onnx")
    assert wrong.classes == good.classes[::-1]


def test_swapped_raw_model_fails(runs, exports, fmnist_dir, tmp_path):
    bad = _copy(exports, tmp_path)
    shutil.copy(exports("cifar10") / "model.raw.onnx", bad / "model.raw.onnx")
    r = _cli(bad, runs, fmnist_dir, "--report", tmp_path / "r.json")
    assert r.exit_code == 1 and "Traceback" not in r.output
    rep = _report(tmp_path)
    assert rep["backends"]["ort-cpu-raw"]["status"] == "failed"
    assert rep["backends"]["ort-cpu-raw"]["reason"].startswith("cannot run model.raw.onnx: ")
    assert {"classes", "mean", "checkpoint_sha256"} <= {m["field"] for m in rep["metadata"]["mismatches"]}
    assert rep["backends"]["ort-cpu"]["status"] == "passed"


def test_onnx_of_the_other_data_set_fails(runs, exports, fmnist_dir, tmp_path):
    bad = _copy(exports, tmp_path)
    shutil.copy(exports("cifar10") / "model.onnx", bad / "model.onnx")
    r = _cli(bad, runs, fmnist_dir, "--backends", "ort-cpu", "--report", tmp_path / "r.json")
    assert_clean_error(r, "parity failed for ort-cpu", "metadata disagrees")
    assert "cannot run model.onnx" in _report(tmp_path)["backends"]["ort-cpu"]["reason"]


@pytest.mark.parametrize("artefact,backend", [("model.onnx", "ort-cpu"),  # the other two: -m slow (67 s)
                                              pytest.param("model.pt", "torchscript-cpu", marks=pytest.mark.slow),
                                              pytest.param("model.raw.onnx", "ort-cpu-raw", marks=pytest.mark.slow)])
def test_garbage_artefact_fails_its_backend_and_report_is_written(artefact, backend, runs, exports, fmnist_dir,
                                                                   tmp_path):
    bad = _copy(exports, tmp_path)
    (bad / artefact).write_bytes(np.random.default_rng(0).bytes(5000))
    r = _cli(bad, runs, fmnist_dir, "--report", tmp_path / "r.json")
    assert_clean_error(r, "parity failed for ")
    assert backend in r.stderr.split(";")[0]
    rep = _report(tmp_path)
    e = rep["backends"][backend]
    assert e["status"] == "failed" and e["reason"].startswith(f"cannot load {artefact}: ") and "\n" not in e["reason"]
    assert any(err.startswith(artefact) for err in rep["metadata"]["errors"])
    assert e["reason"][:20] in r.stdout  # shown in the table / failure lines
    others = [n for n in ("ort-cpu", "torchscript-cpu", "ort-cpu-raw") if n != backend]
    assert all(rep["backends"][n]["status"] == "passed" for n in others)


@pytest.mark.parametrize("backends, message, code", [("torch-cpu", "nothing was compared", 1),
                                                    ("", "names no backend", 2)])
def test_reference_alone_does_not_pass(backends, message, code, runs, exports, fmnist_dir, tmp_path):
    bad = _copy(exports, tmp_path)
    (bad / "model.onnx").write_bytes(b"not an onnx file")
    r = _cli(bad, runs, fmnist_dir, "--backends", backends)
    assert_clean_error(r, message)
    assert r.exit_code == code


def test_metadata_json_that_is_a_list(runs, exports, fmnist_dir, tmp_path):
    bad = _copy(exports, tmp_path)
    (bad / "metadata.json").write_text("[1, 2]")
    assert_clean_error(_cli(bad, runs, fmnist_dir), "holds a JSON list")


@pytest.mark.parametrize("opt,value", [("--atol", "-1"), ("--atol", "nan"), ("--rtol", "inf")])
def test_bad_tolerance_options(opt, value, runs, exports, fmnist_dir):
    r = _cli(exports("fashion-mnist"), runs, fmnist_dir, opt, value)
    assert_clean_error(r, f"{opt} must be a finite number >= 0")
    assert r.exit_code == 2


def test_bad_report_paths(runs, exports, fmnist_dir, tmp_path):
    assert_clean_error(_cli(exports("fashion-mnist"), runs, fmnist_dir, "--report", tmp_path), "is a folder")
    (tmp_path / "file").write_text("x")
    assert_clean_error(_cli(exports("fashion-mnist"), runs, fmnist_dir, "--report", tmp_path / "file" / "r.json"),
                       "cannot be written")


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
    r = _cli(exports("fashion-mnist"), runs, fmnist_dir, "--backends", "ort-cpu,ort-cuda", "--require-cuda")
    assert r.exit_code == 1 and "ort-cuda" in r.stderr


def test_missing_runtime_package_skips_with_install_command(runs, exports, fmnist_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    rep = verify(VerifyOptions(exported=exports("fashion-mnist"), checkpoint=runs("fashion-mnist") / "best.pth",
                               data_dir=str(fmnist_dir), backends=("ort-cpu", "torchscript-cpu")), log=lambda _: None)
    e = rep.backends["ort-cpu"]
    assert e.status == "skipped" and "pip install" in e.reason and rep.passed  # torchscript-cpu was compared


@pytest.mark.parametrize("backend", ["ort-cuda", "ort-cuda-raw"])
def test_ort_cuda_fallback_to_cpu_fails(backend, runs, exports, fmnist_dir, monkeypatch):
    """A CUDA session that silently runs on CPU must fail, not pass as CUDA."""
    import onnxruntime as ort

    import lenet_export.backends.onnxruntime as B

    monkeypatch.setattr(B, "cuda_device", lambda: "fake GPU")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession

    def session(path, opts, providers, **kw):  # what onnxruntime does when CUDA cannot initialise: CPU only
        return real(path, opts, providers=["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(ort, "InferenceSession", session)
    rep = verify(VerifyOptions(exported=exports("fashion-mnist"), checkpoint=runs("fashion-mnist") / "best.pth",
                               data_dir=str(fmnist_dir), backends=(backend,)), log=lambda _: None)
    e = rep.backends[backend]
    assert e.status == "failed" and "fell back to CPU" in e.reason and rep.passed is False
