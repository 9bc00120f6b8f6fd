"""ModifiedResNet: the CIFAR-10 ResNet of the student report, parameterised by stage widths and depths.

Default architecture (widths 64/128/256, two BasicBlocks per stage): 3x3 stem conv 3->64 + BN, three
stages (stride 2 entering stages 2 and 3, 1x1 conv + BN shortcut where the shape changes), global
average pool, linear 256->10. Its size (2,777,674 parameters, 421,202,432 MACs per image) is computed
without torch by `tuner.architecture`, whose `count_params` and `count_macs` this module re-exports.

Initialisation is torch's default unless the config asks for one of two options from the fast-CIFAR
literature (`initialise`); neither changes a shape, so the parameter count is the same either way.
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
    """The network of `arch`, initialised as `arch` asks when it carries the initialisation options (a
    TrainConfig does: `zero_init_residual`, `dirac_init`); a bare architecture gets torch's default."""
    model = ModifiedResNet(tuple(arch.widths), tuple(arch.blocks), num_classes)
    return initialise(model, zero_init_residual=getattr(arch, "zero_init_residual", False),
                      dirac_init=getattr(arch, "dirac_init", False))


def initialise(model: ModifiedResNet, zero_init_residual: bool = False, dirac_init: bool = False) -> ModifiedResNet:
    """Overwrite torch's default initialisation in place (and return the model); draws no random numbers, so
    the other weights are those a default build draws.

    zero_init_residual: the last BatchNorm's weight of each residual branch (`bn2`) starts at 0, so every
        block starts as its shortcut and the network as a shallow one (Goyal et al. 2017, "Accurate, large
        minibatch SGD"; torchvision's `zero_init_residual`).
    dirac_init: every convolution's first min(in, out) filters start as the identity (`nn.init.dirac_`:
        filter i passes input channel i through), the rest keep their random weights; airbench initialises
        its convolutions this way. Stride-2 and 1x1 convolutions included: the identity then subsamples.
    """
    for module in model.modules():
        if dirac_init and isinstance(module, nn.Conv2d):
            with torch.no_grad():
                nn.init.dirac_(module.weight[: min(module.in_channels, module.out_channels)])
        if zero_init_residual and isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)
    return model
