"""Batched augmentation: each function does exactly its geometric/photometric job and is reproducible."""
from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.nn import functional as F

from tuner.augment import (
    alternating_flips,
    batch_affine,
    batch_color_jitter,
    batch_crop,
    batch_flip_lr,
    flip_lr_where,
)

CENTRE = 15.5  # the image centre in pixel coordinates (pixel centres at 0..31)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the grey that ColorJitter's contrast and saturation use


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=gen(seed))


def two_dot_pattern(n: int) -> torch.Tensor:
    """n copies of an image with one lit pixel in red and another in green, both away from the centre."""
    images = torch.zeros(n, 3, 32, 32)
    images[:, 0, 8, 16] = 1.0
    images[:, 1, 21, 6] = 1.0
    return images


def centroids(images: torch.Tensor) -> torch.Tensor:
    """(N, 2 channels, [row, col]) intensity-weighted centre of the red and green channels."""
    rows = torch.arange(32.0)[:, None].expand(32, 32)
    cols = torch.arange(32.0)[None, :].expand(32, 32)
    mass = images[:, :2].sum((2, 3))
    return torch.stack([(images[:, :2] * rows).sum((2, 3)) / mass, (images[:, :2] * cols).sum((2, 3)) / mass], -1)


def test_crop_keeps_shape_and_each_image_is_a_window_of_the_zero_padded_input() -> None:
    padding = 3
    images = random_images(8)
    out = batch_crop(images, padding, gen())
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = F.pad(images, (padding,) * 4)
    shifts = []
    for i in range(len(images)):
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
        ]
        assert len(matches) == 1, f"image {i} is not exactly one window of its padded input"
        shifts.append(matches[0])
    assert len(set(shifts)) > 1  # the shift is drawn per image
    assert any(shift != (padding, padding) for shift in shifts)


def test_crop_shifts_cover_every_offset_up_to_padding_in_both_directions() -> None:
    padding = 2
    out = batch_crop(torch.ones(300, 1, 32, 32), padding, gen())
    lit_rows, lit_cols = out[:, 0].amax(2) > 0, out[:, 0].amax(1) > 0  # (N, 32): which rows/columns kept image
    assert (lit_rows.sum(1) >= 32 - padding).all() and (lit_cols.sum(1) >= 32 - padding).all()
    # offset of the image in the output: + when zero fill is on top/left, - when it is at the bottom/right
    down = lit_rows.int().argmax(1) - lit_rows.flip(1).int().argmax(1)
    right = lit_cols.int().argmax(1) - lit_cols.flip(1).int().argmax(1)
    assert set(down.tolist()) == set(range(-padding, padding + 1))
    assert set(right.tolist()) == set(range(-padding, padding + 1))


def test_crop_with_padding_zero_is_identity() -> None:
    images = random_images(4)
    assert torch.equal(batch_crop(images, 0, gen()), images)


def test_flip_mirrors_about_half_and_leaves_the_rest_untouched() -> None:
    images = random_images(400)
    out = batch_flip_lr(images, gen())
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    assert (same ^ mirrored).all()  # each image is its original or its mirror, never a mix
    assert 140 < int(mirrored.sum()) < 260


def test_flip_where_mirrors_exactly_the_marked_images() -> None:
    images = random_images(6)
    marked = torch.tensor([True, False, False, True, True, False])
    out = flip_lr_where(images, marked)
    for image, original, flipped in zip(out, images, marked):
        assert torch.equal(image, original.flip(2) if flipped else original)


def test_alternating_flips_mirror_each_image_on_every_other_epoch() -> None:
    first = torch.rand(1000, generator=gen()) < 0.5
    by_epoch = torch.stack([alternating_flips(first, epoch) for epoch in range(1, 7)])
    assert torch.equal(by_epoch[0], first) and torch.equal(by_epoch[1], ~first)
    assert (by_epoch[1:] != by_epoch[:-1]).all()  # every image changes sides from one epoch to the next
    assert (by_epoch.sum(0) == 3).all()  # six epochs: each image mirrored in exactly three


def test_color_jitter_keeps_values_in_unit_range() -> None:
    images = random_images(64)
    out = batch_color_jitter(images, 1.0, gen())
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images)


def test_color_jitter_strength_zero_is_identity() -> None:
    images = random_images(4)
    assert torch.equal(batch_color_jitter(images, 0.0, gen()), images)


def test_color_jitter_scales_brightness_within_strength_and_keeps_grey_grey() -> None:
    grey = torch.full((200, 3, 32, 32), 0.5)
    out = batch_color_jitter(grey, 0.2, gen())
    # a flat grey image has no contrast and no colour to change: only brightness moves it, by 0.8..1.2
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out), atol=1e-6)
    levels = out[:, 0, 0, 0]
    assert levels.min() >= 0.4 - 1e-6 and levels.max() <= 0.6 + 1e-6
    assert levels.max() - levels.min() > 0.15  # the factors really spread over the range


def test_color_jitter_draws_brightness_contrast_and_saturation_each_within_strength() -> None:
    """Read the three factors back from each output: brightness scales the mean grey level, contrast then
    scales each pixel's grey level about that mean, saturation then scales each pixel's colour about its grey."""
    images = 0.3 + 0.4 * random_images(200)  # mid-range: no factor in 0.8..1.2 reaches the clamp
    out = batch_color_jitter(images, 0.2, gen())
    assert 0 < out.min() and out.max() < 1

    def parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: mean grey level, size of the grey pattern about it, size of the colour about grey."""
        grey = (x * torch.tensor(LUMA)[None, :, None, None]).sum(1)
        mean = grey.mean((1, 2))
        return mean, (grey - mean[:, None, None]).flatten(1).norm(dim=1), (x - grey[:, None]).flatten(1).norm(dim=1)

    (mean_in, pattern_in, colour_in), (mean_out, pattern_out, colour_out) = parts(images), parts(out)
    brightness = mean_out / mean_in
    contrast = pattern_out / pattern_in / brightness
    saturation = colour_out / colour_in / (brightness * contrast)
    factors = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    for name, factor in factors.items():
        assert factor.min() >= 0.8 - 1e-4 and factor.max() <= 1.2 + 1e-4, name
        assert factor.max() - factor.min() > 0.3, f"{name} factors do not spread over 0.8..1.2"
    correlation = torch.corrcoef(torch.stack(list(factors.values()))) - torch.eye(3)
    assert correlation.abs().max() < 0.3  # each factor is drawn on its own


def test_color_jitter_leaves_grey_pixels_grey_in_textured_images() -> None:
    texture = torch.rand(32, 1, 32, 32, generator=gen(3)).expand(32, 3, 32, 32)
    out = batch_color_jitter(texture, 0.5, gen())
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6) and torch.allclose(out[:, 1], out[:, 2], atol=1e-6)


def test_affine_with_no_rotation_and_no_translation_is_identity() -> None:
    images = random_images(4)
    assert torch.equal(batch_affine(images, 0.0, 0.0, gen()), images)


def test_rotation_turns_the_whole_image_rigidly_about_its_centre_by_at_most_the_limit() -> None:
    images = two_dot_pattern(64)
    out = batch_affine(images, 90.0, 0.0, gen())
    assert out.shape == images.shape
    before = centroids(images)[0] - CENTRE  # (2 dots, [row, col]) relative to the centre
    after = centroids(out) - CENTRE
    # distances from the centre are kept (a rotation, not a shift or a zoom)
    assert torch.allclose(after.norm(dim=-1), before.norm(dim=-1).expand(64, 2), atol=0.35)
    # both dots turn by the same angle (one rotation for the whole image)
    turn = torch.atan2(after[..., 0], after[..., 1]) - torch.atan2(before[:, 0], before[:, 1])
    turn = torch.remainder(turn + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(turn[:, 0], turn[:, 1], atol=math.radians(3))
    degrees = torch.rad2deg(turn[:, 0])
    assert degrees.abs().max() <= 90 + 3
    assert degrees.min() < -45 and degrees.max() > 45  # angles spread over both directions
    assert degrees.abs().min() < 20


def test_translation_moves_the_whole_image_by_at_most_the_fraction() -> None:
    images = two_dot_pattern(64)
    out = batch_affine(images, 0.0, 0.1, gen())
    moves = centroids(out) - centroids(images)
    assert torch.allclose(moves[:, 0], moves[:, 1], atol=1e-3)  # both dots move together
    assert moves.abs().max() <= 0.1 * 32 + 1e-3
    assert moves[:, 0, 0].std() > 0.5 and moves[:, 0, 1].std() > 0.5  # rows and columns both move
    mass = out[:, :2].sum((2, 3))
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-4)  # a shift loses nothing


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "crop": lambda x, g: batch_crop(x, 4, g),
    "flip": batch_flip_lr,
    "jitter": lambda x, g: batch_color_jitter(x, 0.2, g),
    "affine": lambda x, g: batch_affine(x, 15.0, 0.1, g),
}


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_same_generator_seed_gives_the_same_batch(name: str) -> None:
    augmentation, images = AUGMENTATIONS[name], random_images(16)
    first = augmentation(images, gen(5))
    assert torch.equal(first, augmentation(images, gen(5)))
    assert not torch.equal(first, augmentation(images, gen(6)))


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_augmentation_draws_from_the_generator_only(name: str) -> None:
    """The global RNG is not consumed: resuming a run from the generator's state alone reproduces it."""
    augmentation, images = AUGMENTATIONS[name], random_images(8)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    augmentation(images, gen())
    assert torch.equal(torch.rand(1), expected)
