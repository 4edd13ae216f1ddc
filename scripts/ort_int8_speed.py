"""ONNX Runtime INT8 against FP32 throughput on the shipped models, with and without QDQ propagation.

    .venv/bin/python scripts/ort_int8_speed.py                 # writes docs/ort-int8-speed/<cpu>.json

Every session is timed side by side in one process, in alternating rounds (median of ``ROUNDS``), on random
inputs: FP32 ``model.onnx`` and INT8 ``model.int8.onnx`` as every session of this project opens them
(``ort_session.open_session``, QDQ propagation off), and the INT8 model as ONNX Runtime opens it by default
(propagation on). One file per CPU: ``scripts/figures_reports.py`` renders them into the README (``ort-int8-speed``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MODELS = ("fashion-mnist-lenet-modern", "cifar10-lenet-modern-cifar")
BATCHES = (64, 256)
ROUNDS = 7
SECONDS = 0.3  # each session's share of one round


def throughput(run, x: np.ndarray) -> float:
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < SECONDS:
        run(x)
        n += 1
    return n * len(x) / (time.perf_counter() - start)


def measure(folder: Path) -> list[dict]:
    """One row per batch size: images/s of each session, and INT8's with and without propagation over FP32's."""
    import onnxruntime as ort

    from lenet_export.ort_session import open_session

    sessions = {"fp32": open_session(folder / "model.onnx"), "int8": open_session(folder / "model.int8.onnx"),
                "int8_propagation_on": ort.InferenceSession(str(folder / "model.int8.onnx"),
                                                            providers=["CPUExecutionProvider"])}
    shape = sessions["fp32"].get_inputs()[0].shape[1:]
    rows = []
    for batch in BATCHES:
        x = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
        runs = {k: (lambda x, s=s: s.run(None, {"input": x})) for k, s in sessions.items()}
        for run in runs.values():
            run(x)  # warm-up
        rounds: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(ROUNDS):
            for k, run in runs.items():
                rounds[k].append(throughput(run, x))
        med = {k: float(np.median(v)) for k, v in rounds.items()}
        rows.append({"batch": batch, "img_s": med, "int8_over_fp32": med["int8"] / med["fp32"],
                     "int8_propagation_on_over_fp32": med["int8_propagation_on"] / med["fp32"]})
    return rows


def main(argv=None) -> int:
    import onnxruntime as ort

    from lenet_export.machine import this_machine

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="default: docs/ort-int8-speed/<cpu>.json")
    args = p.parse_args(argv)
    machine = this_machine()
    out = args.out or REPO / "docs" / "ort-int8-speed" / (re.sub(r"[^a-z0-9]+", "-", machine.cpu.lower()).strip("-")
                                                          + ".json")
    result = {"machine": machine.to_dict(), "onnxruntime": ort.__version__, "rounds": ROUNDS, "inputs": "random",
              "models": {m: measure(REPO / "exported" / m) for m in MODELS}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
