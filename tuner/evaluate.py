"""A trained network on images: normalisation, flip and translate test-time augmentation, loss and accuracy.

Training (`tuner.train`), promotion and prediction all read images through here, so a model is scored
the same way wherever it is scored.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tuner.data import ImageSet
from tuner.device import autocast_dtype, pick_device
from tuner.errors import UserError

# Per-channel statistics of the CIFAR-10 training images, the usual normalisation.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
EVAL_BATCH = 1024


def normalise(unit: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W floats in [0, 1] -> the normalised batch the network expects (on unit's device)."""
    mean, std = _statistics(unit.device)
    return (unit - mean) / std


@functools.lru_cache(maxsize=8)
def _statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # made once per device: a fresh tensor per batch would be a host-to-device copy per step on CUDA
    return (torch.tensor(CIFAR_MEAN, device=device)[None, :, None, None],
            torch.tensor(CIFAR_STD, device=device)[None, :, None, None])


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 N x 32 x 32 x 3 RGB images -> the normalised float batch the network expects (CPU)."""
    return normalise(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255)


def tta_logits(model: nn.Module, x: torch.Tensor, tta_flip: bool, tta_translate: int = 0) -> torch.Tensor:
    """Float logits of a normalised batch, averaged over the test-time views asked for.

    Flip: the mean of the image's and its mirror's. Translate by t pixels: half the weight on those, a
    quarter each on the same (mirrored) views of the image shifted by t pixels down-right and up-left with a
    reflected border, as airbench's `infer_mirror_translate`.
    """
    logits = _mirrored_logits(model, x, tta_flip)
    if tta_translate > 0:
        t, (height, width) = tta_translate, x.shape[-2:]
        padded = F.pad(x, (t,) * 4, mode="reflect")
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        shifted = [padded[..., :height, :width], padded[..., 2 * t :, 2 * t :]]
        logits = logits / 2 + sum(_mirrored_logits(model, view.contiguous(memory_format=layout), tta_flip) / 4
                                  for view in shifted)
    return logits


def _mirrored_logits(model: nn.Module, x: torch.Tensor, tta_flip: bool) -> torch.Tensor:
    logits = model(x).float()
    if tta_flip:
        logits = (logits + model(x.flip(3)).float()) / 2
    return logits


class DeviceImages:
    """A split resident on the device as uint8 NCHW, normalised per batch (4x less memory than float)."""

    def __init__(self, images: ImageSet, device: torch.device) -> None:
        with warnings.catch_warnings():
            # Arrays from the Ray object store are read-only; nothing writes to them (contiguous() copies).
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.images = torch.from_numpy(images.images).to(device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(images.labels).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The images at `index` as floats in [0, 1]."""
        return self.images[index].float() / 255


@torch.no_grad()
def evaluate(
    model: nn.Module, split: DeviceImages, tta_flip: bool, autocast: torch.dtype | None, channels_last: bool,
    tta_translate: int = 0,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a resident split; an empty split is a UserError (no mean exists)."""
    if len(split) == 0:
        raise UserError("the evaluation split holds 0 images, so no loss or accuracy can be measured: "
                        "give a data folder whose split has images")
    model.eval()
    loss_sum, correct = 0.0, 0
    device = split.images.device
    for start in range(0, len(split), EVAL_BATCH):
        x = normalise(split.batch(slice(start, start + EVAL_BATCH)))
        y = split.labels[start : start + EVAL_BATCH]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            logits = tta_logits(model, x, tta_flip, tta_translate)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(split), correct / len(split)


def evaluate_images(
    model: nn.Module, images: ImageSet, tta_flip: bool = True, device: str | torch.device | None = None,
    precision: str = "auto", tta_translate: int = 0,
) -> tuple[float, float]:
    """(loss, accuracy) of a trained model on any ImageSet, e.g. the test split at promotion; evaluated in
    the layout and precision that `fit` evaluates in, so the figures agree."""
    device = torch.device(device) if device is not None else pick_device()
    model = model.to(device, memory_format=torch.channels_last)
    return evaluate(model, DeviceImages(images, device), tta_flip, autocast_dtype(precision, device),
                    channels_last=True, tta_translate=tta_translate)
