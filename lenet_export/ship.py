"""Build a ready-to-embed model folder: train, export, verify, and write its model card.

``lenet-export ship --dataset fashion-mnist`` (and ``--dataset cifar10 --data-dir ...``) regenerates
``exported/<dataset>-<model>/`` with the checkpoint (``best.pth``), every format ``lenet-export onnx`` writes
and every variant ``quantize`` makes (``lenet_export.formats``), golden test data, ``metadata.json``,
``metrics.json``, ``history.csv``, ``verify.json`` and ``MODEL_CARD.md``. The card's tables and file list are
derived from the report and the format registry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, ParityError
from .fsutil import atomic_write_text
from .report import markdown_table

if TYPE_CHECKING:
    from .report import Report

CARD_COLUMNS = ("backend", "status", "accuracy", "max_abs", "agree", "batch", "latency", "throughput")
PRECISION_COLUMNS = ("backend", "precision", "status", "accuracy", "agree", "size", "throughput")
SOURCE_NOTE = {
    "jpeg-image-folder": "Trained and tested on the JPEG copy of CIFAR-10 (all 60,000 real images re-encoded as JPEG, quality ~75); "
                         "accuracies on it are close to, but not the same as, canonical CIFAR-10 figures",
    "torchvision-cifar10": "Trained and tested on canonical CIFAR-10 (cifar-10-python batches, read by torchvision)",
    "torchvision-fashion-mnist": "Trained and tested on the original Fashion-MNIST release files (read by torchvision)",
}


RUN_FILES = ("best.pth", "metrics.json", "history.csv")


def ship(dataset: str, data_dir: str | None, root: Path = Path("exported"), runs: Path = Path("runs"),
         log=print, from_run: Path | None = None) -> Path:
    """Train the default model (or take the run in ``from_run``), export every format, quantize, verify, and
    write the model card into ``root/<dataset>-<model>``."""
    from .export import ExportOptions, export
    from .models import DEFAULT_MODEL
    from .quantize import QuantizeOptions, quantize
    from .verify import VerifyOptions, verify

    from .checkpoint import load_checkpoint
    from .data import dataset_info

    dataset_info(dataset)  # an unknown data set is a one-line error
    model = DEFAULT_MODEL[dataset]
    if from_run is None:
        from .training.train import TrainConfig, train

        run = runs / f"ship-{dataset}"
        train(TrainConfig(dataset=dataset, model=model, data_dir=data_dir, out=str(run), force=True), log=log)
    else:
        run = Path(from_run)
        missing = [f for f in RUN_FILES if not (run / f).is_file()]
        if missing:
            raise ConfigError(f"--from-run {run} is not a finished training run (no {missing[0]})")
        ckpt = load_checkpoint(run / "best.pth")
        if (ckpt["dataset"], ckpt["model"]) != (dataset, model):
            raise ConfigError(f"--from-run {run} holds {ckpt['model']} on {ckpt['dataset']}, not the default "
                              f"{model} on {dataset}")
    out = root / f"{dataset}-{model}"
    export(run / "best.pth", ExportOptions(out=out, force=True, data_dir=data_dir), log=log)
    for name in RUN_FILES:
        shutil.copy2(run / name, out / name)
    _plots(out, log)
    from .triton import write_repository

    log(f"Triton model repository: {write_repository(out, json.loads((out / 'metadata.json').read_text()))}")
    quantize(QuantizeOptions(exported=out, checkpoint=out / "best.pth", data_dir=data_dir), log=log)
    from .diff import attach

    opts = VerifyOptions(exported=out, checkpoint=out / "best.pth", data_dir=data_dir, report=out / "verify.json",
                         localise=attach)
    report = verify(opts, log=log)
    if withhold_failed_variants(out, report, log):
        report = verify(opts, log=log)  # again, without them: the folder holds only what was proven
    try:
        report.check()
    except ParityError as e:
        raise ParityError(f"shipped model in {out} fails verify ({e}); see {out / 'verify.json'}") from None
    atomic_write_text(out / "MODEL_CARD.md", model_card(out, report))
    log(f"shipped {out}")
    return out


def withhold_failed_variants(folder: Path, report: "Report", log=print) -> dict[str, str]:
    """An approximate variant (FP16/INT8) that fails verify is removed from the shipped folder, with the reason
    in ``metadata.json`` (``withheld_variants``), which verify and the card then show as a skip: ship ships only
    what passed. Returns {format: why}; any other failure (an FP32 artefact, the metadata) is left to fail."""
    from .formats import owner
    from .fsutil import atomic_write_json

    failed = {n: r for n, r in report.backends.items() if r.status == "failed"}
    if not failed or not report.metadata.passed or any(r.precision == "fp32" or not r.artefact
                                                       for r in failed.values()):
        return {}
    meta = json.loads((folder / "metadata.json").read_text())
    withheld = dict(meta.get("withheld_variants") or {})
    for name, r in failed.items():
        fmt = owner(r.artefact)
        for f in fmt.files:
            (folder / f).unlink(missing_ok=True)
        meta.get("formats", {}).pop(fmt.name, None)
        meta.pop(fmt.artefact, None)
        withheld[fmt.name] = f"{name} failed verify on the test split: {r.failures[0]}"
        log(f"withheld {fmt.artefact}: {withheld[fmt.name]}")
    meta["withheld_variants"] = withheld
    atomic_write_json(folder / "metadata.json", meta)
    return withheld


def _plots(folder: Path, log) -> None:
    """curves.png and confusion.png from the folder's history.csv and metrics.json (the `plot` extra)."""
    import csv

    try:
        from .training.plots import plot_run
    except ImportError:
        log("no plots: install the `plot` extra (matplotlib)")
        return
    history = list(csv.DictReader((folder / "history.csv").read_text().splitlines()))
    metrics = json.loads((folder / "metrics.json").read_text())
    plot_run(history, metrics["confusion_matrix"], metrics["classes"], folder)


def model_card(folder: Path, rep: "Report") -> str:
    from .machine import Machine

    from .checkpoint import load_checkpoint

    meta = json.loads((folder / "metadata.json").read_text())
    split = load_checkpoint(folder / "best.pth")["split"]
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = markdown_table([v for v in rep.backends.values() if v.ran], rep.samples, CARD_COLUMNS)
    skipped = {k: v.reason for k, v in rep.backends.items() if v.status == "skipped"}
    skipped_txt = "\n".join(f"- {k}: skipped ({r})" for k, r in skipped.items()) or "- none"
    return f"""# {meta['model_name']} on {meta['dataset']}

A LeNet-family classifier exported by lenet-export {meta['lenet_export_version']}.

## Data
{SOURCE_NOTE.get(metrics['data_source'], metrics['data_source'])}. Training split: the training set minus a
seeded {100 * split['val_fraction']:g}% validation split (seed {split['seed']}); the test set is used only for the final
figures below.
Classes: {', '.join(meta['classes'])}.

## Accuracy
{"![training curves](curves.png)" + chr(10) + chr(10) if (folder / "curves.png").is_file() else ""}| | value |
|---|---|
| test accuracy (best-validation checkpoint) | {metrics['test_acc']:.4f} |
| validation accuracy | {metrics['val_acc']:.4f} (epoch {metrics['best_epoch']} of {metrics['epochs_run']}) |
| parameters | {metrics['num_parameters']:,} |
| training time | {metrics['train_seconds']:.0f} s on the machine that trained it |

## Parity (`lenet-export verify`, whole test set, tolerance atol {rep.tolerance.atol:g} rtol {rep.tolerance.rtol:g})
Measured on {Machine.from_dict(rep.machine).summary}. Timings are of that machine; the FP16 and INT8 results
depend on the CPU's kernels: `lenet-export verify --exported <this folder> --replay <this folder>/verify.json`
reruns every backend on yours and names any sample that changes.

{rows}

{skipped_txt}

{precision_section(rep, meta)}

Metadata: {"all " + str(len(rep.metadata.files)) + " copies agree with the checkpoint (" + ", ".join(rep.metadata.files) + ")"
           if rep.metadata.passed else "; ".join(rep.metadata.failures)}.
Full report: `verify.json`.{(chr(10) + chr(10) + "![test confusion matrix](confusion.png)") if (folder / "confusion.png").is_file() else ""}

{files_section(folder, meta)}
"""


def control_lines(meta: dict) -> list[str]:
    """What accuracy control did for each variant (``quantize --max-drop``), from ``metadata.json``."""
    out = []
    for artefact, info in meta.items():
        c = info.get("accuracy_control") if isinstance(info, dict) else None
        if c:
            v = c["validation_accuracy"]
            kept = ", ".join(f"`{n}`" for n in c["kept_in_float"]) or "none"
            out.append(f"Accuracy control of `{artefact}` (validation split, {c['samples']} images, at most "
                       f"{c['max_drop']} points): FP32 {v['fp32']:.4f}, every layer INT8 {v['int8_all_layers']:.4f}, "
                       f"shipped {v['int8']:.4f}; kept in float: {kept}.")
    return out


def precision_section(rep: "Report", meta: dict | None = None) -> str:
    """Each approximate variant beside the FP32 artefact it was made from (``backends.base_of``), with a
    recommendation only where a variant measured faster than its FP32 model on the same runtime."""
    from . import backends as registry

    ran = {n: r for n, r in rep.backends.items() if r.ran and n in registry.registry()}
    pairs = [(n, b.name) for n in ran if (b := registry.base_of(registry.get(n))) is not None and b.name in ran]
    if not pairs:
        return ""
    names = list(dict.fromkeys(n for pair in pairs for n in pair[::-1]))
    table = markdown_table([ran[n] for n in names], rep.samples, PRECISION_COLUMNS)
    faster = [f"{n} ({ran[n].timing.throughput_img_s / ran[b].timing.throughput_img_s:.2f}x {b})" for n, b in pairs
              if ran[n].status == "passed" and ran[n].timing and ran[b].timing
              and ran[n].timing.throughput_img_s > ran[b].timing.throughput_img_s]
    cpu = rep.backends[rep.reference].runtime.get("device", "the machine that built it")
    advice = (f"Measured faster than FP32 on the same runtime, on {cpu}: {', '.join(faster)}; the other variants "
              "were slower there and buy only size." if faster else
              f"On {cpu}, no variant ran faster than FP32 on its runtime: use FP32 unless size matters more than "
              "speed.")
    return "\n".join(["## Reduced precision (`lenet-export quantize`; budgets: FP16 0.05, INT8 0.5 accuracy points)",
                      table, "", advice, *control_lines(meta or {}),
                      "INT8 results depend on the CPU's kernels: other CPUs may differ."])


def files_section(folder: Path, meta: dict) -> str:
    from .artefacts import present_formats
    from .formats import registry

    c = len(meta["mean"])
    raw_shape = "N x H x W" if c == 1 else "N x H x W x 3"
    lines = "\n".join(registry()[name].card_line(meta) for name in present_formats(meta))
    return f"""## Files
Normalised input: `(pixel / 255 - mean) / std`, mean {meta['mean']}, std {meta['std']}; opset {meta['opset']},
{meta['exporter']} exporter.
{lines}
- `test_data_set_0/`, `raw_test_data_set_0/`: golden inputs/outputs (ONNX test-data layout), one real test image per class.
- `best.pth`: the checkpoint (sha256 `{meta['checkpoint_sha256']}`), `metadata.json`, `metrics.json`, `history.csv`.
- `verify.json` + `verify.npz`: the parity report and its replayable record (every sample's class per backend).
- `triton/`: a Triton Inference Server model repository (`config.pbtxt` from the ONNX graphs, `labels.txt`,
  `1/model.onnx`), serving the models under the names `lenet-export serve` uses.
- `model.sig` (where signed): OpenSSF model-signing signature of every file; `verify.intoto.json`: the verify
  verdict as a signed in-toto statement. Check with `lenet-export verify --public-key PUB.pem` (see the README).

## Embed
Python without torch:

```python
import numpy as np
from lenet_export.runtime import Classifier
clf = Classifier("{folder.as_posix()}/model.raw.onnx")
pred = clf.classify(images)   # uint8 {raw_shape.replace('N x ', '')} or {raw_shape}
print(pred.class_names, pred.probabilities.max(axis=1), clf.provider)
```

Node.js: `node examples/node/classify.js {folder.as_posix()}`; Android and embedded apps (ExecuTorch, LiteRT,
NCNN, MNN): see the README, "Embedding".
"""
