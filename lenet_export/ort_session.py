"""ONNX Runtime sessions, set up in one place for export, verify and the embedding runtime (no torch).

    sess = open_session("model.onnx", "cpu")      # or "cuda" (TF32 off), or "auto" (CUDA when available)
    used_providers(sess)                          # what the session really runs on
"""

from __future__ import annotations

import functools
from pathlib import Path

from .errors import ArtefactError, first_line

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEVICES = ("cpu", "cuda", "auto")
# ORT's graph optimiser moves a QuantizeLinear up through a MaxPool ("QDQ propagation"). Behind a convolution
# that accuracy control keeps in float, that turns the pool into ONNX Runtime's plain NCHW int8 MaxPool (3.3 ms
# at batch 64 on a 2-core EPYC, where the same pool in float runs in the blocked NCHWc layout with its
# convolution in 0.5 ms) and made every INT8 model here slower than its FP32 one. Without that one pass the
# INT8 models give bit-identical logits and run 1.2-1.6x faster than FP32 (README, "Speed"). It only moves
# quantize/dequantize nodes, so a float graph is unchanged.
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def providers_for(device: str) -> list:
    """Provider list for a device. ``cuda`` keeps the CPU provider last, as ORT needs for its own
    fallback; callers that must not fall back check ``used_providers`` (see the ort backends)."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")
    cuda = [(CUDA, {"device_id": 0, "use_tf32": 0}), CPU]  # TF32 off: parity needs true float32 matmuls
    if device == "cuda":
        return cuda
    if device == "auto" and CUDA in available_providers():
        return cuda
    return [CPU]


def open_session(path: str | Path | bytes, device: str = "cpu", *, providers: list | None = None, log_level: int = 3):
    """An ``InferenceSession`` for ``path`` (or a serialised model); an unreadable or invalid model raises
    ``ArtefactError`` (one line).

    ``log_level`` 3 (errors only): a CUDA provider that cannot start is detected through ``used_providers``,
    not by reading ORT's log; 4 silences that too (the embedding runtime reports ``.provider`` instead).
    """
    import onnxruntime as ort

    if isinstance(path, bytes):
        model, name = path, "the model"
    else:
        path = Path(path)
        if not path.is_file():
            raise ArtefactError(f"{path} does not exist")
        model, name = str(path), path.name
    opts = ort.SessionOptions()
    opts.log_severity_level = log_level
    providers = providers or providers_for(device)
    if CUDA in [p[0] if isinstance(p, tuple) else p for p in providers]:
        _preload_cuda()
    try:
        return ort.InferenceSession(model, opts, providers=providers, disabled_optimizers=list(DISABLED_OPTIMIZERS))
    except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid models
        raise ArtefactError(f"onnxruntime cannot load {name}: {first_line(e)}") from None


@functools.cache
def _preload_cuda() -> None:
    """onnxruntime-gpu >= 1.21 finds CUDA and cuDNN in the nvidia-* wheels (which torch installs) only when
    asked to, once per process; a library still missing shows as a CPU fallback, which the CUDA backends fail."""
    import onnxruntime as ort

    try:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
    except Exception:  # noqa: BLE001 - best effort by design: the session's providers tell what ran
        pass


def used_providers(sess) -> list[str]:
    return list(sess.get_providers())


def cuda_tf32(sess) -> bool:
    """Whether the session's CUDA provider allows TF32 (it must not, for parity)."""
    opts = sess.get_provider_options().get(CUDA, {})
    return opts.get("use_tf32", "0") not in ("0", 0, False)
