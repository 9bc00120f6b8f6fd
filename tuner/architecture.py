"""ModifiedResNet's size as numbers: every convolution, the parameter count and the MACs, without torch.

The search rejects an infeasible configuration (`constraints: max_params`, `max_macs`) and the dry run
prices a space from these counts, so they must not need torch: `python -m tuner.run --dry-run` never
imports it. `tuner.model` builds the network these counts describe; tests/test_model.py checks that the
counts equal the built network's parameters and measured MACs.

The default architecture (widths 64/128/256, two BasicBlocks per stage) has 2,777,674 trainable
parameters and costs 421,202,432 multiply-accumulates per 32x32 image (convolutions and the linear
layer; BatchNorm and additions not counted).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

NUM_CLASSES = 10
IMAGE_SIZE = 32


class Architecture(Protocol):
    """Anything with stage widths and blocks per stage, e.g. a TrainConfig."""

    @property
    def widths(self) -> Sequence[int]: ...

    @property
    def blocks(self) -> Sequence[int]: ...


def check_architecture(widths: Sequence[int], blocks: Sequence[int]) -> None:
    """ValueError unless there is at least one stage and every width and block count is positive.

    ValueError, not UserError: configs are validated (TrainConfig.validate) before they get here; this
    guards direct use.
    """
    if len(widths) != len(blocks) or not widths:
        raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} need the same, non-zero length")
    if any(w <= 0 for w in widths) or any(b <= 0 for b in blocks):
        raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} must be positive")


def conv_layers(arch: Architecture) -> list[tuple[int, int, int, int]]:
    """Every conv as (in_channels, out_channels, kernel, output side), in network order.

    A 3x3 stem conv, then per stage its BasicBlocks (two 3x3 convs, plus a 1x1 shortcut conv where the
    shape changes); stride 2 entering every stage after the first.
    """
    check_architecture(arch.widths, arch.blocks)
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
    """Trainable parameters of the network `tuner.model.build_model(arch)` would build, without building it."""
    total = 0
    for in_channels, out_channels, kernel, _ in conv_layers(arch):
        total += in_channels * out_channels * kernel * kernel + 2 * out_channels  # conv + BN affine
    last = arch.widths[-1]
    return total + last * num_classes + num_classes


def count_macs(arch: Architecture, num_classes: int = NUM_CLASSES) -> int:
    """Multiply-accumulates of one forward pass on a 32x32 image (convs and the linear layer)."""
    total = sum(i * o * k * k * side * side for i, o, k, side in conv_layers(arch))
    return total + arch.widths[-1] * num_classes
