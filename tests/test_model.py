"""ModifiedResNet: the default is the report's network, count_params / count_macs match built models, and the
initialisation options change initial values only."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from tuner.config import TrainConfig
from tuner.model import BasicBlock, ModifiedResNet, build_model, count_macs, count_params

DEFAULT_PARAMS = 2_777_674
DEFAULT_MACS = 421_202_432

# (widths, blocks): 1 to 5 stages, non-powers of 2, single blocks, deep stages, equal widths across stages.
ARCHITECTURES = [
    ((64, 128, 256), (2, 2, 2)),
    ((8,), (1,)),
    ((5,), (3,)),
    ((8, 16), (1, 1)),
    ((12, 20, 36), (1, 2, 3)),
    ((16, 16, 16), (2, 1, 1)),
    ((8, 16, 32, 64), (1, 1, 1, 1)),
    ((7, 13, 29, 61), (2, 1, 2, 1)),
    ((24, 48, 96), (3, 3, 3)),
    ((4, 8, 8, 16, 24), (1, 1, 2, 1, 1)),
    ((32, 24, 16), (1, 1, 1)),  # narrowing stages still need shortcut convs
]
SMALL_ARCHITECTURES = [arch for arch in ARCHITECTURES if max(arch[0]) <= 64]



@dataclass(frozen=True)
class Arch:
    widths: tuple[int, ...]
    blocks: tuple[int, ...]


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def measured_macs(model: nn.Module) -> int:
    """Multiply-accumulates of one 32x32 forward pass, counted by hooks on every Conv2d and Linear."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output[0].numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for handle in handles:
        handle.remove()
    return total


def test_default_network_is_the_reports_2_777_674_parameter_resnet() -> None:
    model = ModifiedResNet()
    assert trainable_params(model) == DEFAULT_PARAMS
    assert count_params(Arch((64, 128, 256), (2, 2, 2))) == DEFAULT_PARAMS


def test_default_network_costs_421_202_432_macs_per_image() -> None:
    assert count_macs(Arch((64, 128, 256), (2, 2, 2))) == DEFAULT_MACS
    assert measured_macs(ModifiedResNet()) == DEFAULT_MACS


@pytest.mark.parametrize(("widths", "blocks"), ARCHITECTURES)
def test_count_params_equals_the_built_models_parameters(widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
    assert count_params(Arch(widths, blocks)) == trainable_params(ModifiedResNet(widths, blocks))


@pytest.mark.parametrize(("widths", "blocks"), SMALL_ARCHITECTURES)
def test_count_macs_equals_macs_measured_on_the_built_model(widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
    assert count_macs(Arch(widths, blocks)) == measured_macs(ModifiedResNet(widths, blocks))


def test_counts_follow_num_classes() -> None:
    arch = Arch((8, 16), (1, 1))
    model = ModifiedResNet(arch.widths, arch.blocks, num_classes=100)
    assert count_params(arch, num_classes=100) == trainable_params(model)
    assert count_macs(arch, num_classes=100) == measured_macs(model)


@pytest.mark.parametrize(
    ("widths", "blocks"), [((8, 16, 32), (1, 1, 1)), ((6,), (2,)), ((8, 16, 32, 64), (1, 1, 1, 1))]
)
def test_forward_gives_ten_logits_per_image(widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
    model = ModifiedResNet(widths, blocks)
    logits = model(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_build_model_reads_widths_and_blocks_from_any_config() -> None:
    model = build_model(Arch((8, 12), (2, 1)))
    assert len(model.stages) == 2
    assert [len(stage) for stage in model.stages] == [2, 1]
    assert model.head.in_features == 12


@pytest.mark.parametrize(
    ("widths", "blocks"), [((), ()), ((8, 16), (1,)), ((8, 0), (1, 1)), ((8, 16), (1, 0)), ((-8,), (1,))]
)
def test_impossible_architectures_are_refused_before_building(widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="widths"):
        ModifiedResNet(widths, blocks)
    with pytest.raises(ValueError, match="widths"):
        count_params(Arch(widths, blocks))
    with pytest.raises(ValueError, match="widths"):
        count_macs(Arch(widths, blocks))


# --- initialisation options --------------------------------------------------------------------------


def test_zero_init_residual_starts_every_block_as_its_shortcut() -> None:
    model = build_model(TrainConfig(widths=(8, 16), blocks=(2, 1), zero_init_residual=True)).eval()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 and all(torch.equal(b.bn2.weight, torch.zeros(b.bn2.num_features)) for b in blocks)
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(blocks[0](x), torch.relu(x))  # identity shortcut: the block is relu(x)
        assert torch.equal(blocks[2](torch.relu(x)), torch.relu(blocks[2].shortcut(torch.relu(x))))
    assert count_params(TrainConfig(zero_init_residual=True)) == DEFAULT_PARAMS
    default = build_model(TrainConfig(widths=(8, 16), blocks=(2, 1)))
    assert all(torch.equal(b.bn2.weight, torch.ones(b.bn2.num_features))
               for b in default.modules() if isinstance(b, BasicBlock))


def test_dirac_init_makes_each_convolution_pass_its_first_channels_through() -> None:
    torch.manual_seed(0)
    plain = build_model(Arch((8, 16), (1, 1)))
    torch.manual_seed(0)
    dirac = build_model(TrainConfig(widths=(8, 16), blocks=(1, 1), dirac_init=True))
    convs = [(name, m) for name, m in dirac.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6  # stem, 2 per block, one 1x1 shortcut
    for name, conv in convs:
        carried = min(conv.in_channels, conv.out_channels)
        k = conv.kernel_size[0] // 2
        identity = torch.zeros(carried, conv.in_channels, *conv.kernel_size)
        identity[range(carried), range(carried), k, k] = 1
        assert torch.equal(conv.weight[:carried], identity), name
        # the filters beyond the identity keep the values a default build draws (no extra draws)
        assert torch.equal(conv.weight[carried:], plain.get_submodule(name).weight[carried:]), name
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dirac.stem[0](x)[:, :3], x)  # the stem's first three filters are R, G and B
    assert trainable_params(dirac) == trainable_params(plain)


def test_build_model_keeps_torch_defaults_without_the_options() -> None:
    torch.manual_seed(0)
    bare = build_model(Arch((8, 16), (1, 1)))
    torch.manual_seed(0)
    config = build_model(TrainConfig(widths=(8, 16), blocks=(1, 1)))
    for (name, a), b in zip(bare.state_dict().items(), config.state_dict().values()):
        assert torch.equal(a, b), name
