"""ModifiedResNet: the CIFAR-10 ResNet of the student report, parameterised by stage widths and depths.

Default architecture (widths 64/128/256, two BasicBlocks per stage): 3x3 stem conv 3->64 + BN, three
stages (stride 2 entering stages 2 and 3, 1x1 conv + BN shortcut where the shape changes), global
average pool, linear 256->10. Its size (2,777,674 parameters, 421,202,432 MACs per image) is computed
without torch by `tuner.architecture`, whose `count_params` and `count_macs` this module re-exports.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tuner.architecture import (  # noqa: F401 - re-exported: `from tuner.model import count_params` keeps working
    IMAGE_SIZE,
    NUM_CLASSES,
    Architecture,
    check_architecture,
    count_macs,
    count_params,
)


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
        check_architecture(widths, blocks)
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
