"""lenet-export onnx on real trained models of both data sets."""

import json
import pickle
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from conftest import assert_clean_error, data_dir_for, run_cli
from lenet_export.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from lenet_export.data import load_split, normalize

DATASETS = ["fashion-mnist", "cifar10"]
ATOL = 1e-4


@pytest.fixture(scope="module")
def test_images(request):
    cache = {}

    def get(dataset):
        if dataset not in cache:
            cache[dataset] = load_split(dataset, train=False, data_dir=data_dir_for(dataset, request))
        return cache[dataset]
    return get


@pytest.mark.parametrize("dataset", DATASETS)
def test_onnx_passes_checker_and_has_dynamic_batch(dataset, exports):
    out = exports(dataset)
    for name in ("model.onnx", "model.raw.onnx"):
        m = onnx.load(out / name)
        onnx.checker.check_model(m, full_check=True)
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
        first = m.graph.input[0].type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.dim_value, name
    m = onnx.load(out / "model.onnx")
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    raw = onnx.load(out / "model.raw.onnx")
    assert raw.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in raw.graph.output] == ["logits", "probabilities"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("batch", [1, 2, 7, 1000])
def test_onnx_and_torchscript_match_eager_at_batch_sizes(dataset, batch, runs, exports, test_images):
    ck = load_checkpoint(runs(dataset) / "best.pth")
    model = model_from_checkpoint(ck)
    x = normalize(test_images(dataset).images[-batch:], ck["mean"], ck["std"])
    with torch.inference_mode():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(exports(dataset) / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    ts = torch.jit.load(str(exports(dataset) / "model.pt"))
    with torch.inference_mode():
        np.testing.assert_allclose(ts(x).numpy(), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("dataset", DATASETS)
def test_metadata_round_trips(dataset, runs, exports):
    from lenet_export.fsutil import sha256_file

    ck = load_checkpoint(runs(dataset) / "best.pth")
    props = {p.key: p.value for p in onnx.load(exports(dataset) / "model.onnx").metadata_props}
    assert json.loads(props["classes"]) == ck["classes"]
    assert json.loads(props["mean"]) == ck["mean"] and json.loads(props["std"]) == ck["std"]
    assert props["dataset"] == dataset and props["model_name"] == ck["model"]
    assert props["input_layout"] == "NCHW" and json.loads(props["input_shape"]) == ["N", *ck["input_shape"]]
    assert props["checkpoint_sha256"] == sha256_file(runs(dataset) / "best.pth")
    assert int(props["best_epoch"]) == ck["epoch"] and float(props["val_accuracy"]) == ck["val_acc"]
    assert float(props["test_accuracy"]) == ck["test_acc"]
    assert props["producer_torch"] == str(torch.__version__) and props["producer_onnx"] == onnx.__version__
    assert props["exporter"] == "dynamo" and int(props["opset"]) == 18
    extra = {"metadata.json": ""}
    torch.jit.load(str(exports(dataset) / "model.pt"), _extra_files=extra)
    ts_meta = json.loads(extra["metadata.json"])
    assert ts_meta["checkpoint_sha256"] == props["checkpoint_sha256"] and ts_meta["classes"] == ck["classes"]
    assert ts_meta["torchscript_method"] in ("scripted", "traced")


@pytest.mark.parametrize("dataset", DATASETS)
def test_torchscript_loads_without_the_package(dataset, exports, test_images):
    golden = numpy_helper.to_array(onnx.load_tensor(exports(dataset) / "test_data_set_0" / "input_0.pb"))
    expected = numpy_helper.to_array(onnx.load_tensor(exports(dataset) / "test_data_set_0" / "output_0.pb"))
    np.save(exports(dataset).parent / "x.npy", golden)
    code = (
        "import sys; sys.modules['lenet_export'] = None\n"  # importing lenet_export now fails
        "import json, numpy as np, torch\n"
        f"m = torch.jit.load({str(exports(dataset) / 'model.pt')!r})\n"
        f"x = torch.from_numpy(np.load({str(exports(dataset).parent / 'x.npy')!r}))\n"
        "print(json.dumps(m(x).detach().numpy().tolist()))\n"
    )
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.array(json.loads(r.stdout)), expected, atol=ATOL)


@pytest.mark.parametrize("dataset", DATASETS)
def test_golden_files_match_onnx_runtime(dataset, exports, test_images):
    out = exports(dataset)
    for model, folder in (("model.onnx", "test_data_set_0"), ("model.raw.onnx", "raw_test_data_set_0")):
        sess = ort.InferenceSession(str(out / model), providers=["CPUExecutionProvider"])
        inp = onnx.load_tensor(out / folder / "input_0.pb")
        x = numpy_helper.to_array(inp)
        assert inp.name == sess.get_inputs()[0].name
        outs = sess.run(None, {inp.name: x})
        for i, o in enumerate(outs):
            ref = numpy_helper.to_array(onnx.load_tensor(out / folder / f"output_{i}.pb"))
            np.testing.assert_allclose(o, ref, atol=ATOL)
    # the golden inputs are real test images, one per class
    labels = test_images(dataset).labels
    idx = json.loads((out / "metadata.json").read_text())["golden_test_indices"]
    assert sorted(labels[idx].tolist()) == list(range(10))
    raw = numpy_helper.to_array(onnx.load_tensor(out / "raw_test_data_set_0" / "input_0.pb"))
    imgs = test_images(dataset).images[idx]
    assert np.array_equal(raw, imgs[:, 0].numpy() if imgs.shape[1] == 1 else imgs.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("dataset", DATASETS)
def test_raw_variant_equals_normalised_pipeline(dataset, runs, exports, test_images):
    ck = load_checkpoint(runs(dataset) / "best.pth")
    imgs = test_images(dataset).images[:500]
    raw_in = imgs[:, 0].numpy() if imgs.shape[1] == 1 else imgs.permute(0, 2, 3, 1).numpy()
    raw = ort.InferenceSession(str(exports(dataset) / "model.raw.onnx"), providers=["CPUExecutionProvider"])
    norm = ort.InferenceSession(str(exports(dataset) / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, probs = raw.run(None, {"images": np.ascontiguousarray(raw_in)})
    ref = norm.run(None, {"input": normalize(imgs, ck["mean"], ck["std"]).numpy()})[0]
    np.testing.assert_allclose(logits, ref, atol=ATOL)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs.argmax(1) == ref.argmax(1)).all()


def test_torchscript_exporter_and_no_torchscript(runs, fmnist_dir, tmp_path):
    r = run_cli("onnx", "--checkpoint", runs("fashion-mnist") / "best.pth", "--out", tmp_path / "e",
                "--exporter", "torchscript", "--opset", "17", "--no-torchscript", "--data-dir", fmnist_dir)
    assert r.exit_code == 0, r.output
    assert "max |logit diff|" in r.stdout
    assert not (tmp_path / "e" / "model.pt").exists()
    m = onnx.load(tmp_path / "e" / "model.onnx")
    assert m.opset_import[0].version == 17
    props = {p.key: p.value for p in m.metadata_props}
    assert props["exporter"] == "torchscript"
    x = np.random.default_rng(0).standard_normal((7, 1, 28, 28)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "e" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.inference_mode():
        ref = model_from_checkpoint(load_checkpoint(runs("fashion-mnist") / "best.pth"))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=ATOL)


def test_default_out_and_cli_output(runs, fmnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli("onnx", "--checkpoint", runs("fashion-mnist") / "best.pth", "--data-dir", fmnist_dir)
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "fashion-mnist-lenet-modern" / "export"  # never into exported/
    assert not (tmp_path / "exported").exists()
    assert {"model.onnx", "model.raw.onnx", "model.pt", "metadata.json"} <= {p.name for p in out.iterdir()}
    assert "TorchScript scripted" in r.stdout


# -- bad input ----------------------------------------------------------------------------------


def test_bad_checkpoints(tmp_path, runs, fmnist_dir):
    args = ["--out", tmp_path / "out", "--data-dir", fmnist_dir]
    assert_clean_error(run_cli("onnx", "--checkpoint", tmp_path / "missing.pth", *args), "does not exist")
    good = (runs("fashion-mnist") / "best.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(good[: len(good) // 2])
    assert_clean_error(run_cli("onnx", "--checkpoint", tmp_path / "trunc.pth", *args), "truncated")
    (tmp_path / "text.pth").write_text("hello")
    assert_clean_error(run_cli("onnx", "--checkpoint", tmp_path / "text.pth", *args), "not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    assert_clean_error(run_cli("onnx", "--checkpoint", tmp_path / "foreign.pth", *args), "not a lenet-export checkpoint")
    with open(tmp_path / "pickle.pth", "wb") as f:
        pickle.dump({"format": "lenet-export/checkpoint", "obj": object()}, f)
    assert_clean_error(run_cli("onnx", "--checkpoint", tmp_path / "pickle.pth", *args))
    ck = load_checkpoint(runs("fashion-mnist") / "best.pth")
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if not k.startswith("classifier.1.")}
    save_checkpoint({k: v for k, v in ck.items() if not k.startswith("format")}, tmp_path / "arch.pth")
    assert_clean_error(run_cli("onnx", "--checkpoint", tmp_path / "arch.pth", *args), "do not fit")
    assert not (tmp_path / "out").exists()


def test_bad_options_and_existing_output(tmp_path, runs, fmnist_dir, exports):
    ckpt = runs("fashion-mnist") / "best.pth"
    args = ["--checkpoint", ckpt, "--data-dir", fmnist_dir]
    assert_clean_error(run_cli("onnx", *args, "--out", tmp_path / "o", "--opset", "7"), "opset 7 is not supported")
    assert_clean_error(run_cli("onnx", *args, "--out", tmp_path / "o", "--exporter", "tf"), "unknown exporter")
    out = tmp_path / "existing"
    assert run_cli("onnx", *args, "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert_clean_error(run_cli("onnx", *args, "--out", out), "already exists", "--force")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # A failing export with --force leaves the good one in place.
    assert_clean_error(run_cli("onnx", "--checkpoint", tmp_path / "nope.pth", "--out", out, "--force"))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_export_that_disagrees_with_eager_fails_and_writes_nothing(tmp_path, runs, fmnist_dir, monkeypatch):
    import lenet_export.formats.onnx as E

    real = E.to_onnx

    def corrupting(module, sample, path, *a, **k):
        proto = real(module, sample, path, *a, **k)
        m = onnx.load(path)
        init = m.graph.initializer[0]
        arr = numpy_helper.to_array(init).copy()
        arr.flat[0] += 1.0
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(m, path)
        return proto

    monkeypatch.setattr(E, "to_onnx", corrupting)
    r = run_cli("onnx", "--checkpoint", runs("fashion-mnist") / "best.pth", "--out", tmp_path / "bad",
                "--data-dir", fmnist_dir)
    assert_clean_error(r, "disagrees with the checkpoint")
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.glob(".bad*")] == []  # no staged folder, no lock file left
