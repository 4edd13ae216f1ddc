"""``predict --engine ray``: the same scoring as ``--engine local``, spread over Ray Data actors, on a local Ray
(``ray.init(num_cpus=...)``) or an existing cluster (``--address``). Torch-free, like ``predict``.

The dataset is the ordered list of file paths (``ray.data.from_items``) and each actor of a ``map_batches``
callable class opens the model once and decodes and scores its batches with ``predict``'s own functions. Not
``ray.data.read_images``: it decodes and resizes with its own pipeline (16-bit PNGs clipped, no letterbox, no
invert), so its pixels would not be what ``--engine local`` and the model card's figures see. Order is kept
(``preserve_order``), so the output is the local engine's, row for row. On a cluster the paths must be readable
by the workers (a shared file system), as with any Ray Data file source.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import ConfigError, LenetExportError, RuntimeInputError, first_line
from .predict import BATCH, Scored, check_scoring, fit_image, score_batch

INSTALL = "pip install 'lenet-export[ray]'"


class Scorer:
    """A Ray Data actor: the model opened once, then batches of paths -> one JSON row per file."""

    def __init__(self, model: str, backend: str | None, public_key: str | None, fit: str, invert: bool, top_k: int,
                 min_confidence: float):
        from .backend_classifier import open_classifier

        self.clf = open_classifier(Path(model), backend, Path(public_key) if public_key else None)
        self.fit, self.invert, self.top_k, self.min_confidence = fit, invert, top_k, min_confidence

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One JSON row per file; a bad input (an image of the wrong size) comes back as {"error": message}: an
        exception raised here would reach the driver as Ray Data's UserCodeException, its type turned to text."""
        files = [str(f) for f in batch["file"]]
        size = (self.clf.height, self.clf.width)
        try:
            images = [fit_image(Path(f), self.clf.channels, size, self.fit, self.invert) for f in files]
            rows = [json.dumps(asdict(r)) for r in score_batch(self.clf, files, images, self.top_k,
                                                                self.min_confidence)]
        except LenetExportError as e:
            rows = [json.dumps({"error": str(e)})] * len(files)
        return {"row": np.array(rows, dtype=object)}


def score_with_ray(files: list[Path], model: Path, classes: list[str], backend: str | None = None,
                   public_key: Path | None = None,
                   fit: str = "exact", invert: bool = False, top_k: int = 1, min_confidence: float = 0.5,
                   address: str | None = None, num_cpus: int | None = None,
                   advance: Callable[[int], None] | None = None) -> Iterator[Scored]:
    """``predict.score`` on Ray Data: one result per file, in the order of ``files``. ``classes``: those of the
    model, opened (and its signature checked) by the caller before Ray starts, so a bad model is one line."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray Data ({INSTALL})") from None
    from .machine import available_threads

    check_scoring(classes, top_k, min_confidence)
    if num_cpus is not None and num_cpus < 1:
        raise ConfigError(f"--num-cpus must be at least 1, got {num_cpus}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting from a tool run
    try:
        ray.init(address=address, num_cpus=None if address else (num_cpus or available_threads()),
                 include_dashboard=False, log_to_driver=False, configure_logging=False, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {first_line(e)}") from None
    try:
        yield from _run(ray, files, model, backend, public_key, fit, invert, top_k, min_confidence, num_cpus, advance)
    finally:
        ray.shutdown()


def _run(ray, files, model, backend, public_key, fit, invert, top_k, min_confidence, num_cpus, advance):
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # predict draws its own, on stderr
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data"):  # Ray's INFO lines (execution plans, log folders) are not for predict's user
        logging.getLogger(name).setLevel(logging.ERROR)
    blocks = max(1, -(-len(files) // BATCH))
    workers = min(blocks, num_cpus or max(1, int(ray.cluster_resources().get("CPU", 1))))
    ds = ray.data.from_items([{"file": str(f)} for f in files], override_num_blocks=blocks)
    config = (str(model), backend, str(public_key) if public_key else None, fit, invert, top_k, min_confidence)
    with warnings.catch_warnings():  # Ray 2.60 deprecates passing max_restarts this way but has no other way yet
        warnings.simplefilter("ignore")
        # max_restarts=0: an actor that dies is an error here, not a restart (and Ray does not warn that a restart
        # could lose constructor arguments kept in its object store)
        ds = ds.map_batches(Scorer, batch_size=BATCH, batch_format="numpy", fn_constructor_args=config,
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, max_restarts=0)
    try:
        for batch in ds.iter_batches(batch_size=BATCH, batch_format="numpy"):
            for row in map(json.loads, batch["row"]):
                if "error" in row:
                    raise RuntimeInputError(row["error"])
                yield Scored(**row)
            if advance is not None:
                advance(len(batch["row"]))
    except LenetExportError:
        raise
    except Exception as e:  # anything else an actor raised arrives wrapped by Ray Data: one line
        raise RuntimeInputError(f"Ray Data failed: {first_line(e)}") from None
