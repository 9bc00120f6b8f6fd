"""Test-time augmentation: which views a model sees and how their logits are averaged."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tuner.evaluate import tta_logits


class RecordingModel(nn.Module):
    """Logits that depend on every pixel (a fixed linear map), and a record of every batch it is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 10)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.linear(x.flatten(1))


def images() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_flip_tta_averages_the_image_and_its_mirror() -> None:
    model, x = RecordingModel(), images()
    with torch.no_grad():
        logits = tta_logits(model, x, tta_flip=True)
        assert torch.allclose(logits, (model.linear(x.flatten(1)) + model.linear(x.flip(3).flatten(1))) / 2)
    assert len(model.seen) == 2 and torch.equal(model.seen[1], x.flip(3))


@pytest.mark.parametrize("shift", [1, 2])
def test_translate_tta_averages_the_shifted_views_with_the_plain_ones(shift: int) -> None:
    model, x = RecordingModel(), images()
    with torch.no_grad():
        logits = tta_logits(model, x, tta_flip=True, tta_translate=shift)
    assert len(model.seen) == 6  # image, mirror, and both for each of two shifted views
    down_right, up_left = model.seen[2], model.seen[4]
    assert torch.equal(model.seen[3], down_right.flip(3)) and torch.equal(model.seen[5], up_left.flip(3))
    # inside the border, each view is the image moved by `shift` pixels in both directions
    assert torch.equal(down_right[..., shift:, shift:], x[..., :-shift, :-shift])
    assert torch.equal(up_left[..., :-shift, :-shift], x[..., shift:, shift:])
    # the border is reflected, not zero: the view is a window of the reflect-padded image
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    assert torch.equal(down_right, padded[..., :8, :8]) and torch.equal(up_left, padded[..., 2 * shift :, 2 * shift :])
    with torch.no_grad():
        views = [model.linear(view.flatten(1)) for view in model.seen]
    expected = (views[0] + views[1]) / 4 + (views[2] + views[3] + views[4] + views[5]) / 8
    assert torch.allclose(logits, expected, atol=1e-6)


def test_translate_tta_without_flips_sees_three_views() -> None:
    model, x = RecordingModel(), images()
    with torch.no_grad():
        logits = tta_logits(model, x, tta_flip=False, tta_translate=1)
        views = [model.linear(view.flatten(1)) for view in model.seen]
    assert len(model.seen) == 3 and torch.equal(model.seen[0], x)
    assert torch.allclose(logits, views[0] / 2 + (views[1] + views[2]) / 4, atol=1e-6)


def test_translate_tta_keeps_a_channels_last_batch_channels_last() -> None:
    model, x = RecordingModel(), images().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        tta_logits(model, x, tta_flip=False, tta_translate=1)
    assert all(view.is_contiguous(memory_format=torch.channels_last) for view in model.seen)
