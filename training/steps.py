"""The pieces of one training run: device and seeding, the in-memory data, augmentation, one epoch,
evaluation, optimizer and schedule. ``train.py`` puts them together (and owns the run folder)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from lenet_export.data import channel_stats, load_split, normalize, train_val_indices
from lenet_export.errors import ConfigError

from .config import TrainConfig


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
        # Deterministic mode also fills every new tensor with NaN by default, to expose reads of unset memory;
        # no op used here reads it (the checkpoint bytes are identical either way), and the filling cost 5%
        # of a training step (3,359 -> 3,519 images/s, lenet-modern-cifar, side by side, 2026-11-30).
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # modulo 2**64: the generator's seed range; unchanged for every seed below 2**64 / 100_003, and 100_003
    # is odd, so different seeds still give different epoch streams
    return torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**64)


def augment_batch(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random translation by up to ``pad`` pixels (zero fill), per sample."""
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1).to(x.device), x.flip(3), x)
    if pad == 0:
        return x
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    ar = torch.arange(h, device=x.device)
    rows = (ar.view(1, h) + dy.view(n, 1)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (ar.view(1, w) + dx.view(n, 1)).view(n, 1, 1, w).expand(n, c, h, w)
    return xp.gather(2, rows).gather(3, cols)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and predictions of ``model`` on normalised ``x``.

    Batches of 256, not 1000: a validation pass of either default model took 0.65-0.7 s instead of 1.4-1.7 s
    (measured side by side, Intel Xeon, 2026-12-01), 10% of a training epoch."""
    model.eval()
    loss_sum, preds = 0.0, []
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].contiguous(memory_format=torch.channels_last))
        loss_sum += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    return loss_sum / len(x), (pred == y).float().mean().item(), pred.cpu()


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adam":
        # The classic recipe is plain Adam: no weight decay.
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle" and total >= 4:
        # OneCycleLR needs at least one step in each phase: warm up over >= 2 steps on very short runs.
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=max(0.25, 2 / total))
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


@dataclass
class RunData:
    """One run's normalised train and validation tensors, on its device, and where they came from."""

    xtr: torch.Tensor
    ytr: torch.Tensor
    xva: torch.Tensor
    yva: torch.Tensor
    mean: list[float]
    std: list[float]
    source: str
    classes: list[str]


def load_run_data(cfg: TrainConfig, data_root: Path, device: torch.device) -> RunData:
    """The seeded train/validation split (and ``--train-limit`` subset), normalised with the train part's stats."""
    split = load_split(cfg.dataset, train=True, data_dir=data_root)
    tr_idx, va_idx = train_val_indices(len(split), cfg.val_fraction, cfg.seed)
    if cfg.train_limit:  # a seeded random subset: files are often stored grouped by class
        g = torch.Generator().manual_seed(cfg.seed)
        tr_idx = tr_idx[torch.randperm(len(tr_idx), generator=g)[:cfg.train_limit]].sort().values
    mean, std = channel_stats(split.images[tr_idx])

    def part(idx):
        return normalize(split.images[idx], mean, std).to(device), split.labels[idx].to(device)

    (xtr, ytr), (xva, yva) = part(tr_idx), part(va_idx)
    return RunData(xtr, ytr, xva, yva, mean, std, split.source, list(split.classes))


def train_epoch(cfg: TrainConfig, model, opt, sched, data: RunData, epoch: int, steps: int,
                progress: Callable | None = None) -> EpochResult:
    """One epoch over the shuffled training part (its draws seeded by (seed, epoch)), then validation."""
    xtr, ytr = data.xtr, data.ytr
    g = epoch_generator(cfg.seed, epoch)
    perm = torch.randperm(len(xtr), generator=g).to(xtr.device)
    model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=xtr.device)
    correct = torch.zeros((), dtype=torch.long, device=xtr.device)
    task = progress(epoch, cfg.epochs, steps) if progress else None
    seen = 0
    for b in range(steps):
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        x, y = xtr[idx], ytr[idx]
        if cfg.augment:
            x = augment_batch(x, g, pad=cfg.translate)
        with torch.autocast(xtr.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            logits = model(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if task is not None and (b % 20 == 0 or b == steps - 1):
            task(b + 1, loss_sum.item() / seen, correct.item() / seen)
    val_loss, val_acc, _ = evaluate(model, data.xva, data.yva)
    train_s = time.perf_counter() - t0  # the epoch's wall time, validation included
    return EpochResult(epoch, loss_sum.item() / seen, correct.item() / seen, val_loss, val_acc,
                       opt.param_groups[0]["lr"], round(train_s, 3), False)
