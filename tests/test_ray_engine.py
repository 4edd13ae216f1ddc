"""`predict --engine ray` (Ray Data on a local Ray) against `--engine local` on thousands of real test images
written as PNG files: the same rows, byte for byte, in the same order; Parquet output; errors in one line."""

import json
import sys

import pytest

from conftest import REPO, assert_clean_error, run_cli

MODEL = REPO / "exported" / "fashion-mnist-lenet-modern" / "model.raw.onnx"
N = 2000

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def many(tmp_path_factory, fmnist_dir):
    from PIL import Image

    from lenet_export.data import load_split

    split = load_split("fashion-mnist", train=False, data_dir=fmnist_dir)
    root = tmp_path_factory.mktemp("many")
    for i in range(N):
        Image.fromarray(split.images[i, 0].numpy()).save(root / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def ray_available():
    pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'lenet-export[ray]')")


def test_ray_and_local_engines_give_identical_output(many, ray_available, tmp_path):
    local = run_cli("predict", "--model", MODEL, str(many), "--format", "csv", "--top-k", "2")
    assert local.exit_code == 0, local.output
    r = run_cli("predict", "--model", MODEL, str(many), "--format", "csv", "--top-k", "2", "--engine", "ray",
                "--num-cpus", "2")
    assert r.exit_code == 0, r.output
    assert r.stdout == local.stdout and len(r.stdout.splitlines()) == N + 1
    out = tmp_path / "scores.parquet"
    r = run_cli("predict", "--model", MODEL, str(many), "--engine", "ray", "--out", out)
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pylist()
    jsonl = [json.loads(line) for line in run_cli("predict", "--model", MODEL, str(many), "--format",
                                                      "jsonl").stdout.splitlines()]
    assert table == jsonl


def test_a_bad_image_stops_the_ray_engine_in_one_line(many, ray_available, tmp_path):
    from PIL import Image

    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes((many / f"{i:05d}.png").read_bytes())
    Image.new("L", (30, 30)).save(tmp_path / "wide.png")
    assert_clean_error(run_cli("predict", "--model", MODEL, str(tmp_path), "--engine", "ray"),
                       "wide.png is 30x30; the model expects 28x28")


def test_engine_options_are_checked(many, monkeypatch):
    assert_clean_error(run_cli("predict", "--model", MODEL, str(many), "--engine", "spark"), "--engine")
    assert_clean_error(run_cli("predict", "--model", MODEL, str(many), "--num-cpus", "2"), "--engine ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert_clean_error(run_cli("predict", "--model", MODEL, str(many), "--engine", "ray"),
                       "pip install 'lenet-export[ray]'")
