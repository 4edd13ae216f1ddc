"""ExecuTorch: ``model.pte``, the program PyTorch's on-device runtime loads on phones and microcontrollers,
lowered to the XNNPACK delegate (the CPU backend ExecuTorch ships for Android, iOS and Linux).

The batch axis is dynamic within ``BATCH_RANGE``: ExecuTorch plans memory for the largest batch, so the
range is part of the program and a batch outside it is refused at run time. The example batch must not be
small: with an example batch below 16, torch 2.14's export adds a guard that caps the batch at 15 during
XNNPACK lowering (found while building this; an example of 32 with explicit bounds keeps 1..1024).

The metadata is stored in the program itself, as the constant method ``metadata`` (a JSON string that
``Program.load_method("metadata").execute([])`` returns), and under ``model.pte`` in ``metadata.json``.
"""

from __future__ import annotations

import json

from ..metadata import PTE_METADATA_METHOD
from .base import Format, Target

INSTALL = "pip install 'lenet-export[executorch]'"
BATCH_RANGE = (1, 1024)
EXAMPLE_BATCH = 32


def _write(t: Target) -> dict:
    import torch

    from ..native import executorch_imports

    with executorch_imports():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import to_edge_transform_and_lower
        from executorch.version import __version__

    sample = torch.zeros(EXAMPLE_BATCH, *t.sample.shape[1:])
    batch = torch.export.Dim("batch", min=BATCH_RANGE[0], max=BATCH_RANGE[1])
    program = torch.export.export(t.model, (sample,), dynamic_shapes=({0: batch},))
    info = {"batch_range": list(BATCH_RANGE), "delegate": "XnnpackBackend", "executorch": __version__}
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                       constant_methods={PTE_METADATA_METHOD: json.dumps({**t.metadata, **info})})
    # What XNNPACK does not take runs in ExecuTorch's portable kernels: here the flatten between the
    # convolutions and the linear layers (a view over the dynamic batch). Recorded, so the split is visible.
    ops = get_delegation_info(edge.exported_program().graph_module).get_operator_delegation_dataframe()
    rest = ops[(ops.op_type != "Total") & (ops.op_type != "getitem") & (ops.occurrences_in_non_delegated_graphs > 0)]
    info["delegated_ops"] = int(ops[ops.op_type == "Total"].occurrences_in_delegated_graphs.iloc[0])
    info["portable_ops"] = sorted(rest.op_type)
    (t.folder / "model.pte").write_bytes(edge.to_executorch().buffer)
    return {"model.pte": info}


FORMATS = (Format("executorch", ("model.pte",), _write, package="executorch", install=INSTALL),)
