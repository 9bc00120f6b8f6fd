"""Batched augmentation on tensors already on the training device (N x C x H x W float, values 0..1).

Every function takes a whole batch and a torch.Generator, so a run is reproducible and resumable
(the generator's state goes into the checkpoint) and no per-image Python or PIL runs in the hot path.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# ITU-R 601 luma weights: the same grey torchvision's ColorJitter uses for saturation and contrast.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device) * (high - low) + low


def batch_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding: each image moves by up to `padding` pixels in x and y."""
    if padding <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    shifts = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=generator.device).to(images.device)
    rows = (torch.arange(h, device=images.device)[None, :] + shifts[0][:, None])[:, None, :, None]
    cols = (torch.arange(w, device=images.device)[None, :] + shifts[1][:, None])[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def batch_flip_lr(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    flip = torch.rand(len(images), generator=generator, device=generator.device).to(images.device) < 0.5
    return flip_lr_where(images, flip)


def flip_lr_where(images: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose entry of `flipped` (one bool per image) is true."""
    return torch.where(flipped[:, None, None, None], images.flip(3), images)


def alternating_flips(first: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images alternating flips mirror in `epoch` (counted from 1): those of `first` (one bool per
    training image, a random half drawn once per run) on odd epochs, the others on even ones.

    So any two epochs in a row show every image both ways, where a coin toss per epoch shows a quarter of
    them the same way twice (airbench's `altflip`, Jordan 2024, "94% on CIFAR-10 in 3.29 seconds").
    """
    return first if epoch % 2 == 1 else ~first


def batch_color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s], per image.

    The report used torchvision's ColorJitter(0.2, 0.2, 0.2); `strength=0.2` is the same ranges.
    """
    if strength <= 0:
        return images
    n, device = len(images), images.device
    low, high = max(0.0, 1 - strength), 1 + strength
    luma = torch.tensor(_LUMA, device=device, dtype=images.dtype)[None, :, None, None]
    images = images * _uniform(n, low, high, generator, device)[:, None, None, None]
    grey_mean = (images * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    contrast = _uniform(n, low, high, generator, device)[:, None, None, None]
    images = (images - grey_mean) * contrast + grey_mean
    grey = (images * luma).sum(1, keepdim=True)
    saturation = _uniform(n, low, high, generator, device)[:, None, None, None]
    images = (images - grey) * saturation + grey
    return images.clamp(0, 1)


def batch_affine(
    images: torch.Tensor, degrees: float, translate: float, generator: torch.Generator
) -> torch.Tensor:
    """Random rotation by up to +-degrees and translation by up to +-translate of the image size.

    One `affine_grid` + `grid_sample` for the whole batch; equivalent to torchvision's
    RandomRotation(degrees) followed by RandomAffine(0, translate=(t, t)) with zero fill.
    """
    if degrees <= 0 and translate <= 0:
        return images
    n, device = len(images), images.device
    angle = _uniform(n, -degrees, degrees, generator, device) * (math.pi / 180)
    # affine_grid works in [-1, 1] coordinates, so a shift of t * size is 2t there.
    tx = _uniform(n, -2 * translate, 2 * translate, generator, device)
    ty = _uniform(n, -2 * translate, 2 * translate, generator, device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
