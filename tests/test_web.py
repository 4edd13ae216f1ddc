"""Browser runtime: onnxruntime-web (wasm) as the `ort-web` verify backend under Node.js, and the example
page (examples/web) in real headless Chromium, both checked against Python on real test images.

Needs node + npm (examples/web's packages are installed once per session with `npm ci --ignore-scripts`
when missing) and, for the page, Debian's chromium; each test skips with the reason where one is missing.
LENET_EXPORT_UPDATE_SCREENSHOT=1 rewrites docs/web-page.png from the page test.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import REPO, data_dir_for
from lenet_export.verify import EVAL_BATCH, VerifyOptions, verify

DATASETS = ["fashion-mnist", "cifar10"]
WEB = REPO / "examples" / "web"
NPM_PACKAGES = ("onnxruntime-web", "protobufjs", "puppeteer-core")
INSTALL = "cd examples/web && npm ci --ignore-scripts"
PAGE_SAMPLES = 256  # real test images per data set through the page's classifyBatch
PAGE_ATOL = 1e-4
SHIPPED = REPO / "exported" / "fashion-mnist-lenet-modern"
UPLOAD = {"fashion-mnist": REPO / "examples" / "images" / "fashion-mnist-test0-ankle-boot.png",
          "cifar10": REPO / "examples" / "images" / "cifar10-test8000-ship.png",
          "shipped": REPO / "examples" / "images" / "fashion-mnist-test4-shirt.png"}  # screenshot: a less sure one


@pytest.fixture(scope="session")
def web_app() -> str:
    """node, with examples/web's npm packages installed (npm ci when missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip(f"node or npm is not installed (apt-get install -y nodejs npm, then {INSTALL})")
    if not all((WEB / "node_modules" / p / "package.json").is_file() for p in NPM_PACKAGES):
        r = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=WEB,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"npm ci in examples/web failed (no registry?): {r.stderr.strip().splitlines()[-1:]} ({INSTALL})")
    return node


@pytest.fixture(scope="session")
def chromium(web_app) -> str:
    path = os.environ.get("LENET_EXPORT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


# ---------------------------------------------------------------------------------------------
# ort-web as a verify backend (Node.js), on the whole test split


@pytest.fixture(scope="module")
def web_reports(web_app, runs, exports, request):
    cache = {}

    def get(dataset):
        if dataset not in cache:
            cache[dataset] = verify(VerifyOptions(exported=exports(dataset), checkpoint=runs(dataset) / "best.pth",
                                                  data_dir=str(data_dir_for(dataset, request)), backends=("ort-web",)),
                                    log=lambda _: None)
        return cache[dataset]
    return get


@pytest.mark.parametrize("dataset", DATASETS)
def test_ort_web_parity_on_the_whole_test_set(dataset, web_reports):
    rep = web_reports(dataset)
    e = rep.backends["ort-web"]
    assert e.status == "passed", (e.reason, e.failures)
    assert rep.passed and rep.samples == 10000
    assert e.accuracy == rep.reference_accuracy
    assert e.argmax_agree + len(e.disagreements) == 10000
    assert e.logits.max_abs <= 1e-4  # observed ~1e-5: same kernels as ORT's CPU provider, compiled to wasm
    assert e.batch_invariance.passed and e.batch_invariance.batch_sizes == [1, 2, 7, EVAL_BATCH]
    assert e.timing.latency_ms_batch1["median"] > 0 and e.timing.throughput_img_s > 0
    version = json.loads((WEB / "node_modules" / "onnxruntime-web" / "package.json").read_text())["version"]
    rt = e.runtime
    assert rt["onnxruntime_web"] == version and rt["backend"] == "wasm" and rt["wasm_threads"] >= 1
    assert re.fullmatch(r"\d+\.\d+\.\d+", rt["node"])
    print(f"\nort-web {dataset}: max|diff| {e.logits.max_abs:.2e} vs torch-cpu, {e.seconds_full_pass:.1f} s "
          f"for 10000, batch-1 {e.timing.latency_ms_batch1['median']:.2f} ms; {rt}")


def _perturbed_copy(export: Path, dst: Path, change) -> Path:
    shutil.copytree(export, dst)
    m = onnx.load(dst / "model.onnx")
    init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = numpy_helper.to_array(init).copy()
    change(arr)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, dst / "model.onnx")
    return dst


def _verify_web(folder, runs, fmnist_dir):
    return verify(VerifyOptions(exported=folder, checkpoint=runs("fashion-mnist") / "best.pth",
                                data_dir=str(fmnist_dir), backends=("ort-web",)), log=lambda _: None)


def test_ort_web_fails_on_a_perturbed_model(web_app, runs, exports, fmnist_dir, tmp_path):
    bad = _perturbed_copy(exports("fashion-mnist"), tmp_path / "bad", lambda a: a.__iadd__(1e-3))
    rep = _verify_web(bad, runs, fmnist_dir)
    e = rep.backends["ort-web"]
    assert not rep.passed and e.status == "failed"
    assert e.failures[0].rule == "logits"


def test_ort_web_node_error_is_one_line(web_app, runs, exports, fmnist_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exports("fashion-mnist"), bad)
    (bad / "model.onnx").write_bytes(np.random.default_rng(0).bytes(5000))
    e = _verify_web(bad, runs, fmnist_dir).backends["ort-web"]
    assert e.status == "failed" and "\n" not in e.reason
    assert e.reason.startswith("cannot load model.onnx: onnxruntime-web cannot load model.onnx: "), e.reason


def test_ort_web_runner_errors_and_cleanup(web_app, exports):
    from lenet_export.backends.ort_web import NodeError, NodeRunner

    runner = NodeRunner(exports("fashion-mnist") / "model.onnx")
    x = np.zeros((3, 1, 28, 28), np.float32)
    assert runner.run(x)[0].shape == (3, 10)
    with pytest.raises(NodeError, match=r"^onnxruntime-web: .*input") as err:
        runner.run(np.zeros((2, 3, 28, 28), np.float32))  # wrong channel count: node answers with an error
    assert "\n" not in str(err.value)
    assert runner.run(x)[0].shape == (3, 10)  # the process survives a failed request
    pid = runner.pid
    del runner, err
    gc.collect()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_ort_web_skips_with_install_command(web_app, runs, exports, fmnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LENET_EXPORT_ORT_WEB", str(tmp_path))
    rep = _verify_web(exports("fashion-mnist"), runs, fmnist_dir)
    e = rep.backends["ort-web"]
    assert e.status == "skipped" and "npm ci" in e.reason and str(tmp_path) in e.reason


# ---------------------------------------------------------------------------------------------
# The page, in headless Chromium


def readme_snippet(marker: str) -> str:
    m = re.search(rf"<!-- {marker}:[^\n]*-->\n```\w+\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert m, marker
    return m.group(1)


def _renamed_classes(src: Path, dst: Path) -> list[str]:
    """A copy of model.raw.onnx whose metadata names the classes differently: what the page must show."""
    m = onnx.load(src)
    prop = next(p for p in m.metadata_props if p.key == "classes")
    names = [f"{c} (from metadata)" for c in json.loads(prop.value)]
    prop.value = json.dumps(names)
    dst.parent.mkdir(parents=True)
    onnx.save(m, dst)
    return names


@pytest.fixture(scope="module")
def page(chromium, web_app, exports, request, tmp_path_factory):
    """One Chromium run over every page step; returns (results by step name, what was fed)."""
    from lenet_export.data import load_split, to_raw_layout

    tmp = tmp_path_factory.mktemp("web")
    update = os.environ.get("LENET_EXPORT_UPDATE_SCREENSHOT") == "1"
    shot = REPO / "docs" / "web-page.png" if update else tmp / "web-page.png"
    shot.parent.mkdir(exist_ok=True)
    renamed = _renamed_classes(SHIPPED / "model.raw.onnx", tmp / "renamed" / "model.raw.onnx")
    models = {"fashion-mnist-lenet-modern": SHIPPED / "model.raw.onnx", "renamed": tmp / "renamed" / "model.raw.onnx"}
    fed, steps = {}, {}
    for ds in DATASETS:
        split = load_split(ds, train=False, data_dir=data_dir_for(ds, request))
        raw = to_raw_layout(split.images[:PAGE_SAMPLES]).numpy()
        raw.tofile(tmp / f"{ds}.bin")
        models[ds] = exports(ds) / "model.raw.onnx"
        fed[ds] = raw
        steps[ds] = {"model": ds, "batch": {"file": str(tmp / f"{ds}.bin"), "n": len(raw)}, "upload": str(UPLOAD[ds])}
    steps["shipped"] = {"model": "fashion-mnist-lenet-modern", "upload": str(UPLOAD["shipped"]),
                        "screenshot": str(shot)}
    steps["renamed"] = {"model": "renamed", "upload": str(UPLOAD["fashion-mnist"]), "draw": True}
    steps["snippet"] = {"html": readme_snippet("embed-browser")}

    server = subprocess.Popen([sys.executable, str(WEB / "serve.py"), "--port", "0",
                               *(f"--model={n}={p}" for n, p in models.items())],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), server.stderr.read()
        cfg = tmp / "config.json"
        cfg.write_text(json.dumps({"chromium": chromium, "url": url, "steps": list(steps.values())}))
        r = subprocess.run([web_app, str(REPO / "tests" / "web_driver.mjs"), str(cfg)], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(10)
    results = dict(zip(steps, json.loads(r.stdout.strip().splitlines()[-1])))
    return results, fed, models, renamed, shot


@pytest.mark.parametrize("dataset", DATASETS)
def test_page_logits_match_onnxruntime(dataset, page):
    from lenet_export.runtime import Classifier

    results, fed, models, _, _ = page
    res = results[dataset]
    assert res["errors"] == [], res["errors"]
    x = fed[dataset]
    clf = Classifier(models[dataset])
    ref = clf.classify(x)
    logits = np.array(res["logits"], np.float32).reshape(len(x), -1)
    diff = np.abs(logits - ref.logits).max()
    print(f"\npage {dataset}: {len(x)} images, max|logit diff| vs Python onnxruntime {diff:.2e}, "
          f"{res['batch_ms']} ms in the page")
    np.testing.assert_allclose(logits, ref.logits, atol=PAGE_ATOL, rtol=0)
    assert (logits.argmax(1) == ref.labels).all()
    assert res["model"]["classes"] == clf.classes
    assert "wasm, 1 thread" in res["about"] and "onnxruntime-web 1." in res["about"]


@pytest.mark.parametrize("step", ["fashion-mnist", "cifar10", "shipped"])
def test_page_shows_an_uploaded_images_classes(step, page):
    """The file chooser path: PNG decoded by the browser, top classes as Python's `predict` finds them."""
    from lenet_export.runtime import Classifier, load_image

    results, _, models, _, _ = page
    res = results[step]
    assert res["errors"] == [], res["errors"]
    clf = Classifier(models[step if step != "shipped" else "fashion-mnist-lenet-modern"])
    png = UPLOAD[step]
    p = clf.classify(load_image(png, clf.channels, (clf.height, clf.width))).probabilities[0]
    top = np.argsort(-p)[:5]
    shown = res["shown"]
    assert [s["name"] for s in shown][0] == clf.classes[top[0]]
    assert {s["name"] for s in shown} <= set(clf.classes) and len(shown) == 5
    np.testing.assert_allclose([s["percent"] for s in shown], np.round(100 * np.sort(p)[::-1][:5], 1), atol=0.11)
    assert png.name in res["source"]


def test_page_class_names_come_from_the_model_metadata(page):
    results, _, _, renamed, _ = page
    res = results["renamed"]
    assert res["errors"] == [] and res["model"]["classes"] == renamed
    assert res["shown"][0]["name"] == "Ankle boot (from metadata)"
    assert all(s["name"].endswith(" (from metadata)") for s in res["shown"])


def test_page_classifies_a_drawing(page):
    res = page[0]["renamed"]
    assert res["drawnSource"] == "your drawing" and len(res["drawn"]) == 5
    assert set(res["drawn"]) <= set(res["model"]["classes"])


def test_page_screenshot(page):
    results, _, _, _, shot = page
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (w, h) == (980, 640)
    assert results["shipped"]["shown"][0]["name"] == "Shirt"


def test_readme_browser_snippet_runs(page):
    """The README's snippet, as a page of its own on the same server: class 9 (ankle boot), as in Python."""
    from lenet_export.runtime import Classifier, load_image

    res = page[0]["snippet"]
    assert res["errors"] == [], res["errors"]
    m = re.fullmatch(r"class (\d+), probability ([\d.]+)", res["console"][0])
    assert m, res["console"]
    clf = Classifier(SHIPPED / "model.raw.onnx")
    p = clf.classify(load_image(UPLOAD["fashion-mnist"], clf.channels, (clf.height, clf.width))).probabilities[0]
    assert int(m.group(1)) == int(p.argmax()) == 9
    assert abs(float(m.group(2)) - p.max()) <= 1e-4
