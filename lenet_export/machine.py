"""The machine a figure was measured on: CPU model, the instruction-set features that change which kernels a
runtime picks (and so INT8 and FP16 results), threads, OS. Recorded in every report; ``verify --replay`` names
the difference between the recording machine and this one. Torch-free, standard library only."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Features that select different kernels in the runtimes here (x86: oneDNN, MLAS, XNNPACK; Arm: NEON paths).
KERNEL_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",  # x86-64
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2",  # aarch64 (/proc/cpuinfo names)
)


# Environment variables that cap or choose the kernels a runtime dispatches to on the same CPU: oneDNN's ISA cap
# (OpenVINO's CPU plugin and PyTorch's convolutions use oneDNN) and PyTorch's own vectorised kernels.
KERNEL_SETTINGS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "ATEN_CPU_CAPABILITY")


@dataclass
class Machine:
    cpu: str
    arch: str
    features: list[str] = field(default_factory=list)  # the KERNEL_FEATURES this CPU has
    threads: int = 1  # CPUs this process may run on
    os: str = ""
    settings: dict[str, str] = field(default_factory=dict)  # the KERNEL_SETTINGS set in the environment

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Machine":
        d = d if isinstance(d, dict) else {}
        threads = d.get("threads")
        return cls(str(d.get("cpu", "unknown")), str(d.get("arch", "unknown")),
                   [str(f) for f in d.get("features") or [] if isinstance(f, str)],
                   threads if isinstance(threads, int) else 0, str(d.get("os", "")),
                   {str(k): str(v) for k, v in (d.get("settings") or {}).items()} if isinstance(d.get("settings"), dict)
                   else {})

    @property
    def summary(self) -> str:
        """``AMD EPYC (x86_64; avx2 fma, no avx512f/avx512_vnni), 2 threads``."""
        missing = [f for f in ("avx512f", "avx512_vnni", "amx_int8") if f not in self.features] \
            if self.arch in ("x86_64", "AMD64") else []
        key = [f for f in self.features if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                                                   "asimddp", "i8mm", "fphp")]
        has = " ".join(key) or "none of the INT8/FP16 extensions"
        settings = "".join(f", {k}={v}" for k, v in self.settings.items())
        return (f"{self.cpu} ({self.arch}; {has}{', no ' + '/'.join(missing) if missing else ''}), "
                f"{_threads(self.threads)}{settings}")


@functools.cache  # /proc/cpuinfo does not change while a process runs: read it once
def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Hardware", "CPU part") and not name:
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name, frozenset(flags)


def cpu_name() -> str:
    """The CPU's model name (``model name`` in /proc/cpuinfo), else what ``platform`` knows."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def available_threads() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def this_machine() -> Machine:
    flags = _cpuinfo()[1]
    return Machine(cpu_name(), platform.machine(), [f for f in KERNEL_FEATURES if f in flags], available_threads(),
                   f"{platform.system()} {platform.release()}",
                   {k: os.environ[k] for k in KERNEL_SETTINGS if os.environ.get(k)})


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def difference(here: Machine, there: Machine) -> str:
    """The difference that matters for kernels, in words: ``here has avx512_vnni; the record's CPU has not``."""
    only_here = [f for f in here.features if f not in there.features]
    only_there = [f for f in there.features if f not in here.features]
    parts = []
    if here.cpu != there.cpu:
        parts.append(f"CPU {here.cpu!r} here, {there.cpu!r} in the record")
    if here.arch != there.arch:
        parts.append(f"{here.arch} here, {there.arch} in the record")
    if only_here:
        parts.append(f"only here: {' '.join(only_here)}")
    if only_there:
        parts.append(f"only in the record: {' '.join(only_there)}")
    if here.threads != there.threads:
        parts.append(f"{_threads(here.threads)} here, {there.threads} in the record")
    for k in sorted(set(here.settings) | set(there.settings)):
        if here.settings.get(k) != there.settings.get(k):
            parts.append(f"{k}={here.settings.get(k, '(unset)')} here, {there.settings.get(k, '(unset)')} in the record")
    return "; ".join(parts) or "same CPU model, features, threads and kernel settings"
