"""Accuracy control for INT8 variants whose quantiser has a per-layer switch but no accuracy-aware mode of its
own: ONNX Runtime (``nodes_to_exclude``), ExecuTorch's XNNPACKQuantizer (its filter function) and LiteRT's
ai-edge-quantizer (``no_quantize`` recipe entries). OpenVINO's NNCF has its own (``formats.openvino``).

Greedy, judged on the checkpoint's validation part (never test): while the variant loses more than
``max_drop`` points against the float model, keep in float the one layer whose exclusion recovers the most
(ties in graph order). What was done is recorded the same way for every runtime (``Control.record``), in the
artefact's own metadata and in ``metadata.json``; ``quantize`` prints it and the model card shows it.

Torch-free: the formats pass in how to make a variant and how to measure one.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def accuracy_of(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == labels).mean())


def keep_sensitive_in_float(make: Callable[[list[str]], T], accuracy: Callable[[T], float], layers: Sequence[str],
                            reference: Callable[[], float], cal, tool: str) -> tuple[T, dict | None]:
    """(the variant, what was done). ``make(kept)``: the variant with the layers ``kept`` in float;
    ``accuracy(variant)`` and ``reference()``: accuracy on ``cal.validation`` of a variant and of the float
    model; ``layers``: the quantisable layers, in graph order. No validation part: every layer quantised, None."""
    q = make([])
    if cal.validation is None:
        return q, None
    layers = list(layers)
    fp32 = reference()
    acc = first = accuracy(q)
    kept: list[str] = []
    while (fp32 - acc) * 100 > cal.max_drop and len(kept) < len(layers):
        trials = {n: make(kept + [n]) for n in layers if n not in kept}
        scores = {n: accuracy(v) for n, v in trials.items()}
        best = max(scores, key=lambda n: (scores[n], -layers.index(n)))
        kept.append(best)
        q, acc = trials[best], scores[best]
    return q, {"max_drop": cal.max_drop, "split": "validation", "samples": int(len(cal.validation[1])),
               "validation_accuracy": {"fp32": fp32, "int8_all_layers": first, "int8": acc},
               "kept_in_float": kept, "tool": tool}


def kept_in_float(meta: dict) -> list[str]:
    """The layers an INT8 artefact's metadata says accuracy control kept in float (none: [])."""
    return list((meta.get("accuracy_control") or {}).get("kept_in_float") or [])


def quantisable_layers(model) -> list[str]:
    """The torch modules of ``model`` that accuracy control may keep in float (the mobile variants name layers
    by them): convolutions and linear layers, in model order."""
    from torch import nn

    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
