"""Training configuration: the per-model recipes and ``TrainConfig``, validated before anything is written."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from lenet_export.data import dataset_info
from lenet_export.errors import ConfigError
from lenet_export.machine import this_machine
from lenet_export.models import DEFAULT_MODEL, get_variant

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "constant")
SEED_MAX = 2**64 - 1  # torch.manual_seed and torch.Generator.manual_seed take 0 .. 2**64 - 1

# Recipes per model. The classic networks keep their architecture but train with a larger batch and a
# one-cycle Adam schedule (the tutorial's Adam 1e-3 / batch 64 / 25 epochs is what the benchmark compares
# against), in float32. The modern ones were chosen on the validation split on 2 CPU cores (README, "Speed"):
# label smoothing 0.1 helped both; translation by up to 2 pixels helped CIFAR-10 and cost Fashion-MNIST
# 0.5-1 point; mirror images in training with the models' test-time flip (models.py) helped both once bfloat16
# arithmetic (where the CPU has it) made room for more epochs; pooling before batch norm and ReLU (models.py,
# ``pool_first``) made a training step 1.5x faster again, which paid for wider convolutions (16-64-128).
_CLASSIC = dict(batch_size=256, lr=1e-2, optimizer="adam", schedule="onecycle", augment=False, translate=2,
                label_smoothing=0.0, precision="fp32")
_MODERN = dict(batch_size=128, lr=4e-3, optimizer="adamw", schedule="onecycle", augment=True, label_smoothing=0.1,
               precision="auto")
RECIPES = {
    "lenet-classic": dict(_CLASSIC, epochs=10),
    "lenet5": dict(_CLASSIC, epochs=10),
    "lenet-cifar": dict(_CLASSIC, epochs=15, batch_size=128, lr=3e-3, augment=True),
    "lenet-modern": dict(_MODERN, epochs=16, lr=6e-3, translate=0),
    "lenet-modern-cifar": dict(_MODERN, epochs=18, translate=2),
}
PRECISIONS = ("auto", "fp32", "bf16")
# What a training state written before `precision` and `translate` existed ran with (resume keeps it).
LEGACY_RUN = {"precision": "fp32", "translate": 2}

# Keys that define a run: resuming with a different value would not continue the same run.
RUN_KEYS = ("dataset", "model", "batch_size", "lr", "optimizer", "schedule", "augment", "translate",
            "weight_decay", "label_smoothing", "precision", "seed", "val_fraction", "train_limit")
# Keys that describe this machine or this invocation, not the model and its training: never recorded in
# checkpoints, so the same run gives the same bytes in any folder, resumed or not.
MACHINE_KEYS = ("data_dir", "out", "resume", "force", "device")


def resolve_precision(precision: str | None, device: str) -> str | None:
    """``auto``: bfloat16 autocast on a CPU with AMX (1.6x the float32 training steps of the 16-48-96
    lenet-modern there, README "train"), else float32, and float32 on CUDA (not measured). Recorded resolved:
    a checkpoint says what ran."""
    if precision != "auto":
        return precision
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return "fp32"
    return "bf16" if "amx_bf16" in this_machine().features else "fp32"


@dataclass
class TrainConfig:
    dataset: str | None = None  # None: fashion-mnist
    model: str | None = None  # default: DEFAULT_MODEL[dataset]
    epochs: int | None = None  # None: the model's recipe
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    augment: bool | None = None  # mirror images (and translate) in training
    translate: int | None = None  # with augment: random shifts by up to this many pixels (0: mirror images only)
    precision: str | None = None  # auto: bfloat16 autocast on a CPU with AMX, else fp32 (resolve_precision)
    weight_decay: float = 5e-4
    label_smoothing: float | None = None  # None: the model's recipe
    seed: int | None = None  # None: 0
    val_fraction: float | None = None  # None: 0.1
    data_dir: str | None = None  # None: see data.resolve_data_dir
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
        cfg = replace(self)
        cfg.dataset, cfg.model = info.name, model
        cfg.seed = 0 if cfg.seed is None else cfg.seed
        cfg.val_fraction = 0.1 if cfg.val_fraction is None else cfg.val_fraction
        for k, v in RECIPES[model].items():
            if getattr(cfg, k) is None:
                setattr(cfg, k, v)
        cfg.precision = resolve_precision(cfg.precision, cfg.device)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError for the first option out of range (of a resolved config)."""
        if self.epochs <= 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if not (isinstance(self.seed, int) and 0 <= self.seed <= SEED_MAX):
            raise ConfigError(f"--seed must be an integer from 0 to 2**64-1 ({SEED_MAX}), got {self.seed}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ConfigError(f"--time-budget must be a positive number of seconds, got {self.time_budget}")
        if self.train_limit is not None and self.train_limit <= 0:
            raise ConfigError(f"--train-limit must be positive, got {self.train_limit}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (isinstance(self.translate, int) and 0 <= self.translate <= 8):
            raise ConfigError(f"translate must be 0 to 8 pixels, got {self.translate}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {self.device!r}; choose one of: auto, cpu, cuda")

    def run_identity(self) -> dict:
        return {k: getattr(self, k) for k in RUN_KEYS}

    def recorded(self) -> dict:
        """What a checkpoint records of the configuration: everything but where this machine keeps things."""
        return {k: v for k, v in asdict(self).items() if k not in MACHINE_KEYS}
