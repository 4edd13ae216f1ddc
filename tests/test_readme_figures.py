"""README figures that come from the shipped models match the shipped reports (scripts/readme_figures.py)."""

import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "scripts" / "readme_figures.py"


def check(readme) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_readme_figures_match_the_shipped_models():
    r = check(REPO / "README.md")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_stale_figure_fails_the_check(tmp_path):
    import json

    text = (REPO / "README.md").read_text()
    m = json.loads((REPO / "exported" / "fashion-mnist-lenet-modern" / "metrics.json").read_text())
    acc = f"{m['test_acc']:.4f}"
    start = text.index("<!-- figures: shipped -->")
    stale = text[:start] + text[start:].replace(acc, "0.9999", 1)
    (tmp_path / "README.md").write_text(stale)
    r = check(tmp_path / "README.md")
    assert r.returncode == 1 and "'shipped' disagrees" in r.stdout, r.stdout + r.stderr


def test_a_wrong_verify_figure_is_named(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import readme_figures as rf

    text = (REPO / "README.md").read_text()
    assert rf.figure_mismatches(text) == []
    start = text.index("<!-- figures: verify -->")
    line_start = text.index("│ ort-cpu ", start)
    line = text[line_start:text.index("\n", line_start)]
    cells = line.split("│")
    cells[3] = cells[3].replace(cells[3].strip(), "0.1234")
    broken = text.replace(line, "│".join(cells), 1)
    assert any(w.startswith("verify: ort-cpu accuracy 0.1234") for w in rf.figure_mismatches(broken))


def test_a_replay_of_an_earlier_record_is_stale(tmp_path, monkeypatch):
    """docs/replay/ holds replays made on another CPU: when the shipped record they replayed changes (the models
    were re-shipped), the check names the report instead of showing another model's figures; with none, the
    README block says so."""
    import hashlib
    import json
    import shutil

    sys.path.insert(0, str(REPO / "scripts"))
    import figures_reports as rf

    assert rf.stale_replays() == []
    root = tmp_path / "repo"
    (root / "docs" / "replay").mkdir(parents=True)
    shutil.copytree(REPO / "exported", root / "exported", ignore=shutil.ignore_patterns("*.bin", "*.pt*", "*.onnx",
                                                                                         "*.tflite", "*.npz"))
    monkeypatch.setattr(rf, "REPO", root)
    monkeypatch.setattr(rf, "FMNIST", root / "exported" / "fashion-mnist-lenet-modern")
    assert rf.replay_other_cpu_block().startswith("No replay of the shipped records on another CPU yet")
    record = root / "exported" / "fashion-mnist-lenet-modern" / "verify.json"
    replay = {"record": "exported/fashion-mnist-lenet-modern/verify.json",  # the fields stale_replays reads
              "record_sha256": hashlib.sha256(record.read_bytes()).hexdigest()}
    (root / "docs" / "replay" / "m-other-cpu.json").write_text(json.dumps(replay))
    assert rf.stale_replays() == []
    rep = json.loads(record.read_text())
    rep["backends"]["ort-cpu-int8"]["accuracy"] = 0.5
    record.write_text(json.dumps(rep))
    stale = rf.stale_replays()
    assert len(stale) == 1 and "replayed another exported/fashion-mnist-lenet-modern/verify.json" in stale[0], stale


def test_the_ort_int8_speed_script_measures_the_three_sessions(tmp_path, monkeypatch):
    """scripts/ort_int8_speed.py (the source of the ort-int8-speed figures), cut to one short round: a report with
    the machine and, per model and batch, three positive throughputs and their ratios, which the block renders."""
    sys.path.insert(0, str(REPO / "scripts"))
    import figures_reports
    import ort_int8_speed as speed

    monkeypatch.setattr(speed, "ROUNDS", 1)
    monkeypatch.setattr(speed, "SECONDS", 0.02)
    monkeypatch.setattr(speed, "MODELS", ("fashion-mnist-lenet-modern",))
    out = tmp_path / "docs" / "ort-int8-speed" / "here.json"
    assert speed.main(["--out", str(out)]) == 0
    import json

    r = json.loads(out.read_text())
    rows = r["models"]["fashion-mnist-lenet-modern"]
    assert r["machine"]["cpu"] and [row["batch"] for row in rows] == list(speed.BATCHES)
    assert all(v > 0 for row in rows for v in row["img_s"].values())
    assert all(row["int8_over_fp32"] == row["img_s"]["int8"] / row["img_s"]["fp32"] for row in rows)
    monkeypatch.setattr(figures_reports, "REPO", tmp_path)
    assert "| fashion-mnist-lenet-modern | " in figures_reports.ort_int8_speed_block()
