"""lenet-export serve: a real KServe server process (from .venv-serve, or $LENET_EXPORT_SERVE_PYTHON) and real
tritonclient clients, on the shipped Fashion-MNIST folder and real test images.

Health and metadata from the ONNX graphs, infer over HTTP (binary and JSON) and gRPC equal to in-process ONNX
Runtime for both models, class names through the classification extension, every bad request a 4xx that the
next request survives, bounded bodies, graceful SIGTERM; then the endpoint as a verify backend (passes on both
shipped models, fails against a tampered server).
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import threading

import numpy as np
import pytest

from conftest import REPO, assert_clean_error, data_dir_for, run_cli, serving_on

SHIPPED = {"fashion-mnist": REPO / "exported" / "fashion-mnist-lenet-modern",
           "cifar10": REPO / "exported" / "cifar10-lenet-modern-cifar"}
FOLDER = SHIPPED["fashion-mnist"]

pytestmark = pytest.mark.heavy  # server processes: seconds each, not the edit-test loop


@pytest.fixture(scope="module", autouse=True)
def serve_env():
    """The oip backends and start_server may start servers (conftest turns them off for the rest of the suite)."""
    pytest.importorskip("tritonclient.http", reason="tritonclient missing (pip install 'lenet-export[serve-client]')")
    with pytest.MonkeyPatch.context() as mp:
        if not serving_on(mp):
            pytest.skip("no serving environment (bash scripts/install.sh serve makes .venv-serve)")
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lenet_export.serve_process import start_server

    s = start_server(FOLDER, tmp_path_factory.mktemp("serve") / "server.log", "--max-body-mb", "2")
    yield s
    assert s.stop() == 0, s.log.read_text()[-2000:]  # SIGTERM: a clean exit


@pytest.fixture(scope="module")
def images(request):
    """The first 256 real test images, as decoders give them (uint8 N x 28 x 28), and normalised (N x 1 x 28 x 28)."""
    from lenet_export.data import load_split

    split = load_split("fashion-mnist", train=False, data_dir=data_dir_for("fashion-mnist", request))
    raw = split.images[:256].numpy().astype(np.uint8).reshape(-1, 28, 28)
    meta = json.loads((FOLDER / "metadata.json").read_text())
    x = ((raw.astype(np.float32) / 255.0 - meta["mean"][0]) / meta["std"][0]).reshape(-1, 1, 28, 28)
    return raw, x.astype(np.float32)


def _session(name):
    import onnxruntime as ort

    return ort.InferenceSession(str(FOLDER / name), providers=["CPUExecutionProvider"])


def _clients(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return {"http": (httpclient, httpclient.InferenceServerClient(server.http)),
            "grpc": (grpcclient, grpcclient.InferenceServerClient(server.grpc))}


def _infer(mod, client, model, name, x, datatype, binary=True, **out_kw):
    kw = {"binary_data": binary} if mod.__name__.endswith("http") else {}
    feed = mod.InferInput(name, list(x.shape), datatype)
    feed.set_data_from_numpy(x, **kw)
    return client.infer(model, [feed], outputs=[mod.InferRequestedOutput(o, **kw, **out_kw.get(o, {}))
                                                for o in ("logits",)])


def test_health_and_metadata_come_from_the_onnx_graphs(server):
    for scheme, (_, client) in _clients(server).items():
        assert client.is_server_live() and client.is_server_ready()
        meta = client.get_server_metadata(**({"as_json": True} if scheme == "grpc" else {}))
        assert meta["name"] == "kserve" and meta["version"]
        for model, artefact in (("lenet-modern", "model.onnx"), ("lenet-modern-raw", "model.raw.onnx")):
            assert client.is_model_ready(model)
            got = client.get_model_metadata(model, **({"as_json": True} if scheme == "grpc" else {}))
            sess = _session(artefact)
            types = {"tensor(float)": "FP32", "tensor(uint8)": "UINT8"}
            for side, args in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
                want = [(a.name, types[a.type], [d if isinstance(d, int) else -1 for d in a.shape]) for a in args]
                assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in got[side]] == want


def test_infer_equals_in_process_onnx_runtime_for_both_models(server, images):
    raw, x = images
    want = _session("model.onnx").run(None, {"input": x})[0]
    want_raw = _session("model.raw.onnx").run(None, {"images": raw})
    for scheme, (mod, client) in _clients(server).items():
        for binary in ((True, False) if scheme == "http" else (True,)):
            n = len(x) if binary else 16  # JSON: 16 images stay under the test server's 2 MiB limit
            got = _infer(mod, client, "lenet-modern", "input", x[:n], "FP32", binary).as_numpy("logits")
            np.testing.assert_array_equal(got, want[:n], err_msg=f"{scheme} binary={binary}")
        feed = mod.InferInput("images", list(raw.shape), "UINT8")
        feed.set_data_from_numpy(raw)
        res = client.infer("lenet-modern-raw", [feed])
        np.testing.assert_array_equal(res.as_numpy("logits"), want_raw[0])
        np.testing.assert_array_equal(res.as_numpy("probabilities"), want_raw[1])


def test_class_names_through_the_classification_extension(server, images):
    raw, _ = images
    classes = json.loads((FOLDER / "metadata.json").read_text())["classes"]
    probs = _session("model.raw.onnx").run(None, {"images": raw})[1]
    for mod, client in _clients(server).values():
        feed = mod.InferInput("images", list(raw.shape), "UINT8")
        feed.set_data_from_numpy(raw)
        top = client.infer("lenet-modern-raw", [feed], outputs=[mod.InferRequestedOutput("probabilities",
                                                                                          class_count=3)])
        rows = top.as_numpy("probabilities")
        assert rows.shape == (len(raw), 3)
        for i, row in enumerate(rows):
            score, index, label = row[0].decode().split(":", 2)
            assert int(index) == int(np.argmax(probs[i])) and label == classes[int(index)]
            assert float(score) == pytest.approx(float(probs[i].max()), abs=1e-6)


def _post(server, path, body: bytes, headers=None):
    host, port = server.http.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    return r.status, r.read()


def _json(name, shape, datatype, data):
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}).encode()


def _binary(shape, nbytes, header_length=None):
    head = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                   "parameters": {"binary_data_size": nbytes}}]}).encode()
    return head + b"\0" * nbytes, {"Inference-Header-Content-Length": str(header_length or len(head)),
                                   "Content-Type": "application/octet-stream"}


PIXELS = [0.5] * 784
BAD = {  # name: (model, body, extra headers, expected status)
    "malformed JSON": ("lenet-modern", b'{"inputs": [{', {}, 400),
    "no inputs": ("lenet-modern", b"{}", {}, 400),
    "inputs not a list": ("lenet-modern", b'{"inputs": 3}', {}, 400),
    "unknown model": ("nope", _json("input", [1, 1, 28, 28], "FP32", PIXELS), {}, 404),
    "wrong input name": ("lenet-modern", _json("x", [1, 1, 28, 28], "FP32", PIXELS), {}, 400),
    "wrong shape": ("lenet-modern", _json("input", [1, 28, 28], "FP32", PIXELS), {}, 400),
    "wrong dtype": ("lenet-modern", _json("input", [1, 1, 28, 28], "INT32", [1] * 784), {}, 400),
    "too few values": ("lenet-modern", _json("input", [1, 1, 28, 28], "FP32", PIXELS[:10]), {}, 400),
    "strings": ("lenet-modern", _json("input", [1, 1, 28, 28], "FP32", ["a"] * 784), {}, 400),
    "NaN": ("lenet-modern", _json("input", [1, 1, 28, 28], "FP32", [0.5] * 783 + [float("nan")]), {}, 400),
    "Inf": ("lenet-modern", _json("input", [1, 1, 28, 28], "FP32", [0.5] * 783 + [float("inf")]), {}, 400),
    "uint8 out of range": ("lenet-modern-raw", _json("images", [1, 28, 28], "UINT8", [300] * 784), {}, 400),
    "batch 0": ("lenet-modern", _json("input", [0, 1, 28, 28], "FP32", []), {}, 400),
    "binary: byte size short": ("lenet-modern", *_binary([1, 1, 28, 28], 100), 400),
    "binary: header length wrong": ("lenet-modern", _binary([1, 1, 28, 28], 3136, 5)[0],
                                    _binary([1, 1, 28, 28], 3136, 5)[1], 400),
    "over the size limit": ("lenet-modern", *_binary([1000, 1, 28, 28], 3_136_000), 413),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_its_4xx_and_the_next_one_is_served(server, case, images):
    model, body, headers, status = BAD[case]
    got, text = _post(server, f"/v2/models/{model}/infer", body, headers)
    assert got == status, text
    assert set(json.loads(text)) == {"error"}, text  # the protocol's error body
    ok, text = _post(server, "/v2/models/lenet-modern/infer", _json("input", [1, 1, 28, 28], "FP32", PIXELS))
    assert ok == 200 and json.loads(text)["outputs"][0]["shape"] == [1, 10]


def test_refusals_are_logged_once_without_a_traceback(server):
    _post(server, "/v2/models/lenet-modern/infer", _json("input", [1, 1, 28, 28], "FP32", ["marker-xyz"] * 784))
    log = server.log.read_text()
    assert log.count("marker-xyz") == 1 and "Traceback" not in log


def test_a_body_without_length_and_grpc_bad_requests_are_refused(server, images):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    host, port = server.http.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v2/models/lenet-modern/infer", body=iter([_json("input", [1, 1, 28, 28], "FP32", PIXELS)]),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    assert conn.getresponse().status == 411
    client = grpcclient.InferenceServerClient(server.grpc)
    raw, x = images
    for model, name, data, datatype, code in (
            ("lenet-modern", "input", raw, "UINT8", "INVALID_ARGUMENT"),
            ("nope", "input", x, "FP32", "NOT_FOUND"),
            ("lenet-modern", "input", np.zeros((1000, 1, 28, 28), np.float32), "FP32", "RESOURCE_EXHAUSTED")):
        feed = grpcclient.InferInput(name, list(data.shape), datatype)
        feed.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException, match=code):
            client.infer(model, [feed])
    assert client.is_server_ready()


def test_sigterm_lets_the_request_in_flight_finish(tmp_path):
    import tritonclient.http as httpclient

    from lenet_export.serve_process import start_server

    s = start_server(FOLDER, tmp_path / "server.log")
    x = np.random.default_rng(0).integers(0, 256, (4096, 28, 28), dtype=np.uint8)
    feed = httpclient.InferInput("images", list(x.shape), "UINT8")
    feed.set_data_from_numpy(x)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([feed])
    headers = {"Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}
    statuses = []

    def call():  # http.client, not tritonclient's gevent client: this runs in a thread
        statuses.append(_post(s, "/v2/models/lenet-modern-raw/infer", body, headers)[0])
    for _ in range(3):  # warm
        call()
    t = threading.Thread(target=call)
    t.start()
    s.process.send_signal(signal.SIGTERM)
    t.join(60)
    assert s.process.wait(30) == 0
    assert statuses == [200] * 4


def test_serve_refuses_bad_input_in_one_line(tmp_path):
    import importlib.util

    if importlib.util.find_spec("kserve") is None:  # the toolchain's .venv: serving lives in .venv-serve
        assert_clean_error(run_cli("serve", "--exported", FOLDER), "needs kserve", "install.sh serve")
    assert_clean_error(run_cli("serve", "--exported", tmp_path / "missing"), "is not a folder")
    assert_clean_error(run_cli("serve", "--exported", FOLDER, "--port", "8080", "--grpc-port", "8080"), "two ports")
    assert_clean_error(run_cli("serve", "--exported", FOLDER, "--max-body-mb", "0"), "--max-body-mb")
    assert_clean_error(run_cli("verify", "--endpoint", "ftp://x:1"), "--endpoint")
    assert_clean_error(run_cli("verify", "--endpoint", "http://127.0.0.1"), "--endpoint")


@pytest.mark.parametrize("dataset", [pytest.param("fashion-mnist"),
                                     pytest.param("cifar10", marks=pytest.mark.slow)])
def test_the_endpoint_passes_verify_with_the_logits_of_ort_cpu(dataset, request):
    from lenet_export.verify import VerifyOptions, run_suite

    rep, outputs, _ = run_suite(VerifyOptions(exported=SHIPPED[dataset], data_dir=str(data_dir_for(dataset, request)),
                                              backends=("ort-cpu", "oip-http", "oip-grpc")), log=lambda _: None)
    assert rep.passed, rep.problems
    for name in ("oip-http", "oip-grpc"):
        np.testing.assert_array_equal(outputs[name], outputs["ort-cpu"])  # same runtime behind the wire
        runtime = rep.backends[name].runtime
        assert runtime["server"].startswith("kserve ") and runtime["client"].startswith("tritonclient ")
        assert "Open Inference Protocol v2" in runtime["protocol"] and runtime["started_by_verify"]


def test_a_server_whose_model_was_tampered_with_fails_verify(tmp_path, request):
    import onnx
    from onnx import numpy_helper

    from lenet_export.serve_process import running_server
    from lenet_export.verify import VerifyOptions, run_suite

    tampered = tmp_path / "tampered"
    shutil.copytree(FOLDER, tampered)
    proto = onnx.load(str(tampered / "model.onnx"))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.5  # one weight
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(proto, str(tampered / "model.onnx"))
    with running_server(tampered, tmp_path / "server.log") as s:
        rep, _, _ = run_suite(VerifyOptions(exported=FOLDER, data_dir=str(data_dir_for("fashion-mnist", request)),
                                            backends=("ort-cpu", "oip-http", "oip-grpc"),
                                            endpoints={"http": f"http://{s.http}", "grpc": f"grpc://{s.grpc}"}),
                              log=lambda _: None)
    assert rep.backends["ort-cpu"].status == "passed"
    for name in ("oip-http", "oip-grpc"):
        assert rep.backends[name].status == "failed" and not rep.backends[name].runtime["started_by_verify"]
        assert any(f.rule == "logits" for f in rep.backends[name].failures), rep.backends[name].failures


def test_bench_serve_loads_every_row_without_errors(tmp_path):
    """The load benchmark's plumbing (not its speed): every protocol x batch x concurrency ran and was answered."""
    from lenet_export.serve_bench import BATCHES, CONCURRENCY, IN_PROCESS, PROTOCOLS, bench_serve, markdown

    rows = bench_serve(FOLDER, 0.3, log=lambda _: None)
    want = {(p, b, c) for p in PROTOCOLS for b in BATCHES for c in CONCURRENCY} | {(IN_PROCESS, b, 1) for b in BATCHES}
    assert {(r.protocol, r.batch, r.concurrency) for r in rows} == want
    assert all(r.errors == 0 and r.requests > 0 and r.p99_ms >= r.p50_ms > 0 for r in rows), rows
    assert "over in-process ORT's: grpc" in markdown(rows, "this machine")


def test_the_load_generator_reports_failure(server):
    from lenet_export.errors import LenetExportError
    from lenet_export.serve_bench import _generate
    from lenet_export.serve_process import server_python

    with pytest.raises(LenetExportError, match="load generator failed"):
        _generate(server_python(), "http", server.http, "no-such-model", 1, 1, 0.2)
    assert_clean_error(run_cli("bench", "--serve", "--seconds", "0"), "--seconds")


def test_readme_client_snippet_runs_against_the_server(server):
    import re
    import subprocess
    import sys

    readme = (REPO / "README.md").read_text()
    code = re.search(r"<!-- serve-client:[^\n]*-->\n```python\n(.*?)```", readme, re.S).group(1)
    r = subprocess.run([sys.executable, "-c", code.replace("localhost:8080", server.http)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first = re.findall(r"b'([^']+)'", r.stdout)[0]
    assert first.split(":", 2)[2] == "Shirt", r.stdout  # the example image is a test-set shirt


def test_a_taken_port_is_a_one_line_error(server):
    port = server.http.split(":")[1]
    assert_clean_error(run_cli("serve", "--exported", FOLDER, "--port", port, "--grpc-port", "1"), "cannot listen",
                       f"--port {port}")
