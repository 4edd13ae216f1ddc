"""ExecuTorch (model.pte) and LiteRT (model.tflite): the batch range at its edges, the metadata inside each
artefact (and verify failing when it is wrong), a broken artefact failing in one line, and LiteRT without torch.
Whole-test-set parity for both backends on both data sets is test_verify.py::test_parity."""

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli
from lenet_export.backends import BatchRangeError, Context, get
from lenet_export.checkpoint import load_checkpoint
from lenet_export.data import load_split, normalize
from lenet_export.formats.executorch import read_pte_metadata
from lenet_export.formats.litert import read_tflite_metadata
from lenet_export.parity import Tolerance
from lenet_export.verify import VerifyOptions, verify

BACKENDS = {"executorch-cpu": "executorch", "litert-cpu": "ai_edge_litert"}
WRITERS = {"executorch-cpu": "executorch", "litert-cpu": "litert_torch"}  # what the session export needed


def needs(backend):
    """Skip, with the install command, unless the runtime is here and the session export could write the file."""
    for package in {BACKENDS[backend], WRITERS[backend]}:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed ({get(backend).install})")


@pytest.fixture(scope="module")
def fmnist(runs, exports, fmnist_dir):
    """(export folder, checkpoint, the first 1,025 normalised test images)."""
    ckpt = load_checkpoint(runs("fashion-mnist") / "best.pth")
    test = load_split("fashion-mnist", train=False, data_dir=str(fmnist_dir))
    x = normalize(test.images[:1025], ckpt["mean"], ckpt["std"]).numpy()
    return exports("fashion-mnist"), ckpt, x


def _open(backend, folder, ckpt):
    meta = json.loads((folder / "metadata.json").read_text())
    return get(backend).open(Context(folder, meta, ckpt))


@pytest.mark.parametrize("backend,sizes,too_big", [("executorch-cpu", (1, 7, 1024), 1025), ("litert-cpu", (1,), 2)])
def test_batch_range_edges(backend, sizes, too_big, fmnist):
    needs(backend)
    folder, ckpt, x = fmnist
    ref = _open("torch-cpu", folder, ckpt)
    runner = _open(backend, folder, ckpt)
    lo, hi = runner.batch_range
    assert (lo, hi) == (1, sizes[-1])
    assert json.loads((folder / "metadata.json").read_text())[get(backend).artefact]["batch_range"] == [lo, hi]
    tol = Tolerance()
    for n in sizes:  # the smallest, an odd one and the largest batch give eager torch's logits
        out, want = runner.run(x[:n])[0], ref.run(x[:n])[0]
        assert out.shape == (n, 10) and tol.allows(want, out).all(), (n, np.abs(out - want).max())
    for n in (too_big, 0):
        with pytest.raises(BatchRangeError, match=f"batch of {n} refused: the artefact was exported for"):
            runner.run(x[:n])


def test_batch_range_error_in_verify_is_one_line(fmnist, fmnist_dir, runs, monkeypatch):
    """A runner whose range excludes what verify asks for fails its backend with the reason, no traceback."""
    needs("litert-cpu")
    import lenet_export.verify as V

    folder, _, _ = fmnist
    monkeypatch.setattr(V, "batch_plan", lambda r: (7, ()))  # as if verify ignored the artefact's fixed batch
    rep = verify(VerifyOptions(exported=folder, checkpoint=runs("fashion-mnist") / "best.pth",
                               data_dir=str(fmnist_dir), backends=("litert-cpu",)), log=lambda _: None)
    e = rep.backends["litert-cpu"]
    assert e.status == "failed" and not rep.passed
    assert e.rules == ["run"]
    assert str(e.failures[0]) == ("cannot run model.tflite: batch of 7 refused: the artefact was exported for a fixed "
                                  "batch of 1")
    r = run_cli("verify", "--exported", folder, "--checkpoint", runs("fashion-mnist") / "best.pth",
                "--data-dir", fmnist_dir, "--backends", "torch-cpu,litert-cpu")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "litert-cpu: cannot run model.tflite: batch of 7 refused" in " ".join(r.output.split())


def test_metadata_inside_each_artefact(fmnist):
    needs("executorch-cpu")
    needs("litert-cpu")
    folder, ckpt, _ = fmnist
    meta = json.loads((folder / "metadata.json").read_text())
    for read, name, batch_range in ((read_pte_metadata, "model.pte", [1, 1024]),
                                    (read_tflite_metadata, "model.tflite", [1, 1])):
        inside = read(folder / name)
        assert inside["classes"] == ckpt["classes"] and inside["checkpoint_sha256"] == meta["checkpoint_sha256"]
        assert inside["batch_range"] == batch_range == meta[name]["batch_range"]
    assert meta["model.pte"]["delegate"] == "XnnpackBackend" and meta["model.pte"]["delegated_ops"] > 0


def test_wrong_tflite_metadata_fails_verify(fmnist, fmnist_dir, runs, tmp_path):
    needs("litert-cpu")
    from lenet_export.formats.litert import with_metadata

    folder, _, _ = fmnist
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    inside = read_tflite_metadata(bad / "model.tflite")
    wrong = [*inside["classes"][1:], inside["classes"][0]]  # the class list rotated: every label wrong
    (bad / "model.tflite").write_bytes(with_metadata((bad / "model.tflite").read_bytes(), {**inside, "classes": wrong}))
    rep = verify(VerifyOptions(exported=bad, checkpoint=runs("fashion-mnist") / "best.pth", data_dir=str(fmnist_dir),
                               backends=("torch-cpu", "litert-cpu")), log=lambda _: None)
    assert rep.backends["litert-cpu"].status == "passed"  # the logits are still right ...
    assert not rep.passed and not rep.metadata.passed  # ... but an app would mislabel every image
    assert any(f.startswith("model.tflite:lenet_export: classes is") for f in rep.metadata.failures), rep.metadata.failures


def test_truncated_pte_fails_in_one_line(fmnist, fmnist_dir, runs, tmp_path):
    needs("executorch-cpu")
    folder, _, _ = fmnist
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = (bad / "model.pte").read_bytes()
    (bad / "model.pte").write_bytes(data[: len(data) // 2])
    r = run_cli("verify", "--exported", bad, "--checkpoint", runs("fashion-mnist") / "best.pth",
                "--data-dir", fmnist_dir, "--backends", "torch-cpu,executorch-cpu")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "executorch-cpu: cannot load model.pte:" in r.output
    assert "model.pte:metadata(): cannot read its metadata" in r.output


def test_missing_runtime_skips_with_install_command(fmnist, fmnist_dir, runs, monkeypatch):
    folder, _, _ = fmnist
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n in BACKENDS.values() else real(n, *a))
    rep = verify(VerifyOptions(exported=folder, checkpoint=runs("fashion-mnist") / "best.pth",
                               data_dir=str(fmnist_dir), backends=("torch-cpu", "ort-cpu", *BACKENDS)), log=lambda _: None)
    assert rep.passed and rep.backends["ort-cpu"].status == "passed"  # the two skipped, with the reason, not passed
    for b, package in BACKENDS.items():
        e = rep.backends[b]
        assert e.status == "skipped" and e.reason.startswith(f"{package} is not installed (pip install"), e.reason
    # their metadata copies cannot be read without the runtime: left out of the check, not reported as agreeing
    assert "model.xml:rt_info" in rep.metadata.files or importlib.util.find_spec("openvino") is None
    assert not any(f.startswith(("model.pte", "model.tflite")) for f in rep.metadata.files), rep.metadata.files
    mobile = {k: v for k, v in rep.metadata.unchecked.items() if k.startswith(("model.pte", "model.tflite"))}
    assert mobile == {"model.pte:metadata()": "executorch is not installed",
                      "model.tflite:lenet_export": "ai_edge_litert is not installed"}


def test_litert_runs_without_torch(fmnist, tmp_path):
    """The litert-cpu backend and the .tflite metadata reader in a process where torch cannot be imported."""
    needs("litert-cpu")
    folder, _, x = fmnist
    np.save(tmp_path / "x.npy", x[:16])
    code = f"""
import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None
import json, numpy as np
from pathlib import Path
from lenet_export.backends import Context, get
from lenet_export.formats.litert import read_tflite_metadata
folder, tmp = Path({str(folder)!r}), Path({str(tmp_path)!r})
runner = get('litert-cpu').open(Context(folder, json.loads((folder / 'metadata.json').read_text()), {{}}))
x = np.load(tmp / 'x.npy')
logits = np.concatenate([runner.run(x[i:i + 1])[0] for i in range(len(x))])
np.save(tmp / 'y.npy', logits)
print(read_tflite_metadata(folder / 'model.tflite')['classes'][0], runner.runtime['ai_edge_litert'])
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "T-shirt/top"
    ref = _open("torch-cpu", folder, fmnist[1]).run(x[:16])[0]
    assert Tolerance().allows(ref, np.load(tmp_path / "y.npy")).all()


def test_verify_cli_says_fixed_batch(fmnist, fmnist_dir, runs, tmp_path):
    needs("litert-cpu")
    folder, _, _ = fmnist
    r = run_cli("verify", "--exported", folder, "--checkpoint", runs("fashion-mnist") / "best.pth",
                "--data-dir", fmnist_dir, "--backends", "torch-cpu,litert-cpu", "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "fixed batch 1" in r.stdout
    e = json.loads((tmp_path / "r.json").read_text())["backends"]["litert-cpu"]
    assert e["batch_invariance"] == {"batch_sizes": [1], "samples": 0, "max_abs_diff": 0.0, "passed": True,
                                     "fixed_batch": 1}
    assert e["runtime"]["batch_range"] == [1, 1] and e["throughput_batch"] == 1


def test_pte_metadata_is_read_when_its_runtime_runs(fmnist, fmnist_dir, runs):
    """ExecuTorch's Python runtime costs seconds to import: without executorch-cpu the .pte copy is listed as
    not checked (with the reason), never counted as agreeing."""
    needs("executorch-cpu")
    folder, _, _ = fmnist
    opts = dict(exported=folder, checkpoint=runs("fashion-mnist") / "best.pth", data_dir=str(fmnist_dir))
    without = verify(VerifyOptions(**opts, backends=("torch-cpu", "ort-cpu")), log=lambda _: None)
    assert "model.pte:metadata()" not in without.metadata.files
    assert without.metadata.unchecked["model.pte:metadata()"] == "read by executorch-cpu's runtime, which was not requested"
    assert "model.tflite:lenet_export" in without.metadata.files  # cheap to read: always checked
    with_it = verify(VerifyOptions(**opts, backends=("torch-cpu", "executorch-cpu")), log=lambda _: None)
    assert "model.pte:metadata()" in with_it.metadata.files and "model.pte:metadata()" not in with_it.metadata.unchecked


def test_onnx_formats_option_writes_the_mobile_artefacts(runs, fmnist_dir, tmp_path, monkeypatch):
    needs("executorch-cpu")
    needs("litert-cpu")
    ck, out = runs("fashion-mnist") / "best.pth", tmp_path / "e"
    r = run_cli("onnx", "--checkpoint", ck, "--out", out, "--data-dir", fmnist_dir, "--formats", "executorch,litert")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("model.*")) == ["model.onnx", "model.pte", "model.raw.onnx", "model.tflite"]
    assert "check executorch-cpu" in r.stdout and "check litert-cpu" in r.stdout
    assert "skipped format openvino: not requested (--formats)" in r.stdout
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "litert_torch" else real(n, *a))
    r = run_cli("onnx", "--checkpoint", ck, "--out", tmp_path / "f", "--data-dir", fmnist_dir, "--formats", "litert")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip() == ("error: cannot write format litert: litert_torch is not installed "
                                "(pip install 'lenet-export[litert]')")


# ---------------------------------------------------------------------------------------------
# The pieces, without artefacts


def test_runner_batch_range_rules():
    from lenet_export.backends import Runner
    from lenet_export.parity import batch_invariance
    from lenet_export.verify import EVAL_BATCH, batch_plan

    echo = lambda x: [x]  # noqa: E731
    x = np.zeros((9, 1), np.float32)
    assert batch_plan(Runner(echo, {})) == (EVAL_BATCH, (1, 2, 7))
    assert batch_plan(Runner(echo, {}, batch_range=(1, 5))) == (5, (1, 2))
    assert batch_plan(Runner(echo, {}, batch_range=(1, 1))) == (1, None)
    ranged = Runner(echo, {}, batch_range=(1, 8))
    assert ranged.run(x[:8])[0].shape == (8, 1)
    with pytest.raises(BatchRangeError, match="batch of 9 refused: the artefact was exported for batches of 1 to 8"):
        ranged.run(x)
    with pytest.raises(ValueError, match="runs artefacts that take batch 1 to N"):
        Runner(echo, {}, batch_range=(2, 8))  # verify's batch-1 latency could not run it
    fixed = batch_invariance(None, x, 1, Tolerance())
    assert (fixed.fixed_batch, fixed.samples, fixed.passed, fixed.summary) == (1, 0, True, "fixed batch 1")
    assert batch_invariance({1: x[:3]}, x, 4, Tolerance()).summary == "0.0e+00"


def test_native_stderr_is_held_back_and_kept_on_failure(capfd):
    import os

    from lenet_export.native import captured_stderr

    with captured_stderr():
        os.write(2, b"[cpuinfo_utils.cpp:71] chatter\n")
    assert "chatter" not in capfd.readouterr().err
    with pytest.raises(RuntimeError) as e:
        with captured_stderr():
            os.write(2, b"E0000 converter: unsupported op\n")
            raise RuntimeError("conversion failed")
    assert "unsupported op" not in capfd.readouterr().err  # the CLI prints one line ...
    if sys.version_info >= (3, 11):
        assert any("unsupported op" in n for n in e.value.__notes__)  # ... a traceback shows the log


def test_tflite_metadata_rewrite_replaces_the_entry(fmnist, tmp_path):
    needs("litert-cpu")
    from lenet_export.formats.litert import with_metadata

    folder, _, _ = fmnist
    data = (folder / "model.tflite").read_bytes()
    once = with_metadata(data, {"classes": ["a"]})
    twice = with_metadata(once, {"classes": ["b"]})
    assert len(once) < len(data)  # the export's entry (the whole metadata) was replaced, not added to
    assert len(twice) == len(once)  # same-size JSON: no orphaned buffer left behind
    tmp = tmp_path / "rewritten.tflite"
    tmp.write_bytes(twice)
    assert read_tflite_metadata(tmp) == {"classes": ["b"]}


@pytest.mark.heavy
def test_int8_conversion_skips_only_a_no_op_qat_fold():
    """pt2e_int8 converts without torchao's QAT conv + batch norm folding (post-training quantisation has no
    such pattern): the converted graph and its logits are those of the full convert_pt2e, and the library's
    function is put back afterwards."""
    pytest.importorskip("executorch", reason="executorch is not installed (pip install 'lenet-export[executorch]')")
    import contextlib

    import torch

    from lenet_export.checkpoint import model_from_checkpoint
    from lenet_export.formats import executorch as fe

    model = model_from_checkpoint(load_checkpoint(REPO / "exported" / "fashion-mnist-lenet-modern" / "best.pth"))
    images = np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32)
    from torchao.quantization.pt2e import quantize_pt2e

    library = quantize_pt2e._fold_conv_bn_qat
    fast = fe.pt2e_int8(model, (1, 1, 28, 28), images)
    assert quantize_pt2e._fold_conv_bn_qat is library
    with pytest.MonkeyPatch.context() as mp:  # the library's own convert, folding included
        mp.setattr(fe, "_without_qat_folding", contextlib.nullcontext)
        full = fe.pt2e_int8(model, (1, 1, 28, 28), images)
    x = torch.from_numpy(images[:8])
    with torch.no_grad():
        assert str(fast.graph) == str(full.graph) and torch.equal(fast(x), full(x))
