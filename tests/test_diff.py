"""lenet-export diff: each perturbed stage is named as the first divergent layer, untouched exports are within
tolerance everywhere, and verify's failure output names the first diverging layer.

The session exports (lenet-modern, lenet-modern-cifar) are shared with the other test files; lenet-classic is
trained (1 epoch, 2000 images) and exported (ONNX only) once here. Diff runs call the library on the first 64
test images; one test goes through the CLI, one through verify.
"""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import assert_clean_error, data_dir_for, run_cli
from lenet_export.backends import Context
from lenet_export.diff import attach, localise
from lenet_export.artefacts import load_export, load_inputs
from lenet_export.layermap import layer_map

SAMPLES = 64
# The stages of each model: every layer with weights, named as in the state dict.
STAGES = {
    "lenet-modern": ["features.0", "features.4", "features.8", "classifier.1", "classifier.3"],
    "lenet-modern-cifar": ["features.0", "features.4", "features.8", "features.12", "classifier.1"],
    "lenet-classic": ["features.0", "features.3", "classifier.1", "classifier.3", "classifier.5"],
}
DATASET = {"lenet-modern": "fashion-mnist", "lenet-modern-cifar": "cifar10", "lenet-classic": "fashion-mnist"}


@pytest.fixture(scope="module")
def classic_export(tmp_path_factory, fmnist_dir):
    from lenet_export.export import ExportOptions, export
    from lenet_export.training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run-classic")
    train(TrainConfig(dataset="fashion-mnist", model="lenet-classic", epochs=1, train_limit=2000, seed=0,
                      data_dir=str(fmnist_dir), out=str(run), force=True), log=lambda _: None)
    out = tmp_path_factory.mktemp("export-classic") / "export"
    export(run / "best.pth", ExportOptions(out=out, formats="onnx", data_dir=str(fmnist_dir)), log=lambda _: None)
    return out, run / "best.pth"


@pytest.fixture(scope="module")
def setups(exports, runs, classic_export, request):
    """model -> (export folder, metadata, checkpoint, float inputs, uint8 inputs), loaded once."""
    cache = {}

    def get(model):
        if model not in cache:
            dataset = DATASET[model]
            folder, ckpt_path = (classic_export if model == "lenet-classic"
                                 else (exports(dataset), runs(dataset) / "best.pth"))
            export = load_export(folder, ckpt_path)
            meta, ckpt = export.metadata, export.checkpoint
            inputs, _ = load_inputs(dataset, ckpt, str(data_dir_for(dataset, request)))
            cache[model] = (folder, meta, ckpt, inputs.float[:SAMPLES].copy(), inputs.uint8[:SAMPLES].copy())
        return cache[model]
    return get


def _perturbed_copy(folder, tmp_path, artefact, weight):
    """``artefact`` copied into tmp_path with initializer ``weight`` scaled by 1.25."""
    m = onnx.load(folder / artefact)
    init = next(t for t in m.graph.initializer if t.name == weight)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.25), init.name))
    onnx.save(m, tmp_path / artefact)
    return tmp_path


def _diff(backend, folder, setup):
    _, meta, ckpt, xf, xu = setup
    return localise(backend, Context(folder, meta, ckpt), xf, xu)


def test_layer_map_recorded_at_export(setups):
    folder, meta, *_ = setups("lenet-modern")
    assert meta["layer_map"] == layer_map(onnx.load(folder / "model.onnx"))
    # test-time flip: both passes share the weights, so the exporter keeps batch norm apart from the conv and
    # every stage has a tensor of its own (the mirror pass's, the later one); the logits are the mean's
    assert {"features.0", "features.1", "features.4", "features.8", "classifier.3"} <= set(meta["layer_map"])
    assert meta["layer_map"]["classifier.3"] != "logits"
    assert list(meta["raw_layer_map"])[0] == "input" and "features.5" in meta["raw_layer_map"]


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m == "lenet-modern-cifar" else m
                                   for m in STAGES])  # CIFAR-10 (53 s): -m slow
def test_untouched_export_is_within_tolerance_everywhere(model, setups):
    folder = setups(model)[0]
    res = _diff("ort-cpu", folder, setups(model))
    assert res.first_divergent_layer is None and all(s.within_tolerance for s in res.layers), res.layers
    assert res.layers[-1].tensor == "logits" and res.samples == SAMPLES
    assert all(s.max_abs < 1e-4 and s.sqnr_db > 80 for s in res.layers)
    covered = [m for s in res.layers for m in s.modules]
    assert covered == [n for n, m in torch.nn.Module.named_modules(_model(setups(model))) if n and not list(m.children())]


def _model(setup):
    from lenet_export.checkpoint import model_from_checkpoint

    return model_from_checkpoint(setup[2])


@pytest.mark.parametrize("model,stage", [(m, s) for m, stages in STAGES.items() for s in stages])
def test_perturbed_onnx_stage_is_named(model, stage, setups, tmp_path):
    setup = setups(model)
    bad = _perturbed_copy(setup[0], tmp_path, "model.onnx", f"{stage}.weight")
    res = _diff("ort-cpu", bad, setup)
    assert stage in res.first_divergent_modules, [(s.label, s.max_abs) for s in res.layers]
    first = res.layers.index(res.first)
    assert all(s.within_tolerance for s in res.layers[:first])
    assert res.first.max_abs > 1e-3 and res.layers[-1].within_tolerance is False


def test_raw_model_normalisation_and_stage(setups, tmp_path):
    setup = setups("lenet-modern")
    clean = _diff("ort-cpu-raw", setup[0], setup)
    assert clean.layers[0].layer == "input" and clean.first_divergent_layer is None
    bad = _perturbed_copy(setup[0], tmp_path, "model.raw.onnx", "model.features.4.weight")
    assert _diff("ort-cpu-raw", bad, setup).first_divergent_modules == ["features.4"]
    bad = _perturbed_copy(setup[0], tmp_path, "model.raw.onnx", "mean")  # the uint8 -> float prefix
    assert _diff("ort-cpu-raw", bad, setup).first_divergent_layer == "input"


@pytest.mark.parametrize("backend", ["openvino-cpu", "pt2-cpu", "torchscript-cpu"])
def test_other_runtimes_untouched(backend, setups):
    pytest.importorskip("openvino") if backend == "openvino-cpu" else None
    res = _diff(backend, setups("lenet-modern")[0], setups("lenet-modern"))
    assert res.first_divergent_layer is None and len(res.layers) >= 10


def test_perturbed_torchscript_is_localised(setups, tmp_path):
    setup = setups("lenet-modern")
    m = torch.jit.load(str(setup[0] / "model.pt"))
    with torch.no_grad():
        dict(m.named_modules())["features.4"].weight[0].mul_(1.25)  # ScriptModules take no indexing
    torch.jit.save(m, str(tmp_path / "model.pt"))
    res = _diff("torchscript-cpu", tmp_path, setup)
    assert res.first_divergent_layer == "features.4" and res.first_divergent_modules == ["features.4"]
    assert all(s.max_abs == 0 for s in res.layers[:4])  # same kernels before it: bit-identical


def _bad_export(exports, runs, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exports("fashion-mnist"), bad)
    _perturbed_copy(bad, bad, "model.onnx", "features.4.weight")
    shutil.copy(runs("fashion-mnist") / "best.pth", bad / "best.pth")
    return bad


def test_cli_table_json_and_exit_code(exports, runs, fmnist_dir, tmp_path):
    bad = _bad_export(exports, runs, tmp_path)
    r = run_cli("diff", "--exported", bad, "--backend", "ort-cpu", "--data-dir", fmnist_dir, "--samples", 16,
                "--json", tmp_path / "d.json")
    assert r.exit_code == 1, r.output
    assert "ort-cpu first diverges at features.4 (tensor conv2d_4" in r.stdout
    assert "SQNR" in r.stdout and "<- first" in r.stdout
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["first_divergent_layer"] == "features.4" and d["samples"] == 16
    assert {"layer", "tensor", "max_abs", "mean_abs", "rel_l2", "sqnr_db", "within_tolerance"} <= set(d["layers"][0])
    ok = run_cli("diff", "--exported", exports("fashion-mnist"), "--checkpoint", runs("fashion-mnist") / "best.pth",
                 "--backend", "ort-cpu", "--data-dir", fmnist_dir, "--samples", 8)
    assert ok.exit_code == 0 and "every layer within tolerance on 8 samples" in ok.stdout, ok.output


@pytest.mark.parametrize("args,fragment", [(["--backend", "opencv-cpu"], "diff does not support backend 'opencv-cpu'"),
                                            (["--backend", "nope"], "unknown backend 'nope'; choose from: "),
                                            (["--backend", "ort-cpu", "--samples", "0"], "--samples must be")])
def test_cli_clean_errors(args, fragment, exports, runs, fmnist_dir):
    r = run_cli("diff", "--exported", exports("fashion-mnist"), "--checkpoint", runs("fashion-mnist") / "best.pth",
                "--data-dir", fmnist_dir, *args)
    assert_clean_error(r, fragment)


def test_verify_names_first_diverging_layer(exports, runs, fmnist_dir, tmp_path):
    bad = _bad_export(exports, runs, tmp_path)
    r = run_cli("verify", "--exported", bad, "--data-dir", fmnist_dir, "--backends", "ort-cpu,torchscript-cpu",
                "--report", tmp_path / "r.json")
    assert r.exit_code == 1, r.output
    assert "ort-cpu first diverges at features.4 (tensor conv2d_4: max |Δ|" in r.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["backends"]["ort-cpu"]["layer_diff"]["first_divergent_layer"] == "features.4"
    assert rep["backends"]["torchscript-cpu"]["layer_diff"] is None  # passed: not localised


def test_attach_never_raises(setups, tmp_path):
    from lenet_export.report import FAILED, BackendResult
    from lenet_export.parity import LogitStats, Tolerance

    folder, meta, ckpt, xf, xu = setups("lenet-modern")
    (tmp_path / "model.onnx").write_bytes(b"garbage")
    res = BackendResult("ort-cpu", FAILED, logits=LogitStats(1, 1, 1, 1, False))

    class Rep:
        backends = {"ort-cpu": res}

    class Inputs:
        float, uint8 = xf, xu

    attach(Rep, Context(tmp_path, meta, ckpt), Inputs, Tolerance())
    assert res.layer_diff["error"].startswith("diff failed: ")


def test_rows_fold_a_batch_norm_into_a_conv_only():
    """A batch norm with no tensor of its own shares the conv's row before it (folded by the exporter); after
    pooling nothing absorbs it, so it joins the point after it (the ReLU fused with it), never the pool's."""
    from lenet_export.diff import _rows

    kinds = {"c": "Conv2d", "bn": "BatchNorm2d", "r": "ReLU", "p": "MaxPool2d"}
    rows, _ = _rows(["c", "bn", "r", "p"], kinds, {"c": "t1", "r": "t2", "p": "t3"})
    assert [(r.layer, r.tensor, r.modules) for r in rows] == [("bn", "t1", ["c", "bn"]), ("r", "t2", ["r"]),
                                                                ("p", "t3", ["p"])]
    rows, _ = _rows(["c", "p", "bn", "r"], kinds, {"c": "t1", "p": "t2", "r": "t3"})
    assert [(r.layer, r.tensor, r.modules) for r in rows] == [("c", "t1", ["c"]), ("p", "t2", ["p"]),
                                                                ("r", "t3", ["bn", "r"])]
