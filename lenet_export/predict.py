"""``lenet-export predict``: the user's own image files through an exported model (``backend_classifier``).

Files, folders (searched recursively) and glob patterns are expanded in the order given, each folder and glob
sorted; images are decoded as ``runtime.load_image`` decodes them, optionally inverted (``--invert``: for dark
drawings on a light background, where Fashion-MNIST is light on dark) and fitted to the model's input
(``stretch``, or ``letterbox``: scaled to fit with its aspect ratio kept, the rest filled with the median of
the image's border pixels), then classified in batches.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FITS = ("exact", "stretch", "letterbox")
OUTPUT_FORMATS = ("text", "json", "jsonl", "csv")  # --format (not a registry of artefact formats)
BATCH = 256
LOW_CONFIDENCE = 0.5  # default --min-confidence


@dataclass
class Scored:
    """One image's result. ``label`` is the class name and ``index`` its position, as in torchvision's datasets."""

    file: str
    label: str
    index: int
    probability: float
    low_confidence: bool
    top_k: list[dict] = field(default_factory=list)  # [{label, index, probability}], most probable first


def expand(inputs: list[str]) -> list[Path]:
    """Every image file named by ``inputs`` (files, folders, glob patterns), each once, in a stable order."""
    out: dict[Path, None] = {}
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            found = [p]
        elif glob.has_magic(arg):
            found = sorted(Path(f) for f in glob.glob(arg, recursive=True)
                           if Path(f).suffix.lower() in IMAGE_SUFFIXES and Path(f).is_file())
        else:
            raise ConfigError(f"no such file or folder: {arg}")
        if not found:
            raise ConfigError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {arg}")
        out.update(dict.fromkeys(found))
    return list(out)


def fit_image(path: Path, channels: int, size: tuple[int, int], fit: str, invert: bool) -> np.ndarray:
    """The uint8 H x W (x 3) array the model sees for ``path``."""
    from PIL import Image

    from .runtime import load_image

    if fit == "exact":
        a = load_image(path, channels, size)
        return 255 - a if invert else a
    a = load_image(path, channels, size, keep_size=True)
    if invert:
        a = 255 - a
    h, w = size
    img = Image.fromarray(a)
    if fit == "stretch":
        return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
    scale = min(w / img.width, h / img.height)
    sw, sh = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).reshape(-1, channels)
    fill = tuple(int(v) for v in np.median(border, axis=0))
    canvas = Image.new(img.mode, (w, h), fill[0] if channels == 1 else fill)
    canvas.paste(img.resize((sw, sh), Image.Resampling.BILINEAR), ((w - sw) // 2, (h - sh) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def check_scoring(classes: list[str], top_k: int, min_confidence: float) -> None:
    if not 1 <= top_k <= len(classes):
        raise ConfigError(f"--top-k must be from 1 to {len(classes)} (the model's classes), got {top_k}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"--min-confidence must be from 0 to 1, got {min_confidence}")


def score_batch(clf, names: list[str], images: list[np.ndarray], top_k: int, min_confidence: float) -> list[Scored]:
    """One batch of fitted images (``fit_image``) classified: one ``Scored`` per name. Both engines use it."""
    pred = clf.classify(np.stack(images))
    order = np.argsort(-pred.probabilities, axis=1, kind="stable")[:, :top_k]
    out = []
    for i, name in enumerate(names):
        top = [{"label": clf.classes[j], "index": int(j), "probability": round(float(pred.probabilities[i, j]), 6)}
               for j in order[i]]
        out.append(Scored(name, top[0]["label"], top[0]["index"], top[0]["probability"],
                          top[0]["probability"] < min_confidence, top))
    return out


def score(clf, files: list[Path], fit: str = "exact", invert: bool = False, top_k: int = 1,
          min_confidence: float = LOW_CONFIDENCE, save_inputs: Path | None = None,
          advance: Callable[[int], None] | None = None) -> Iterator[Scored]:
    """Classify ``files`` with a classifier (``runtime.Classifier``) in batches, one result per file, in order."""
    check_scoring(clf.classes, top_k, min_confidence)
    for start in range(0, len(files), BATCH):
        chunk = files[start:start + BATCH]
        images = [fit_image(p, clf.channels, (clf.height, clf.width), fit, invert) for p in chunk]
        if save_inputs is not None:
            _save(images, chunk, save_inputs)
        yield from score_batch(clf, [str(p) for p in chunk], images, top_k, min_confidence)
        if advance is not None:
            advance(len(chunk))


def _save(images: list[np.ndarray], files: list[Path], folder: Path) -> None:
    from PIL import Image

    from .fsutil import atomic_write_bytes, write_errors

    with write_errors(folder):  # a file named as the folder, a full disk: one line, not a traceback
        folder.mkdir(parents=True, exist_ok=True)
        for a, p in zip(images, files):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            atomic_write_bytes(folder / f"{p.stem}.seen.png", buf.getvalue())


def render(rows: list[Scored], fmt: str, model: str, provider: str) -> str:
    """The results in ``fmt``: text (tab-separated), json, jsonl or csv."""
    if fmt == "json":
        return json.dumps({"model": model, "provider": provider, "predictions": [r.__dict__ for r in rows]},
                          indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r.__dict__) + "\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        k = len(rows[0].top_k) if rows else 1
        w.writerow(["file", "label", "index", "probability", "low_confidence"]
                   + [f"{c}_{n}" for n in range(2, k + 1) for c in ("label", "probability")])
        for r in rows:
            w.writerow([r.file, r.label, r.index, f"{r.probability:.6f}", r.low_confidence]
                       + [v for t in r.top_k[1:] for v in (t["label"], f"{t['probability']:.6f}")])
        return buf.getvalue()
    lines = []
    for r in rows:
        rest = "".join(f"\t{t['label']}\t{t['probability']:.4f}" for t in r.top_k[1:])
        lines.append(f"{r.file}\t{r.label}\t{r.probability:.4f}{rest}" + ("\tlow confidence" if r.low_confidence else ""))
    return "\n".join(lines) + "\n"


def write_output(rows: list[Scored], fmt: str, path: Path, model: str, provider: str) -> None:
    """The results in a file, atomically: ``.parquet`` as a Parquet table (needs pyarrow, which Ray Data brings),
    anything else in ``fmt`` as ``render`` writes it."""
    from .fsutil import atomic_write_bytes, write_errors

    path = Path(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("--out *.parquet needs pyarrow (pip install pyarrow, or 'lenet-export[ray]')") from None
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([r.__dict__ for r in rows]), sink)
        data = sink.getvalue().to_pybytes()
    else:
        data = render(rows, fmt, model, provider).encode()
    with write_errors(path):
        atomic_write_bytes(path, data)
