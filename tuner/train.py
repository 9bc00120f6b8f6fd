"""Train one ModifiedResNet configuration on CIFAR-10: `fit(config, data, on_epoch) -> FitResult`.

Framework-free (no Ray, no MLflow): the Ray adapter and `python -m tuner.train` both call `fit`.
Where the speed comes from: the whole split lives on the training device as uint8 and every batch is
sliced, augmented and normalised there (no DataLoader, no PIL); bf16 autocast and channels_last;
optional torch.compile. The figures are in docs/benchmarks.md#trainer-speed.

One epoch, as a story (`fit`, then `train_one_epoch`): shuffle the indices with the run's own generator,
and for every full batch slice the images, augment them (unless the run is in its final plain epochs),
take an optimizer step at the scheduled learning rate (and fold the weights into their moving average
when `ema_epochs` asks for one); then evaluate on the validation split (with flip, and optionally
translate, test-time augmentation), let the plateau schedule see the validation loss, and hand the
epoch's metrics and a lazily built checkpoint to `on_epoch`.

The recipe options from the fast-CIFAR literature (zero-initialised residual branches, identity
convolutions, no weight decay on BatchNorm and biases, alternating flips, a plain final phase, translate
TTA) are TrainConfig fields, each off unless measured to help; what each measured is in
docs/benchmarks.md#recipe-candidates (bench/recipe_candidates.py).
"""
from __future__ import annotations

# ruff: noqa: E402 - `python -m tuner.train` hands over to its command before torch is imported (below)
if __name__ == "__main__":  # the command parses its flags first, so --help and flag errors answer at once
    from tuner.quick_exit import run_then_exit_quickly
    from tuner.train_command import main

    run_then_exit_quickly(main)
    raise SystemExit(0)

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from tuner import augment
from tuner.checkpoint import require_resumable
from tuner.config import (  # noqa: F401 - re-exported: TrainConfig and its helpers lived here first
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    STAGE_FIELDS,
    TrainConfig,
    format_stages,
    parse_stages,
)
from tuner.data import DataSplits
from tuner.device import autocast_dtype, pick_device
from tuner.errors import UserError, excerpt
from tuner.evaluate import DeviceImages, evaluate, normalise
from tuner.metrics import EpochMetrics  # noqa: F401 - re-exported with fit, whose results they are
from tuner.model import build_model

CHECKPOINT_FORMAT = 1
# Checking the loss for NaN forces a host sync; every few steps keeps that cost negligible.
DIVERGENCE_CHECK_EVERY = 10
# A mean training loss this far above chance (ln 10 = 2.3) is divergence even while it stays finite: at a
# huge learning rate Adam, or SGD without weight decay, trains on at finite losses far above this (the
# divergence tests in tests/test_train.py run both).
DIVERGED_LOSS = 1e4


@dataclass
class FitResult:
    status: Literal["completed", "diverged"]
    history: list[EpochMetrics] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None  # full training state after the last epoch run

    @property
    def best(self) -> EpochMetrics | None:
        return max(self.history, key=lambda m: m.val_acc, default=None)


# on_epoch(metrics, checkpoint) where checkpoint() builds the full training state only when asked.
EpochCallback = Callable[[EpochMetrics, Callable[[], dict[str, Any]]], None]


def fit(
    config: TrainConfig,
    data: DataSplits,
    on_epoch: EpochCallback | None = None,
    resume: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> FitResult:
    """Train `config` on `data`; resume from a checkpoint made by this function if given."""
    device = torch.device(device) if device is not None else pick_device()
    # Deterministic mode is process-wide; restore it so a reused Ray worker's next trial is unaffected.
    previous = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        return _fit(config, data, on_epoch, resume, device)
    finally:
        torch.use_deterministic_algorithms(previous)


def _fit(config: TrainConfig, data: DataSplits, on_epoch: EpochCallback | None, resume: Mapping[str, Any] | None,
         device: torch.device) -> FitResult:
    run = TrainingState.start(config, len(data.train), device)
    first_epoch = run.restore(resume) if resume is not None else 1
    train, val = DeviceImages(data.train, device), DeviceImages(data.val, device)
    for epoch in range(first_epoch, config.epochs + 1):
        started = time.perf_counter()
        trained = train_one_epoch(run, train, epoch)
        if trained is None:
            return FitResult("diverged", run.history, None)
        train_seconds = time.perf_counter() - started
        val_loss, val_acc = evaluate(run.evaluated, val, config.tta_flip, run.autocast, config.channels_last,
                                     config.tta_translate)
        if not math.isfinite(val_loss):
            return FitResult("diverged", run.history, None)
        run.schedule.end_epoch(val_loss)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=trained.loss,
            train_acc=trained.accuracy,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=trained.lr,
            epoch_seconds=time.perf_counter() - started,
            images_per_s=trained.images / train_seconds,
        )
        run.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, lambda epoch=epoch: run.checkpoint(epoch))
    return FitResult("completed", run.history, run.checkpoint(config.epochs))


@dataclass(frozen=True)
class TrainedEpoch:
    """What one epoch of training steps measured."""

    loss: float  # mean training loss over the images stepped on
    accuracy: float  # of the training batches, as augmented
    lr: float  # the learning rate of the epoch's last step
    images: int  # images stepped on: steps x batch size


def train_one_epoch(run: TrainingState, train: DeviceImages, epoch: int) -> TrainedEpoch | None:
    """One pass over the shuffled split, one optimizer step per full batch; None once the loss diverges.

    The returned figures come from the device with `.item()`, which waits for it: when this returns, the
    epoch's steps have run, so the caller's clock measures them.
    """
    device, batch_size, steps = train.images.device, run.batch_size, run.steps_per_epoch
    run.model.train()
    order = torch.randperm(len(train), generator=run.generator, device=device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_step = (epoch - 1) * steps
    # The final plain epochs fit the images as they are: no augmentation is drawn at all.
    plain = epoch > run.config.epochs - run.config.final_plain_epochs
    flips = augment.alternating_flips(run.first_flips, epoch) if run.first_flips is not None else None
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        images = train.batch(index)
        if not plain:
            images = augment_batch(run.config, images, run.generator, None if flips is None else flips[index])
        labels = train.labels[index]
        lr = run.schedule.lr(first_step + step)
        loss, logits = _optimizer_step(run, images, labels, lr)
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 or step + 1 == steps:
            if not loss_sum.item() / ((step + 1) * batch_size) < DIVERGED_LOSS:  # also NaN / inf
                return None
    images_seen = steps * batch_size
    return TrainedEpoch(loss_sum.item() / images_seen, correct.item() / images_seen, lr, images_seen)


def augment_batch(config: TrainConfig, unit: torch.Tensor, generator: torch.Generator,
                  flipped: torch.Tensor | None = None) -> torch.Tensor:
    """The config's training augmentation of a batch of [0, 1] images, drawing from `generator` only.

    `flipped` (one bool per image) says which images to mirror when the config alternates flips
    (`augment.alternating_flips` of the images' places in the split); without it a random half is mirrored.
    """
    unit = augment.batch_color_jitter(unit, config.color_jitter, generator)
    unit = augment.batch_affine(unit, config.rotation, config.translate, generator)
    unit = augment.batch_crop(unit, config.crop_padding, generator)
    if not config.flip:
        return unit
    if config.alternate_flip:
        if flipped is None:
            raise ValueError("augment_batch: alternate_flip needs each image's flip for this epoch (flipped=)")
        return augment.flip_lr_where(unit, flipped)
    return augment.batch_flip_lr(unit, generator)


def _optimizer_step(run: TrainingState, unit: torch.Tensor, labels: torch.Tensor,
                    lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on an augmented batch at learning rate `lr`; (loss, logits) for the running totals."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    x = normalise(unit)
    if run.config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=run.autocast or torch.float32, enabled=run.autocast is not None):
        logits = run.forward(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=run.config.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.average is not None:
        run.average.update()
    return loss, logits


@dataclass(eq=False)
class TrainingState:
    """Everything a run changes as it trains, so what a checkpoint saves and a resume restores."""

    config: TrainConfig
    model: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, compiled when config.compile asks
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    average: WeightAverage | None
    generator: torch.Generator  # shuffling and augmentation
    first_flips: torch.Tensor | None  # alternating flips: the images mirrored on odd epochs (None: coin tosses)
    autocast: torch.dtype | None
    batch_size: int
    steps_per_epoch: int
    history: list[EpochMetrics] = field(default_factory=list)

    @classmethod
    def start(cls, config: TrainConfig, train_images: int, device: torch.device) -> TrainingState:
        """A fresh run: initial weights from `config.seed`, on `device`."""
        torch.manual_seed(config.seed)
        model = build_model(config).to(device)
        if config.channels_last:  # suits oneDNN too, not only CUDA (docs/benchmarks.md#trainer-speed)
            model = model.to(memory_format=torch.channels_last)
        batch_size = min(config.batch_size, train_images)
        steps_per_epoch = train_images // batch_size  # drop the ragged last batch: every step sees a full batch
        return cls(
            config=config,
            model=model,
            forward=torch.compile(model) if config.compile else model,
            optimizer=make_optimizer(config, model),
            schedule=LrSchedule(config, steps_per_epoch),
            average=WeightAverage(model, config.ema_epochs * steps_per_epoch) if config.ema_epochs > 0 else None,
            generator=torch.Generator(device=device).manual_seed(config.seed),
            first_flips=draw_first_flips(config, train_images, device),
            autocast=autocast_dtype(config.precision, device),
            batch_size=batch_size,
            steps_per_epoch=steps_per_epoch,
        )

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are evaluated and checkpointed: the average when there is one."""
        return self.average.module if self.average is not None else self.model

    def checkpoint(self, epoch: int) -> dict[str, Any]:
        """The full training state after `epoch`, as CPU tensors and plain values (tuner.checkpoint writes it)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": epoch,
            # the weights that were evaluated: what predicting and promoting load
            "model": _to_cpu(self.evaluated.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "schedule": self.schedule.state_dict(),
            "rng": {"generator": self.generator.get_state().cpu(), "torch": torch.get_rng_state()},
            "history": [m.as_dict() for m in self.history],
        }
        if self.average is not None:  # resuming continues from the trained weights and the average alike
            state["trained"] = _to_cpu(self.model.state_dict())
            state["averaged_steps"] = self.average.updates
        return state

    def restore(self, state: Mapping[str, Any], name: str = "the checkpoint to resume from") -> int:
        """Continue from what `checkpoint` saved; returns the first epoch still to run. A training state that
        does not fit (`require_resumable`, or anything it cannot check ahead, such as a generator state of
        another device's size) is one UserError naming `name`, raised before any training."""
        require_resumable(state, name)
        try:
            return self._restore(state)
        except Exception as err:  # noqa: BLE001 - whatever restoring raises, the file is at fault, not the run
            said = str(err).strip().splitlines()
            raise UserError(f"{name} is damaged or from another version: restoring it failed ({type(err).__name__}"
                            f": {excerpt(said[0] if said else '')}); start without --resume") from None

    def _restore(self, state: Mapping[str, Any]) -> int:
        self.model.load_state_dict(state.get("trained", state["model"]))
        if self.average is not None:
            self.average.module.load_state_dict(state["model"])
            self.average.updates = int(state.get("averaged_steps", 0))
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["rng"]["generator"].to("cpu"))
        torch.set_rng_state(state["rng"]["torch"])
        self.history[:] = [EpochMetrics(**m) for m in state["history"]]
        return int(state["epoch"]) + 1


def draw_first_flips(config: TrainConfig, train_images: int, device: torch.device) -> torch.Tensor | None:
    """With alternating flips, the random half of the split mirrored on odd epochs: drawn from the seed alone
    (not the run's generator), so a resumed run draws the same half without it being checkpointed."""
    if not (config.flip and config.alternate_flip):
        return None
    return (torch.rand(train_images, generator=torch.Generator().manual_seed(config.seed)) < 0.5).to(device)


class LrSchedule:
    """Learning rate per step: linear warmup, then one-cycle (linear to 0), cosine, or plateau steps."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.total = config.epochs * steps_per_epoch
        self.warmup = min(self.total, int(round(config.warmup_epochs * steps_per_epoch)))
        self.plateau_scale, self.plateau_best, self.plateau_bad = 1.0, math.inf, 0

    def lr(self, step: int) -> float:
        peak = self.config.lr
        if step < self.warmup:
            return peak * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        if self.config.schedule == "onecycle":
            return peak * max(0.0, 1 - progress)
        if self.config.schedule == "cosine":
            return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return peak * self.plateau_scale

    def end_epoch(self, val_loss: float) -> None:
        """ReduceLROnPlateau on the validation loss (mode min, relative threshold 1e-4)."""
        if self.config.schedule != "plateau":
            return
        if val_loss < self.plateau_best * (1 - 1e-4):
            self.plateau_best, self.plateau_bad = val_loss, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > self.config.plateau_patience:
                self.plateau_scale *= self.config.plateau_factor
                self.plateau_bad = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.plateau_scale, "best": self.plateau_best, "bad": self.plateau_bad}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.plateau_scale, self.plateau_best, self.plateau_bad = state["scale"], state["best"], int(state["bad"])


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The config's optimizer over the model's parameters: one group, or with `bn_bias_decay` off, a second
    group without weight decay holding BatchNorm's weights and biases and the head's bias (every parameter
    of one dimension: the ones that scale or shift rather than filter)."""
    params: list[Any] = list(model.parameters())
    if not config.bn_bias_decay:
        params = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics over about horizon_steps
    optimizer steps; the first update copies the weights, so early epochs are not pulled toward the init.

    Why: at a high learning rate the current weights sit far from where training is heading, so an early
    epoch's accuracy ranks a high-lr trial below a low-lr one that finishes worse (the short-horizon bias
    that misleads early stopping); the average is much closer to the eventual weights
    (docs/benchmarks.md#weight-average-at-the-rungs).
    Not torch's AveragedModel: its update moves a step counter to the device every step, which on CUDA is
    a host sync per batch. Here the tensors are paired once (training updates them in place) and the
    counter stays a Python int.
    """

    def __init__(self, model: nn.Module, horizon_steps: float) -> None:
        self.module = copy.deepcopy(model)
        self.weight = min(1.0, 1.0 / horizon_steps)  # of the newest weights, in each update
        self.updates = 0
        pairs = list(zip(_state_tensors(self.module), _state_tensors(model), strict=True))
        self._floats = _unzip([p for p in pairs if p[0].is_floating_point()])
        self._counters = _unzip([p for p in pairs if not p[0].is_floating_point()])  # BatchNorm's batch counts

    def update(self) -> None:
        averaged, live = self._floats
        if self.updates == 0:
            torch._foreach_copy_(averaged, live)
        else:
            torch._foreach_lerp_(averaged, live, self.weight)
        if self._counters[0]:  # one launch for all of them, not one per BatchNorm layer
            torch._foreach_copy_(*self._counters)
        self.updates += 1


def _unzip(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(averaged tensors, live tensors) in matching order, the two lists a _foreach_ call takes."""
    return [mine for mine, _ in pairs], [theirs for _, theirs in pairs]


def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in (*model.parameters(), *model.buffers())]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value

