"""The README's embedding snippets run as written (Python without torch; Node.js)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

README = (REPO / "README.md").read_text()


def snippet(marker: str) -> str:
    m = re.search(rf"<!-- {marker}:[^\n]*-->\n```\w+\n(.*?)```", README, re.S)
    assert m, marker
    return m.group(1)


def test_python_embedding_snippet_runs_without_torch():
    # neither torch nor onnx: what the light install (`lenet-export[cpu]`) has
    code = ("import sys; sys.modules['torch'] = sys.modules['torchvision'] = sys.modules['onnx'] = None\n"
            + snippet("embed-python"))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[-1] == "ran on CPUExecutionProvider"
    # each example image is named after its test label: the shipped model gets them right
    for line in lines[:3]:
        file, name = line[:37].strip(), line[37:49].strip()  # fashion-mnist-test0-ankle-boot.png, Ankle boot
        assert file.split("-", 3)[-1].removesuffix(".png") == name.lower().replace(" ", "-"), line


def test_node_snippet_runs(node_app):
    import json

    import numpy as np
    from onnx import numpy_helper
    import onnx

    from lenet_export.runtime import Classifier

    cmd = snippet("embed-node").strip()
    r = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "NODE_NO_WARNINGS": "1", "npm_config_audit": "false", "npm_config_fund": "false"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    export = REPO / "exported" / "fashion-mnist-lenet-modern"
    x = numpy_helper.to_array(onnx.load_tensor(export / "raw_test_data_set_0" / "input_0.pb"))
    py = Classifier(export / "model.raw.onnx").classify(x)
    np.testing.assert_allclose(np.array([p["logits"] for p in out["predictions"]]), py.logits, atol=1e-4)
    assert [p["class"] for p in out["predictions"]] == py.class_names


@pytest.mark.parametrize("marker,package", [("embed-openvino", "openvino"), ("embed-opencv", "cv2")])
def test_openvino_and_opencv_snippets_run_without_torch(marker, package):
    import importlib.util
    import json

    import onnx
    from onnx import numpy_helper

    from lenet_export.runtime import Classifier

    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install 'lenet-export[{marker.split('-')[1]}]')")
    code = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n" + snippet(marker)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    export = REPO / "exported" / "fashion-mnist-lenet-modern"
    x = numpy_helper.to_array(onnx.load_tensor(export / "test_data_set_0" / "input_0.pb"))
    assert json.loads(r.stdout.strip().replace("'", '"')) == Classifier(export / "model.onnx").classify(x).class_names


@pytest.mark.parametrize("marker,package,torch_free", [("embed-litert", "ai_edge_litert", True),
                                                       ("embed-executorch", "executorch", False),
                                                       ("embed-ncnn", "ncnn", True), ("embed-mnn", "MNN", True),
                                                       ("embed-tract", "tract", True)])
@pytest.mark.heavy  # real training or a whole data set: not in the quick tier
def test_mobile_snippets_run(marker, package, torch_free):
    """The Python equivalents of the Android / embedded loading code, on the shipped model.pte / model.tflite."""
    import importlib.util
    import json

    import onnx
    from onnx import numpy_helper

    from lenet_export.runtime import Classifier

    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install 'lenet-export[{marker.split('-')[1]}]')")
    block = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n" if torch_free else ""
    r = subprocess.run([sys.executable, "-c", block + snippet(marker)], cwd=REPO, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    export = REPO / "exported" / "fashion-mnist-lenet-modern"
    x = numpy_helper.to_array(onnx.load_tensor(export / "test_data_set_0" / "input_0.pb"))
    printed = r.stdout.strip().splitlines()[-1]
    assert json.loads(printed.replace("'", '"')) == Classifier(export / "model.onnx").classify(x).class_names
