"""Any artefact of an export folder as a classifier, through the backend that runs it (``predict --model
model.xml``, ``--backend tract-cpu``): the same ``classify`` as ``runtime.Classifier``, which stays the
torch-free ONNX Runtime path for ``.onnx`` files.

The model's classes, input geometry and normalisation come from the ``metadata.json`` beside the artefact (an
artefact is run from its export folder, as ``verify`` runs it). A backend whose package is missing is a one-line
error with its install command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import backends as registry
from .backends import FLOAT, Backend, Context, Skip
from .errors import ConfigError, RuntimeInputError, first_line
from .runtime import Classifier, Prediction, _softmax

CHUNK = 256  # images per call, within the artefact's batch range


def choose_backend(model: Path, name: str | None) -> Backend:
    """The CPU backend that runs ``model`` (by file name): ``name`` if given, else the first one installed."""
    cpu = [b for b in registry.registry().values() if b.device == "cpu" and b.artefact]
    if name is not None:
        b = registry.get(name)
        if b.artefact != model.name:
            raise ConfigError(f"backend {name} runs {b.artefact or 'the checkpoint'}, not {model.name}")
        return b
    found = [b for b in cpu if b.artefact == model.name]
    if not found:
        known = ", ".join(dict.fromkeys(b.artefact for b in cpu))
        raise ConfigError(f"{model}: not an artefact lenet-export runs ({known})")
    for b in found:
        try:
            b.require_package()
            return b
        except Skip:
            continue
    return found[0]  # none installed: opening it says which package to install


class BackendClassifier(Classifier):
    """``model`` run by backend ``backend`` (a ``Backend``); ``classify`` as in ``runtime.Classifier``."""

    def __init__(self, model: Path, backend: Backend, public_key: Path | None = None):  # noqa: D107
        from .formats import files_of

        folder = Path(model).parent
        try:
            meta = json.loads((folder / "metadata.json").read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{model} is run from its export folder: no readable metadata.json beside it "
                              f"({first_line(e)})") from None
        if public_key is not None:
            from .signing import check_files

            check_files(folder, Path(public_key), [*files_of(model.name), "metadata.json"])
        c, h, w = meta["input_shape"][1:]
        model_info = {"input_shape": [c, h, w], "classes": meta["classes"], "mean": meta["mean"], "std": meta["std"]}
        try:
            backend.require_package()
            self.runner = backend.open(Context(folder, meta, model_info))
        except Skip as e:
            raise RuntimeInputError(f"{backend.name} cannot run {model.name} here: {e}") from None
        except Exception as e:  # the runtime's own error types: one line
            raise RuntimeInputError(f"{backend.name} cannot load {model}: {first_line(e)}") from None
        self.backend, self.metadata, self.classes = backend, meta, list(meta["classes"])
        self.mean, self.std = np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32)
        self.raw = backend.input != FLOAT
        self.channels, self.height, self.width = c, h, w

    @property
    def provider(self) -> str:
        versions = [f"{k} {v}" for k, v in self.runner.runtime.items() if k.replace("-", "_").lower()
                    in (self.backend.package.lower(), "version")]
        return f"{self.backend.name}" + (f" ({versions[0]})" if versions else "")

    def classify(self, images) -> Prediction:
        x = self.prepare(images)
        if len(x) == 0:
            raise RuntimeInputError("no images given")
        step = CHUNK if self.runner.batch_range is None else min(CHUNK, self.runner.batch_range[1])
        logits = np.concatenate([self.runner.run(np.ascontiguousarray(x[i:i + step]))[0]
                                 for i in range(0, len(x), step)]).astype(np.float32)
        labels = logits.argmax(axis=1)
        return Prediction(labels, [self.classes[i] for i in labels], _softmax(logits), logits, self.provider)


def open_classifier(model: Path, backend: str | None = None, public_key: Path | None = None) -> Classifier:
    """``runtime.Classifier`` (ONNX Runtime, torch-free) for ONNX files; any other artefact, or any ``backend``
    asked for, through the backend registry."""
    model = Path(model)
    if not model.is_file():
        raise ConfigError(f"--model {model} does not exist")
    if backend is None and model.suffix == ".onnx":
        return Classifier(model, public_key=public_key)
    return BackendClassifier(model, choose_backend(model, backend), public_key)
