"""Torch-free inference for apps that embed an exported model: imports only numpy and onnxruntime.

    from lenet_export.runtime import Classifier
    clf = Classifier("exported/fashion-mnist-lenet-modern/model.onnx")
    pred = clf.classify(images)        # uint8 HxW, HxWxC, NxHxW, NxHxWxC, or normalised float NxCxHxW
    pred.class_names, pred.probabilities, clf.provider

Works with ``model.onnx`` (float input; this module normalises uint8 images with the mean/std stored in the
model's metadata) and with ``model.raw.onnx`` (uint8 input, normalisation inside the graph).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ArtefactError, LenetExportError, RuntimeInputError, first_line
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


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _chw(shape: list, raw: bool) -> tuple[int, int, int]:
    """(C, H, W) from the input shape: N x C x H x W (float) or N x H x W [x C] (uint8, raw)."""
    if raw:
        return (1, shape[1], shape[2]) if len(shape) == 3 else (shape[3], shape[1], shape[2])
    return shape[1], shape[2], shape[3]


def metadata_problem(meta: dict, input_names: list[str], output_shape: list) -> str | None:
    """What is wrong with lenet-export metadata (types, lengths, agreement with the graph), or None."""
    classes, mean, std = meta["classes"], meta["mean"], meta["std"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        return "'classes' must be a non-empty list of class names"
    n_out = output_shape[-1] if output_shape else None
    if isinstance(n_out, int) and n_out != len(classes):
        return f"'classes' names {len(classes)} classes but the model outputs {n_out} logits"
    if meta["input_dtype"] not in ("float32", "uint8"):
        return f"'input_dtype' must be float32 or uint8, got {meta['input_dtype']!r}"
    if meta["input_name"] not in input_names:
        return f"'input_name' {meta['input_name']!r} is not an input of the graph ({', '.join(input_names)})"
    shape, raw = meta["input_shape"], meta["input_dtype"] == "uint8"
    lengths = (3, 4) if raw else (4,)
    if not (isinstance(shape, list) and len(shape) in lengths
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape[1:])):
        return (f"'input_shape' must be {' or '.join(map(str, lengths))} entries (batch, then positive sizes), "
                f"got {shape!r}")
    channels = _chw(shape, raw)[0]
    for key, v in (("mean", mean), ("std", std)):
        if not (isinstance(v, list) and len(v) == channels and all(map(_is_number, v))):
            return f"'{key}' must be {channels} number(s), one per input channel, got {v!r}"
    if not all(v > 0 for v in std):
        return f"'std' must be positive, got {std!r}"
    return None


def parse_metadata(path: Path, props: dict, input_names: list[str], output_shape: list) -> dict:
    """The metadata lenet-export stores in ``metadata_props``, parsed and validated field by field."""
    missing = [k for k in REQUIRED_METADATA if k not in props]
    if missing:
        raise ModelMetadataError(f"{path} lacks the metadata lenet-export writes ({', '.join(missing)}); "
                                 "expected a model exported by `lenet-export onnx`")
    meta = {k: parse_prop(v) for k, v in props.items()}
    problem = metadata_problem(meta, input_names, list(output_shape or []))
    if problem:
        raise ModelMetadataError(f"{path} has malformed metadata: {problem}")
    return meta


class Classifier:
    """An exported lenet-export ONNX model with its metadata (classes, input geometry, normalisation)."""

    def __init__(self, path: str | Path, providers: list | None = None, public_key: str | Path | None = None):
        """``public_key``: refuse the model unless its bytes are what this key signed (``lenet-export sign``
        wrote ``model.sig`` beside it); the bytes checked are the bytes loaded."""
        path = Path(path)
        model: Path | bytes = path
        if public_key is not None:
            from .signing import signed_bytes

            model = signed_bytes(path, Path(public_key))
        try:  # a CUDA provider that cannot start falls back quietly (log level 4); .provider says what ran
            self.session = open_session(model, "auto", providers=providers, log_level=4)
        except ArtefactError as e:
            raise ModelMetadataError(str(e)) from None
        props = self.session.get_modelmeta().custom_metadata_map
        meta = parse_metadata(path, props, [i.name for i in self.session.get_inputs()],
                              self.session.get_outputs()[0].shape)
        self.metadata = meta
        self.classes: list[str] = list(meta["classes"])
        self.mean = np.asarray(meta["mean"], dtype=np.float32)
        self.std = np.asarray(meta["std"], dtype=np.float32)
        self.raw = meta["input_dtype"] == "uint8"
        self.channels, self.height, self.width = _chw(meta["input_shape"], self.raw)
        self.input_name = meta["input_name"]

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    # -- input handling ---------------------------------------------------------------------------
    def _uint8_batch(self, a: np.ndarray) -> np.ndarray:
        """uint8 images -> N x H x W x C."""
        h, w, c = self.height, self.width, self.channels
        if a.ndim == 2:
            a = a[None, :, :, None]
        elif a.ndim == 3 and c == 1:  # N x H x W grey batch, or one H x W x C image
            if a.shape[:2] == (h, w) and a.shape[1:] != (h, w):
                a = a[None]  # one image: its channel count is checked below
            else:
                a = a[..., None]
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
            with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused below
                x = np.ascontiguousarray(a, dtype=np.float32)
            if not np.isfinite(x).all():  # checked after the cast: what the model would see
                raise RuntimeInputError("input contains NaN or infinite values (as float32)")
            return x
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


def _to_8bit(img, path):
    """16-bit grey (Pillow modes ``I;16*``, or ``I`` from a PNG) scaled to 8 bit; ``convert("L")`` would clip
    every value above 255 to white. Other 32-bit modes are refused."""
    from PIL import Image

    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        a = np.asarray(img).astype(np.int64)
        return Image.fromarray(((np.clip(a, 0, 65535) + 128) // 257).astype(np.uint8), "L")  # round(a / 257)
    if img.mode in ("I", "F"):
        raise RuntimeInputError(f"{path} has 32-bit {'float' if img.mode == 'F' else 'integer'} pixels; "
                                "expected an 8- or 16-bit PNG or a JPEG")
    return img


def load_image(path: str | Path, channels: int, size: tuple[int, int], resize: bool = False,
               keep_size: bool = False) -> np.ndarray:
    """Decode a PNG/JPEG file (8 or 16 bit) to uint8 H x W (grey) or H x W x 3; needs Pillow. A size other than
    ``size`` is refused, unless ``resize`` (stretched to ``size``) or ``keep_size`` (returned as it is).

    Images over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) are refused, not decoded.
    """
    from PIL import Image, UnidentifiedImageError

    h, w = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns up to 2x the limit
            with Image.open(path) as img:
                img = _to_8bit(img, path).convert("L" if channels == 1 else "RGB")
                if img.size != (w, h) and not keep_size:
                    if not resize:
                        raise RuntimeInputError(f"{path} is {img.size[0]}x{img.size[1]}; the model expects {w}x{h} "
                                                "(pass --fit stretch or --fit letterbox to fit it)")
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                return np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RuntimeInputError(f"refusing {path}: {first_line(e)}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise RuntimeInputError(f"cannot read image {path}: {e}") from None
