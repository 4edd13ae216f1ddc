"""Parity suite: the exported artefacts against the checkpoint, on the whole test split, on every runtime.

Backends: ``torch-cpu`` (eager, the reference), ``torchscript-cpu``, ``ort-cpu``, ``ort-cuda``,
``torch-cuda``, ``torchscript-cuda``. A backend that cannot run here (no CUDA device, no CUDA build of
onnxruntime) is *skipped with its reason*, never passed; an ONNX Runtime CUDA session whose providers show
it fell back to CPU *fails*. TF32 is switched off for every CUDA run and recorded.

A backend passes when
  1. every logit is within ``atol + rtol * |reference|`` (numpy ``allclose`` semantics),
  2. its test accuracy equals the reference's,
  3. no sample changes class where the reference's top-1/top-2 margin exceeds twice the observed max
     difference (a flip on a near-tie is reported, but is not a defect of the export), and
  4. it is batch-invariant: the first samples give the same logits (same tolerance) at batch sizes
     1, 2, 7 and at the full evaluation batch.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .errors import ConfigError, ExportError

CPU_BACKENDS = ("torch-cpu", "torchscript-cpu", "ort-cpu")
CUDA_BACKENDS = ("ort-cuda", "torch-cuda", "torchscript-cuda")
BACKENDS = CPU_BACKENDS + CUDA_BACKENDS
REFERENCE = "torch-cpu"


@dataclass(frozen=True)
class Tolerance:
    """Default parity tolerance for float32 logits.

    Runtimes compute the same float32 graph with different kernels and summation orders. For these layer
    sizes (dot products of at most a few thousand terms, logits of magnitude ~10) that moves logits by
    ~1e-6..1e-5. 1e-4 absolute plus 1e-4 relative leaves ten times that margin, while a real defect (a
    changed weight, wrong layout or normalisation, TF32 left on) moves logits by 1e-3 or far more.
    """

    atol: float = 1e-4
    rtol: float = 1e-4


BATCH_INVARIANCE_SIZES = (1, 2, 7)
BATCH_INVARIANCE_SAMPLES = 70  # the first samples of the test split, re-run at each of the sizes above
EVAL_BATCH = 1000  # the "full batch" of the whole-test-set pass and of the throughput figure
LATENCY_RUNS = 50


class Skip(Exception):
    """The backend cannot run on this machine; the message says why."""


class Fallback(Exception):
    """The backend runs, but not on what it claims (e.g. ORT CUDA fell back to CPU)."""


@dataclass
class Runner:
    name: str
    run: Callable[[np.ndarray], np.ndarray]  # float32 NCHW batch -> float32 logits
    runtime: dict
    sync: Callable[[], None] = lambda: None


# ---------------------------------------------------------------------------------------------
# Backends


def _torch_tf32_off() -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return {"tf32": False, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_device() -> str:
    import torch

    if not torch.cuda.is_available():
        raise Skip("no CUDA device: torch.cuda.is_available() is False")
    return torch.cuda.get_device_name(0)


def _torch_runner(name: str, module, device: str) -> Runner:
    import torch

    module = module.to(device).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(device)).float().cpu().numpy()

    info = {"torch": str(torch.__version__), "device": _cpu_name() if device == "cpu" else torch.cuda.get_device_name(0),
            "threads": torch.get_num_threads()}
    if device == "cuda":
        info |= _torch_tf32_off()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Runner(name, run, info, sync)


def _ort_runner(name: str, path: Path, cuda: bool) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # a CUDA-less fallback is detected below, not by reading ORT's log
    if cuda:
        device = _cuda_device()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                       "(install the gpu extra: onnxruntime-gpu instead of onnxruntime)")
        providers = [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]
    else:
        device = _cpu_name()
        providers = ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), opts, providers=providers)
    used = sess.get_providers()
    if cuda and (not used or used[0] != "CUDAExecutionProvider"):
        raise Fallback(f"ONNX Runtime CUDA session fell back to CPU (session providers: {used})")
    info = {"onnxruntime": ort.__version__, "providers": used, "device": device}
    if cuda:
        cuda_opts = sess.get_provider_options().get("CUDAExecutionProvider", {})
        info |= {"tf32": cuda_opts.get("use_tf32", "0") not in ("0", 0, False), "use_tf32": cuda_opts.get("use_tf32")}

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(["logits"], {"input": x})[0]

    return Runner(name, run, info)


def _torchscript(path: Path, device: str):
    import torch

    if not path.is_file():
        raise ConfigError(f"missing artefact {path} (export without --no-torchscript, or drop the torchscript backends)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location=device)


def make_runner(name: str, exported: Path, ckpt: dict) -> Runner:
    from .checkpoint import model_from_checkpoint

    if name == "torch-cpu":
        return _torch_runner(name, model_from_checkpoint(ckpt), "cpu")
    if name == "torchscript-cpu":
        return _torch_runner(name, _torchscript(exported / "model.pt", "cpu"), "cpu")
    if name == "ort-cpu":
        return _ort_runner(name, exported / "model.onnx", cuda=False)
    if name == "ort-cuda":
        return _ort_runner(name, exported / "model.onnx", cuda=True)
    _cuda_device()
    if name == "torch-cuda":
        return _torch_runner(name, model_from_checkpoint(ckpt), "cuda")
    if name == "torchscript-cuda":
        return _torch_runner(name, _torchscript(exported / "model.pt", "cuda"), "cuda")
    raise ConfigError(f"unknown backend {name!r}; choose from: {', '.join(BACKENDS)}")


# ---------------------------------------------------------------------------------------------
# Measurements


def _run_batched(r: Runner, x: np.ndarray, batch: int, times: list | None = None) -> np.ndarray:
    outs = []
    for i in range(0, len(x), batch):
        t = time.perf_counter()
        outs.append(r.run(np.ascontiguousarray(x[i:i + batch])))
        r.sync()
        if times is not None:
            times.append((len(outs[-1]), time.perf_counter() - t))
    return np.concatenate(outs)


def compare_logits(ref: np.ndarray, out: np.ndarray, tol: Tolerance) -> dict:
    d = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    big = np.abs(ref) > tol.atol  # relative error is meaningless on logits that are ~0
    rel = d[big] / np.abs(ref[big]) if big.any() else np.zeros(1)
    within = bool(np.all(d <= tol.atol + tol.rtol * np.abs(ref)))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "p99_abs": float(np.percentile(d, 99)),
            "max_rel": float(rel.max()), "within_tolerance": within}


def disagreements(ref: np.ndarray, out: np.ndarray) -> list[dict]:
    rp, op = ref.argmax(1), out.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return [{"index": int(i), "reference_class": int(rp[i]), "backend_class": int(op[i]),
             "reference_margin": float(margin[i])} for i in np.nonzero(rp != op)[0]]


def batch_invariance(r: Runner, x: np.ndarray, full: np.ndarray, tol: Tolerance) -> dict:
    k = min(BATCH_INVARIANCE_SAMPLES, len(x))
    worst = 0.0
    ok = True
    for b in BATCH_INVARIANCE_SIZES:
        out = _run_batched(r, x[:k], b)
        d = np.abs(out - full[:k])
        worst = max(worst, float(d.max()))
        ok &= bool(np.all(d <= tol.atol + tol.rtol * np.abs(full[:k])))
    return {"batch_sizes": [*BATCH_INVARIANCE_SIZES, EVAL_BATCH], "samples": k, "max_abs_diff": worst, "passed": ok}


def timing(r: Runner, x: np.ndarray, batch_times: list[tuple[int, float]]) -> dict:
    """Latency at batch 1 (median of LATENCY_RUNS) and throughput from the full pass's batch times."""
    one = np.ascontiguousarray(x[:1])
    for _ in range(5):
        r.run(one)
    r.sync()
    lat = []
    for _ in range(LATENCY_RUNS):
        t = time.perf_counter()
        r.run(one)
        r.sync()
        lat.append(time.perf_counter() - t)
    # The first batch of the full pass pays for warm-up (allocations, kernel choice): leave it out.
    steady = [(n, s) for n, s in batch_times[1:] if n == EVAL_BATCH] or batch_times
    return {"latency_ms_batch1": {"median": float(np.median(lat) * 1e3), "p90": float(np.percentile(lat, 90) * 1e3)},
            "throughput_batch": steady[0][0], "throughput_img_s": float(steady[0][0] / np.median([s for _, s in steady]))}


# ---------------------------------------------------------------------------------------------
# The suite


@dataclass
class VerifyOptions:
    exported: Path
    checkpoint: Path | None = None  # default: <exported>/best.pth when shipped beside the artefacts
    data_dir: str | None = None
    dataset: str | None = None  # default: the checkpoint's
    backends: tuple[str, ...] = BACKENDS
    tolerance: Tolerance = Tolerance()
    require_cuda: bool = False
    report: Path | None = None


def load_artefacts(opts: VerifyOptions) -> tuple[dict, dict, Path]:
    """Metadata of the export and the checkpoint it came from; refuse a pair that does not belong together."""
    from .checkpoint import load_checkpoint
    from .fsutil import sha256_file

    exported = Path(opts.exported)
    meta_file = exported / "metadata.json"
    if not (exported / "model.onnx").is_file() or not meta_file.is_file():
        raise ConfigError(f"{exported} is not an export folder (missing model.onnx or metadata.json); "
                          "run `lenet-export onnx` first")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise ExportError(f"{meta_file} is not valid JSON: {e}") from None
    ckpt_path = Path(opts.checkpoint) if opts.checkpoint else exported / "best.pth"
    if not ckpt_path.is_file():
        raise ConfigError(f"no checkpoint: pass --checkpoint (none at {ckpt_path})")
    sha = sha256_file(ckpt_path)
    if sha != meta.get("checkpoint_sha256"):
        raise ConfigError(f"{exported} was not exported from {ckpt_path} (checkpoint sha256 {sha[:12]}... "
                          f"vs recorded {str(meta.get('checkpoint_sha256'))[:12]}...)")
    return meta, load_checkpoint(ckpt_path), ckpt_path


def verify(opts: VerifyOptions, log=print) -> dict:
    """Run the suite; return the report (also written to ``opts.report``). ``report['passed']`` is the verdict."""
    from .data import dataset_info, load_split, normalize

    unknown = [b for b in opts.backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend {unknown[0]!r}; choose from: {', '.join(BACKENDS)}")
    backends = list(dict.fromkeys([REFERENCE, *opts.backends]))
    meta, ckpt, ckpt_path = load_artefacts(opts)
    name = opts.dataset or ckpt["dataset"]
    info = dataset_info(name)
    if list(info.input_shape) != list(ckpt["input_shape"]):
        raise ConfigError(f"data set {name} has {info.channels}x{info.size}x{info.size} images but the model "
                          f"expects {'x'.join(map(str, ckpt['input_shape']))}")
    from .checkpoint import recorded_data_dir

    test = load_split(name, train=False, data_dir=opts.data_dir or recorded_data_dir(ckpt))
    x = normalize(test.images, ckpt["mean"], ckpt["std"]).numpy()
    y = test.labels.numpy()
    tol = opts.tolerance

    report = {"lenet_export_version": __version__, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "exported": str(opts.exported), "checkpoint": str(ckpt_path), "checkpoint_sha256": meta["checkpoint_sha256"],
              "model": ckpt["model"], "dataset": name, "data_source": test.source, "samples": int(len(y)),
              "tolerance": {"atol": tol.atol, "rtol": tol.rtol}, "reference": REFERENCE, "backends": {}}
    ref = None
    ref_acc = None
    for b in backends:
        entry: dict = {"status": "skipped", "reason": None}
        report["backends"][b] = entry
        try:
            runner = make_runner(b, Path(opts.exported), ckpt)
        except Skip as e:
            entry["reason"] = str(e)
            if opts.require_cuda and b in CUDA_BACKENDS:
                entry |= {"status": "failed", "failures": [f"--require-cuda: {e}"]}
            continue
        except Fallback as e:
            entry |= {"status": "failed", "reason": str(e), "failures": [str(e)]}
            continue
        entry["runtime"] = runner.runtime
        t, batch_times = time.perf_counter(), []
        out = _run_batched(runner, x, EVAL_BATCH, batch_times)
        entry["seconds_full_pass"] = round(time.perf_counter() - t, 3)
        acc = float((out.argmax(1) == y).mean())
        if ref is None:
            ref, ref_acc = out, acc
        cmp = compare_logits(ref, out, tol)
        dis = disagreements(ref, out)
        inv = batch_invariance(runner, x, out, tol)
        failures = []
        if not cmp["within_tolerance"]:
            failures.append(f"logits differ by up to {cmp['max_abs']:.3e} (> atol {tol.atol:g} + rtol {tol.rtol:g}*|ref|)")
        if acc != ref_acc:
            failures.append(f"accuracy {acc:.4f} != reference {ref_acc:.4f}")
        confident = [d for d in dis if d["reference_margin"] > 2 * cmp["max_abs"]]
        if confident:
            failures.append(f"{len(confident)} confident predictions changed class (e.g. sample {confident[0]['index']})")
        if not inv["passed"]:
            failures.append(f"not batch-invariant: max diff {inv['max_abs_diff']:.3e} across batch sizes")
        entry |= {"status": "failed" if failures else "passed", "failures": failures, "accuracy": acc,
                  "logits": cmp, "argmax_agree": int(len(y) - len(dis)), "disagreements": dis,
                  "batch_invariance": inv, **timing(runner, x, batch_times)}
        log(f"{b:<17} {entry['status']:<7} acc {acc:.4f}  max|diff| {cmp['max_abs']:.2e}"
            + (f"  {'; '.join(failures)}" if failures else ""))
    report["reference_accuracy"] = ref_acc
    report["passed"] = all(e["status"] != "failed" for e in report["backends"].values())
    if opts.report:
        from .fsutil import atomic_write_json

        atomic_write_json(opts.report, report)
    return report
