"""Embedding: the torch-free runtime, `lenet-export predict`, and the Node.js app."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from conftest import assert_clean_error, run_cli
from lenet_export.errors import RuntimeInputError
from lenet_export.runtime import Classifier, ModelMetadataError

DATASETS = ["fashion-mnist", "cifar10"]


def golden_raw(export: Path) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(export / "raw_test_data_set_0" / "input_0.pb"))


def test_runtime_imports_and_runs_without_torch(exports):
    export = exports("fashion-mnist")
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"  # any torch import fails
        "import json, numpy as np, onnx\n"
        "from onnx import numpy_helper\n"
        "from lenet_export.runtime import Classifier\n"
        f"c = Classifier({str(export / 'model.raw.onnx')!r})\n"
        f"x = numpy_helper.to_array(onnx.load_tensor({str(export / 'raw_test_data_set_0' / 'input_0.pb')!r}))\n"
        "p = c.classify(x)\n"
        "print(json.dumps({'logits': p.logits.tolist(), 'provider': p.provider, 'torch': 'torch' in sys.modules and sys.modules['torch'] is not None}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["torch"] is False and out["provider"] == "CPUExecutionProvider"
    expected = numpy_helper.to_array(onnx.load_tensor(export / "raw_test_data_set_0" / "output_0.pb"))
    np.testing.assert_allclose(np.array(out["logits"]), expected, atol=1e-4)


@pytest.mark.parametrize("dataset", DATASETS)
def test_classify_every_input_form(dataset, exports):
    export = exports(dataset)
    raw = golden_raw(export)  # N x H x W (grey) or N x H x W x C
    expected = numpy_helper.to_array(onnx.load_tensor(export / "raw_test_data_set_0" / "output_0.pb"))
    labels = expected.argmax(1)
    meta = json.loads((export / "metadata.json").read_text())
    for model in ("model.onnx", "model.raw.onnx"):
        c = Classifier(export / model)
        assert c.classes == meta["classes"]
        p = c.classify(raw)
        np.testing.assert_allclose(p.logits, expected, atol=1e-4)
        assert p.class_names == [meta["classes"][i] for i in labels]
        np.testing.assert_allclose(p.probabilities.sum(1), 1, atol=1e-5)
        one = c.classify(raw[3])  # a single H x W / H x W x C image
        assert one.labels.tolist() == [labels[3]]
        if dataset == "fashion-mnist":
            assert c.classify(raw[..., None]).labels.tolist() == labels.tolist()  # N x H x W x 1
            assert c.classify(raw[3][..., None]).labels.tolist() == [labels[3]]  # H x W x 1
    # already-normalised float input, NCHW
    norm = numpy_helper.to_array(onnx.load_tensor(export / "test_data_set_0" / "input_0.pb"))
    p = Classifier(export / "model.onnx").classify(norm)
    np.testing.assert_allclose(p.logits, expected, atol=1e-4)
    assert Classifier(export / "model.onnx").classify(norm[0]).labels.tolist() == [labels[0]]


@pytest.mark.parametrize("dataset", DATASETS)
def test_bad_runtime_input_names_what_was_expected(dataset, exports):
    export = exports(dataset)
    c = Classifier(export / "model.onnx")
    raw = golden_raw(export)
    with pytest.raises(RuntimeInputError, match="expects"):
        c.classify(np.zeros((2, 20, 20) if c.channels == 1 else (2, 20, 20, 3), np.uint8))
    with pytest.raises(RuntimeInputError, match="dtype int64"):
        c.classify(raw.astype(np.int64))
    if c.channels == 3:
        with pytest.raises(RuntimeInputError, match="1 channel"):
            c.classify(raw[..., :1])
    else:
        with pytest.raises(RuntimeInputError, match="3 channel"):
            c.classify(np.repeat(raw[..., None], 3, axis=-1))
    bad = numpy_helper.to_array(onnx.load_tensor(export / "test_data_set_0" / "input_0.pb")).copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(RuntimeInputError, match="NaN"):
        c.classify(bad)
    with pytest.raises(RuntimeInputError, match="N x"):
        c.classify(bad[:, :, :5])
    with pytest.raises(RuntimeInputError, match="uint8"):
        Classifier(export / "model.raw.onnx").classify(bad)
    with pytest.raises(RuntimeInputError, match="HxW"):
        c.classify(np.zeros(5, np.uint8))


def test_model_without_metadata_is_refused(exports, tmp_path):
    m = onnx.load(exports("fashion-mnist") / "model.onnx")
    del m.metadata_props[:]
    onnx.save(m, tmp_path / "plain.onnx")
    with pytest.raises(ModelMetadataError, match="lacks the metadata"):
        Classifier(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelMetadataError, match="cannot load"):
        Classifier(tmp_path / "junk.onnx")


def _save_pngs(raw: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i, img in enumerate(raw):
        p = folder / f"img{i}.png"
        Image.fromarray(img).save(p)  # PNG is lossless: the pixels stay the golden ones
        paths.append(p)
    return paths


@pytest.mark.parametrize("dataset", DATASETS)
def test_predict_cli(dataset, exports, tmp_path):
    export = exports(dataset)
    paths = _save_pngs(golden_raw(export), tmp_path)
    expected = numpy_helper.to_array(onnx.load_tensor(export / "raw_test_data_set_0" / "output_1.pb"))
    classes = json.loads((export / "metadata.json").read_text())["classes"]
    r = run_cli("predict", "--model", export / "model.raw.onnx", "--json", *paths)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["provider"] == "CPUExecutionProvider"
    assert [p["label"] for p in out["predictions"]] == [classes[i] for i in expected.argmax(1)]
    assert [p["index"] for p in out["predictions"]] == list(expected.argmax(1))
    np.testing.assert_allclose([p["probability"] for p in out["predictions"]], expected.max(1), atol=1e-5)
    r = run_cli("predict", "--model", export / "model.onnx", paths[0])
    assert r.exit_code == 0 and classes[expected[0].argmax()] in r.stdout


def test_predict_rejects_or_resizes_other_sizes(exports, tmp_path):
    export = exports("fashion-mnist")
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "big.png")
    assert_clean_error(run_cli("predict", "--model", export / "model.onnx", tmp_path / "big.png"),
                       "30x40", "expects 28x28", "--fit stretch")
    assert run_cli("predict", "--model", export / "model.onnx", "--resize", tmp_path / "big.png").exit_code == 0
    (tmp_path / "bad.png").write_text("not an image")
    assert_clean_error(run_cli("predict", "--model", export / "model.onnx", tmp_path / "bad.png"), "cannot read image")
    assert_clean_error(run_cli("predict", "--model", tmp_path / "none.onnx", tmp_path / "big.png"), "does not exist")


# -- Node.js ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", DATASETS)
def test_node_app_matches_python(dataset, exports, node_app):
    node, app = node_app
    export = exports(dataset)
    r = subprocess.run([node, str(app / "classify.js"), str(export)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NODE_NO_WARNINGS": "1"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    py = Classifier(export / "model.raw.onnx").classify(golden_raw(export))
    node_logits = np.array([p["logits"] for p in out["predictions"]], dtype=np.float32)
    np.testing.assert_allclose(node_logits, py.logits, atol=1e-4)
    assert [p["class"] for p in out["predictions"]] == py.class_names


def test_predict_cli_does_not_need_torch(exports, tmp_path):
    export = exports("cifar10")
    paths = _save_pngs(golden_raw(export)[:2], tmp_path)
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "from lenet_export.cli import app\n"
            f"app(['predict', '--json', '--model', {str(export / 'model.raw.onnx')!r}, *{[str(p) for p in paths]!r}])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["predictions"]) == 2
