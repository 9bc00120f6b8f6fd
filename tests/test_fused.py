"""Fused trial arrays (tuner.fused) against `fit`: the same metrics, checkpoints fit reads, resume, drop, divergence.

Five members with different optimizers (SGD Nesterov / plain / no momentum, Adam, AdamW), learning rates,
momentum, weight decay, label smoothing, warmup, schedules (onecycle, cosine, plateau), augmentation,
flip TTA, weight average, seeds and epochs, each compared with the same config trained alone by `fit`.
CPU, one thread, widths (8, 16), blocks (1, 1), batch 32, generated images.

Tolerances, and why they are these (measured on an AMD EPYC with AVX512-BF16, torch 2.14.1, one thread):
- float64 (fit and the array both; default dtype switched, images read as doubles; 16 x 16 crops, 3 steps
  an epoch, 3 epochs; the five members, and four more with the fast-CIFAR recipe options): every weight,
  BatchNorm statistic, average and optimizer tensor agrees with fit's to FLOAT64_STATE = 1e-12 relative
  (L1 over the tensor). Measured: 4e-15 (7e-15 with the options). This is the bug catcher: a learning
  rate 1% off moves the state by 4e-2 or more, weight decay x1.1 by 5e-3, momentum +0.01 by 6e-2,
  smoothing +0.01 by 4e-2, a weight-average horizon x1.1 by 1.5e-2, each recipe option turned off by
  8e-4 or more (translate TTA: val_loss by 2e-4 or more). (fit's loss is float32, so
  train_loss agrees to 1e-7 there; measured 9e-8.)
- fp32, as fit trains (3 epochs of 10 steps): the fused convolutions sum in another order and training
  amplifies the rounding (fit itself moves val_loss by ~1e-2 between channels_last False and True). Per
  epoch and member: losses within FP32_LOSS = 1e-3 relative, accuracies within FP32_IMAGES = 2 images.
  Measured: losses 1e-4 (nchw and channels_last), accuracies 0 images. What that catches in fp32: a
  different seed or augmentation stream (1e-2..6e-2, 12+ images), warmup one step longer (1.3e-3+),
  weight-average horizon x1.1 (3e-3), most of smoothing +0.01 and momentum +0.01; lr +1% only in part
  (6e-4..1.7e-3), which the float64 test catches.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tuner import fused as fused_module
from tuner.checkpoint import model_from_checkpoint
from tuner.config import TrainConfig
from tuner.data import DataSplits, ImageSet, load_splits, write_synthetic_cifar10
from tuner.evaluate import DeviceImages, normalise
from tuner.fused import MemberResult, TrialArray, fit_array
from tuner.train import EpochMetrics, FitResult, fit

FLOAT64_STATE = 1e-12
FP32_LOSS = 1e-3
FP32_IMAGES = 2
REPRODUCIBLE = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")

BASE = dict(widths=(8, 16), blocks=(1, 1), batch_size=32, epochs=3, warmup_epochs=0.5, precision="fp32",
            channels_last=False)
MEMBERS = [
    dict(lr=0.05, seed=0),  # the recipe: SGD Nesterov, onecycle, smoothing 0.1, crop + flip, flip TTA
    dict(lr=0.03, momentum=0.8, nesterov=False, weight_decay=1e-3, label_smoothing=0.0, warmup_epochs=0.0,
         schedule="cosine", crop_padding=2, flip=False, seed=1),
    dict(optimizer="adamw", lr=0.002, weight_decay=0.05, schedule="cosine", color_jitter=0.2, tta_flip=False,
         ema_epochs=0.5, seed=2),
    dict(optimizer="adam", lr=0.001, weight_decay=1e-4, schedule="plateau", plateau_patience=0, rotation=10,
         translate=0.1, label_smoothing=0.2, seed=3),
    dict(lr=0.1, momentum=0.0, weight_decay=0.0, epochs=2, seed=4),  # finishes first: the array narrows
]


# channels_last True is checked in fp32 on these (SGD Nesterov, AdamW with an average) to save time
CHANNELS_LAST_MEMBERS = (0, 2)
TRAIN_IMAGES, VAL_IMAGES = 320, 160  # 10 steps of 32 per epoch


def members(**overrides: Any) -> list[TrainConfig]:
    return [TrainConfig(**{**BASE, **member, **overrides}) for member in MEMBERS]


def compared(channels_last: bool) -> list[int]:
    return list(CHANNELS_LAST_MEMBERS) if channels_last else list(range(len(MEMBERS)))


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> DataSplits:
    root = tmp_path_factory.mktemp("fused-blobs")
    write_synthetic_cifar10(root, n_train=TRAIN_IMAGES + VAL_IMAGES, seed=0)
    return load_splits(root, val_size=VAL_IMAGES, seed=0, download=False)


class Recorded:
    """A run's results and the checkpoints its on_epoch callback was offered after epoch 1."""

    def __init__(self) -> None:
        self.results: list[FitResult | MemberResult] = []
        self.after_first: dict[int, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def alone(blobs: DataSplits) -> dict[bool, Recorded]:
    """Each member trained by fit, per channels_last."""
    runs = {}
    for channels_last in (False, True):
        run = runs[channels_last] = Recorded()
        for index in compared(channels_last):
            config = members(channels_last=channels_last)[index]

            def keep(metrics: EpochMetrics, checkpoint: Any, index: int = index, run: Recorded = run) -> None:
                if metrics.epoch == 1:
                    run.after_first[index] = checkpoint()
            run.results.append(fit(config, blobs, keep, device="cpu"))
    return runs


@pytest.fixture(scope="module")
def fused(blobs: DataSplits) -> dict[bool, Recorded]:
    """All members as one fused array, per channels_last."""
    runs = {}
    for channels_last in (False, True):
        run = runs[channels_last] = Recorded()

        def keep(index: int, metrics: EpochMetrics, checkpoint: Any, run: Recorded = run) -> None:
            if metrics.epoch == 1:
                run.after_first[index] = checkpoint()
        configs = [members(channels_last=channels_last)[index] for index in compared(channels_last)]
        run.results = list(fit_array(configs, blobs, keep, device="cpu"))
    return runs


def assert_close(got: FitResult | MemberResult, want: FitResult | MemberResult, what: str) -> None:
    """The per-epoch metrics agree within the fp32 tolerance of the module docstring."""
    assert [m.epoch for m in got.history] == [m.epoch for m in want.history], what
    for mine, theirs in zip(got.history, want.history):
        assert mine.lr == pytest.approx(theirs.lr, rel=1e-12), what
        for name in ("train_loss", "val_loss"):
            assert getattr(mine, name) == pytest.approx(getattr(theirs, name), rel=FP32_LOSS), (what, name, mine.epoch)
        assert abs(mine.val_acc - theirs.val_acc) * VAL_IMAGES <= FP32_IMAGES + 1e-9, (what, mine.epoch)
        assert abs(mine.train_acc - theirs.train_acc) * TRAIN_IMAGES <= FP32_IMAGES + 1e-9, (what, mine.epoch)


# --- equivalence ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_each_member_ends_with_the_metrics_fit_gives_it_alone(
    alone: dict[bool, Recorded], fused: dict[bool, Recorded], channels_last: bool
) -> None:
    pairs = zip(compared(channels_last), fused[channels_last].results, alone[channels_last].results, strict=True)
    for index, mine, theirs in pairs:
        assert mine.status == theirs.status == "completed"
        assert_close(mine, theirs, f"member {index}")
    # they learned: the comparison is not of noise around chance
    assert max(r.history[-1].val_acc for r in fused[channels_last].results) > 0.2


@pytest.fixture
def float64(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Train in float64: default dtype switched, images read as doubles (fit hard-codes neither)."""
    normalise(torch.zeros(1, 3, 1, 1))  # evaluate caches its float32 statistics per device: cache them as such
    monkeypatch.setattr(DeviceImages, "batch", lambda self, index: self.images[index].double() / 255)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def state_tensors(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every float tensor of a checkpoint: weights and statistics (evaluated and trained), optimizer state."""
    tensors = {f"{part}.{name}": t for part in ("model", "trained") for name, t in checkpoint.get(part, {}).items()
               if t.is_floating_point()}
    for index, state in checkpoint["optimizer"]["state"].items():
        tensors.update({f"optimizer.{index}.{name}": t for name, t in state.items()})
    return tensors


# The fast-CIFAR recipe options (tuner.config): initialisations, no decay on BatchNorm and biases, alternating
# flips, a plain final epoch, translate TTA; mixed so that members evaluate with different TTA views.
RECIPE_OPTIONS = [
    dict(lr=0.05, bn_bias_decay=False, zero_init_residual=True, alternate_flip=True, final_plain_epochs=1, seed=5),
    dict(optimizer="adamw", lr=0.002, weight_decay=0.05, bn_bias_decay=False, dirac_init=True, tta_translate=1,
         ema_epochs=0.5, seed=6),
    dict(optimizer="adam", lr=0.001, weight_decay=1e-3, bn_bias_decay=False, alternate_flip=True, tta_flip=False,
         tta_translate=2, seed=7),
    dict(lr=0.03, seed=8),
]


def crops(blobs: DataSplits) -> DataSplits:
    """16 x 16 crops (the network pools globally, augmentation takes any size) of 96 training images, 3 steps
    an epoch, and 64 validation images: float64 convolutions on CPU are slow; the arithmetic is compared."""
    def crop(images: ImageSet, count: int) -> ImageSet:
        return ImageSet(images.images[:count, :16, :16].copy(), images.labels[:count])

    return DataSplits(crop(blobs.train, 96), crop(blobs.val, 64))


@pytest.mark.parametrize(
    ("channels_last", "options"),
    [(False, MEMBERS), (True, RECIPE_OPTIONS)],  # channels_last in fp32 too, below
    ids=["members", "recipe-options-channels-last"],
)
def test_in_float64_every_weight_and_optimizer_tensor_is_fits(
    blobs: DataSplits, float64: None, channels_last: bool, options: list[dict[str, Any]]
) -> None:
    data = crops(blobs)
    configs = [TrainConfig(**{**BASE, **member, "channels_last": channels_last}) for member in options]
    results = fit_array(configs, data, device="cpu")
    for index, (config, mine) in enumerate(zip(configs, results)):
        theirs = fit(config, data, device="cpu")
        assert mine.checkpoint is not None and theirs.checkpoint is not None
        got, want = state_tensors(mine.checkpoint), state_tensors(theirs.checkpoint)
        assert got.keys() == want.keys()
        for name, tensor in want.items():
            assert tensor.dtype == got[name].dtype == torch.float64
            error = (got[name] - tensor).abs().sum() / tensor.abs().sum().clamp_min(1e-300)
            assert error <= FLOAT64_STATE, (index, name, error.item())
        for a, b in zip(mine.history, theirs.history):
            assert (a.epoch, a.lr, a.train_acc, a.val_acc) == (b.epoch, b.lr, b.train_acc, b.val_acc)
            assert a.val_loss == pytest.approx(b.val_loss, rel=FLOAT64_STATE)
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)  # fit's loss is float32


# --- checkpoints ---------------------------------------------------------------------------------------


def structure(value: Any) -> Any:
    """A checkpoint's shape: keys, tensor shapes and dtypes, types of plain values (not the numbers)."""
    if isinstance(value, dict):
        return {key: structure(v) for key, v in value.items() if key != "history"}
    if isinstance(value, list):
        return [structure(v) for v in value]
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    return type(value).__name__


def test_a_members_checkpoint_has_fits_format_and_loads_as_a_plain_model(
    alone: dict[bool, Recorded], fused: dict[bool, Recorded]
) -> None:
    for index, (mine, theirs) in enumerate(zip(fused[False].results, alone[False].results)):
        assert mine.checkpoint is not None and theirs.checkpoint is not None
        assert structure(mine.checkpoint) == structure(theirs.checkpoint), index
        assert mine.checkpoint["config"] == theirs.checkpoint["config"]
        assert mine.checkpoint["optimizer"]["param_groups"] == theirs.checkpoint["optimizer"]["param_groups"]
        assert mine.checkpoint["schedule"] == pytest.approx(theirs.checkpoint["schedule"], rel=FP32_LOSS)
        assert torch.equal(mine.checkpoint["rng"]["torch"], theirs.checkpoint["rng"]["torch"])
        assert torch.equal(mine.checkpoint["rng"]["generator"], theirs.checkpoint["rng"]["generator"])
        model, config = model_from_checkpoint(mine.checkpoint)
        assert config == members()[index]
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# --- resume --------------------------------------------------------------------------------------------


def test_resuming_the_array_from_its_epoch_1_checkpoints_ends_as_the_uninterrupted_array(
    blobs: DataSplits, fused: dict[bool, Recorded]
) -> None:
    run = fused[False]
    resumed = fit_array(members(), blobs, resume=[run.after_first[i] for i in range(len(MEMBERS))], device="cpu")
    for index, (mine, theirs) in enumerate(zip(resumed, run.results)):
        assert mine.status == theirs.status
        for a, b in zip(mine.history, theirs.history, strict=True):  # the same array, the same state: exact
            assert [getattr(a, n) for n in REPRODUCIBLE] == [getattr(b, n) for n in REPRODUCIBLE], index


def test_checkpoints_cross_between_fit_and_the_array_and_members_may_be_at_different_epochs(
    blobs: DataSplits, alone: dict[bool, Recorded], fused: dict[bool, Recorded]
) -> None:
    # fit continues a member the array trained for one epoch ...
    continued = fit(members()[0], blobs, resume=fused[False].after_first[0], device="cpu")
    assert_close(continued, alone[False].results[0], "fit resumed from the array")
    # ... and an array continues members fit trained for one epoch, beside a member starting afresh
    resume = [alone[False].after_first[1], alone[False].after_first[2], None]
    configs = [members()[1], members()[2], members()[4]]
    results = fit_array(configs, blobs, resume=resume, device="cpu")
    for mine, index in zip(results, (1, 2, 4)):
        assert_close(mine, alone[False].results[index], f"member {index} in an array resumed from fit")


# --- members leaving ---------------------------------------------------------------------------------


def test_a_member_dropped_after_epoch_1_stops_there_and_the_rest_train_on_as_alone(
    blobs: DataSplits, alone: dict[bool, Recorded]
) -> None:
    configs = members()[:3]
    offered: list[tuple[int, int]] = []

    def on_epoch(index: int, metrics: EpochMetrics, checkpoint: Any) -> bool:
        offered.append((index, metrics.epoch))
        return not (index == 1 and metrics.epoch == 1)

    results = fit_array(configs, blobs, on_epoch, device="cpu")
    assert [r.status for r in results] == ["completed", "stopped", "completed"]
    assert (1, 2) not in offered and (0, 3) in offered and (2, 3) in offered
    stopped = results[1]
    assert len(stopped.history) == 1 and stopped.checkpoint is not None and stopped.checkpoint["epoch"] == 1
    assert_close(stopped, dataclasses.replace(alone[False].results[1], history=alone[False].results[1].history[:1]),
                 "the dropped member's epoch")
    model_from_checkpoint(stopped.checkpoint)
    for index in (0, 2):
        assert_close(results[index], alone[False].results[index], f"member {index} after the drop")


def test_a_diverging_member_leaves_mid_epoch_as_fit_reports_it_and_the_other_is_unaffected(blobs: DataSplits) -> None:
    # batch 16: 20 steps an epoch, so the divergence check at step 10 falls mid-epoch
    wild = TrainConfig(**{**BASE, "lr": 1e6, "weight_decay": 0.0, "warmup_epochs": 0.0, "batch_size": 16})
    calm = members(batch_size=16, epochs=1)[4]
    results = fit_array([calm, wild], blobs, device="cpu")
    by_fit = fit(wild, blobs, device="cpu")
    assert results[1].status == by_fit.status == "diverged"
    assert len(results[1].history) == len(by_fit.history) == 0 and results[1].checkpoint is None
    assert results[0].status == "completed"
    assert_close(results[0], fit(calm, blobs, device="cpu"), "the member beside a diverging one")


def test_the_array_api_drops_and_adds_members_between_epochs(blobs: DataSplits) -> None:
    configs = members(epochs=2)[:2]
    array = TrialArray(configs, blobs, device="cpu")
    assert array.active == [0, 1]
    first = array.run_epoch()
    assert sorted(first) == [0, 1] and all(m.epoch == 1 for m in first.values())
    array.drop(0)
    late = array.add(members(epochs=1)[2])
    assert array.active == [1, late] == [1, 2]
    second = array.run_epoch()
    assert {index: m.epoch for index, m in second.items()} == {1: 2, 2: 1}
    assert array.active == []
    assert [r.status if r else None for r in array.results] == ["stopped", "completed", "completed"]
    with pytest.raises(ValueError, match="not in the array"):
        array.drop(1)


# --- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["widths", "batch_size", "channels_last", "precision"])
def test_members_that_cannot_share_one_network_are_refused_naming_the_field(field: str, blobs: DataSplits) -> None:
    other = {"widths": (8, 8), "batch_size": 16, "channels_last": True, "precision": "bf16"}[field]
    configs = [TrainConfig(**BASE), TrainConfig(**{**BASE, field: other})]
    with pytest.raises(ValueError, match=field):
        fit_array(configs, blobs, device="cpu")


def test_a_config_field_the_array_does_not_handle_is_refused_unless_at_its_default(
    blobs: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as if `rotation` had just been added to TrainConfig and not yet to tuner.fused
    monkeypatch.setattr(fused_module, "SUPPORTED_FIELDS", fused_module.SUPPORTED_FIELDS - {"rotation"})
    with pytest.raises(ValueError, match="does not support rotation=10"):
        fit_array([TrainConfig(**{**BASE, "rotation": 10.0})], blobs, device="cpu")
    TrialArray([TrainConfig(**BASE)], blobs, device="cpu")  # at its default it trains as before


def test_resume_must_give_one_entry_per_config(blobs: DataSplits) -> None:
    with pytest.raises(ValueError, match="one per config"):
        fit_array([TrainConfig(**BASE)], blobs, resume=[None, None], device="cpu")
