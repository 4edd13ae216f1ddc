"""The README's report figures: rendered from the shipped reports (``exported/*/verify.json``, ``metrics.json``,
``history.csv``, ``docs/bench-*.json``, ``docs/replay/*.json``, ``training/benchmark-results.json``), and the
checks that the figures of the command blocks agree with them. Used by ``scripts/readme_figures.py``."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SHIPPED = REPO / "exported"
FMNIST = SHIPPED / "fashion-mnist-lenet-modern"
CIFAR = SHIPPED / "cifar10-lenet-modern-cifar"
BLOCK = re.compile(r"(<!-- figures: ([\w-]+) -->\n)(.*?)(<!-- /figures -->)", re.S)
COLUMNS = "160"  # rich's table width when the output is not a terminal
sys.path.insert(0, str(REPO))  # the report blocks render with the package's own functions


# -- reading the README ---------------------------------------------------------------------------------------

def blocks(text: str) -> dict[str, str]:
    return {m.group(2): m.group(3) for m in BLOCK.finditer(text)}


def replace(text: str, new: dict[str, str]) -> str:
    return BLOCK.sub(lambda m: m.group(1) + new.get(m.group(2), m.group(3)) + m.group(4), text)


def fenced(*parts: str) -> str:
    return "```\n" + "".join(p if p.endswith("\n") else p + "\n" for p in parts) + "```\n"


# -- ratios between runtimes, from the bench reports -----------------------------------------------------------------

RATIOS = (  # (what, numerator backend, denominator backend, field): read off docs/bench-*.json
    ("ONNX Runtime / eager torch, throughput", "ort-cpu", "torch-cpu", "throughput_img_s"),
    ("OpenVINO / eager torch, throughput", "openvino-cpu", "torch-cpu", "throughput_img_s"),
    ("MNN / ONNX Runtime, throughput", "mnn-cpu", "ort-cpu", "throughput_img_s"),
    ("ExecuTorch (XNNPACK) / eager torch, throughput", "executorch-cpu", "torch-cpu", "throughput_img_s"),
    ("NCNN (1 thread) / eager torch, throughput", "ncnn-cpu", "torch-cpu", "throughput_img_s"),
    ("tract / eager torch, throughput", "tract-cpu", "torch-cpu", "throughput_img_s"),
    ("LiteRT / ONNX Runtime, latency at batch 1", "litert-cpu", "ort-cpu", "latency_ms_batch1"),
    ("OpenVINO INT8 / OpenVINO FP32, throughput", "openvino-cpu-int8", "openvino-cpu", "throughput_img_s"),
    ("ExecuTorch INT8 / ExecuTorch FP32, throughput", "executorch-cpu-int8", "executorch-cpu", "throughput_img_s"),
    ("LiteRT INT8 / LiteRT FP32, latency at batch 1", "litert-cpu-int8", "litert-cpu", "latency_ms_batch1"),
    ("ONNX Runtime INT8 / FP32, throughput", "ort-cpu-int8", "ort-cpu", "throughput_img_s"),
    ("ONNX Runtime FP16 / FP32, throughput", "ort-cpu-fp16", "ort-cpu", "throughput_img_s"),
    ("ONNX Runtime INT8 / FP32, size on disk", "ort-cpu-int8", "ort-cpu", "size_bytes"),
)


def ratios_block(_=None) -> str:
    """Ratios between runtimes, each from one bench run (both sides measured in the same process)."""
    rows = {name: {r["backend"]: r for r in json.loads((REPO / "docs" / f"bench-{name}.json").read_text())}
            for name in ("fashion-mnist", "cifar10")}
    out = ["| ratio | Fashion-MNIST | CIFAR-10 |", "|---|---|---|"]
    for what, a, b, key in RATIOS:
        cells = []
        for table in rows.values():
            x, y = table.get(a, {}).get(key), table.get(b, {}).get(key)
            cells.append(f"{x / y:.2f}x" if x and y else "-")
        out.append(f"| {what} | {' | '.join(cells)} |")
    return "\n".join(out) + "\n"


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


# -- rendering shipped reports ------------------------------------------------------------------------------------

def train_block(_=None) -> str:
    """The `train` log of the shipped Fashion-MNIST run, from its checkpoint and history."""
    from lenet_export.checkpoint import load_checkpoint
    from lenet_export.training.train import epoch_line, final_line, header_line

    best = load_checkpoint(FMNIST / "best.pth")
    with open(FMNIST / "history.csv") as f:
        rows = [{k: (v == "True" if k == "best" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        r["epoch"] = int(r["epoch"])
    epochs = best["config"]["epochs"]
    lines = [header_line(best, epochs, "cpu"), *(epoch_line(r, epochs) for r in rows),
             final_line(best, Path("runs/fashion-mnist/best.pth"))]
    return fenced("$ lenet-export train --dataset fashion-mnist --out runs/fashion-mnist", *lines)


def exact_summary(rep: dict) -> str:
    exact = {n: b for n, b in rep["backends"].items()
             if b.get("precision", "fp32") == "fp32" and n != rep["reference"] and "cuda" not in n}
    passed = [n for n, b in exact.items() if b["status"] == "passed"]
    worst = max(passed, key=lambda n: exact[n]["logits"]["max_abs"])
    agree = min(exact[n]["argmax_agree"] for n in passed)
    return (f"all {len(passed)} FP32 CPU backends passed, {agree}/{rep['samples']} classes equal, "
            f"max \\|Δ\\| ≤ {exact[worst]['logits']['max_abs']:.1e} ({worst})")


def variants_summary(rep: dict) -> str:
    parts = []
    for n, b in rep["backends"].items():
        if b.get("precision", "fp32") != "fp32" and b["status"] != "skipped":
            changed = rep["samples"] - b["argmax_agree"]
            parts.append(f"`{n}` {b['accuracy']:.4f} ({changed} changed, {b['status']})")
        elif "withheld by lenet-export ship" in (b.get("reason") or ""):
            why = b["reason"].split(": ", 1)[1].split(" failed verify on the test split: ", 1)[-1]
            parts.append(f"`{n}` **withheld** (failed verify: {why})")
    return "; ".join(parts)


def shipped_block(_=None) -> str:
    """The table of shipped models: parameters, accuracy, training time, the verify verdict."""
    head = ("| folder | data | parameters | test accuracy | training time (2 cores) | verify (whole test set) |\n"
            "|---|---|---|---|---|---|\n")
    rows = []
    for folder, data in ((FMNIST, "Fashion-MNIST"), (CIFAR, "CIFAR-10, **JPEG copy**")):
        m = json.loads((folder / "metrics.json").read_text())
        rep = json.loads((folder / "verify.json").read_text())
        meta = rep["metadata"]
        cuda = [n for n, b in rep["backends"].items() if "cuda" in n and b["status"] == "skipped"]
        verdict = (f"{'passed' if rep['passed'] else 'FAILED'}: {exact_summary(rep)}; {variants_summary(rep)}; "
                   f"{len(meta['files'])} metadata copies agree"
                   + (f"; {len(cuda)} CUDA backends skipped (no GPU)" if cuda else ""))
        rows.append(f"| `{rel(folder)}/` | {data} | {m['num_parameters']:,} | {m['test_acc']:.4f} | "
                    f"{m['train_seconds']:.0f} s ({m['epochs_run']} epochs) | {verdict} |")
    machine = json.loads((FMNIST / "verify.json").read_text())["machine"]
    return head + "\n".join(rows) + f"\n\nVerified on: {machine_line(machine)}.\n"


def replay_other_cpu_block(_=None) -> str:
    """The shipped records replayed on another CPU: ``verify --replay ... --report docs/replay/MODEL-CPU.json``
    run there (the record's own machine cannot make these), one table per report."""
    out = []
    for path in sorted((REPO / "docs" / "replay").glob("*.json")):
        r = json.loads(path.read_text())
        ran = [b for b in r["backends"].values() if b["status"] != "skipped"]
        exact = [b for b in ran if b["precision"] == "fp32"]
        rows = [(f"{len(exact)} FP32 backends", "fp32", _spread(exact, "status"), _spread(exact, "accuracy_there"),
                 _spread(exact, "accuracy_here"), f"{max(b['max_abs'] for b in exact):.1e}",
                 sum(b["differing_count"] for b in exact))] if exact else []
        rows += [(f"`{b['name']}`", b["precision"], b["status"], f"{b['accuracy_there']:.4f}",
                  f"{b['accuracy_here']:.4f}", f"{b['max_abs']:.1e}", b["differing_count"])
                 for b in ran if b["precision"] != "fp32"]
        out += [f"`{rel(path)}`: the record {r['record']}, made on {machine_line(r['there'])}; replayed on "
                f"{machine_line(r['here'])}: **{'reproduced' if r['passed'] else 'differs'}**.", "",
                "| backend | precision | status | accuracy there | accuracy here | max\\|Δ\\| | samples changed class |",
                "|---|---|---|---|---|---|---|"]
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        changed = [(b["name"], d) for b in ran for d in b["differing"]]
        out += [""] + [f"- `{n}`, sample {d['index']}: class {d['there_class']} (margin {d['there_margin']:.3g}) "
                       f"there, {d['here_class']} (margin {d['here_margin']:.3g}) here" for n, d in changed] + [""]
    if not out:  # re-shipped since: a replay of the new records must come from another machine
        machine = json.loads((FMNIST / "verify.json").read_text())["machine"]
        out = [f"No replay of the shipped records on another CPU yet: they were made on {machine_line(machine)}.", ""]
    return "\n".join(out)


def _spread(rows: list[dict], key: str) -> str:
    """The one value of ``key`` in ``rows``, or its range (accuracies, 4 decimals) or list (statuses)."""
    values = sorted({b[key] for b in rows})
    if all(isinstance(v, float) for v in values):
        lo, hi = f"{values[0]:.4f}", f"{values[-1]:.4f}"
        return lo if lo == hi else f"{lo}-{hi}"
    return ", ".join(map(str, values))


def ort_int8_speed_block(_=None) -> str:
    """ONNX Runtime INT8 over FP32 throughput, QDQ propagation on and off, one row per CPU and model, from
    ``docs/ort-int8-speed/*.json`` (``scripts/ort_int8_speed.py``, run on that CPU)."""
    out = ["| CPU | model | batch 64, pass on | batch 64, pass off | batch 256, pass on | batch 256, pass off |",
           "|---|---|---|---|---|---|"]
    machines = []
    for path in sorted((REPO / "docs" / "ort-int8-speed").glob("*.json")):
        r = json.loads(path.read_text())
        cpu = r["machine"]["cpu"]
        machines.append(f"{machine_line(r['machine'])}, onnxruntime {r['onnxruntime']}, median of "
                        f"{r['rounds']} alternating rounds, {r['inputs']} inputs (`{rel(path)}`).")
        for model, rows in r["models"].items():
            cells = [f"{row[k]:.2f}x" if k == "int8_propagation_on_over_fp32" else f"**{row[k]:.2f}x**"
                     for row in rows for k in ("int8_propagation_on_over_fp32", "int8_over_fp32")]
            out.append(f"| {cpu} | {model} | {' | '.join(cells)} |")
    return "\n".join(out) + "\n\n" + "\n".join(machines) + "\n"


def machine_line(m: dict) -> str:
    from lenet_export.machine import Machine

    return Machine.from_dict(m).summary


def training_speed_block(_=None) -> str:
    """The training benchmark's table, from training/benchmark-results.json."""
    r = json.loads((REPO / "training" / "benchmark-results.json").read_text())
    from lenet_export.training.benchmark import table

    return table(r) + f"\nMeasured with torch {r['torch']} on {machine_line(r['machine'])}.\n"


# -- the figures of the slow blocks, checked against the shipped reports -------------------------------------------

def table_rows(block: str) -> list[list[str]]:
    """The cells of each row of a rich (│) or Markdown (|) table in ``block``."""
    rows = []
    for line in block.splitlines():
        sep = "│" if line.startswith("│") else "|" if line.startswith("| ") else None
        if sep:
            rows.append([c.strip() for c in line.strip().strip(sep).split(sep)])
    return rows


def figure_mismatches(text: str) -> list[str]:
    """Where a figure of the verify, replay or bench blocks disagrees with the shipped report it comes from."""
    found = blocks(text)
    out = []
    for name, folder, acc_col, agree_col in (("verify", FMNIST, 2, 4), ("replay", FMNIST, 2, None),
                                             ("bench-fashion-mnist", FMNIST, 4, 6), ("bench-cifar10", CIFAR, 4, 6)):
        rep = json.loads((folder / "verify.json").read_text())
        for row in table_rows(found.get(name, "")):
            b = rep["backends"].get(row[0].replace("\\", ""))
            if b is None or b["status"] == "skipped":
                continue
            if row[acc_col] != f"{b['accuracy']:.4f}":
                out.append(f"{name}: {row[0]} accuracy {row[acc_col]}, the shipped report says {b['accuracy']:.4f}")
            if agree_col is not None and row[agree_col] != f"{b['argmax_agree']}/{rep['samples']}":
                out.append(f"{name}: {row[0]} agree {row[agree_col]}, the shipped report says "
                           f"{b['argmax_agree']}/{rep['samples']}")
    return out + stale_replays()


def stale_replays() -> list[str]:
    """A replay in docs/replay/ of a record that is no longer the shipped one (the models were re-shipped):
    its figures describe other models, so it must be made again on another CPU (or removed)."""
    import hashlib

    out = []
    for path in sorted((REPO / "docs" / "replay").glob("*.json")):
        r = json.loads(path.read_text())
        now = hashlib.sha256((REPO / r["record"]).read_bytes()).hexdigest()
        if r.get("record_sha256") != now:
            out.append(f"{rel(path)} replayed another {r['record']} (sha256 {str(r.get('record_sha256'))[:12]}, "
                       f"the shipped one is {now[:12]}): replay the shipped record again on another CPU")
    return out
