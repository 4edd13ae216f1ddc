"""NCNN: ``model.ncnn.param`` (the layer graph, text) + ``model.ncnn.bin`` (the weights), the runtime of many
Android and embedded apps, converted from ``model.onnx`` by pnnx (PyPI ``pnnx``, NCNN's own converter).

pnnx stores FP16 weights unless told ``fp16=0``, which moves these logits by ~1e-2: the export asks for FP32
and checks the ``.bin`` it got (``fp16_blobs``), and the backend refuses an FP16 ``.bin``. The pnnx binary is
run on a copy of model.onnx in a private folder (it writes its intermediates beside its input) and only the
two NCNN files are kept. pnnx's Python wrapper is not used: it ignores the converter's exit status, and on
its input-shape path never passes ``fp16=0``.

NCNN's files have no place for metadata (a trailing line in the .param loads only because NCNN stops reading
there), so the metadata is in ``metadata.json`` only, under ``model.ncnn.param``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from ..errors import ExportError
from .base import Format, Target

INSTALL = "pip install 'lenet-export[ncnn]'"
FILES = ("model.ncnn.param", "model.ncnn.bin")
PARAM_MAGIC = "7767517"
FP16_TAG = 0x01306B47  # the 4-byte tag before an FP16 weight blob in a .bin (ncnn's ModelBin)
TAG_BYTES = {0x00000000: lambda n: 4 * n, 0x0002C056: lambda n: 4 * n, FP16_TAG: lambda n: (2 * n + 3) // 4 * 4,
             0x000D4B38: lambda n: (n + 3) // 4 * 4}  # fp32, fp32 raw, fp16, int8 -> bytes of n weights
# layer type -> param ids of (weight count, bias flag, outputs): a tagged weight blob, then a float32 bias
WEIGHTED = {"Convolution": (6, 5, 0), "ConvolutionDepthWise": (6, 5, 0), "InnerProduct": (2, 1, 0)}
# layer type -> (param id of the channel count, untagged float32 arrays of that many values): ncnn's BatchNorm
# (slope, mean, variance, bias), written for a batch norm after pooling that no convolution absorbs.
# Other layers of these models hold no weights.
UNTAGGED = {"BatchNorm": (0, 4)}
CONVERT_TIMEOUT = 300


def pnnx_binary() -> Path:
    """The pnnx executable inside its wheel, found without importing the package (its __init__ imports torch)."""
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"pnnx is not installed ({INSTALL})")
    exe = Path(next(iter(spec.submodule_search_locations))) / "pnnx"
    if not exe.is_file() or not os.access(exe, os.X_OK):
        raise ExportError(f"pnnx's converter binary is missing or not executable at {exe} ({INSTALL})")
    return exe


def fp16_blobs(param: Path, weights: Path) -> list[str]:
    """The layers whose weights the .bin stores in FP16, by walking it with the layer list of the .param;
    ValueError when the .bin does not match the .param."""
    lines = Path(param).read_text().split("\n")
    if lines[0].strip() != PARAM_MAGIC:
        raise ValueError(f"{Path(param).name} is not an NCNN param file (no magic {PARAM_MAGIC})")
    data, at, fp16 = Path(weights).read_bytes(), 0, []
    for line in filter(str.strip, lines[2:]):
        kind, name, n_in, n_out, *rest = line.split()
        p = dict(t.split("=", 1) for t in rest[int(n_in) + int(n_out):])
        if kind in UNTAGGED:
            count_id, arrays = UNTAGGED[kind]
            at += 4 * arrays * int(p[str(count_id)])
        if kind not in WEIGHTED:
            continue
        count_id, bias_id, out_id = WEIGHTED[kind]
        (tag,) = struct.unpack_from("<I", data, at)
        if tag not in TAG_BYTES:
            raise ValueError(f"layer {name}: unknown weight encoding {tag:#x}")
        at += 4 + TAG_BYTES[tag](int(p[str(count_id)]))
        at += 4 * int(p[str(out_id)]) if int(p.get(str(bias_id), 0)) else 0  # the bias: raw float32
        if tag == FP16_TAG:
            fp16.append(name)
    if at != len(data):
        raise ValueError(f"{Path(weights).name} has {len(data)} bytes, its .param describes {at}")
    return fp16


def _write(t: Target) -> dict:
    c, h, w = t.sample.shape[1:]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        shutil.copyfile(t.input("model.onnx"), src)
        cmd = [str(pnnx_binary()), str(src), f"inputshape=[1,{c},{h},{w}]f32", "fp16=0"]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=CONVERT_TIMEOUT)
        made = [Path(tmp) / f for f in FILES]
        if done.returncode != 0 or not all(p.is_file() for p in made):
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            raise ExportError(f"pnnx could not convert model.onnx: {tail[0]}")
        if fp16_blobs(*made):
            raise ExportError("pnnx wrote FP16 weights although fp16=0 was asked for")
        for p in made:
            shutil.move(p, t.folder / p.name)
    version = importlib.metadata.version("pnnx")
    return {FILES[0]: {"converter": f"pnnx {version} (fp16=0)", "weights": "fp32", "input": "in0", "output": "out0"}}


FORMATS = (Format("ncnn", FILES, _write, package="pnnx", install=INSTALL, made_from=("onnx",),
                  summary="NCNN graph + FP32 weights (pnnx), blobs `in0` -> `out0`",
                  not_embedded="NCNN's .param and .bin have no field for it"),)
