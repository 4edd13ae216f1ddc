"""The load generator of ``bench --serve``, run as its own process so that it does not share the server's (or
the benchmark's) interpreter: ``python -m lenet_export.serve_load --address HOST:PORT --protocol grpc ...``
prints one JSON object (requests, seconds, latencies, errors).

Why not perf-analyzer: the PyPI package of that name is a placeholder (0.1.0, no binary), and Triton's
perf_analyzer ships only in Triton's SDK container. This uses tritonclient's own asyncio clients
(``tritonclient.grpc.aio`` / ``tritonclient.http.aio``): ``concurrency`` requests kept in flight for a fixed time,
each a batch of real-sized random inputs, binary tensors.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import time

import numpy as np


async def _load(protocol: str, address: str, model: str, batch: int, concurrency: int, seconds: float) -> dict:
    mod = importlib.import_module(f"tritonclient.{protocol}.aio")
    client = mod.InferenceServerClient(address)
    try:
        meta = await client.get_model_metadata(model, **({"as_json": True} if protocol == "grpc" else {}))
        (spec,) = meta["inputs"]
        shape = [batch, *[int(d) for d in spec["shape"][1:]]]
        rng = np.random.default_rng(0)
        x = (rng.integers(0, 256, shape, dtype=np.uint8) if spec["datatype"] == "UINT8"
             else rng.standard_normal(shape, dtype=np.float32))
        binary = {"binary_data": True} if protocol == "http" else {}
        feed = mod.InferInput(spec["name"], shape, spec["datatype"])
        feed.set_data_from_numpy(x, **binary)
        outputs = [mod.InferRequestedOutput(o["name"], **binary) for o in meta["outputs"]]
        latencies, errors = [], []
        for _ in range(3):  # warm the connection and the server
            await client.infer(model, [feed], outputs=outputs)
        deadline = time.perf_counter() + seconds

        async def worker():
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    await client.infer(model, [feed], outputs=outputs)
                    latencies.append(time.perf_counter() - t)
                except Exception as e:  # noqa: BLE001 - counted: a benchmark reports its errors, it does not stop
                    errors.append(str(e).splitlines()[0])
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        await client.close()
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"requests": len(latencies), "seconds": elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": len(errors), "first_error": errors[0] if errors else None}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Open Inference Protocol load, one JSON line out")
    p.add_argument("--protocol", choices=("http", "grpc"), required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(_load(a.protocol, a.address, a.model, a.batch, a.concurrency, a.seconds))))


if __name__ == "__main__":
    main()
