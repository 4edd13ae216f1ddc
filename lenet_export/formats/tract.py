"""tract (Sonos' ONNX/NNEF engine in Rust, an implementation independent of ONNX Runtime): ``model.nnef.tar``,
the model in NNEF, tract's own deployment format (loads without an ONNX parser), written by tract from
``model.onnx`` with the batch axis kept symbolic. The metadata is an extra member ``metadata.json`` of the tar,
which tract's loader ignores.

tract copies ONNX ``metadata_props`` into ``graph.nnef`` as properties without escaping quotes, so a value
holding ``'`` (a skip reason such as "pip install 'lenet-export[openvino]'") makes an archive that tract itself
cannot read back (found while building this); and its Python API cannot read string properties anyway. The
ONNX model is therefore converted without its ``metadata_props``."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from ..metadata import METADATA_FILE
from .base import Format, MetadataCopy, Target

INSTALL = "pip install 'lenet-export[tract]'"


def read_nnef_metadata(path: Path) -> dict:
    with tarfile.open(path) as tar:
        try:
            member = tar.extractfile(METADATA_FILE)
        except KeyError:
            member = None
        if member is None:
            raise ValueError(f"no {METADATA_FILE} in the archive")
        return json.loads(member.read())


def _write(t: Target) -> dict:
    import tempfile

    import onnx
    import tract

    proto = onnx.load(str(t.input("model.onnx")))
    del proto.metadata_props[:]  # see above
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save_model(proto, f"{tmp}/model.onnx")
        model = tract.onnx().load(f"{tmp}/model.onnx").into_model()
    path = t.folder / "model.nnef.tar"
    tract.nnef().write_model_to_tar(model, str(path))
    _repack(path, json.dumps(t.metadata).encode())
    return {"model.nnef.tar": {"converter": f"tract {tract.version()} (ONNX -> NNEF)", "input": str(model.input_fact(0))}}


def _repack(path: Path, metadata: bytes) -> None:
    """tract stamps each member with the time of writing: the same model gave different bytes on every export.
    Rewritten with tract's members in its order, times and owners zeroed, and the metadata member appended."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in [*members, (tarfile.TarInfo(METADATA_FILE), metadata)]:
            info = tarfile.TarInfo(m.name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


FORMATS = (Format("tract", ("model.nnef.tar",), _write, package="tract", install=INSTALL, made_from=("onnx",),
                  summary="NNEF archive written by tract (symbolic batch)",
                  metadata=MetadataCopy(METADATA_FILE, read_nnef_metadata, package="tract")),)
