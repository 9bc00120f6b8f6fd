"""ModifiedResNet: the CIFAR-10 ResNet of the student report, parameterised by stage widths and depths.

Default architecture (widths 64/128/256, two BasicBlocks per stage): 3x3 stem conv 3->64 + BN, three
stages (stride 2 entering stages 2 and 3, 1x1 conv + BN shortcut where the shape changes), global
average pool, linear 256->10. That is 2,777,674 trainable parameters and 421,202,432 multiply-
accumulates per 32x32 image (convolutions and the linear layer; BN and additions not counted).

`count_params` and `count_macs` compute both from the architecture alone, so the search can reject a
configuration before anything is built or launched.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 10
IMAGE_SIZE = 32


class Architecture(Protocol):
    """Anything with stage widths and blocks per stage, e.g. a TrainConfig."""

    @property
    def widths(self) -> Sequence[int]: ...

    @property
    def blocks(self) -> Sequence[int]: ...


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ModifiedResNet(nn.Module):
    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256),
        blocks: Sequence[int] = (2, 2, 2),
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        _check_architecture(widths, blocks)
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_channels = widths[0]
        for index, (width, depth) in enumerate(zip(widths, blocks)):
            layers = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_model(arch: Architecture, num_classes: int = NUM_CLASSES) -> ModifiedResNet:
    return ModifiedResNet(tuple(arch.widths), tuple(arch.blocks), num_classes)


def _check_architecture(widths: Sequence[int], blocks: Sequence[int]) -> None:
    # ValueError, not UserError: configs are validated before they get here; this guards direct use.
    if len(widths) != len(blocks) or not widths:
        raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} need the same, non-zero length")
    if any(w <= 0 for w in widths) or any(b <= 0 for b in blocks):
        raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} must be positive")


def _layers(arch: Architecture) -> list[tuple[int, int, int, int]]:
    """Every conv as (in_channels, out_channels, kernel, output side), in network order."""
    _check_architecture(arch.widths, arch.blocks)
    side = IMAGE_SIZE
    convs = [(3, arch.widths[0], 3, side)]
    in_channels = arch.widths[0]
    for index, (width, depth) in enumerate(zip(arch.widths, arch.blocks)):
        for block in range(depth):
            stride = 2 if index > 0 and block == 0 else 1
            side = (side - 1) // stride + 1  # padding 1, kernel 3: ceil(side / stride)
            convs.append((in_channels, width, 3, side))
            convs.append((width, width, 3, side))
            if stride != 1 or in_channels != width:
                convs.append((in_channels, width, 1, side))
            in_channels = width
    return convs


def count_params(arch: Architecture, num_classes: int = NUM_CLASSES) -> int:
    """Trainable parameters of the network `build_model(arch)` would build, without building it."""
    total = 0
    for in_channels, out_channels, kernel, _ in _layers(arch):
        total += in_channels * out_channels * kernel * kernel + 2 * out_channels  # conv + BN affine
    last = arch.widths[-1]
    return total + last * num_classes + num_classes


def count_macs(arch: Architecture, num_classes: int = NUM_CLASSES) -> int:
    """Multiply-accumulates of one forward pass on a 32x32 image (convs and the linear layer)."""
    total = sum(i * o * k * k * side * side for i, o, k, side in _layers(arch))
    return total + arch.widths[-1] * num_classes
