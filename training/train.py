"""Training loop behind ``lenet-export train``: best-validation checkpoint, resumable, deterministic on CPU.

Each split is held in memory as one tensor and batched by indexing (no per-sample PIL/ToTensor work,
which dominates the classic tutorial pipeline). Every random draw of epoch ``e`` comes from a generator
seeded with ``(seed, e)``, so a run resumed from ``last.pth`` after epoch ``e`` repeats exactly what an
uninterrupted run would have done.

Files written into the output folder (atomically): ``best.pth``, ``last.pth``, ``run.json``,
``history.json``, ``history.csv``, ``metrics.json`` and, with matplotlib, ``curves.png`` and
``confusion.png``. The folder is locked (``.lock``, ``flock``) while a run uses it: a second run in it is
refused, and a killed run's lock goes with its process.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from lenet_export.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint, versions
from lenet_export.data import dataset_info, load_split, normalize, resolve_data_dir
from lenet_export.errors import CheckpointError, ConfigError
from lenet_export.fsutil import atomic_write_json, atomic_write_text, locked, remove_temporaries, write_errors
from lenet_export.models import build_model, count_parameters, get_variant

from .config import LEGACY_RUN, RECIPES, RUN_KEYS, TrainConfig  # noqa: F401  (RECIPES, TrainConfig: public here too)
from .steps import (EpochResult, RunData, evaluate, load_run_data, make_optimizer, make_scheduler, pick_device,
                    seed_everything, train_epoch)

LOCK_FILE = ".lock"
RESUMABLE = ("optimizer", "scheduler", "rng", "history", "best_val_acc", "best_epoch", "config")
RUN_FILES = ("last.pth", "history.json", "history.csv", "metrics.json", "curves.png", "confusion.png")


@dataclass
class Progress:
    """Where a run stands, kept in memory (and saved in last.pth)."""

    history: list[dict]
    best_val: float = -1.0
    best_epoch: int = 0
    epoch: int = 0  # the last completed epoch
    best: dict | None = None  # this session's best checkpoint; None: best.pth holds an earlier session's


class Trainer:
    """Owns one run in one (locked) output folder. ``run()`` trains, then reports the best checkpoint on test."""

    def __init__(self, cfg: TrainConfig, progress: Callable | None = None, log: Callable[[str], None] = print,
                 on_epoch: Callable[[torch.nn.Module, dict, dict], None] | None = None):
        self.out = Path(cfg.out)
        self.log = log
        self.progress = progress
        self.on_epoch = on_epoch  # called after each epoch with (model, history row, run metadata)
        self.state: dict | None = None
        # Every check that needs no lock runs here, before anything is written.
        if cfg.resume and cfg.force:
            raise ConfigError("--resume and --force contradict each other; pass one")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out} exists and is not a folder")
        if cfg.resume and not (self.out / "last.pth").is_file():
            raise ConfigError(f"nothing to resume in {self.out}: no last.pth")
        self.cfg = cfg if cfg.resume else cfg.resolved()
        self.data_root = None if cfg.resume else resolve_data_dir(self.cfg.dataset, self.cfg.data_dir)

    def run(self) -> dict:
        with write_errors(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
            with locked(self.out / LOCK_FILE, what=f"run folder {self.out}"):
                remove_temporaries(self.out)  # what killed runs left half-written; ours to clean under the lock
                if self.cfg.resume:
                    self.cfg, self.state = self._resume_state(self.cfg)
                    self.data_root = resolve_data_dir(self.cfg.dataset, self.cfg.data_dir)
                else:
                    self._claim_folder()
                return self._train()

    # -- output folder and resume ------------------------------------------------------------
    def _claim_folder(self) -> None:
        """Refuse a folder with another run's checkpoints (unless --force), then record this run."""
        cfg = self.cfg
        if any((self.out / f).exists() for f in ("best.pth", "last.pth")):
            if not cfg.force:
                raise ConfigError(f"{self.out} already holds a run{self._describe()}; pass --resume to continue "
                                  "it, --force to start over, or choose another --out")
            if (self.out / "best.pth").exists():  # start over, but keep the previous best checkpoint
                os.replace(self.out / "best.pth", self.out / "previous-best.pth")
            for f in RUN_FILES:
                (self.out / f).unlink(missing_ok=True)
        atomic_write_json(self.out / "run.json", {**cfg.run_identity(), "out": str(self.out)})

    def _describe(self) -> str:
        try:
            old = json.loads((self.out / "run.json").read_text())
            return f" ({old.get('dataset')}, {old.get('model')})"
        except (OSError, ValueError, AttributeError):
            return ""

    def _resume_state(self, cfg: TrainConfig) -> tuple[TrainConfig, dict]:
        last = self.out / "last.pth"
        state = load_checkpoint(last)
        missing = [k for k in RESUMABLE if k not in state]
        if missing or not isinstance(state["config"], dict):
            raise CheckpointError(f"{last} is not a resumable training state (no {', '.join(missing) or 'config'})")
        known = {f.name for f in fields(TrainConfig)}
        # a state written before these keys existed trained in float32 with 2-pixel translations
        saved = TrainConfig(**{**LEGACY_RUN, **{k: v for k, v in state["config"].items() if k in known}})
        try:  # the folder's run.json says which run it holds: a last.pth copied from another run is not it
            recorded = json.loads((self.out / "run.json").read_text())
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict) and any(recorded.get(k) != getattr(saved, k) for k in ("dataset", "model")):
            raise CheckpointError(f"{last} belongs to another run ({saved.model} on {saved.dataset}) than the one "
                                  f"{self.out / 'run.json'} records ({recorded.get('model')} on {recorded.get('dataset')})")
        # The run is defined by last.pth; options given now must agree with it, except these.
        diff = [f"{k}: {getattr(saved, k)} vs {getattr(cfg, k)}" for k in RUN_KEYS
                if getattr(cfg, k) is not None and getattr(cfg, k) != getattr(saved, k)]
        if diff:
            raise ConfigError(f"{self.out} holds a different run ({'; '.join(diff)}); "
                              "use another --out, or --force to start over")
        for k in ("epochs", "time_budget"):
            if getattr(cfg, k) is not None:
                setattr(saved, k, getattr(cfg, k))
        saved.data_dir = cfg.data_dir  # this machine's folder, never one an old checkpoint recorded
        saved.device, saved.resume, saved.force, saved.out = cfg.device, True, False, str(self.out)
        return saved.resolved(), state

    def _restore(self, model, opt, sched, steps: int, meta: dict) -> tuple[object, Progress]:
        s, cfg = self.state, self.cfg
        if s["model_args"] != meta["model_args"] or s["mean"] != meta["mean"] or s["split"] != meta["split"]:
            raise CheckpointError(f"{self.out / 'last.pth'} does not belong to this run (model or data split differs)")
        model.load_state_dict(s["state_dict"])
        opt.load_state_dict(s["optimizer"])
        if s["config"].get("epochs") == cfg.epochs:
            sched.load_state_dict(s["scheduler"])
        else:  # a longer (or shorter) run: rebuild the schedule for the new length, continue its position
            sched = make_scheduler(cfg, opt, steps)
            with warnings.catch_warnings():  # stepping a fresh scheduler without optimizer steps is the point
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(min(s["epoch"] * steps, steps * cfg.epochs - 1)):
                    sched.step()
        torch.set_rng_state(s["rng"])
        self.log(f"resuming {self.out} after epoch {s['epoch']} (best val acc {s['best_val_acc']:.4f} at epoch "
                 f"{s['best_epoch']})")
        return sched, Progress(list(s["history"]), s["best_val_acc"], s["best_epoch"], s["epoch"])

    # -- the loop -----------------------------------------------------------------------------
    def _train(self) -> dict:
        cfg = self.cfg
        device = pick_device(cfg.device)
        seed_everything(cfg.seed, device)
        data = load_run_data(cfg, self.data_root, device)
        # channels-last: oneDNN's convolutions and max pooling run 1.3-2x faster so on this CPU (README, Speed)
        model = build_model(get_variant(cfg.model).args).to(device, memory_format=torch.channels_last)
        steps = math.ceil(len(data.xtr) / cfg.batch_size)
        opt = make_optimizer(cfg, model)
        sched = make_scheduler(cfg, opt, steps)
        meta = self._meta(data, model)
        prog = Progress([])
        if self.state is not None:
            sched, prog = self._restore(model, opt, sched, steps, meta)
        self.log(header_line(meta, cfg.epochs, device.type))
        trained_s = sum(h["seconds"] for h in prog.history)
        for epoch in range(prog.epoch + 1, cfg.epochs + 1):
            r = train_epoch(cfg, model, opt, sched, data, epoch, steps, self.progress)
            trained_s += r.seconds
            self._record(r, model, opt, sched, meta, prog)
            if self.on_epoch is not None:
                self.on_epoch(model, asdict(r), meta)
            if cfg.time_budget is not None and trained_s >= cfg.time_budget and epoch < cfg.epochs:
                self.log(f"time budget of {cfg.time_budget:.0f}s reached after epoch {epoch}")
                break
        return self.finish(prog, device)

    def _meta(self, data: RunData, model: torch.nn.Module) -> dict:
        """What every checkpoint of this run says about the model and its data (not about this machine)."""
        cfg = self.cfg
        return {
            "model": cfg.model, "model_args": dict(get_variant(cfg.model).args), "dataset": cfg.dataset,
            "data_source": data.source, "classes": data.classes,
            "input_shape": list(dataset_info(cfg.dataset).input_shape), "mean": data.mean, "std": data.std,
            "split": {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "n_train": len(data.xtr),
                      "n_val": len(data.xva)},
            "config": cfg.recorded(), "versions": versions(), "num_parameters": count_parameters(model),
        }

    def _record(self, r: EpochResult, model, opt, sched, meta: dict, prog: Progress) -> None:
        """Update the progress with epoch ``r``; save best.pth (if it improved), last.pth and the history."""
        r.best = r.val_acc > prog.best_val
        prog.history.append(asdict(r))
        prog.epoch = r.epoch
        common = {**meta, "epoch": r.epoch, "val_acc": r.val_acc, "val_loss": r.val_loss}
        if r.best:
            prog.best_val, prog.best_epoch = r.val_acc, r.epoch
            prog.best = {**common, "state_dict": _cpu_state(model), "test_acc": None}
            save_checkpoint(prog.best, self.out / "best.pth")
        save_checkpoint({**common, "state_dict": _cpu_state(model), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "history": prog.history,
                         "best_val_acc": prog.best_val, "best_epoch": prog.best_epoch}, self.out / "last.pth")
        self._write_history(prog.history)
        self.log(epoch_line(asdict(r), self.cfg.epochs))

    def _write_history(self, history: list[dict]) -> None:
        atomic_write_json(self.out / "history.json", history)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.out / "history.csv", buf.getvalue())

    # -- final report ---------------------------------------------------------------------------
    def finish(self, prog: Progress, device: torch.device | None = None) -> dict:
        """Evaluate the best checkpoint once on the test split; record test accuracy in it and in metrics.json."""
        dev = device or torch.device("cpu")
        best = prog.best if prog.best is not None else load_checkpoint(self.out / "best.pth")
        best = {k: v for k, v in best.items() if k not in ("format", "format_version")}
        test = load_split(best["dataset"], train=False, data_dir=self.data_root)
        xte = normalize(test.images, best["mean"], best["std"]).to(dev)
        test_loss, test_acc, pred = evaluate(model_from_checkpoint(best).to(dev), xte, test.labels.to(dev))
        best.update(test_acc=test_acc, test_loss=test_loss)
        save_checkpoint(best, self.out / "best.pth")  # the same content (a finished run resumed): file untouched
        confusion = torch.zeros(10, 10, dtype=torch.long)
        confusion.index_put_((test.labels, pred), torch.ones_like(pred), accumulate=True)
        metrics = {"dataset": best["dataset"], "data_source": best["data_source"], "model": best["model"],
                   "num_parameters": best["num_parameters"], "best_epoch": best["epoch"],
                   "val_acc": best["val_acc"], "test_acc": test_acc, "test_loss": test_loss,
                   "epochs_run": len(prog.history), "train_seconds": round(sum(h["seconds"] for h in prog.history), 2),
                   "classes": best["classes"], "confusion_matrix": confusion.tolist()}
        atomic_write_json(self.out / "metrics.json", metrics)
        self._plots(prog.history, confusion.tolist(), best["classes"])
        self.log(final_line(best, self.out / "best.pth"))
        return metrics

    def _plots(self, history: list[dict], confusion: list[list[int]], classes: list[str]) -> None:
        try:
            from .plots import plot_run
        except ImportError:  # matplotlib is the optional `plot` extra
            self.log("no plots: install the `plot` extra (matplotlib) for curves.png and confusion.png")
        else:
            plot_run(history, confusion, classes, self.out)


# The run's log lines, one function each: `lenet-export train` prints them, and the README's example is made
# from a shipped run's checkpoint and history with the same functions (scripts/readme_figures.py).
def header_line(meta: dict, epochs: int, device: str) -> str:
    cfg, split = meta["config"], meta["split"]
    return (f"training {meta['model']} ({meta['num_parameters']:,} parameters) on {meta['dataset']} "
            f"[{meta['data_source']}]: {split['n_train']} train / {split['n_val']} val, device {device}, "
            f"{cfg['optimizer']} lr {cfg['lr']} batch {cfg['batch_size']}, {epochs} epoch{'' if epochs == 1 else 's'}, "
            f"{'bfloat16 autocast' if cfg.get('precision') == 'bf16' else 'float32'}")


def epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.2e}  {row['seconds']:5.1f}s"
            + ("  * best" if row["best"] else ""))


def final_line(best: dict, path: Path) -> str:
    return f"best epoch {best['epoch']}: val acc {best['val_acc']:.4f}, test acc {best['test_acc']:.4f} -> {path}"


def _cpu_state(model: torch.nn.Module) -> dict:
    # stored in the default layout, whatever the layout trained in: the same bytes as any other copy of the weights
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def train(cfg: TrainConfig, progress: Callable | None = None, log: Callable[[str], None] = print,
          on_epoch: Callable | None = None) -> dict:
    """Train per ``cfg`` and return the final metrics (see ``Trainer``)."""
    return Trainer(cfg, progress=progress, log=log, on_epoch=on_epoch).run()
