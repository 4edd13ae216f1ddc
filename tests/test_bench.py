"""lenet-export bench: the runtime comparison table, with sizes and parity from the same run."""

import json

import pytest

from conftest import run_cli
from lenet_export.bench import SWEEP


@pytest.mark.slow  # every CPU backend's batch sweep (77 s); bench --images covers the verb in CI
def test_bench_rows_sizes_and_markdown(runs, exports, fmnist_dir, tmp_path):
    out = exports("fashion-mnist")
    r = run_cli("bench", "--exported", out, "--checkpoint", runs("fashion-mnist") / "best.pth", "--data-dir", fmnist_dir,
                "--backends", "ort-cpu,ort-cpu-raw", "--json", tmp_path / "b.json", "--markdown", tmp_path / "b.md")
    assert r.exit_code == 0, r.output
    rows = {row["backend"]: row for row in json.loads((tmp_path / "b.json").read_text())}
    assert list(rows) == ["torch-cpu", "ort-cpu", "ort-cpu-raw"]
    assert rows["ort-cpu"]["size_bytes"] == (out / "model.onnx").stat().st_size
    assert rows["torch-cpu"]["size_bytes"] is None
    for row in rows.values():
        assert row["status"] == "passed" and row["max_abs_diff"] <= 1e-4 and row["argmax_agree"] == 10000
        assert row["best_batch"] in SWEEP and row["throughput_img_s"] > 0 and row["latency_ms_batch1"] > 0
    md = (tmp_path / "b.md").read_text()
    assert "| ort-cpu-raw | model.raw.onnx |" in md and md.count("\n|") == 5
