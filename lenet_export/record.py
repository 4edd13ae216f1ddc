"""The replayable record beside a report: ``verify.npz`` next to ``verify.json``, referenced from the report by
file name and sha256, holding what another machine needs to compare against, sample by sample.

What it holds, and why not every backend's logits: the reference's logits (float32), and per backend its
predicted class and its top-1/top-2 margin for every sample; the full logits of the *approximate* backends
(FP16, INT8) only. An exact backend is proven within tolerance of the reference, so the reference's logits are
what a replay compares it with; storing each exact backend's logits again would make the shipped folders
~7 MB larger each for no extra proof. numpy only (torch-free)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .parity import top2_margin

REFERENCE_KEY, LABELS_KEY = "reference.logits", "labels"


@dataclass
class Record:
    """A loaded sidecar."""

    labels: np.ndarray
    reference_logits: np.ndarray
    classes: dict[str, np.ndarray] = field(default_factory=dict)
    margins: dict[str, np.ndarray] = field(default_factory=dict)
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # approximate backends only


def sidecar_bytes(outputs: dict[str, np.ndarray], labels: np.ndarray, reference: str, approximate: set[str]) -> bytes:
    arrays = {LABELS_KEY: labels.astype(np.int16), REFERENCE_KEY: outputs[reference].astype(np.float32)}
    for name, logits in outputs.items():
        arrays[f"{name}.classes"] = logits.argmax(1).astype(np.int16)
        arrays[f"{name}.margins"] = top2_margin(logits).astype(np.float32)
        if name in approximate:
            arrays[f"{name}.logits"] = logits.astype(np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def sidecar_path(report: Path) -> Path:
    return Path(report).with_suffix(".npz")


def load_record(path: Path, sha256: str | None) -> Record:
    """The sidecar at ``path``; ``ConfigError`` when its sha256 is not the one the report records."""
    from .fsutil import sha256_file

    if not Path(path).is_file():
        raise ConfigError(f"the record's sidecar {path} is missing")
    if sha256 is None or sha256_file(path) != sha256:
        raise ConfigError(f"{path} is not the sidecar this report was written with (sha256 differs)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path} is not a readable record ({e})") from None
    if LABELS_KEY not in arrays or REFERENCE_KEY not in arrays:
        raise ConfigError(f"{path} is not a lenet-export record (no {LABELS_KEY} or {REFERENCE_KEY})")
    rec = Record(arrays.pop(LABELS_KEY).astype(np.int64), arrays.pop(REFERENCE_KEY))
    for key, value in arrays.items():
        name, _, kind = key.rpartition(".")
        if kind not in ("classes", "margins", "logits"):
            raise ConfigError(f"{path} is not a lenet-export record (unknown entry {key!r})")
        getattr(rec, kind)[name] = value
    return rec
