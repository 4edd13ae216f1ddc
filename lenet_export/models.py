"""LeNet-family models: one configurable module and a registry of named variants.

Every variant is ``LeNet(**model_args)``; the checkpoint stores ``model_args`` so any later step
rebuilds the exact network from the file alone.

Classic variants keep their published shapes and activations:

* ``lenet-classic``  the Fashion-MNIST tutorial LeNet (sigmoid, max pooling, no padding): 44,426 parameters;
* ``lenet5``         the padded average-pooling LeNet-5 (sigmoid, avg pooling, fc 400-120-84-10): 61,706;
* ``lenet-cifar``    the CIFAR-10 LeNet (3->16->32 channels, ReLU, max pooling, fc 800-120-84-10): 121,182.

Modern variants (defaults) keep the conv/pool stages + fc shape but use 3x3 "same" convolutions, batch norm
and ReLU, and more channels, which train to far higher accuracy in the same wall time. ``flip_tta`` (the
CIFAR-10 default) makes eval mode return the mean of the logits of the image and of its mirror image: the
exported graphs hold both passes, so every runtime proves the same averaged logits. ``pool_first`` (the
Fashion-MNIST default) pools each conv's output before batch norm and ReLU, LeNet-5's own order (subsampling,
then the squashing function): normalisation and activation run on a quarter of the values, and a bfloat16
training step of ``lenet-modern`` ran 1.5x faster than in the conv -> bn -> ReLU -> pool order (side by side,
Intel Xeon with AMX, 2026-12-01; README, "Speed").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class LeNet(nn.Module):
    """Conv blocks (conv [-> bn] -> act -> pool, or with ``pool_first`` conv -> pool [-> bn] -> act) then fully
    connected layers (fc -> act) -> classifier."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: tuple[int, ...] | list[int] = (6, 16),
        kernel_size: int = 5,
        padding: int | tuple[int, ...] | list[int] = 0,
        fc: tuple[int, ...] | list[int] = (120, 84),
        num_classes: int = 10,
        activation: str = "sigmoid",
        pool: str = "max",
        batch_norm: bool = False,
        dropout: float = 0.0,
        flip_tta: bool = False,
        pool_first: bool = False,
    ):
        super().__init__()
        if activation not in ACTIVATIONS or pool not in POOLS:
            raise ConfigError(f"activation must be one of {list(ACTIVATIONS)}, pool one of {list(POOLS)}")
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        pads = [padding] * len(channels) if isinstance(padding, int) else list(padding)
        if len(pads) != len(channels):
            raise ConfigError(f"padding {padding} does not give one value per conv stage {channels}")
        c, size = in_channels, image_size
        for out, pad in zip(channels, pads):
            conv, down = nn.Conv2d(c, out, kernel_size, padding=pad, bias=not batch_norm), POOLS[pool](2)
            norm_act = [nn.BatchNorm2d(out), act()] if batch_norm else [act()]
            layers += [conv, down, *norm_act] if pool_first else [conv, *norm_act, down]
            c, size = out, (size + 2 * pad - kernel_size + 1) // 2
        if size < 1:
            raise ConfigError(f"input of {image_size}x{image_size} is too small for {len(channels)} conv stages")
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        n = c * size * size
        for width in fc:
            head += [nn.Linear(n, width), act()]
            if dropout:
                head.append(nn.Dropout(dropout))
            n = width
        head.append(nn.Linear(n, num_classes))
        self.classifier = nn.Sequential(*head)
        self.flip_tta = flip_tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.features(x))
        if self.flip_tta and not self.training:
            # Test-time augmentation inside the graph: the mean of the logits of the image and of its mirror
            # image. Training sees one view; every exported model computes both, so every runtime proves it.
            logits = (logits + self.classifier(self.features(x.flip(3)))) * 0.5
        return logits


@dataclass(frozen=True)
class Variant:
    name: str
    dataset: str  # the data set whose input geometry it is built for
    args: dict
    description: str


_GREY = {"in_channels": 1, "image_size": 28}
_RGB = {"in_channels": 3, "image_size": 32}

VARIANTS = {
    v.name: v
    for v in [
        Variant("lenet-classic", "fashion-mnist", {**_GREY, "channels": [6, 16], "kernel_size": 5, "padding": 0,
                "fc": [120, 84], "activation": "sigmoid", "pool": "max"},
                "tutorial LeNet: sigmoid, max pooling, 28x28 input, 44,426 parameters"),
        Variant("lenet5", "fashion-mnist", {**_GREY, "channels": [6, 16], "kernel_size": 5, "padding": [2, 0],
                "fc": [120, 84], "activation": "sigmoid", "pool": "avg"},
                "padded average-pooling LeNet-5 (fc 400-120-84-10)"),
        Variant("lenet-cifar", "cifar10", {**_RGB, "channels": [16, 32], "kernel_size": 5, "padding": 0,
                "fc": [120, 84], "activation": "relu", "pool": "max"},
                "CIFAR-10 LeNet: 3->16->32 channels, ReLU, max pooling, 121,182 parameters"),
        Variant("lenet-modern", "fashion-mnist", {**_GREY, "channels": [16, 64, 128], "kernel_size": 3,
                "padding": 1, "fc": [128], "activation": "relu", "pool": "max", "batch_norm": True,
                "pool_first": True, "flip_tta": True},
                "modern LeNet for 28x28 grey: three 3x3 conv stages, each pooled before batch norm and ReLU, the "
                "mean over the image and its mirror image (default for fashion-mnist)"),
        Variant("lenet-modern-cifar", "cifar10", {**_RGB, "channels": [16, 32, 64, 128], "kernel_size": 3,
                "padding": 1, "fc": [], "activation": "relu", "pool": "max", "batch_norm": True, "flip_tta": True},
                "modern LeNet for 32x32 RGB: four 3x3 conv stages, batch norm, ReLU, the mean over the image "
                "and its mirror image (default for cifar10)"),
    ]
}

DEFAULT_MODEL = {"fashion-mnist": "lenet-modern", "cifar10": "lenet-modern-cifar"}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(VARIANTS)}") from None


def build_model(model_args: dict) -> LeNet:
    try:
        return LeNet(**model_args)
    except TypeError as e:
        raise ConfigError(f"bad model arguments {model_args}: {e}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
