"""Training loop behind ``lenet-export train``: best-validation checkpoint, resumable, deterministic on CPU.

Each split is held in memory as one tensor and batched by indexing (no per-sample PIL/ToTensor work,
which dominates the classic tutorial pipeline). Every random draw of epoch ``e`` comes from a generator
seeded with ``(seed, e)``, so a run resumed from ``last.pth`` after epoch ``e`` repeats exactly what an
uninterrupted run would have done.

Files written into the output folder (atomically): ``best.pth``, ``last.pth``, ``run.json``,
``history.json``, ``history.csv``, ``metrics.json`` and, with matplotlib, ``curves.png`` and
``confusion.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from lenet_export.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint, versions
from lenet_export.data import channel_stats, dataset_info, load_split, normalize, train_val_indices
from lenet_export.errors import CheckpointError, ConfigError
from lenet_export.fsutil import atomic_write_json, atomic_write_text
from lenet_export.models import DEFAULT_MODEL, build_model, count_parameters, get_variant

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "constant")

# Recipes per model. The classic networks keep their architecture but train with a larger batch and a
# one-cycle Adam schedule (the tutorial's Adam 1e-3 / batch 64 / 25 epochs is what the benchmark compares
# against); the modern ones add light augmentation where it pays. Tuned on 2 CPU cores (README, "Speed").
RECIPES = {
    "lenet-classic": dict(epochs=10, batch_size=256, lr=1e-2, optimizer="adam", schedule="onecycle", augment=False),
    "lenet5": dict(epochs=10, batch_size=256, lr=1e-2, optimizer="adam", schedule="onecycle", augment=False),
    "lenet-cifar": dict(epochs=15, batch_size=128, lr=3e-3, optimizer="adam", schedule="onecycle", augment=True),
    "lenet-modern": dict(epochs=4, batch_size=128, lr=4e-3, optimizer="adamw", schedule="onecycle", augment=False),
    "lenet-modern-cifar": dict(epochs=9, batch_size=128, lr=4e-3, optimizer="adamw", schedule="onecycle",
                               augment=True),
}

# Keys that define a run: resuming with a different value would not continue the same run.
RUN_KEYS = ("dataset", "model", "batch_size", "lr", "optimizer", "schedule", "augment", "weight_decay",
            "label_smoothing", "seed", "val_fraction", "train_limit")


@dataclass
class TrainConfig:
    dataset: str | None = None  # None: fashion-mnist
    model: str | None = None  # default: DEFAULT_MODEL[dataset]
    epochs: int | None = None  # None: the model's recipe
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    augment: bool | None = None
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int | None = None  # None: 0
    val_fraction: float | None = None  # None: 0.1
    data_dir: str | None = None
    device: str = "auto"
    out: str = "runs/fashion-mnist"
    resume: bool = False
    force: bool = False
    time_budget: float | None = None  # stop after the epoch that crosses this many seconds of training
    train_limit: int | None = None  # train on a seeded random N of the training split (smoke runs, tests)

    def resolved(self) -> "TrainConfig":
        """Fill model and recipe defaults, then validate. Returns a new config."""
        info = dataset_info(self.dataset or "fashion-mnist")
        model = self.model or DEFAULT_MODEL[info.name]
        variant = get_variant(model)
        if (variant.args["in_channels"], variant.args["image_size"]) != (info.channels, info.size):
            raise ConfigError(f"model {model!r} is built for {variant.dataset} input "
                              f"({variant.args['in_channels']}x{variant.args['image_size']}x{variant.args['image_size']}), "
                              f"not {info.name}")
        recipe = RECIPES[model]
        cfg = replace(self)
        cfg.dataset, cfg.model = info.name, model
        if cfg.data_dir is not None:  # absolute, so later steps can find the data from the checkpoint alone
            cfg.data_dir = str(Path(cfg.data_dir).resolve())
        cfg.seed = 0 if cfg.seed is None else cfg.seed
        cfg.val_fraction = 0.1 if cfg.val_fraction is None else cfg.val_fraction
        for k, v in recipe.items():
            if getattr(cfg, k) is None:
                setattr(cfg, k, v)
        if cfg.epochs <= 0:
            raise ConfigError(f"--epochs must be positive, got {cfg.epochs}")
        if cfg.batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {cfg.batch_size}")
        if not cfg.lr > 0 or not math.isfinite(cfg.lr):
            raise ConfigError(f"--lr must be a positive number, got {cfg.lr}")
        if cfg.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if cfg.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if not 0.0 < cfg.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction}")
        if cfg.train_limit is not None and cfg.train_limit <= 0:
            raise ConfigError(f"--train-limit must be positive, got {cfg.train_limit}")
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {cfg.device!r}; choose one of: auto, cpu, cuda")
        return cfg

    def run_identity(self) -> dict:
        return {k: getattr(self, k) for k in RUN_KEYS}


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    best: bool


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def augment_batch(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random translation by up to ``pad`` pixels (zero fill), per sample."""
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1).to(x.device), x.flip(3), x)
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    ar = torch.arange(h, device=x.device)
    rows = (ar.view(1, h) + dy.view(n, 1)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (ar.view(1, w) + dx.view(n, 1)).view(n, 1, 1, w).expand(n, c, h, w)
    return xp.gather(2, rows).gather(3, cols)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and predictions of ``model`` on normalised ``x``."""
    model.eval()
    loss_sum, preds = 0.0, []
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        loss_sum += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    return loss_sum / len(x), (pred == y).float().mean().item(), pred.cpu()


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adam":
        # The classic recipe is plain Adam: no weight decay.
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle" and total >= 4:
        # OneCycleLR needs at least one step in each phase: warm up over >= 2 steps on very short runs.
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=max(0.25, 2 / total))
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


class Trainer:
    """Owns one run in one output folder. ``run()`` trains, ``finish()`` reports the best checkpoint on test."""

    def __init__(self, cfg: TrainConfig, progress: Callable | None = None, log: Callable[[str], None] = print,
                 on_epoch: Callable[[torch.nn.Module, dict, dict], None] | None = None):
        self.out = Path(cfg.out)
        self.log = log
        self.progress = progress
        self.on_epoch = on_epoch  # called after each epoch with (model, history row, run metadata)
        self.cfg, self.state = self._prepare(cfg)

    # -- output folder and resume ------------------------------------------------------------
    def _prepare(self, cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
        run_file = self.out / "run.json"
        has_run = any((self.out / f).exists() for f in ("run.json", "best.pth", "last.pth"))
        if cfg.resume and cfg.force:
            raise ConfigError("--resume and --force contradict each other; pass one")
        if cfg.resume:
            if not (self.out / "last.pth").exists():
                raise ConfigError(f"nothing to resume in {self.out}: no last.pth")
            state = load_checkpoint(self.out / "last.pth")
            if "optimizer" not in state or "config" not in state:
                raise CheckpointError(f"{self.out / 'last.pth'} is not a resumable training state")
            known = {f.name for f in fields(TrainConfig)}
            saved = TrainConfig(**{k: v for k, v in state["config"].items() if k in known})
            # The run is defined by last.pth; options given now must agree with it, except these.
            diff = [f"{k}: {getattr(saved, k)} vs {getattr(cfg, k)}" for k in RUN_KEYS
                    if getattr(cfg, k) is not None and getattr(cfg, k) != getattr(saved, k)]
            if diff:
                raise ConfigError(f"{self.out} holds a different run ({'; '.join(diff)}); "
                                  "use another --out, or --force to start over")
            for k in ("epochs", "data_dir", "time_budget"):
                if getattr(cfg, k) is not None:
                    setattr(saved, k, getattr(cfg, k))
            saved.device, saved.resume, saved.force, saved.out = cfg.device, True, False, str(self.out)
            return saved.resolved(), state
        cfg = cfg.resolved()
        if has_run and not cfg.force:
            what = ""
            if run_file.exists():
                try:
                    old = json.loads(run_file.read_text())
                    what = f" ({old.get('dataset')}, {old.get('model')})"
                except (OSError, ValueError):
                    pass
            raise ConfigError(f"{self.out} already holds a run{what}; pass --resume to continue it, "
                              "--force to start over, or choose another --out")
        return cfg, None

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        device = pick_device(cfg.device)
        seed_everything(cfg.seed, device)
        info = dataset_info(cfg.dataset)
        train_split = load_split(cfg.dataset, train=True, data_dir=cfg.data_dir)
        tr_idx, va_idx = train_val_indices(len(train_split), cfg.val_fraction, cfg.seed)
        if cfg.train_limit:  # a seeded random subset: files are often stored grouped by class
            g = torch.Generator().manual_seed(cfg.seed)
            tr_idx = tr_idx[torch.randperm(len(tr_idx), generator=g)[:cfg.train_limit]].sort().values
        mean, std = channel_stats(train_split.images[tr_idx])
        xtr = normalize(train_split.images[tr_idx], mean, std).to(device)
        ytr = train_split.labels[tr_idx].to(device)
        xva = normalize(train_split.images[va_idx], mean, std).to(device)
        yva = train_split.labels[va_idx].to(device)

        variant = get_variant(cfg.model)
        model = build_model(variant.args).to(device)
        steps = math.ceil(len(xtr) / cfg.batch_size)
        opt = _make_optimizer(cfg, model)
        sched = _make_scheduler(cfg, opt, steps)
        history: list[dict] = []
        best_val, best_epoch, start_epoch = -1.0, 0, 1

        meta = {
            "model": cfg.model, "model_args": dict(variant.args), "dataset": info.name,
            "data_source": train_split.source, "classes": list(train_split.classes),
            "input_shape": list(info.input_shape), "mean": mean, "std": std,
            "split": {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "n_train": len(tr_idx), "n_val": len(va_idx)},
            "config": asdict(cfg), "versions": versions(), "num_parameters": count_parameters(model),
        }

        if self.state is not None:
            s = self.state
            if s["model_args"] != variant.args or s["mean"] != mean or s["split"] != meta["split"]:
                raise CheckpointError(f"{self.out / 'last.pth'} does not belong to this run (model or data split differs)")
            model.load_state_dict(s["state_dict"])
            opt.load_state_dict(s["optimizer"])
            if s["config"]["epochs"] == cfg.epochs:
                sched.load_state_dict(s["scheduler"])
            else:  # a longer (or shorter) run: rebuild the schedule for the new length, continue its position
                sched = _make_scheduler(cfg, opt, steps)
                with warnings.catch_warnings():  # stepping a fresh scheduler without optimizer steps is the point
                    warnings.simplefilter("ignore", UserWarning)
                    for _ in range(min(s["epoch"] * steps, steps * cfg.epochs - 1)):
                        sched.step()
            torch.set_rng_state(s["rng"])
            history, best_val, best_epoch = list(s["history"]), s["best_val_acc"], s["best_epoch"]
            start_epoch = s["epoch"] + 1
            self.log(f"resuming {self.out} after epoch {s['epoch']} (best val acc {best_val:.4f} at epoch {best_epoch})")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            if cfg.force:  # start over, but keep the previous run's best checkpoint rather than destroying it
                if (self.out / "best.pth").exists():
                    os.replace(self.out / "best.pth", self.out / "previous-best.pth")
                for f in ("last.pth", "history.json", "history.csv", "metrics.json", "curves.png", "confusion.png"):
                    (self.out / f).unlink(missing_ok=True)
            atomic_write_json(self.out / "run.json", {**cfg.run_identity(), "out": str(self.out)})

        self.log(f"training {cfg.model} ({meta['num_parameters']:,} parameters) on {info.name} "
                 f"[{train_split.source}]: {len(tr_idx)} train / {len(va_idx)} val, device {device}, "
                 f"{cfg.optimizer} lr {cfg.lr} batch {cfg.batch_size}, {cfg.epochs} epochs")
        trained_s = sum(h["seconds"] for h in history)
        for epoch in range(start_epoch, cfg.epochs + 1):
            r = self._train_epoch(model, opt, sched, xtr, ytr, xva, yva, epoch, steps)
            trained_s += r.seconds
            r.best = r.val_acc > best_val
            history.append(asdict(r))
            common = {**meta, "epoch": epoch, "val_acc": r.val_acc, "val_loss": r.val_loss}
            if r.best:
                best_val, best_epoch = r.val_acc, epoch
                save_checkpoint({**common, "state_dict": _cpu_state(model), "test_acc": None}, self.out / "best.pth")
            save_checkpoint({**common, "state_dict": _cpu_state(model), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "history": history,
                             "best_val_acc": best_val, "best_epoch": best_epoch}, self.out / "last.pth")
            self._write_history(history)
            self.log(f"epoch {epoch:>3}/{cfg.epochs}  train loss {r.train_loss:.4f} acc {r.train_acc:.4f}  "
                     f"val loss {r.val_loss:.4f} acc {r.val_acc:.4f}  lr {r.lr:.2e}  {r.seconds:5.1f}s"
                     + ("  * best" if r.best else ""))
            if self.on_epoch is not None:
                self.on_epoch(model, asdict(r), meta)
            if cfg.time_budget is not None and trained_s >= cfg.time_budget and epoch < cfg.epochs:
                self.log(f"time budget of {cfg.time_budget:.0f}s reached after epoch {epoch}")
                break
        return self.finish(device)

    def _train_epoch(self, model, opt, sched, xtr, ytr, xva, yva, epoch: int, steps: int) -> EpochResult:
        cfg = self.cfg
        g = _epoch_generator(cfg.seed, epoch)
        perm = torch.randperm(len(xtr), generator=g).to(xtr.device)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=xtr.device)
        correct = torch.zeros((), dtype=torch.long, device=xtr.device)
        task = self.progress(epoch, cfg.epochs, steps) if self.progress else None
        seen = 0
        for b in range(steps):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = xtr[idx], ytr[idx]
            if cfg.augment:
                x = augment_batch(x, g)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if task is not None and (b % 20 == 0 or b == steps - 1):
                task(b + 1, loss_sum.item() / seen, correct.item() / seen)
        val_loss, val_acc, _ = evaluate(model, xva, yva)
        train_s = time.perf_counter() - t0  # the epoch's wall time, validation included
        return EpochResult(epoch, loss_sum.item() / seen, correct.item() / seen, val_loss, val_acc,
                           opt.param_groups[0]["lr"], round(train_s, 3), False)

    def _write_history(self, history: list[dict]) -> None:
        atomic_write_json(self.out / "history.json", history)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.out / "history.csv", buf.getvalue())

    # -- final report ---------------------------------------------------------------------------
    def finish(self, device: torch.device | None = None) -> dict:
        """Evaluate ``best.pth`` once on the test split; record test accuracy in it and in metrics.json."""
        best = load_checkpoint(self.out / "best.pth")
        model = model_from_checkpoint(best).to(device or "cpu")
        test = load_split(best["dataset"], train=False, data_dir=self.cfg.data_dir)
        xte = normalize(test.images, best["mean"], best["std"]).to(device or "cpu")
        test_loss, test_acc, pred = evaluate(model, xte, test.labels.to(device or "cpu"))
        best["test_acc"], best["test_loss"] = test_acc, test_loss
        save_checkpoint({k: v for k, v in best.items() if k not in ("format", "format_version")}, self.out / "best.pth")
        confusion = torch.zeros(10, 10, dtype=torch.long)
        confusion.index_put_((test.labels, pred), torch.ones_like(pred), accumulate=True)
        history = json.loads((self.out / "history.json").read_text())
        metrics = {"dataset": best["dataset"], "data_source": best["data_source"], "model": best["model"],
                   "num_parameters": best["num_parameters"], "best_epoch": best["epoch"],
                   "val_acc": best["val_acc"], "test_acc": test_acc, "test_loss": test_loss,
                   "epochs_run": len(history), "train_seconds": round(sum(h["seconds"] for h in history), 2),
                   "classes": best["classes"], "confusion_matrix": confusion.tolist()}
        atomic_write_json(self.out / "metrics.json", metrics)
        try:
            from .plots import plot_run
        except ImportError:  # matplotlib is the optional `plot` extra
            self.log("no plots: install the `plot` extra (matplotlib) for curves.png and confusion.png")
        else:
            plot_run(history, confusion.tolist(), best["classes"], self.out)
        self.log(f"best epoch {best['epoch']}: val acc {best['val_acc']:.4f}, test acc {test_acc:.4f} "
                 f"-> {self.out / 'best.pth'}")
        return metrics


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train(cfg: TrainConfig, progress: Callable | None = None, log: Callable[[str], None] = print,
          on_epoch: Callable | None = None) -> dict:
    """Train per ``cfg`` and return the final metrics (see ``Trainer``)."""
    return Trainer(cfg, progress=progress, log=log, on_epoch=on_epoch).run()
