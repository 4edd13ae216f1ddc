"""Torch-free inference for apps that embed an exported model: imports only numpy and onnxruntime.

    from lenet_export.runtime import Classifier
    clf = Classifier("exported/fashion-mnist-lenet-modern/model.onnx")
    pred = clf.classify(images)        # uint8 HxW, HxWxC, NxHxW, NxHxWxC, or normalised float NxCxHxW
    pred.class_names, pred.probabilities, clf.provider

Works with ``model.onnx`` (float input; this module normalises uint8 images with the mean/std stored in the
model's metadata) and with ``model.raw.onnx`` (uint8 input, normalisation inside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ArtefactError, LenetExportError, RuntimeInputError
from .metadata import parse_prop
from .parity import softmax
from .ort_session import open_session

REQUIRED_METADATA = ("classes", "mean", "std", "input_shape", "input_name", "input_dtype")


class ModelMetadataError(LenetExportError):
    """The ONNX file lacks the metadata lenet-export writes (not exported by lenet-export?)."""


@dataclass
class Prediction:
    labels: np.ndarray  # int64, N
    class_names: list[str]
    probabilities: np.ndarray  # float32, N x classes
    logits: np.ndarray  # float32, N x classes
    provider: str  # the execution provider that ran

    def top(self, i: int = 0) -> tuple[str, float]:
        return self.class_names[i], float(self.probabilities[i, self.labels[i]])


def _softmax(z: np.ndarray) -> np.ndarray:
    return softmax(z).astype(np.float32)


class Classifier:
    """An exported lenet-export ONNX model with its metadata (classes, input geometry, normalisation)."""

    def __init__(self, path: str | Path, providers: list | None = None):
        path = Path(path)
        try:  # a CUDA provider that cannot start falls back quietly (log level 4); .provider says what ran
            self.session = open_session(path, "auto", providers=providers, log_level=4)
        except ArtefactError as e:
            raise ModelMetadataError(str(e)) from None
        props = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in REQUIRED_METADATA if k not in props]
        if missing:
            raise ModelMetadataError(f"{path} lacks the metadata lenet-export writes ({', '.join(missing)}); "
                                     "expected a model exported by `lenet-export onnx`")
        self.metadata = {k: parse_prop(v) for k, v in props.items()}
        bad = [k for k in ("classes", "mean", "std", "input_shape") if not isinstance(self.metadata[k], list)]
        if bad or len(self.metadata["mean"]) != len(self.metadata["std"]):
            raise ModelMetadataError(f"{path} has malformed metadata ({', '.join(bad) or 'mean/std'})")
        self.classes: list[str] = list(self.metadata["classes"])
        self.mean = np.asarray(self.metadata["mean"], dtype=np.float32)
        self.std = np.asarray(self.metadata["std"], dtype=np.float32)
        self.channels = len(self.mean)
        shape = self.metadata["input_shape"]
        self.height, self.width = (shape[1], shape[2]) if self.metadata["input_dtype"] == "uint8" else (shape[2], shape[3])
        self.raw = self.metadata["input_dtype"] == "uint8"
        self.input_name = self.metadata["input_name"]

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    # -- input handling ---------------------------------------------------------------------------
    def _uint8_batch(self, a: np.ndarray) -> np.ndarray:
        """uint8 images -> N x H x W x C."""
        h, w, c = self.height, self.width, self.channels
        if a.ndim == 2:
            a = a[None, :, :, None]
        elif a.ndim == 3 and c == 1:  # N x H x W grey batch (or one H x W x 1 image)
            a = a[None] if a.shape == (h, w, 1) else a[..., None]
        elif a.ndim == 3:  # one H x W x C colour image
            a = a[None]
        elif a.ndim != 4:
            raise RuntimeInputError(f"uint8 images must be HxW, HxWxC, NxHxW or NxHxWxC; got shape {a.shape}")
        if a.shape[1:3] != (h, w):
            raise RuntimeInputError(f"images are {a.shape[2]}x{a.shape[1]} (WxH); the model expects {w}x{h}")
        if a.shape[3] != c:
            raise RuntimeInputError(f"images have {a.shape[3]} channel(s); the model expects {c}")
        return np.ascontiguousarray(a)

    def prepare(self, images) -> np.ndarray:
        """The array this model's input takes, from uint8 images or normalised float arrays."""
        a = np.asarray(images)
        if a.dtype == np.uint8:
            batch = self._uint8_batch(a)
            if self.raw:
                return batch[..., 0] if self.channels == 1 else batch
            x = (batch.astype(np.float32) / 255.0 - self.mean) / self.std
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        if a.dtype in (np.float32, np.float64):
            if self.raw:
                raise RuntimeInputError("this model (raw input) takes uint8 images; pass uint8 pixels or use model.onnx "
                                        "for normalised float input")
            if a.ndim == 3:
                a = a[None]
            expected = (self.channels, self.height, self.width)
            if a.ndim != 4 or a.shape[1:] != expected:
                raise RuntimeInputError(f"normalised float input must be N x {' x '.join(map(str, expected))} (NCHW); "
                                        f"got shape {a.shape}")
            if not np.isfinite(a).all():
                raise RuntimeInputError("input contains NaN or infinite values")
            return np.ascontiguousarray(a, dtype=np.float32)
        raise RuntimeInputError(f"expected uint8 images or float32 normalised arrays; got dtype {a.dtype}")

    # -- inference ---------------------------------------------------------------------------------
    def classify(self, images) -> Prediction:
        x = self.prepare(images)
        if len(x) == 0:
            raise RuntimeInputError("no images given")
        outputs = self.session.run(None, {self.input_name: x})
        logits = outputs[0]
        probs = outputs[1] if len(outputs) > 1 else _softmax(logits)
        labels = logits.argmax(axis=1)
        return Prediction(labels, [self.classes[i] for i in labels], probs, logits, self.provider)


def load_image(path: str | Path, channels: int, size: tuple[int, int], resize: bool = False) -> np.ndarray:
    """Decode a PNG/JPEG file to uint8 H x W (grey) or H x W x 3; needs Pillow."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            h, w = size
            if img.size != (w, h):
                if not resize:
                    raise RuntimeInputError(f"{path} is {img.size[0]}x{img.size[1]}; the model expects {w}x{h} "
                                            "(pass --resize to scale it)")
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise RuntimeInputError(f"cannot read image {path}: {e}") from None
