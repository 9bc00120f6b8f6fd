"""What one training epoch reports (`EpochMetrics`), torch-free: `fit` produces it, and the MLflow writer
(tuner/tracking.py) names its metrics after its fields without importing the trainer."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_seconds: float  # training and evaluation
    images_per_s: float  # training images stepped on per second of training, evaluation excluded

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)
