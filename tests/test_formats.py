"""lenet-export onnx --formats: what is written, what is skipped and why, and how verify treats each format."""

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import assert_clean_error, run_cli
from lenet_export.verify import VerifyOptions, verify

DATASETS = ["fashion-mnist", "cifar10"]


def needs(package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install 'lenet-export[{package}]')")


def test_default_export_writes_every_format(exports):
    out = exports("fashion-mnist")
    meta = json.loads((out / "metadata.json").read_text())
    from lenet_export.formats import EXPORT, registry

    every = registry(EXPORT)
    expected = {name for name, f in every.items() if f.missing() is None}  # each whose package is installed
    assert {"onnx", "raw-onnx", "torchscript", "pt2"} <= expected
    assert set(meta["formats"]) == expected
    assert set(meta["skipped_formats"]) == set(every) - expected
    for files in meta["formats"].values():
        assert all((out / f).is_file() for f in files)


def test_chosen_formats_only_and_the_rest_skip_with_reason(runs, fmnist_dir, tmp_path):
    out = tmp_path / "e"
    r = run_cli("onnx", "--checkpoint", runs("fashion-mnist") / "best.pth", "--out", out, "--data-dir", fmnist_dir,
                "--formats", "torchscript")
    assert r.exit_code == 0, r.output
    assert "skipped format pt2: not requested (--formats)" in r.stdout
    assert sorted(p.name for p in out.glob("model.*")) == ["model.onnx", "model.pt", "model.raw.onnx"]
    rep = verify(VerifyOptions(exported=out, checkpoint=runs("fashion-mnist") / "best.pth", data_dir=str(fmnist_dir),
                               backends=("pt2-cpu", "torchscript-cpu", "openvino-cpu")), log=lambda _: None)
    assert rep.passed and rep.backends["torchscript-cpu"].status == "passed"
    for b in ("pt2-cpu", "openvino-cpu"):
        assert rep.backends[b].status == "skipped" and "not requested" in rep.backends[b].reason


def test_unknown_format_and_missing_package(runs, fmnist_dir, tmp_path, monkeypatch):
    ck = runs("fashion-mnist") / "best.pth"
    assert_clean_error(run_cli("onnx", "--checkpoint", ck, "--out", tmp_path / "a", "--data-dir", fmnist_dir,
                               "--formats", "tensorrt"), "unknown format 'tensorrt'")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    assert_clean_error(run_cli("onnx", "--checkpoint", ck, "--out", tmp_path / "b", "--data-dir", fmnist_dir,
                               "--formats", "openvino"), "cannot write format openvino", "lenet-export[openvino]")
    r = run_cli("onnx", "--checkpoint", ck, "--out", tmp_path / "c", "--data-dir", fmnist_dir, "--formats", "all")
    assert r.exit_code == 0, r.output
    assert "skipped format openvino: openvino is not installed (pip install 'lenet-export[openvino]')" in r.stdout
    assert not (tmp_path / "c" / "model.xml").exists()


def test_fp16_compressed_openvino_ir_fails_verify(runs, exports, fmnist_dir, tmp_path):
    needs("openvino")
    import openvino as ov

    bad = tmp_path / "bad"
    shutil.copytree(exports("fashion-mnist"), bad)
    model = ov.Core().read_model(str(bad / "model.xml"))  # maps model.bin: save elsewhere, then move over it
    ov.save_model(model, str(tmp_path / "fp16.xml"), compress_to_fp16=True)  # openvino's default
    for ext in ("xml", "bin"):
        (tmp_path / f"fp16.{ext}").replace(bad / f"model.{ext}")
    rep = verify(VerifyOptions(exported=bad, checkpoint=runs("fashion-mnist") / "best.pth", data_dir=str(fmnist_dir),
                               backends=("openvino-cpu",)), log=lambda _: None)
    e = rep.backends["openvino-cpu"]
    assert e.status == "failed" and e.logits.max_abs > 1e-3 and e.failures[0].rule == "logits"
    assert rep.metadata.passed  # the rt_info survived; only the weights changed


@pytest.mark.parametrize("dataset", DATASETS)
def test_pt2_loads_without_the_package(dataset, exports):
    out = exports(dataset)
    golden = numpy_helper.to_array(onnx.load_tensor(out / "test_data_set_0" / "input_0.pb"))
    expected = numpy_helper.to_array(onnx.load_tensor(out / "test_data_set_0" / "output_0.pb"))
    np.save(out.parent / "x.npy", golden)
    code = (
        "import sys; sys.modules['lenet_export'] = None\n"  # importing lenet_export now fails
        "import json, numpy as np, torch\n"
        "extra = {'metadata.json': ''}\n"
        f"m = torch.export.load({str(out / 'model.pt2')!r}, extra_files=extra).module()\n"
        f"x = torch.from_numpy(np.load({str(out.parent / 'x.npy')!r}))\n"
        "print(json.dumps({'logits': m(x).detach().numpy().tolist(), 'meta': json.loads(extra['metadata.json'])}))\n"
    )
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    np.testing.assert_allclose(np.array(res["logits"]), expected, atol=1e-4)
    assert res["meta"]["dataset"] == dataset and len(res["meta"]["classes"]) == 10


def test_pt2_has_a_dynamic_batch(exports):
    import torch

    m = torch.export.load(str(exports("fashion-mnist") / "model.pt2")).module()
    for n in (1, 7, 1000):
        assert tuple(m(torch.zeros(n, 1, 28, 28)).shape) == (n, 10)


def test_openvino_ir_is_fp32_with_metadata(exports):
    needs("openvino")
    import openvino as ov

    out = exports("cifar10")
    xml = (out / "model.xml").read_text()
    assert 'element_type="f16"' not in xml and 'element_type="f32"' in xml
    model = ov.Core().read_model(str(out / "model.xml"))
    assert json.loads(model.get_rt_info(["lenet_export", "classes"]).astype(str))[0] == "airplane"
    assert model.inputs[0].get_any_name() == "input" and model.inputs[0].get_partial_shape()[0].is_dynamic
