"""The runtimes added as two files each (NCNN, MNN, tract), and rules every format obeys: an artefact written by
its real writer from a perturbed model fails parity; a missing runtime skips with the install command."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

from conftest import REPO, serving_on
from lenet_export import backends as registry
from lenet_export.checkpoint import load_checkpoint, model_from_checkpoint
from lenet_export.export import RawInputModel
from lenet_export.formats import EXPORT, Target, registry as formats
from lenet_export.verify import VerifyOptions, verify

EXPORT_FORMATS = [f for f in formats(EXPORT).values()]


def _runs(fmt) -> list[str]:
    """The CPU backends that run ``fmt``'s artefact and whose runtime is here."""
    out = []
    for b in registry.registry().values():
        if b.artefact == fmt.artefact and b.device == "cpu":
            try:
                b.require_package()
                out.append(b.name)
            except registry.Skip:
                pass
    return out


def _needs(*packages: str | None) -> None:
    for p in filter(None, packages):
        if importlib.util.find_spec(p) is None:
            pytest.skip(f"{p} is not installed")


@pytest.fixture(scope="module")
def fmnist(runs, exports):
    """(export folder, checkpoint path, checkpoint)."""
    path = runs("fashion-mnist") / "best.pth"
    return exports("fashion-mnist"), path, load_checkpoint(path)


def _verify(folder, ckpt_path, data_dir, *backends):
    return verify(VerifyOptions(exported=folder, checkpoint=ckpt_path, data_dir=str(data_dir),
                                backends=("torch-cpu", *backends)), log=lambda _: None)


def _write(fmt, folder, model, ckpt, meta, source):
    """``fmt`` written by its real writer, after what it is made from (into ``source``)."""
    c, h, w = ckpt["input_shape"]
    raw_sample = torch.zeros((2, h, w) if c == 1 else (2, h, w, c), dtype=torch.uint8)
    raw = RawInputModel(model, ckpt["mean"], ckpt["std"]).eval()
    for dep in fmt.made_from:
        _write(formats()[dep], source, model, ckpt, meta, source)
    fmt.write(Target(folder, model, raw, torch.zeros(2, c, h, w), raw_sample, meta, source=source))


@pytest.mark.parametrize("fmt", EXPORT_FORMATS, ids=lambda f: f.name)
def test_perturbed_artefact_fails_parity(fmt, fmnist, fmnist_dir, tmp_path, monkeypatch):
    """Every format, written by its real writer from a model whose last bias moved by 0.5: every backend that
    runs it fails the logits rule, by that 0.5 (the endpoint too: oip-* serve the perturbed model.onnx)."""
    names = _runs(fmt)
    if not serving_on(monkeypatch):  # conftest turns the endpoint's servers off for the rest of the suite
        names = [n for n in names if not n.startswith("oip-")]
    if fmt.missing() or not names:
        pytest.skip(fmt.missing() or f"no runtime for {fmt.artefact} is installed")
    folder, ckpt_path, ckpt = fmnist
    bad, source = tmp_path / "bad", tmp_path / "source"
    shutil.copytree(folder, bad)
    source.mkdir()
    model = model_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].bias[0] += 0.5
    meta = json.loads((folder / "metadata.json").read_text())
    _write(fmt, bad, model, ckpt, meta, source)
    rep = _verify(bad, ckpt_path, fmnist_dir, *names)
    assert not rep.passed
    for name in names:
        e = rep.backends[name]
        assert e.status == "failed" and "logits" in e.rules, (name, e.failures)
        assert abs(e.logits.max_abs - 0.5) < 1e-3, (name, e.logits.max_abs)


@pytest.mark.parametrize("backend", [b for b in registry.names("cpu") if registry.get(b).package not in
                                     ("torch", "onnxruntime", "onnxruntime-web")])
def test_missing_runtime_skips_with_install_command(backend, fmnist, fmnist_dir, monkeypatch):
    folder, ckpt_path, _ = fmnist
    package = registry.get(backend).package
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a))
    rep = _verify(folder, ckpt_path, fmnist_dir, "ort-cpu", backend)
    e = rep.backends[backend]
    assert e.status == "skipped" and e.reason.startswith(f"{package} is not installed (pip install"), e.reason
    assert rep.passed and rep.backends["ort-cpu"].status == "passed"  # skipped, not passed, not failed


def _pnnx(args, cwd):
    from lenet_export.formats.ncnn import pnnx_binary

    subprocess.run([str(pnnx_binary()), *args], cwd=cwd, check=True, capture_output=True, timeout=300)


def test_ncnn_fp16_weights_are_refused(fmnist, fmnist_dir, tmp_path):
    """pnnx's default (FP16 weights) gives a .bin verify refuses, naming the layers; the export's is FP32."""
    _needs("ncnn", "pnnx")
    from lenet_export.formats.ncnn import fp16_blobs

    folder, ckpt_path, ckpt = fmnist
    assert fp16_blobs(folder / "model.ncnn.param", folder / "model.ncnn.bin") == []
    work = tmp_path / "pnnx"
    work.mkdir()
    shutil.copyfile(folder / "model.onnx", work / "model.onnx")
    _pnnx([str(work / "model.onnx"), "inputshape=[1,1,28,28]f32"], work)  # fp16 by default
    assert fp16_blobs(work / "model.ncnn.param", work / "model.ncnn.bin")  # the conv and linear layers
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    shutil.copyfile(work / "model.ncnn.bin", bad / "model.ncnn.bin")
    shutil.copyfile(work / "model.ncnn.param", bad / "model.ncnn.param")
    e = _verify(bad, ckpt_path, fmnist_dir, "ncnn-cpu").backends["ncnn-cpu"]
    assert e.status == "failed" and e.rules == ["load"] and "stores FP16 weights" in e.reason, e.reason


def test_ncnn_truncated_bin_is_refused(fmnist, tmp_path):
    _needs("ncnn")
    from lenet_export.formats.ncnn import fp16_blobs

    folder, _, _ = fmnist
    (tmp_path / "model.ncnn.bin").write_bytes((folder / "model.ncnn.bin").read_bytes()[:-8])
    with pytest.raises(ValueError, match="its .param describes"):
        fp16_blobs(folder / "model.ncnn.param", tmp_path / "model.ncnn.bin")


def test_ncnn_runs_float32(fmnist):
    """What ran says every FP16/BF16 option was off; the export recorded FP32 weights from pnnx fp16=0."""
    _needs("ncnn")
    from lenet_export.backends import Context

    folder, _, ckpt = fmnist
    meta = json.loads((folder / "metadata.json").read_text())
    runner = registry.get("ncnn-cpu").open(Context(folder, meta, ckpt))
    assert {"use_fp16_storage", "use_fp16_arithmetic"} <= set(runner.runtime["switched_off"])
    assert meta["model.ncnn.param"]["weights"] == "fp32" and "fp16=0" in meta["model.ncnn.param"]["converter"]


def test_mnn_conversion_sends_nothing(fmnist, tmp_path):
    """The MNN writer in a fresh process: MNN's telemetry logger (MNN.tools.utils.log, Alibaba Cloud Log Service)
    is never imported, nor its SDK, and the metadata is in the model's bizCode."""
    _needs("MNN")
    folder, _, _ = fmnist
    code = f"""
import json, sys
from pathlib import Path
from lenet_export.formats import Target, registry
meta = {{"classes": ["x"]}}
registry()["mnn"].write(Target(Path({str(tmp_path)!r}), None, None, None, None, meta, source=Path({str(folder)!r})))
from lenet_export.formats.mnn import read_mnn_metadata
print(json.dumps({{"tools": [m for m in sys.modules if m.startswith(("MNN.tools", "aliyun"))],
                   "meta": read_mnn_metadata(Path({str(tmp_path)!r}) / "model.mnn")}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"tools": [], "meta": {"classes": ["x"]}}


def test_wrong_nnef_metadata_fails_verify(fmnist, fmnist_dir, tmp_path):
    """A tract archive whose metadata.json lists the classes in another order: verify names file and field."""
    _needs("tract")
    folder, ckpt_path, _ = fmnist
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    members = {}
    with tarfile.open(folder / "model.nnef.tar") as tar:
        for m in tar.getmembers():
            members[m.name] = tar.extractfile(m).read() if m.isfile() else None
    meta = json.loads(members["metadata.json"])
    meta["classes"] = meta["classes"][1:] + meta["classes"][:1]
    members["metadata.json"] = json.dumps(meta).encode()
    with tarfile.open(bad / "model.nnef.tar", "w") as tar:
        for name, data in members.items():
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    rep = _verify(bad, ckpt_path, fmnist_dir, "tract-cpu")
    assert rep.backends["tract-cpu"].status == "passed"  # the numbers are right ...
    assert not rep.passed and any(f.startswith("model.nnef.tar:metadata.json: classes is")
                                  for f in rep.metadata.failures), rep.metadata.failures


def test_tract_archive_loads_whatever_the_metadata_holds(fmnist, tmp_path):
    """Quotes in the metadata (a skip reason naming `pip install 'lenet-export[x]'`) must not break the archive."""
    _needs("tract")
    import tract

    folder, _, ckpt = fmnist
    meta = {**json.loads((folder / "metadata.json").read_text()), "note": "it's \"quoted\" 'twice'"}
    src = tmp_path / "src"
    src.mkdir()
    model = model_from_checkpoint(ckpt)
    _write(formats()["tract"], tmp_path, model, ckpt, meta, src)
    tract.nnef().load(str(tmp_path / "model.nnef.tar"))
    from lenet_export.formats.tract import read_nnef_metadata

    assert read_nnef_metadata(tmp_path / "model.nnef.tar")["note"] == meta["note"]


def _write_twice(fmt: str, fmnist, tmp_path, pause: float = 0.0) -> list[bytes]:
    """The format's artefact written by its real writer into two folders, ``pause`` seconds apart."""
    import time

    folder, _, ckpt = fmnist
    meta = json.loads((folder / "metadata.json").read_text())
    written = []
    for name in ("a", "b"):
        out, src = tmp_path / name, tmp_path / f"{name}-src"
        out.mkdir()
        src.mkdir()
        _write(formats()[fmt], out, model_from_checkpoint(ckpt), ckpt, meta, src)
        written.append((out / formats()[fmt].artefact).read_bytes())
        time.sleep(pause)
    return written


def test_tract_archive_bytes_do_not_depend_on_when_it_was_written(fmnist, tmp_path):
    """The same model written twice, seconds apart, into two folders: the same bytes (tract stamps times)."""
    _needs("tract")
    written = _write_twice("tract", fmnist, tmp_path, pause=1.1)  # tar times have one-second resolution
    assert written[0] == written[1]
    with tarfile.open(tmp_path / "a" / "model.nnef.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0} and tar.getnames()[-1] == "metadata.json"


def test_mnn_model_bytes_do_not_depend_on_the_run(fmnist, fmnist_dir, tmp_path):
    """MNN's converter writes a random UUID: replaced by one derived from the model, the same model written twice
    gives the same bytes, and MNN still reads the model, its UUID and its metadata."""
    _needs("MNN")
    import MNN

    from lenet_export.formats.mnn import read_mnn_metadata

    meta = json.loads((fmnist[0] / "metadata.json").read_text())
    written = _write_twice("mnn", fmnist, tmp_path)
    assert written[0] == written[1]
    assert MNN.get_model_uuid(str(tmp_path / "a" / "model.mnn")).encode() in written[0]
    assert read_mnn_metadata(tmp_path / "a" / "model.mnn")["classes"] == meta["classes"]


_TORCHSCRIPT_WRITER = """
import sys, torch
from pathlib import Path
from lenet_export.checkpoint import load_checkpoint, model_from_checkpoint
from lenet_export.formats import Target, registry
ckpt_path, out = sys.argv[1], Path(sys.argv[2])
ckpt = load_checkpoint(ckpt_path)
c, h, w = ckpt["input_shape"]
registry()["torchscript"].write(Target(out, model_from_checkpoint(ckpt), None, torch.zeros(2, c, h, w), None, {}))
"""


def test_torchscript_bytes_do_not_depend_on_the_hash_seed(fmnist, tmp_path):
    """model.pt written by two processes with different PYTHONHASHSEED (TorchScript orders each module's Final
    constants by string hash, and stamps a random serialization_id): the same bytes, and torch loads them to
    the checkpoint's logits."""
    import os

    written = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        out.mkdir()
        subprocess.run([sys.executable, "-c", _TORCHSCRIPT_WRITER, str(fmnist[1]), str(out)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        written.append((out / "model.pt").read_bytes())
    assert written[0] == written[1]
    x = torch.randn(4, *fmnist[2]["input_shape"])
    loaded = torch.jit.load(io.BytesIO(written[0]))
    assert torch.equal(loaded(x), model_from_checkpoint(fmnist[2])(x))


def test_torchscript_canonical_archive_changes_only_what_varies(fmnist):
    """Without the canonical rewrite, two hash seeds give different archives (so the test above can fail); the
    rewrite keeps every record's name and order and leaves tensor data untouched."""
    import zipfile

    from lenet_export.formats.torchscript import canonical_archive

    scripted = torch.jit.script(model_from_checkpoint(fmnist[2]))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    plain = buf.getvalue()
    fixed = canonical_archive(plain)
    a, b = zipfile.ZipFile(io.BytesIO(plain)), zipfile.ZipFile(io.BytesIO(fixed))
    assert a.namelist() == b.namelist()
    assert all(a.read(n) == b.read(n) for n in a.namelist() if "/data/" in n)
    assert a.read("archive/.data/serialization_id") != b.read("archive/.data/serialization_id")
    assert canonical_archive(fixed) == fixed


def test_mnn_five_by_five_convolutions_stay_float32_accurate(tmp_path, monkeypatch):
    """lenet-classic's second convolution (6 -> 16 channels, 5x5, 12x12 input): with MNN's default Winograd tile
    choice its output moved by more than 1e-4 (the export then refused the model); ``load_module`` keeps the small
    tiles and agrees with ONNX Runtime within 1e-5 of the output's scale."""
    pytest.importorskip("MNN", reason="MNN is not installed (pip install 'lenet-export[mnn]')")
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import lenet_export.formats.mnn as mnn_format

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (16, 6, 5, 5)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"])], "conv",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 6, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 16, 8, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    mnn_format._write(Target(tmp_path, None, None, None, None, {}))
    x = rng.uniform(0, 1, (64, 6, 12, 12)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    def error() -> float:
        from MNN import expr as F

        module = mnn_format.load_module(tmp_path / "model.mnn")
        out = np.array(F.convert(module.forward(F.const(x, list(x.shape), F.NCHW)), F.NCHW).read()).reshape(want.shape)
        return float(np.abs(out - want).max() / np.abs(want).max())

    assert error() < 1e-5
    monkeypatch.setattr(mnn_format, "WINOGRAD_MEMORY_LEVEL", (3, 3))  # MNN's default: the large tiles
    assert error() > 1e-5
