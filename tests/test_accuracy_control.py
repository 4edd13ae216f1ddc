"""Accuracy control for the mobile INT8 variants (`quantize --max-drop`): a model that INT8 breaks is repaired by
keeping layers in float, chosen on the validation split, with the kept layers recorded inside the artefact and
in metadata.json, and the repaired variant passes verify on the whole test set.

The broken model is the shipped Fashion-MNIST one with one channel of its second conv stage scaled up 1000x by
batch norm and the weights of the next layer that read that channel (the third stage's convolution) scaled down
as much: the same function in float (ReLU and max pooling commute with a positive scale), but one activation
channel 1000x larger than the rest, so per-tensor INT8 activations of that stage lose every other channel."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from lenet_export.accuracy_control import keep_sensitive_in_float
from lenet_export.checkpoint import load_checkpoint, save_checkpoint
from lenet_export.models import build_model
from lenet_export.quantize import QuantizeOptions, quantize
from lenet_export.verify import VerifyOptions, verify

SHIPPED = REPO / "exported" / "fashion-mnist-lenet-modern"
SCALE, CHANNEL = 1000.0, 0
VARIANTS = {"executorch-int8": ("model.int8.pte", "executorch-cpu-int8"),
            "litert-int8": ("model.int8.tflite", "litert-cpu-int8")}



def _needs():
    for package, extra in (("executorch", "executorch"), ("litert_torch", "litert"), ("ai_edge_quantizer", "litert")):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install 'lenet-export[{extra}]')")


@pytest.fixture(scope="module")
def outlier(tmp_path_factory, fmnist_dir):
    """(checkpoint, export folder with model.pte and model.tflite) of the outlier-channel model."""
    _needs()
    root = tmp_path_factory.mktemp("outlier")
    ck = load_checkpoint(SHIPPED / "best.pth")
    sd = ck["state_dict"]
    features = build_model(ck["model_args"]).features
    bn = next(f"features.{i}" for i in range(5, 8) if isinstance(features[i], torch.nn.BatchNorm2d))  # stage 2's
    sd[f"{bn}.weight"][CHANNEL] *= SCALE
    sd[f"{bn}.bias"][CHANNEL] *= SCALE
    sd["features.8.weight"][:, CHANNEL] /= SCALE  # the next conv's weights for that input channel
    save_checkpoint(ck, root / "best.pth")
    r = run_cli("onnx", "--checkpoint", root / "best.pth", "--out", root / "e", "--data-dir", fmnist_dir,
                "--formats", "executorch,litert")
    assert r.exit_code == 0, r.output  # (its checks prove the float artefacts still give the shipped logits)
    return root / "best.pth", root / "e"


def _quantize_and_verify(outlier, fmnist_dir, max_drop):
    ckpt, out = outlier
    quantize(QuantizeOptions(exported=out, checkpoint=ckpt, data_dir=str(fmnist_dir), max_drop=max_drop,
                             formats=tuple(VARIANTS)), log=lambda _: None)
    rep = verify(VerifyOptions(exported=out, checkpoint=ckpt, data_dir=str(fmnist_dir),
                               backends=("torch-cpu", *(b for _, b in VARIANTS.values()))), log=lambda _: None)
    return json.loads((out / "metadata.json").read_text()), rep


@pytest.mark.heavy  # (with the fixture: an export, two INT8 variants quantised, the whole test split)
def test_without_control_the_outlier_breaks_both_mobile_variants(outlier, fmnist_dir):
    meta, rep = _quantize_and_verify(outlier, fmnist_dir, max_drop=100)
    for artefact, backend in VARIANTS.values():
        control = meta[artefact]["accuracy_control"]
        assert control["kept_in_float"] == [] and control["validation_accuracy"]["int8"] < 0.5
        assert rep.backends[backend].status == "failed" and "accuracy-drop" in rep.backends[backend].rules


@pytest.mark.heavy
def test_control_keeps_the_outlier_stage_in_float_and_the_variants_pass(outlier, fmnist_dir, tmp_path):
    from lenet_export.formats.executorch import read_pte_metadata
    from lenet_export.formats.litert import read_tflite_metadata

    meta, rep = _quantize_and_verify(outlier, fmnist_dir, max_drop=0.25)
    for (artefact, backend), read in zip(VARIANTS.values(), (read_pte_metadata, read_tflite_metadata)):
        control = meta[artefact]["accuracy_control"]
        val = control["validation_accuracy"]
        # the stage that carries the outlier or the convolution that reads it (pooled first, the stage's conv
        # output is unscaled: its batch norm scales the channel after the pooling)
        assert set(control["kept_in_float"]) & {"features.4", "features.8"}, control
        assert val["fp32"] - val["int8"] <= 0.0025 < val["fp32"] - val["int8_all_layers"]
        assert control["split"] == "validation" and control["samples"] == 6000
        assert read(outlier[1] / artefact)["accuracy_control"] == control  # inside the artefact too
        assert rep.backends[backend].status == "passed", rep.backends[backend].failures
    # diff's twin of the INT8 program keeps the same layers in float: every row a real comparison (a twin
    # that quantised them would lose the outlier stage, far below 20 dB)
    out = tmp_path / "diff.json"
    r = run_cli("diff", "--exported", outlier[1], "--checkpoint", outlier[0], "--backend", "executorch-cpu-int8",
                "--data-dir", fmnist_dir, "--samples", 16, "--json", out)
    assert r.exit_code in (0, 1), r.output
    rows = json.loads(out.read_text())["layers"]
    assert all(np.isfinite(row["sqnr_db"]) and row["sqnr_db"] > 20 for row in rows), rows
    assert "kept in float as accuracy control did" in " ".join(r.stdout.split())


# ---------------------------------------------------------------------------------------------
# The pieces, without quantising


class _Cal:
    def __init__(self, validation, max_drop=0.25):
        self.validation, self.max_drop = validation, max_drop


def _greedy(accuracy_of_kept: dict, fp32=0.90, max_drop=0.25, validation=(None, [0] * 100)):
    """The loop over layers a, b, c where a variant's accuracy is looked up by the set of layers kept."""
    made = []

    def make(kept):
        made.append(list(kept))
        return frozenset(kept)

    return keep_sensitive_in_float(make, lambda v: accuracy_of_kept[v], ["a", "b", "c"], lambda: fp32,
                                   _Cal(validation, max_drop), tool="t"), made


def test_greedy_keeps_the_best_layer_each_round_until_it_fits():
    f = frozenset
    acc = {f(): 0.80, f("a"): 0.85, f("b"): 0.88, f("c"): 0.82, f("ba"): 0.898, f("bc"): 0.89}
    (variant, control), made = _greedy(acc)
    assert variant == f("ba") and control["kept_in_float"] == ["b", "a"]
    assert control["validation_accuracy"] == {"fp32": 0.90, "int8_all_layers": 0.80, "int8": 0.898}
    assert made == [[], ["a"], ["b"], ["c"], ["b", "a"], ["b", "c"]]  # one trial per layer left, per round


def test_greedy_stops_when_within_budget_or_out_of_layers():
    f = frozenset
    (variant, control), made = _greedy({f(): 0.899})  # 0.1 points lost: within 0.25
    assert variant == f() and control["kept_in_float"] == [] and made == [[]]
    worse = {k: 0.5 for k in map(f, ["", "a", "b", "c", "ab", "ac", "bc", "abc"])}
    (variant, control), _ = _greedy(worse)  # nothing helps: every layer kept, and the record says what it got
    assert control["kept_in_float"] == ["a", "b", "c"] and control["validation_accuracy"]["int8"] == 0.5
    (variant, control), made = _greedy({f(): 0.1}, validation=None)  # no validation part: no control
    assert control is None and made == [[]]


def test_litert_layer_scopes_cover_each_stage_and_refuse_a_mismatch():
    pytest.importorskip("ai_edge_quantizer", reason="ai-edge-quantizer is not installed (pip install 'lenet-export[litert]')")
    from lenet_export.formats.litert import layer_scopes

    layers = ["features.0", "features.4", "features.8", "classifier.1", "classifier.3"]
    scopes = layer_scopes(SHIPPED / "model.tflite", layers)
    assert list(scopes) == layers
    # each stage: its conv, then (pooled first) the pooling, batch norm and ReLU after it
    assert "Conv2d_0" in scopes["features.0"][0]
    assert all(any(op in s for s in scopes["features.0"]) for op in ("MaxPool2d_1", "BatchNorm2d_2", "ReLU_3"))
    assert all(any(op in s for s in scopes["features.4"]) for op in ("MaxPool2d_5", "BatchNorm2d_6", "ReLU_7"))
    assert not any("Conv2d_4" in s for s in scopes["features.0"])
    # test-time flip: the last layer in the image's pass and in the mirror image's, then the mean of the two
    assert sum("Linear_3" in s for s in scopes["classifier.3"]) == 2
    with pytest.raises(ValueError, match="do not match"):
        layer_scopes(SHIPPED / "model.tflite", ["features.0", "features.4", "features.8", "classifier.1"])
    with pytest.raises(ValueError, match="do not match"):  # the right count, but named in the wrong order
        layer_scopes(SHIPPED / "model.tflite", ["features.4", "features.0", "features.8", "classifier.1",
                                                "classifier.3"])


def test_litert_layer_scopes_of_a_flip_model_cover_both_passes(exports):
    pytest.importorskip("ai_edge_quantizer", reason="ai-edge-quantizer is not installed (pip install 'lenet-export[litert]')")
    from lenet_export.formats.litert import layer_scopes

    tflite = exports("cifar10") / "model.tflite"
    if not tflite.is_file():
        pytest.skip("the session's CIFAR-10 export has no model.tflite")
    layers = ["features.0", "features.4", "features.8", "features.12", "classifier.1"]
    scopes = layer_scopes(tflite, layers)
    assert list(scopes) == layers
    # each conv stage's ops, in the image's pass and in the mirror image's
    assert all(sum("Conv2d" in s for s in scopes[k]) == 2 for k in layers[:4]), scopes
    with pytest.raises(ValueError, match="do not match"):  # two passes, named in the wrong order
        layer_scopes(tflite, ["features.4", "features.0", "features.8", "features.12", "classifier.1"])
