"""Build a ready-to-embed model folder: train, export, verify, and write its model card.

``lenet-export ship --dataset fashion-mnist`` (and ``--dataset cifar10 --data-dir ...``) regenerates
``exported/<dataset>-<model>/`` with the checkpoint (``best.pth``), ``model.onnx``, ``model.raw.onnx``,
every format ``lenet-export onnx`` writes (ONNX, TorchScript, .pt2, OpenVINO, ExecuTorch, LiteRT), the
reduced-precision variants, golden test data, ``metadata.json``, ``metrics.json``, ``history.csv``,
``verify.json`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ParityError
from .fsutil import atomic_write_text
from .verify import EVAL_BATCH

if TYPE_CHECKING:
    from .report import Report

SOURCE_NOTE = {
    "jpeg-image-folder": "Trained and tested on the JPEG copy of CIFAR-10 (all 60,000 real images re-encoded as JPEG, quality ~75); "
                         "accuracies on it are close to, but not the same as, canonical CIFAR-10 figures",
    "torchvision-cifar10": "Trained and tested on canonical CIFAR-10 (cifar-10-python batches, read by torchvision)",
    "torchvision-fashion-mnist": "Trained and tested on the original Fashion-MNIST release files (read by torchvision)",
}


def ship(dataset: str, data_dir: str | None, root: Path = Path("exported"), runs: Path = Path("runs"),
         log=print) -> Path:
    from .export import ExportOptions, export
    from .models import DEFAULT_MODEL
    from .training.train import TrainConfig, train
    from .quantize import QuantizeOptions, quantize
    from .verify import VerifyOptions, verify

    model = DEFAULT_MODEL[dataset]
    run = runs / f"ship-{dataset}"
    train(TrainConfig(dataset=dataset, model=model, data_dir=data_dir, out=str(run), force=True), log=log)
    out = root / f"{dataset}-{model}"
    export(run / "best.pth", ExportOptions(out=out, force=True, data_dir=data_dir), log=log)
    for name in ("best.pth", "metrics.json", "history.csv"):
        shutil.copy2(run / name, out / name)
    quantize(QuantizeOptions(exported=out, checkpoint=out / "best.pth", data_dir=data_dir), log=log)
    report = verify(VerifyOptions(exported=out, checkpoint=out / "best.pth", data_dir=data_dir,
                                  report=out / "verify.json"), log=log)
    try:
        report.check()
    except ParityError as e:
        raise ParityError(f"shipped model in {out} fails verify ({e}); see {out / 'verify.json'}") from None
    atomic_write_text(out / "MODEL_CARD.md", model_card(out, report))
    log(f"shipped {out}")
    return out


def model_card(folder: Path, rep: "Report") -> str:
    meta = json.loads((folder / "metadata.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    ran = {k: v for k, v in rep.backends.items() if v.ran}
    skipped = {k: v.reason for k, v in rep.backends.items() if v.status == "skipped"}
    rows = "\n".join(
        f"| {k} | {v.status} | {v.accuracy:.4f} | {v.logits.max_abs:.1e} | {v.argmax_agree}/{rep.samples} "
        f"| {v.batch_invariance.summary} | {v.timing.latency_ms_batch1['median']:.3f} "
        f"| {v.timing.throughput_img_s:,.0f} (b{v.timing.throughput_batch}) |"
        for k, v in ran.items())
    skipped_txt = "\n".join(f"- {k}: skipped ({r})" for k, r in skipped.items()) or "- none"
    return f"""# {meta['model_name']} on {meta['dataset']}

A LeNet-family classifier exported by lenet-export {meta['lenet_export_version']}.

## Data
{SOURCE_NOTE.get(metrics['data_source'], metrics['data_source'])}. Training split: the training set minus a
seeded 10% validation split (seed 0); the test set is used only for the final figures below.
Classes: {', '.join(meta['classes'])}.

## Accuracy
| | value |
|---|---|
| test accuracy (best-validation checkpoint) | {metrics['test_acc']:.4f} |
| validation accuracy | {metrics['val_acc']:.4f} (epoch {metrics['best_epoch']} of {metrics['epochs_run']}) |
| parameters | {metrics['num_parameters']:,} |
| training time | {metrics['train_seconds']:.0f} s on the machine that built it (2 CPU cores) |

## Parity (`lenet-export verify`, whole test set, tolerance atol {rep.tolerance.atol:g} rtol {rep.tolerance.rtol:g})
| backend | status | accuracy | max abs logit diff | argmax agree | batch 1/2/7/{EVAL_BATCH} max diff | latency b1 (ms) | img/s (batch) |
|---|---|---|---|---|---|---|---|
{rows}

{skipped_txt}

{precision_section(rep)}

Metadata: {"all " + str(len(rep.metadata.files)) + " copies agree with the checkpoint (" + ", ".join(rep.metadata.files) + ")"
           if rep.metadata.passed else "; ".join(rep.metadata.failures)}.
Full report: `verify.json`.

{files_section(folder, meta)}
"""


def precision_section(rep: "Report") -> str:
    """FP32 against its reduced-precision variants, with a recommendation only where a variant measured faster
    than the FP32 model on the same runtime."""
    base = {"ort-cpu-fp16": "ort-cpu", "ort-cpu-int8": "ort-cpu", "openvino-cpu-int8": "openvino-cpu"}
    names = ("ort-cpu", "ort-cpu-fp16", "ort-cpu-int8", "openvino-cpu", "openvino-cpu-int8")
    rows = {n: rep.backends[n] for n in names if n in rep.backends and rep.backends[n].ran}
    if not any(n in base for n in rows):
        return ""
    lines = [f"| {n} | {r.precision} | {r.status} | {r.accuracy:.4f} | {len(r.disagreements)} | "
             f"{r.size_bytes / 1024:,.0f} KiB | {r.timing.throughput_img_s:,.0f} |" for n, r in rows.items()]
    faster = [f"{n} ({r.timing.throughput_img_s / rows[base[n]].timing.throughput_img_s:.2f}x {base[n]})"
              for n, r in rows.items() if n in base and base[n] in rows and r.status == "passed"
              and r.timing.throughput_img_s > rows[base[n]].timing.throughput_img_s]
    advice = (f"Measured faster than FP32 on the same runtime, on the machine that built it: {', '.join(faster)}; "
              "the other variants were slower there (no AVX-512 VNNI or FP16 arithmetic) and buy only size."
              if faster else "On the machine that built it (no AVX-512 VNNI or FP16 arithmetic), no variant ran faster "
              "than FP32 on its runtime: use FP32 unless size matters more than speed.")
    return "\n".join(["## Reduced precision (`lenet-export quantize`; budgets: FP16 0.05, INT8 0.5 accuracy points)",
                      "| backend | precision | status | accuracy | classes changed vs FP32 reference | size "
                      f"| img/s (b{EVAL_BATCH}) |",
                      "|---|---|---|---|---|---|---|", *lines, "", advice])


def _mobile_lines(meta: dict) -> str:
    def batch(artefact: str) -> str:
        lo, hi = meta[artefact]["batch_range"]
        return f"{lo} only" if lo == hi else f"{lo}..{hi}"
    formats, lines = meta.get("formats", {}), ""
    if "executorch" in formats:
        lines += (f"- `model.pte`: ExecuTorch program (XNNPACK delegate), batch {batch('model.pte')}, metadata from "
                  "its method `metadata()`.\n")
    if "litert" in formats:
        lines += (f"- `model.tflite`: LiteRT flatbuffer, batch {batch('model.tflite')}, metadata in its metadata "
                  "entry `lenet_export`.\n")
    return lines


def files_section(folder: Path, meta: dict) -> str:
    c = len(meta["mean"])
    raw_shape = "N x H x W" if c == 1 else "N x H x W x 3"
    return f"""## Files
- `model.onnx`: float32 `input` N x {c} x {meta['input_shape'][2]} x {meta['input_shape'][3]} (NCHW, normalised:
  `(pixel / 255 - mean) / std`, mean {meta['mean']}, std {meta['std']}) -> `logits` N x 10. Opset {meta['opset']}, {meta['exporter']} exporter.
- `model.raw.onnx`: uint8 `images` {raw_shape} as an image decoder gives them -> `logits`, `probabilities`.
- `model.pt`: TorchScript ({meta.get('torchscript_method')}), metadata in the extra file `metadata.json`.
- `model.pt2`: torch.export ExportedProgram (dynamic batch), metadata in its extra file `metadata.json`.
- `model.xml` + `model.bin`: OpenVINO IR in FP32, metadata in `rt_info` (`lenet_export`).
{_mobile_lines(meta)}- `model.fp16.onnx`, `model.int8.onnx`: reduced-precision variants (see above), metadata in `metadata_props`.
- `test_data_set_0/`, `raw_test_data_set_0/`: golden inputs/outputs (ONNX test-data layout), one real test image per class.
- `best.pth`: the checkpoint (sha256 `{meta['checkpoint_sha256']}`), `metadata.json`, `metrics.json`, `history.csv`.

## Embed
Python without torch:

```python
import numpy as np
from lenet_export.runtime import Classifier
clf = Classifier("{folder.as_posix()}/model.raw.onnx")
pred = clf.classify(images)   # uint8 {raw_shape.replace('N x ', '')} or {raw_shape}
print(pred.class_names, pred.probabilities.max(axis=1), clf.provider)
```

Node.js: `node examples/node/classify.js {folder.as_posix()}`; Android and embedded apps (ExecuTorch, LiteRT):
see the README, "Embedding".
"""
