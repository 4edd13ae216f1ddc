"""verify --replay: the record made by verify --report, rerun here and compared sample by sample (on the shipped
Fashion-MNIST model, no training)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil

import numpy as np
import pytest

from conftest import REPO, assert_clean_error, run_cli
from lenet_export.machine import Machine, difference, this_machine

SHIPPED = REPO / "exported" / "fashion-mnist-lenet-modern"
BACKENDS = "ort-cpu,ort-cpu-raw,ort-cpu-int8"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, fmnist_dir):
    """(export copy, report path): a record made here."""
    root = tmp_path_factory.mktemp("replay")
    export = root / "export"
    shutil.copytree(SHIPPED, export)
    r = run_cli("verify", "--exported", export, "--data-dir", fmnist_dir, "--backends", BACKENDS,
                "--report", root / "rec" / "verify.json")
    assert r.exit_code == 0, r.output
    return export, root / "rec" / "verify.json"


def _replay(export, report, fmnist_dir, *extra):
    return run_cli("verify", "--exported", export, "--data-dir", fmnist_dir, "--replay", report, *extra)


def test_report_references_its_sidecar_and_machine(recorded):
    _, report = recorded
    rep = json.loads(report.read_text())
    side = report.parent / rep["sidecar"]["file"]
    assert side.name == "verify.npz" and hashlib.sha256(side.read_bytes()).hexdigest() == rep["sidecar"]["sha256"]
    assert rep["machine"] == this_machine().to_dict() and rep["machine"]["cpu"]
    with np.load(side) as z:
        assert z["ort-cpu.classes"].shape == (10000,) and z["reference.logits"].shape == (10000, 10)
        assert "ort-cpu-int8.logits" in z.files and "ort-cpu.logits" not in z.files  # approximate ones only


def test_replay_on_the_same_machine_reproduces_every_backend(recorded, fmnist_dir, tmp_path):
    export, report = recorded
    r = _replay(export, report, fmnist_dir, "--report", tmp_path / "replay.json")
    assert r.exit_code == 0, r.output
    assert "replay reproduced the record" in r.stdout and "same CPU model, features, threads and kernel settings" in r.stdout
    res = json.loads((tmp_path / "replay.json").read_text())
    assert res["passed"] and set(res["backends"]) == {"torch-cpu", *BACKENDS.split(",")}
    for b in res["backends"].values():
        assert b["status"] == "reproduced" and b["differing_count"] == 0 and b["accuracy_here"] == b["accuracy_there"]


def _rewrite_record(src, dst, edit):
    """A copy of the record whose sidecar was changed by ``edit`` and re-referenced (as another machine's)."""
    dst.mkdir()
    with np.load(src.parent / "verify.npz") as z:
        arrays = {k: z[k].copy() for k in z.files}
    edit(arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (dst / "verify.npz").write_bytes(buf.getvalue())
    rep = json.loads(src.read_text())
    rep["sidecar"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (dst / "verify.json").write_text(json.dumps(rep))
    return dst / "verify.json"


def test_replay_names_exactly_the_samples_whose_class_was_edited(recorded, fmnist_dir, tmp_path):
    export, report = recorded
    edited = [17, 4242, 9999]

    def edit(a):
        for i in edited:
            a["ort-cpu.classes"][i] = (a["ort-cpu.classes"][i] + 1) % 10
    record = _rewrite_record(report, tmp_path / "rec", edit)
    r = _replay(export, record, fmnist_dir, "--report", tmp_path / "replay.json")
    assert r.exit_code == 1 and "replay of" in r.stderr and "differs: ort-cpu" in r.stderr, r.output
    res = json.loads((tmp_path / "replay.json").read_text())["backends"]
    assert [d["index"] for d in res["ort-cpu"]["differing"]] == edited and res["ort-cpu"]["differing_count"] == 3
    assert res["ort-cpu"]["failures"][0]["rule"] == "replay-classes"
    assert all(res[b]["status"] == "reproduced" for b in res if b != "ort-cpu")
    for i in edited:
        assert f"ort-cpu sample {i}: class" in r.stdout


def test_replay_of_an_approximate_variant_uses_its_budget(recorded, fmnist_dir, tmp_path):
    """INT8 logits recorded elsewhere that differ a little: within budget; far: it differs."""
    export, report = recorded
    near = _rewrite_record(report, tmp_path / "near", lambda a: a["ort-cpu-int8.logits"].__iadd__(0.01))
    assert _replay(export, near, fmnist_dir).exit_code == 0
    def far_edit(a):  # another machine on which 200 confident predictions had other classes
        logits = a["ort-cpu-int8.logits"]
        logits[:200] = -logits[:200] * 3
        a["ort-cpu-int8.classes"][:200] = logits[:200].argmax(1)
    far = _rewrite_record(report, tmp_path / "far", far_edit)
    r = _replay(export, far, fmnist_dir)
    assert r.exit_code == 1 and "differs: ort-cpu-int8" in r.stderr


def test_a_sidecar_that_is_not_the_recorded_one_is_refused(recorded, fmnist_dir, tmp_path):
    export, report = recorded
    dst = tmp_path / "rec"
    shutil.copytree(report.parent, dst)
    with np.load(dst / "verify.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(dst / "verify.npz", **{**arrays, "labels": arrays["labels"][::-1]})  # another sidecar
    assert_clean_error(_replay(export, dst / "verify.json", fmnist_dir), "is not the sidecar this report was written with")
    (dst / "verify.npz").unlink()
    assert_clean_error(_replay(export, dst / "verify.json", fmnist_dir), "sidecar", "is missing")


def test_a_record_of_another_export_is_refused(recorded, fmnist_dir):
    _, report = recorded
    other = REPO / "exported" / "cifar10-lenet-modern-cifar"
    assert_clean_error(_replay(other, report, fmnist_dir), "is the record of another export")


def test_a_report_without_a_record_is_refused(recorded, fmnist_dir, tmp_path):
    export, report = recorded
    rep = json.loads(report.read_text())
    del rep["sidecar"]
    (tmp_path / "old.json").write_text(json.dumps(rep))
    assert_clean_error(_replay(export, tmp_path / "old.json", fmnist_dir), "not a replayable lenet-export report")
    (tmp_path / "bad.json").write_text("{")
    assert_clean_error(_replay(export, tmp_path / "bad.json", fmnist_dir), "not a readable report")


def test_a_missing_runtime_is_skipped_never_reproduced(recorded, fmnist_dir, tmp_path, monkeypatch):
    export, report = recorded
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    r = _replay(export, report, fmnist_dir, "--report", tmp_path / "replay.json")
    res = json.loads((tmp_path / "replay.json").read_text())["backends"]
    assert {n: b["status"] for n, b in res.items()} == {"torch-cpu": "reproduced", "ort-cpu": "skipped",
                                                        "ort-cpu-raw": "skipped", "ort-cpu-int8": "skipped"}
    assert "onnxruntime is not installed" in res["ort-cpu"]["reason"]
    assert r.exit_code == 0  # what ran reproduced; the skipped ones are listed as skipped


def test_machine_difference_names_the_features():
    a = Machine("Intel Xeon", "x86_64", ["avx2", "avx512f", "avx512_vnni"], 2)
    b = Machine("AMD EPYC", "x86_64", ["avx2"], 2)
    d = difference(a, b)
    assert "only here: avx512f avx512_vnni" in d and "'Intel Xeon' here, 'AMD EPYC' in the record" in d
    assert difference(a, a) == "same CPU model, features, threads and kernel settings"
    assert "no avx512f" in b.summary and "avx512_vnni" in a.summary
    capped = Machine("AMD EPYC", "x86_64", ["avx2"], 2, settings={"ONEDNN_MAX_CPU_ISA": "SSE41"})
    assert difference(capped, b) == "ONEDNN_MAX_CPU_ISA=SSE41 here, (unset) in the record"
    assert Machine.from_dict(capped.to_dict()) == capped and "ONEDNN_MAX_CPU_ISA=SSE41" in capped.summary


def test_the_kernel_settings_of_the_environment_are_recorded(monkeypatch):
    from lenet_export.machine import this_machine

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert this_machine().settings == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_replay_refuses_malformed_records_and_options(recorded, fmnist_dir, tmp_path):
    export, report = recorded
    rep = json.loads(report.read_text())
    cases = {"sidecar": "verify.npz", "tolerance": {"atol": "x"}, "backends": {"ort-cpu": "passed"}}
    for key, value in cases.items():
        (tmp_path / f"{key}.json").write_text(json.dumps({**rep, key: value}))
        r = _replay(export, tmp_path / f"{key}.json", fmnist_dir)
        assert r.exit_code == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.output, (key, r.output)
    assert_clean_error(_replay(export, report, fmnist_dir, "--backends", "ort-cpu"), "do not apply")
    assert_clean_error(_replay(export, report, fmnist_dir, "--report", report.with_suffix(".npz")),
                       "is the record being replayed")
    r = run_cli("verify", "--exported", export, "--data-dir", fmnist_dir, "--report", tmp_path / "r.npz")
    assert_clean_error(r, "give a .json name")
