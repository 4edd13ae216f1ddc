"""`diff` inside LiteRT: the shipped model.tflite is within tolerance at every mapped layer, a weight scaled inside
the flatbuffer is named as the first divergent layer, and the INT8 variant diverges where it quantises (its input)
and stays a real comparison (SQNR) at every layer after."""

import json
import shutil

import numpy as np
import pytest

from conftest import REPO, run_cli

SHIPPED = REPO / "exported" / "fashion-mnist-lenet-modern"

pytestmark = pytest.mark.heavy


@pytest.fixture(autouse=True)
def _litert():
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install 'lenet-export[litert]')")


def _diff(folder, backend, fmnist_dir, tmp_path, ok=(0, 1)):
    out = tmp_path / f"{backend}.json"
    r = run_cli("diff", "--exported", folder, "--checkpoint", SHIPPED / "best.pth", "--backend", backend,
                "--data-dir", fmnist_dir, "--samples", 16, "--json", out)
    assert r.exit_code in ok, r.output
    return json.loads(out.read_text()), r.stdout


def test_untouched_tflite_is_within_tolerance_at_every_layer(fmnist_dir, tmp_path):
    d, stdout = _diff(SHIPPED, "litert-cpu", fmnist_dir, tmp_path, ok=(0,))
    names = [layer["layer"] for layer in d["layers"]]
    assert d["first_divergent_layer"] is None and len(names) >= 8, names
    assert names[0] == "input" and names[-1] == "output" and "features.3" in names and "classifier.0" in names
    # test-time flip: the graph's output is the mean of both passes, a row of its own after the last layer's
    assert "classifier.3" in names and d["layers"][-1]["modules"] == []
    assert all(layer["max_abs"] < 1e-4 for layer in d["layers"])
    assert "without its XNNPACK delegate" in stdout.replace("\n", " ")


def test_a_scaled_weight_inside_the_flatbuffer_is_named(fmnist_dir, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    bad = tmp_path / "bad"
    shutil.copytree(SHIPPED, bad)
    model = flatbuffer_utils.read_model(str(bad / "model.tflite"))
    tensors = model.subgraphs[0].tensors
    from lenet_export.checkpoint import load_checkpoint

    shape = list(load_checkpoint(SHIPPED / "best.pth")["state_dict"]["classifier.1.weight"].shape)
    weight = next(t for t in tensors if list(t.shape) == shape and t.buffer)  # its weights, by their shape
    buf = model.buffers[weight.buffer]
    w = np.frombuffer(bytes(buf.data), dtype=np.float32).reshape(weight.shape).copy()
    w += 1e-3  # every weight of classifier.1 (one unit alone can be dead after the ReLU on these samples)
    buf.data = np.frombuffer(w.tobytes(), dtype=np.uint8)
    flatbuffer_utils.write_model(model, str(bad / "model.tflite"))
    d, stdout = _diff(bad, "litert-cpu", fmnist_dir, tmp_path, ok=(1,))
    assert "classifier.1" in d["first_divergent_modules"], d["layers"]
    before = [layer for layer in d["layers"] if layer["layer"] != "input"][:5]
    assert all(layer["within_tolerance"] for layer in before)
    assert "litert-cpu first diverges at classifier.1" in stdout


def test_int8_tflite_diverges_where_it_quantises(fmnist_dir, tmp_path):
    pytest.importorskip("ai_edge_quantizer", reason="ai-edge-quantizer is not installed")
    q = tmp_path / "q"
    shutil.copytree(SHIPPED, q)
    r = run_cli("quantize", "--exported", q, "--data-dir", fmnist_dir, "--formats", "litert-int8")
    assert r.exit_code == 0, r.output
    d, _ = _diff(q, "litert-cpu-int8", fmnist_dir, tmp_path, ok=(1,))
    assert d["first_divergent_layer"] == "input"  # the int8 input tensor
    assert len(d["layers"]) >= 8 and all(layer["sqnr_db"] > 10 for layer in d["layers"]), d["layers"]


def _executorch():
    pytest.importorskip("executorch", reason="executorch is not installed (pip install 'lenet-export[executorch]')")


def test_executorch_layers_come_from_etdump_and_the_output_from_the_artefact(fmnist_dir, tmp_path):
    """The shipped model.pte: every module of the network has a row (ETDump of the non-delegated twin, mapped by
    ETRecord), all within tolerance, the last one read from model.pte itself, and the output says so."""
    _executorch()
    d, stdout = _diff(SHIPPED, "executorch-cpu", fmnist_dir, tmp_path, ok=(0,))
    rows = {layer["layer"]: layer["tensor"] for layer in d["layers"]}
    # three stages of conv, batch norm, ReLU and pool
    assert [r for r in rows if r.startswith("features.")] == [f"features.{i}" for i in range(12)], rows
    assert rows["output"] == "model.pte:output" and rows["features.4"] == "twin:features.4"
    assert rows["classifier.3"] == "twin:classifier.3"
    assert d["first_divergent_layer"] is None and all(layer["max_abs"] < 1e-4 for layer in d["layers"])
    assert "without the delegate" in " ".join(stdout.split())


@pytest.mark.parametrize("how", ["one filter 5% larger", "one weight 10x the largest"])
def test_a_perturbed_pte_is_named_where_its_weights_moved(how, fmnist_dir, tmp_path):
    """A model.pte written by the real writer from a model whose second convolution moved (slightly, or one
    weight far out): the twin carries the weights read from the file (not the checkpoint's), so diff names that
    convolution, and says where the weights came from."""
    _executorch()
    import torch

    from lenet_export.checkpoint import load_checkpoint, model_from_checkpoint
    from lenet_export.formats import Target, registry

    bad = tmp_path / "bad"
    shutil.copytree(SHIPPED, bad)
    ckpt = load_checkpoint(SHIPPED / "best.pth")
    model = model_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        w = model.features[4].weight
        if how.startswith("one filter"):
            w[3] *= 1.05
        else:
            w[3, 0, 1, 1] = 10 * w.abs().max()
    meta = json.loads((SHIPPED / "metadata.json").read_text())
    registry()["executorch"].write(Target(bad, model, None, torch.zeros(2, *ckpt["input_shape"]), None, meta))
    d, stdout = _diff(bad, "executorch-cpu", fmnist_dir, tmp_path, ok=(1,))
    assert d["first_divergent_layer"] == "features.4", d["layers"]
    assert all(layer["within_tolerance"] for layer in d["layers"][:4])
    assert "differ from the checkpoint's in features.4." in " ".join(stdout.split())


def test_pte_weights_that_match_no_layer_leave_the_checkpoints_with_a_note():
    """The mapping from the program's constants to layers refuses what is not near the checkpoint's weights
    (here: another network's), and says so instead of running the twin on misplaced values."""
    _executorch()
    from lenet_export.backends.executorch import _adopt_weights
    from lenet_export.checkpoint import load_checkpoint, model_from_checkpoint
    from lenet_export.formats.executorch import pte_constants

    model = model_from_checkpoint(load_checkpoint(SHIPPED / "best.pth")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert "they are the checkpoint's" in _adopt_weights(model, "model.pte", pte_constants(SHIPPED / "model.pte"))
    other = SHIPPED.parent / "cifar10-lenet-modern-cifar" / "model.pte"
    note = _adopt_weights(model, "model.pte", pte_constants(other))
    assert "could not be mapped" in note
    assert all((before[k] - v).abs().max() < 1e-5 for k, v in model.state_dict().items())


@pytest.mark.parametrize("backend", ["litert-cpu", "executorch-cpu", "torchscript-cpu", "pt2-cpu", "ort-cpu",
                                     "openvino-cpu"])
def test_a_test_time_flip_model_is_within_tolerance_at_every_row(backend, cifar_dir, tmp_path):
    """The shipped CIFAR-10 model averages two passes: each layer row compares one pass (the mirror's, as both
    sides keep a layer's last value), and an output row the averaged logits with the model's own output, not
    with its last layer's. A 16x16 map with 16 channels reads as NCHW and as NHWC: LiteRT's NHWC is taken.
    TorchScript's submodules, run in order, are run on the image and on its mirror image."""
    if backend.startswith("executorch"):
        _executorch()
    if backend.startswith("openvino"):
        pytest.importorskip("openvino", reason="openvino is not installed (pip install 'lenet-export[openvino]')")
    cifar = REPO / "exported" / "cifar10-lenet-modern-cifar"
    out = tmp_path / "d.json"
    r = run_cli("diff", "--exported", cifar, "--checkpoint", cifar / "best.pth", "--backend", backend,
                "--data-dir", cifar_dir, "--samples", 8, "--json", out)
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    rows = {layer["layer"]: layer for layer in d["layers"]}
    assert d["first_divergent_layer"] is None and rows["output"]["max_abs"] < 1e-4, d["layers"]
    assert list(rows)[-1] == "output" and rows["features.3"]["max_abs"] < 1e-4


def test_executorch_int8_is_compared_layer_by_layer(fmnist_dir, tmp_path):
    """The shipped model.int8.pte: its twin is the checkpoint quantised again on the recorded calibration images;
    every module has a row, a real comparison (finite SQNR well above noise), diverging from FP32 where it
    quantises, and the output says how the twin was made."""
    _executorch()
    d, stdout = _diff(SHIPPED, "executorch-cpu-int8", fmnist_dir, tmp_path, ok=(1,))
    rows = {layer["layer"]: layer for layer in d["layers"]}
    # pooled first, each batch norm has a row of its own: PT2E folds one only into the conv right before it
    assert rows["features.2"]["modules"] == ["features.2"] and rows["features.0"]["modules"] == ["features.0"]
    assert rows["output"]["tensor"] == "model.int8.pte:output"
    assert d["first_divergent_layer"] == "features.0"  # where it first quantises
    assert all(20 < layer["sqnr_db"] < 80 for layer in d["layers"]), d["layers"]
    assert "quantised again" in " ".join(stdout.split())
