"""lenet-export quantize: FP16 and INT8 variants judged by their own budgets on the whole test set."""

import importlib.util
import json
import shutil

import onnx
from onnx import numpy_helper
import pytest

from conftest import REPO, assert_clean_error, data_dir_for, run_cli
from lenet_export.quantize import QuantizeOptions, quantize
from lenet_export.verify import VerifyOptions, verify

DATASETS = ["fashion-mnist", "cifar10"]
VARIANTS = ("ort-cpu", "ort-cpu-fp16", "ort-cpu-int8")


@pytest.fixture(scope="module")
def quantized(runs, exports, request, tmp_path_factory):
    cache = {}

    def get(dataset):
        if dataset not in cache:
            out = tmp_path_factory.mktemp(f"q-{dataset}") / "export"
            shutil.copytree(exports(dataset), out)
            # every layer in INT8 (no accuracy control: tested on its own below), so INT8 is INT8 everywhere
            quantize(QuantizeOptions(exported=out, checkpoint=runs(dataset) / "best.pth", max_drop=100,
                                     data_dir=str(data_dir_for(dataset, request))), log=lambda _: None)
            cache[dataset] = out
        return cache[dataset]
    return get


def _verify(out, dataset, runs, request, backends=VARIANTS):
    return verify(VerifyOptions(exported=out, checkpoint=runs(dataset) / "best.pth",
                                data_dir=str(data_dir_for(dataset, request)), backends=backends), log=lambda _: None)


# Weight copies an INT8 file may hold: OpenVINO's and ExecuTorch's variants of the CIFAR-10 model (test-time flip)
# quantise the mirror image's pass on its own (ONNX Runtime's copies are merged: its bound stays 0.35)
COPIES = {"fashion-mnist": 1, "cifar10": 2}


def _int8_sized(e, fp32, meta: dict, artefact: str, dataset: str) -> None:
    """An INT8 variant is under 0.4x its FP32 artefact per weight copy (OpenVINO's INT8 IR of the Fashion-MNIST
    model: 0.36x), unless accuracy control kept layers in float (then the record names them, and they are
    float-sized)."""
    control = (meta.get(artefact) or {}).get("accuracy_control") or {}
    if control.get("kept_in_float"):
        assert e.size_bytes < fp32.size_bytes * COPIES[dataset] * 1.1
        return
    assert e.size_bytes < 0.4 * COPIES[dataset] * fp32.size_bytes, (artefact, e.size_bytes, fp32.size_bytes)


@pytest.mark.parametrize("dataset", DATASETS)
def test_variants_pass_their_budgets(dataset, quantized, runs, request):
    out = quantized(dataset)
    rep = _verify(out, dataset, runs, request)
    assert rep.passed, rep.problems
    fp32, fp16, int8 = (rep.backends[b] for b in VARIANTS)
    assert fp16.precision == "fp16" and int8.precision == "int8" and fp32.precision == "fp32"
    assert fp16.size_bytes < 0.6 * fp32.size_bytes and int8.size_bytes < 0.35 * fp32.size_bytes
    assert rep.reference_accuracy - int8.accuracy <= 0.005 and rep.reference_accuracy - fp16.accuracy <= 0.0005
    assert 1e-5 < fp16.logits.max_abs < 0.1  # really reduced precision, and close
    assert int8.argmax_agree + len(int8.disagreements) == 10000
    meta = json.loads((out / "metadata.json").read_text())
    cal = meta["calibration"]
    assert cal["split"] == "train" and cal["size"] == 500 and cal["seed"] == 0 and not cal["per_channel"]
    props = {p.key: p.value for p in onnx.load(out / "model.int8.onnx").metadata_props}
    assert json.loads(props["calibration"]) == cal and props["precision"] == "int8"
    assert rep.metadata.passed and "model.int8.onnx:metadata_props" in rep.metadata.files
    if importlib.util.find_spec("nncf") and importlib.util.find_spec("openvino"):
        ov = _verify(out, dataset, runs, request, ("openvino-cpu", "openvino-cpu-int8"))
        e = ov.backends["openvino-cpu-int8"]
        assert ov.passed and e.precision == "int8", ov.problems
        _int8_sized(e, ov.backends["openvino-cpu"], meta, "model.int8.xml", dataset)
        assert "model.int8.xml:rt_info" in ov.metadata.files
    if importlib.util.find_spec("ai_edge_quantizer") and (out / "model.tflite").is_file():
        lt = _verify(out, dataset, runs, request, ("litert-cpu", "litert-cpu-int8"))
        e = lt.backends["litert-cpu-int8"]
        # judged by the INT8 budgets: it passes on Fashion-MNIST; on the session's briefly trained CIFAR-10 model
        # it may miss them (int8 input and output), and then only by the budget rules, never by a broken run
        assert e.precision == "int8" and e.ran, e.failures
        assert lt.passed if dataset == "fashion-mnist" else set(e.rules) <= {"accuracy-drop", "confident-flips"}, \
            e.failures
        _int8_sized(e, lt.backends["litert-cpu"], meta, "model.int8.tflite", dataset)
        assert e.runtime["io"].startswith("int8")
        assert "model.int8.tflite:lenet_export" in lt.metadata.files
        assert meta["model.int8.tflite"]["quantizer"].startswith("ai-edge-quantizer")
    if importlib.util.find_spec("executorch") and (out / "model.pte").is_file():
        et = _verify(out, dataset, runs, request, ("executorch-cpu", "executorch-cpu-int8"))
        e = et.backends["executorch-cpu-int8"]
        assert e.precision == "int8" and e.ran, e.failures  # as LiteRT's above (the shipped CIFAR-10 one missed)
        assert et.passed if dataset == "fashion-mnist" else set(e.rules) <= {"accuracy-drop", "confident-flips"}, \
            e.failures
        _int8_sized(e, et.backends["executorch-cpu"], meta, "model.int8.pte", dataset)
        assert "model.int8.pte:metadata()" in et.metadata.files
        # XNNPACK took the quantised convolutions and linear layers, not only the float ops around them
        assert {"aten_convolution_default", "aten_linear_default"} <= set(e.runtime["delegated_op_types"]), e.runtime


def test_bad_calibration_fails_the_accuracy_budget(runs, exports, request, tmp_path, zero_calibration):
    out = tmp_path / "export"
    shutil.copytree(exports("fashion-mnist"), out)
    quantize(QuantizeOptions(exported=out, checkpoint=runs("fashion-mnist") / "best.pth", max_drop=100,
                             data_dir=str(data_dir_for("fashion-mnist", request)),
                             formats=("onnx-int8", "litert-int8", "executorch-int8")), log=lambda _: None)
    lite = tuple(b for b, f in (("litert-cpu-int8", "model.int8.tflite"), ("executorch-cpu-int8", "model.int8.pte"))
                 if (out / f).is_file())
    rep = _verify(out, "fashion-mnist", runs, request, ("ort-cpu-int8", *lite))
    for name in ("ort-cpu-int8", *lite):
        e = rep.backends[name]
        assert e.status == "failed" and "accuracy-drop" in e.rules, (name, e.failures)


def test_calibration_on_test_images_is_refused(runs, exports, request, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(exports("fashion-mnist"), out)
    quantize(QuantizeOptions(exported=out, checkpoint=runs("fashion-mnist") / "best.pth",
                             data_dir=str(data_dir_for("fashion-mnist", request)), calibration_split="test",
                             formats=("onnx-int8", "openvino-int8", "litert-int8", "executorch-int8")), log=lambda _: None)
    ov = ("openvino-cpu-int8",) if importlib.util.find_spec("nncf") and importlib.util.find_spec("openvino") else ()
    lite = tuple(b for b, f in (("litert-cpu-int8", "model.int8.tflite"), ("executorch-cpu-int8", "model.int8.pte"))
                 if (out / f).is_file())
    rep = _verify(out, "fashion-mnist", runs, request, ("ort-cpu", "ort-cpu-int8", *ov, *lite))
    for name in ("ort-cpu-int8", *ov, *lite):
        e = rep.backends[name]
        assert e.status == "failed" and "calibrated on the 'test' split: refused" in e.reason, (name, e.reason)


def test_cli_and_skips(runs, exports, fmnist_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(exports("fashion-mnist"), out)
    ck = runs("fashion-mnist") / "best.pth"
    rep = verify(VerifyOptions(exported=out, checkpoint=ck, data_dir=str(fmnist_dir), backends=("ort-cpu-int8",
                                                                                            "ort-cpu")), log=lambda _: None)
    assert rep.backends["ort-cpu-int8"].status == "skipped" and "lenet-export quantize" in rep.backends["ort-cpu-int8"].reason
    assert_clean_error(run_cli("quantize", "--exported", out, "--checkpoint", ck, "--data-dir", fmnist_dir,
                               "--calibration-size", "0"), "--calibration-size must be positive")
    assert_clean_error(run_cli("quantize", "--exported", out, "--checkpoint", ck, "--formats", "onnx-int4"),
                       "--formats: unknown variant onnx-int4")
    r = run_cli("quantize", "--exported", out, "--checkpoint", ck, "--data-dir", fmnist_dir, "--calibration-size", "64",
                "--formats", "onnx-int8")
    assert r.exit_code == 0, r.output
    assert "calibration: 64 images of the train split, seed 0" in r.stdout
    listed = json.loads((out / "metadata.json").read_text())["formats"]
    assert "onnx-int8" in listed and "onnx-fp16" not in listed and not (out / "model.fp16.onnx").exists()


@pytest.mark.parametrize("backend", ["ort-cpu-int8", "ort-cpu-fp16"])
def test_diff_shows_where_reduced_precision_loses(backend, quantized, runs, fmnist_dir, tmp_path):
    out = quantized("fashion-mnist")
    r = run_cli("diff", "--exported", out, "--checkpoint", runs("fashion-mnist") / "best.pth", "--backend", backend,
                "--data-dir", fmnist_dir, "--samples", 32, "--json", tmp_path / "d.json")
    assert r.exit_code == 1, r.output  # reduced precision is beyond the FP32 tolerance somewhere, by design
    layers = json.loads((tmp_path / "d.json").read_text())["layers"]
    assert len(layers) >= 5 and layers[-1]["layer"] == "output"  # test-time flip: the mean has its own row
    assert any(layer["layer"].endswith("classifier.3") for layer in layers)
    sqnr = [layer["sqnr_db"] for layer in layers if layer["layer"] != "input"]
    # a real comparison at every point: INT8 keeps roughly 25-45 dB, FP16 far more; never noise (< 10 dB)
    assert min(sqnr) > (20 if backend.endswith("int8") else 50), layers
    if backend.endswith("int8"):
        assert all(layer["tensor"].endswith("_DequantizeLinear_Output") for layer in layers[:-1])


def _shipped_copy(tmp_path, dataset="cifar10"):
    """The shipped export's checkpoint and ONNX models only (no variants yet)."""
    src = next((REPO / "exported").glob(f"{dataset}-*"))
    out = tmp_path / "export"
    out.mkdir()
    for name in ("best.pth", "model.onnx", "model.raw.onnx", "test_data_set_0", "raw_test_data_set_0"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, out / name)
    meta = json.loads((src / "metadata.json").read_text())
    meta["formats"] = {k: v for k, v in meta["formats"].items() if k in ("onnx", "raw-onnx")}
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


@pytest.mark.heavy  # the whole CIFAR-10 test split, twice
def test_accuracy_control_keeps_the_sensitive_layers_in_float(tmp_path, request):
    """Every layer of the shipped CIFAR-10 model in INT8 loses accuracy on validation (on the AMD machine 0.59 points
    on test, beyond the 0.5 budget; VNNI's kernels on an Intel machine lose less). With ``--max-drop`` below that
    loss, accuracy control, judged on the validation split, keeps layers in float until the loss is within it,
    records them, and the variant passes on test."""
    data = str(data_dir_for("cifar10", request))
    out = _shipped_copy(tmp_path)
    backends = ("torch-cpu", "ort-cpu-int8")

    def run(max_drop):
        quantize(QuantizeOptions(exported=out, checkpoint=out / "best.pth", data_dir=data, max_drop=max_drop,
                                 formats=("onnx-int8",)), log=lambda _: None)
        control = json.loads((out / "metadata.json").read_text())["model.int8.onnx"]["accuracy_control"]
        return control, verify(VerifyOptions(exported=out, checkpoint=out / "best.pth", data_dir=data,
                                             backends=backends), log=lambda _: None)

    control, rep = run(100.0)  # no control: every layer in INT8
    val = control["validation_accuracy"]
    lost = (val["fp32"] - val["int8_all_layers"]) * 100
    assert control["kept_in_float"] == [] and val["int8"] == val["int8_all_layers"], val
    if lost <= 0:
        pytest.skip(f"every layer in INT8 loses nothing on validation with this CPU's kernels ({val}): no drop to control")
    if rep.backends["ort-cpu-int8"].status == "failed":  # beyond the budget on test (the AMD machine)
        assert "accuracy-drop" in rep.backends["ort-cpu-int8"].rules
    max_drop = min(0.25, lost / 2)  # the default, or below what this CPU's kernels lose
    control, rep = run(max_drop)
    val = control["validation_accuracy"]
    assert control["kept_in_float"] and (val["fp32"] - val["int8"]) * 100 <= max_drop < lost, (max_drop, control)
    assert rep.backends["ort-cpu-int8"].status == "passed", rep.backends["ort-cpu-int8"].failures
    props = {p.key: p.value for p in onnx.load(str(out / "model.int8.onnx")).metadata_props}
    assert json.loads(props["accuracy_control"])["kept_in_float"] == control["kept_in_float"]


def test_max_drop_out_of_range_is_a_one_line_error(tmp_path):
    out = _shipped_copy(tmp_path, "fashion-mnist")
    assert_clean_error(run_cli("quantize", "--exported", out, "--max-drop", "-1"), "--max-drop")


@pytest.mark.heavy
def test_nncf_accuracy_control_reverts_what_bad_calibration_broke(tmp_path, zero_calibration, request):
    """All-zero calibration images break OpenVINO INT8 (every layer quantised: about 7 points lost on validation);
    NNCF's accuracy control keeps a layer in float, and the variant passes verify on the test split."""
    if not (importlib.util.find_spec("nncf") and importlib.util.find_spec("openvino")):
        pytest.skip("nncf and openvino are not installed (pip install 'lenet-export[openvino]')")
    out = tmp_path / "export"
    shutil.copytree(REPO / "exported" / "fashion-mnist-lenet-modern", out)
    data = str(data_dir_for("fashion-mnist", request))
    quantize(QuantizeOptions(exported=out, data_dir=data, formats=("openvino-int8",)), log=lambda _: None)
    control = json.loads((out / "metadata.json").read_text())["model.int8.xml"]["accuracy_control"]
    val = control["validation_accuracy"]
    assert control["kept_in_float"] and val["fp32"] - val["int8"] <= 0.0025 < val["fp32"] - val["int8_all_layers"]
    rep = verify(VerifyOptions(exported=out, data_dir=data, backends=("openvino-cpu-int8",)), log=lambda _: None)
    assert rep.backends["openvino-cpu-int8"].status == "passed", rep.backends["openvino-cpu-int8"].failures
    from lenet_export.formats.openvino import read_openvino_metadata

    assert read_openvino_metadata(out / "model.int8.xml")["accuracy_control"]["kept_in_float"] == control["kept_in_float"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_int8_sessions_keep_each_pool_beside_its_convolution(dataset, tmp_path, monkeypatch):
    """ORT's QDQ propagation would move the quantisation of a float convolution's output above its MaxPool, which
    then runs as ORT's plain NCHW int8 pool (2x slower INT8 overall here). ``open_session`` turns that pass off:
    the pools of the optimised graph are blocked float (NCHWc) or quantised NHWC (but one, below), and the logits
    are the bits the session with the pass gives."""
    import numpy as np
    import onnxruntime as ort

    from lenet_export.ort_session import open_session

    model = REPO / "exported" / ("fashion-mnist-lenet-modern" if dataset == "fashion-mnist"
                                 else "cifar10-lenet-modern-cifar") / "model.int8.onnx"
    real = ort.SessionOptions

    def keeping_the_graph():
        opts = real()
        opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
        return opts

    def int8_plain_pools(graph) -> list[tuple]:
        """(pool, what the quantised tensor it reads was computed by) for each plain NCHW MaxPool of int8 data."""
        producers = {o: n for n in graph.node for o in n.output}
        found = []
        for n in graph.node:
            p = producers.get(n.input[0])
            if (n.domain, n.op_type) == ("", "MaxPool") and p is not None and (
                    p.op_type == "QuantizeLinear" or p.op_type.startswith("QLinear")):
                source = producers.get(p.input[0]) if p.op_type == "QuantizeLinear" else p
                found.append((n.name, (source.domain, source.op_type) if source is not None else None))
        return found

    monkeypatch.setattr(ort, "SessionOptions", keeping_the_graph)
    sess = open_session(model)
    graph = onnx.load(str(tmp_path / "optimised.onnx")).graph
    pools = [(n.domain, n.op_type) for n in graph.node if "Pool" in n.op_type]
    assert ("com.microsoft.nchwc", "MaxPool") in pools or ("com.microsoft", "NhwcMaxPool") in pools
    ort.InferenceSession(str(model), keeping_the_graph(), providers=["CPUExecutionProvider"])  # the pass on
    propagated = int8_plain_pools(onnx.load(str(tmp_path / "optimised.onnx")).graph)
    monkeypatch.undo()
    off = int8_plain_pools(graph)
    # turning the pass off never adds an int8 pool (on the models without test-time flip shipped before
    # 2026-12-01 it removed Fashion-MNIST's only one). Both models now keep one either way: after the image pass's
    # first convolution, which ORT runs in float (its quantised input also feeds the mirror image's Slice); never
    # one after an INT8 or a blocked convolution
    assert set(off) <= set(propagated), (off, propagated)
    assert all(source == ("", "Conv") for _, source in off), off
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    c, h, w = [d for d in plain.get_inputs()[0].shape[1:]]
    x = np.random.default_rng(0).normal(size=(64, c, h, w)).astype(np.float32)
    off, on = sess.run(None, {"input": x})[0], plain.run(None, {"input": x})[0]
    # with the mirror pass, propagation may also move rounding: at most a step or two of the logits' quantisation
    # (one on the AMD machine, two with an Intel machine's VNNI kernels, none on the models of 2026-12-01 there),
    # on few of the logits
    step = next(numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer if t.name == "logits_scale")
    moved = np.abs(off - on)
    assert moved.max() <= 2 * step * 1.001 and (moved > 0).mean() < 0.5, (moved.max() / step, (moved > 0).mean())
