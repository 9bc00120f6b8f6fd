"""Training one config: validation of TrainConfig, learning, schedules, exact resume, divergence, checkpoints.

Everything runs on CPU with tiny networks (widths like 8,16,32) on synthetic blobs, one thread.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tuner import train as train_module
from tuner.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from tuner.config import OPTIMIZERS, SCHEDULES, TrainConfig, format_stages, parse_stages
from tuner.data import DataSplits, load_splits, write_synthetic_cifar10
from tuner.errors import UserError
from tuner.evaluate import evaluate_images, preprocess
from tuner.model import BasicBlock
from tuner.train import (
    DIVERGENCE_CHECK_EVERY,
    EpochMetrics,
    LrSchedule,
    TrainingState,
    augment_batch,
    fit,
    make_optimizer,
)

TINY = dict(widths=(8,), blocks=(1,), batch_size=32, epochs=2, warmup_epochs=0.5, lr=0.1)
# The fields of EpochMetrics that a rerun must reproduce exactly (the others are wall-clock timings).
REPRODUCIBLE = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")

@pytest.fixture
def restore_determinism() -> Iterator[None]:
    """fit(deterministic=True) switches torch into deterministic mode for the process; undo it after."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> DataSplits:
    """800 training / 200 validation synthetic images: enough for a tiny net to learn in a few epochs."""
    root = tmp_path_factory.mktemp("blobs")
    write_synthetic_cifar10(root, n_train=1000, seed=0)
    return load_splits(root, val_size=200, seed=0, download=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> DataSplits:
    """160 training / 40 validation images: 5 steps of 32 per epoch, for tests that only need it to run."""
    root = tmp_path_factory.mktemp("small")
    write_synthetic_cifar10(root, n_train=200, seed=1)
    return load_splits(root, val_size=40, seed=0, download=False)


def tiny(**overrides: Any) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **overrides})


# --- TrainConfig -----------------------------------------------------------------------------------


def test_unknown_field_is_refused_with_a_suggestion_and_the_valid_names() -> None:
    with pytest.raises(UserError) as caught:
        TrainConfig.from_dict({"lrr": 0.1}, source="space.yaml")
    message = str(caught.value)
    assert "space.yaml" in message and "'lrr'" in message
    assert "did you mean 'lr'" in message
    assert "weight_decay" in message  # the valid names are listed


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"lr": -0.1}, "lr"),
        ({"lr": 0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"widths": [0, 16]}, "widths"),
        ({"widths": "0,16"}, "widths"),
        ({"widths": [-8]}, "widths"),
        ({"widths": []}, "widths"),
        ({"widths": [8, 16], "blocks": [1, 1, 1]}, "blocks"),
        ({"blocks": [2, 0, 2]}, "blocks"),
        ({"optimizer": "sgdd"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"precision": "fp8"}, "precision"),
        ({"momentum": 1.0}, "momentum"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"crop_padding": -1}, "crop_padding"),
        ({"translate": 0.9}, "translate"),
        ({"ema_epochs": -0.5}, "ema_epochs"),
        ({"ema_epochs": 16}, "ema_epochs"),
        ({"final_plain_epochs": 16}, "final_plain_epochs"),
        ({"final_plain_epochs": -1}, "final_plain_epochs"),
        ({"tta_translate": -1}, "tta_translate"),
        ({"tta_translate": 9}, "tta_translate"),
    ],
)
def test_impossible_values_are_user_errors_naming_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(UserError, match=rf"config: {field}="):
        TrainConfig.from_dict(values)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"lr": "fast"}, "lr"),
        ({"lr": True}, "lr"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"batch_size": "many"}, "batch_size"),
        ({"epochs": True}, "epochs"),
        ({"flip": "maybe"}, "flip"),
        ({"flip": 1}, "flip"),
        ({"widths": "a,b"}, "widths"),
        ({"widths": 64}, "widths"),
        ({"lr": None}, "lr"),
        ({"alternate_flip": "sometimes"}, "alternate_flip"),
        ({"zero_init_residual": 1}, "zero_init_residual"),
        ({"final_plain_epochs": 0.5}, "final_plain_epochs"),
        ({"tta_translate": "one"}, "tta_translate"),
    ],
)
def test_wrong_types_are_user_errors_naming_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(UserError, match=rf"config: {field}=.* is not a valid"):
        TrainConfig.from_dict(values)


@pytest.mark.parametrize("widths", [[32, 64, 128], (32, 64, 128), "32,64,128", "[32, 64, 128]", " 32, 64,128 "])
def test_widths_are_accepted_as_a_list_or_a_comma_string(widths: Any) -> None:
    assert TrainConfig.from_dict({"widths": widths}).widths == (32, 64, 128)


def test_stage_tuples_format_as_text_and_parse_back() -> None:
    assert format_stages((64, 128, 256)) == "64,128,256"
    for text in ("64,128,256", "[64, 128, 256]", "(64, 128, 256)", " 64, 128,256 "):
        assert parse_stages(text) == (64, 128, 256)
    assert parse_stages(format_stages([8, 16])) == (8, 16)
    with pytest.raises(ValueError):
        parse_stages("64,wide")


def test_to_dict_and_from_dict_round_trip() -> None:
    config = TrainConfig.from_dict(
        {"widths": [16, 32], "blocks": [1, 3], "optimizer": "adamw", "lr": 3e-3, "flip": False, "color_jitter": 0.2}
    )
    values = config.to_dict()
    assert values["widths"] == [16, 32]  # plain lists, ready for YAML / JSON / MLflow
    assert TrainConfig.from_dict(values) == config


def test_string_values_as_mlflow_logs_them_round_trip() -> None:
    config = TrainConfig.from_dict({"widths": [16, 32, 48], "blocks": [1, 2, 1], "nesterov": False, "epochs": 7})
    as_strings = {key: str(value) for key, value in config.to_dict().items()}
    assert TrainConfig.from_dict(as_strings) == config


def test_defaults_are_valid_and_form_the_report_network() -> None:
    config = TrainConfig()
    config.validate()
    assert config.widths == (64, 128, 256) and config.blocks == (2, 2, 2)


# --- learning-rate schedule ------------------------------------------------------------------------


def test_warmup_rises_linearly_to_the_peak() -> None:
    schedule = LrSchedule(tiny(lr=1.0, epochs=10, warmup_epochs=2, schedule="onecycle"), steps_per_epoch=5)
    warm = [schedule.lr(step) for step in range(10)]
    assert warm == pytest.approx([0.1 * (i + 1) for i in range(10)])
    assert schedule.lr(10) == pytest.approx(1.0)


def test_onecycle_falls_linearly_to_nearly_zero() -> None:
    schedule = LrSchedule(tiny(lr=0.4, epochs=10, warmup_epochs=2, schedule="onecycle"), steps_per_epoch=5)
    after = [schedule.lr(step) for step in range(10, 50)]
    steps = [a - b for a, b in zip(after, after[1:])]
    assert steps == pytest.approx([steps[0]] * len(steps))  # a straight line
    assert after[0] == pytest.approx(0.4)
    assert 0 < after[-1] <= 0.4 / 40 + 1e-12


def test_cosine_falls_as_a_half_cosine() -> None:
    schedule = LrSchedule(tiny(lr=1.0, epochs=10, warmup_epochs=0, schedule="cosine"), steps_per_epoch=10)
    lrs = [schedule.lr(step) for step in range(100)]
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(0.5)
    assert lrs[25] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lrs[-1] < 1e-3
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_plateau_cuts_lr_after_patience_epochs_without_improvement() -> None:
    schedule = LrSchedule(tiny(lr=1.0, schedule="plateau", plateau_patience=2, plateau_factor=0.5,
                               warmup_epochs=0), steps_per_epoch=5)
    schedule.end_epoch(1.0)  # first epoch sets the best
    schedule.end_epoch(1.0)
    schedule.end_epoch(1.0)  # two epochs without improvement: still patient
    assert schedule.lr(0) == pytest.approx(1.0)
    schedule.end_epoch(1.0)  # the third one: cut
    assert schedule.lr(0) == pytest.approx(0.5)
    schedule.end_epoch(0.5)  # improvement resets the count
    schedule.end_epoch(0.6)
    schedule.end_epoch(0.6)
    assert schedule.lr(0) == pytest.approx(0.5)


def test_plateau_state_survives_a_checkpoint() -> None:
    config = tiny(lr=1.0, schedule="plateau", plateau_patience=1, plateau_factor=0.5, warmup_epochs=0)
    original = LrSchedule(config, steps_per_epoch=5)
    for loss in (1.0, 1.0, 1.0, 0.9, 0.95):  # one cut, a new best, then one bad epoch pending
        original.end_epoch(loss)
    restored = LrSchedule(config, steps_per_epoch=5)
    restored.load_state_dict(original.state_dict())
    for loss in (0.95, 0.95, 0.95):
        original.end_epoch(loss)
        restored.end_epoch(loss)
        assert restored.lr(0) == original.lr(0)
    assert restored.state_dict() == original.state_dict()
    assert original.lr(0) == pytest.approx(0.125)


def test_plateau_matches_torch_reduce_lr_on_plateau() -> None:
    losses = [2.0, 1.5, 1.5, 1.49999, 1.6, 1.4, 1.4, 1.4, 1.4, 1.3, 1.3, 1.3, 1.3, 1.3, 1.3, 1.2]
    for patience in (0, 1, 2):
        config = tiny(lr=1.0, schedule="plateau", plateau_patience=patience, plateau_factor=0.3, warmup_epochs=0)
        ours = LrSchedule(config, steps_per_epoch=1)
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=patience)
        for loss in losses:
            ours.end_epoch(loss)
            theirs.step(loss)
            assert ours.lr(100) == pytest.approx(optimizer.param_groups[0]["lr"])


# --- fit ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learned(blobs: DataSplits) -> tuple[TrainConfig, Any, list[EpochMetrics]]:
    """One real (tiny) training run shared by the tests that inspect its results."""
    config = TrainConfig.from_dict(
        dict(widths=(8, 16, 32), blocks=(1, 1, 1), epochs=4, batch_size=32, lr=0.4, warmup_epochs=1)
    )
    seen: list[EpochMetrics] = []
    result = fit(config, blobs, lambda metrics, _checkpoint: seen.append(metrics), device="cpu")
    return config, result, seen


def test_fit_learns_the_synthetic_blobs_well_above_chance(learned: tuple[TrainConfig, Any, list]) -> None:
    config, result, _ = learned
    assert result.status == "completed"
    assert len(result.history) == config.epochs
    assert result.history[-1].val_acc > 0.5  # chance is 0.1
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best.val_acc == max(m.val_acc for m in result.history)


def test_on_epoch_is_called_once_per_epoch_with_finite_metrics(learned: tuple[TrainConfig, Any, list]) -> None:
    config, result, seen = learned
    assert [m.epoch for m in seen] == list(range(1, config.epochs + 1))
    assert seen == result.history
    for metrics in seen:
        assert all(math.isfinite(value) for value in metrics.as_dict().values())
        assert 0 <= metrics.train_acc <= 1 and 0 <= metrics.val_acc <= 1
        assert metrics.lr > 0 and metrics.epoch_seconds > 0 and metrics.images_per_s > 0


def test_final_checkpoint_evaluates_to_the_last_val_accuracy(
    learned: tuple[TrainConfig, Any, list], blobs: DataSplits, tmp_path: Path
) -> None:
    config, result, _ = learned
    path = save_checkpoint(result.checkpoint, tmp_path / "final.pt")
    model, restored = model_from_checkpoint(load_checkpoint(path))
    assert restored == config
    assert not model.training
    loss, accuracy = evaluate_images(model, blobs.val, tta_flip=config.tta_flip, device="cpu")
    assert accuracy == result.history[-1].val_acc
    assert loss == pytest.approx(result.history[-1].val_loss, rel=1e-5)


def test_preprocess_feeds_a_restored_model_like_evaluation_does(
    learned: tuple[TrainConfig, Any, list], blobs: DataSplits
) -> None:
    _, result, _ = learned
    model, _ = model_from_checkpoint(result.checkpoint)
    with torch.no_grad():
        predictions = model(preprocess(blobs.val.images)).argmax(1).numpy()
    _, accuracy = evaluate_images(model, blobs.val, tta_flip=False, device="cpu")
    assert (predictions == blobs.val.labels).mean() == pytest.approx(accuracy)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_takes_one_step_per_batch(small: DataSplits, optimizer: str) -> None:
    lr = 0.05 if optimizer == "sgd" else 3e-3
    result = fit(tiny(optimizer=optimizer, lr=lr), small, device="cpu")
    assert result.status == "completed" and len(result.history) == 2
    state = result.checkpoint["optimizer"]["state"]
    assert len(state) == len(result.checkpoint["optimizer"]["param_groups"][0]["params"])  # every parameter
    if optimizer == "sgd":
        assert all("momentum_buffer" in s for s in state.values())
    else:  # Adam counts its steps: two epochs of len(train) // batch_size
        assert all(float(s["step"]) == 2 * (len(small.train) // 32) for s in state.values())


def test_make_optimizer_builds_the_named_optimizer_from_the_config() -> None:
    model = torch.nn.Linear(2, 2)
    sgd = make_optimizer(tiny(optimizer="sgd", lr=0.3, momentum=0.8, weight_decay=1e-3), model)
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.3, 0.8, 1e-3)
    assert sgd.defaults["nesterov"] is True
    assert make_optimizer(tiny(optimizer="sgd", momentum=0.0), model).defaults["nesterov"] is False  # needs momentum
    for name, kind in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        optimizer = make_optimizer(tiny(optimizer=name, lr=2e-3, weight_decay=0.05), model)
        assert type(optimizer) is kind
        assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (2e-3, 0.05)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_schedule_trains_and_reports_its_lr(small: DataSplits, schedule: str) -> None:
    result = fit(tiny(schedule=schedule, lr=0.1, epochs=3, warmup_epochs=0), small, device="cpu")
    assert result.status == "completed" and len(result.history) == 3
    last_lr = result.history[-1].lr
    steps = len(small.train) // 32
    if schedule == "onecycle":
        assert last_lr == pytest.approx(0.1 / (3 * steps))
    elif schedule == "cosine":
        assert last_lr == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (3 * steps - 1) / (3 * steps))))
    else:
        assert last_lr == pytest.approx(0.1)  # patience 2: no cut can happen before the third epoch


def test_augment_batch_applies_the_configured_augmentation_only(small: DataSplits) -> None:
    unit = torch.from_numpy(small.train.images[:16]).permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(0)
    off = tiny(crop_padding=0, flip=False, color_jitter=0.0, rotation=0.0, translate=0.0)
    assert torch.equal(augment_batch(off, unit, generator), unit)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())  # nothing drawn
    report = tiny(color_jitter=0.2, rotation=15, translate=0.1, crop_padding=0, flip=False)
    augmented = augment_batch(report, unit, generator)
    assert augmented.shape == unit.shape and 0 <= augmented.min() and augmented.max() <= 1
    assert not torch.equal(augmented, unit)
    again = augment_batch(report, unit, torch.Generator().manual_seed(0))
    assert torch.equal(augmented, again)  # the generator alone decides: a resumed run draws the same


def test_fit_with_report_augmentation_trains_on_augmented_batches(small: DataSplits) -> None:
    plain = tiny(tta_flip=False, flip=False, crop_padding=0)
    augmented = fit(tiny(color_jitter=0.2, rotation=15, translate=0.1, tta_flip=False, flip=False, crop_padding=0),
                    small, device="cpu")
    assert augmented.status == "completed"
    assert augmented.history[0].train_loss != fit(plain, small, device="cpu").history[0].train_loss


def count_training_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make fit's model count its forward passes in training mode."""
    calls = [0]
    build = train_module.build_model

    def counting_build(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = build(*args, **kwargs)

        def hook(module: torch.nn.Module, *_: Any) -> None:
            calls[0] += module.training

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_module, "build_model", counting_build)
    return calls


@pytest.mark.parametrize(("batch_size", "steps"), [(48, 3), (32, 5), (10_000, 1)])
def test_an_epoch_is_one_step_per_full_batch_and_drops_the_ragged_rest(
    small: DataSplits, monkeypatch: pytest.MonkeyPatch, batch_size: int, steps: int
) -> None:
    assert len(small.train) == 160  # 48: three steps and 16 images left over; 10,000: one step of all 160
    counted = count_training_steps(monkeypatch)
    result = fit(tiny(batch_size=batch_size, epochs=2, warmup_epochs=0), small, device="cpu")
    assert counted[0] == 2 * steps
    images = steps * min(batch_size, len(small.train))
    for metrics in result.history:  # accuracy over the images stepped on: a whole number of them were right
        assert metrics.train_acc * images == pytest.approx(round(metrics.train_acc * images), abs=1e-6)


class FakeClock:
    """Stands in for the `time` module in tuner.train: time passes only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def test_images_per_s_is_images_stepped_on_over_training_time_alone(
    small: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    train_one_epoch, evaluate = train_module.train_one_epoch, train_module.evaluate

    def training_takes_2s(*args: Any) -> Any:
        clock.now += 2.0
        return train_one_epoch(*args)

    def evaluation_takes_100s(*args: Any) -> Any:
        clock.now += 100.0
        return evaluate(*args)

    monkeypatch.setattr(train_module, "time", clock)
    monkeypatch.setattr(train_module, "train_one_epoch", training_takes_2s)
    monkeypatch.setattr(train_module, "evaluate", evaluation_takes_100s)
    result = fit(tiny(batch_size=48), small, device="cpu")
    assert len(result.history) == 2
    for metrics in result.history:
        assert metrics.images_per_s == 3 * 48 / 2.0  # 144 images in 2 s; evaluation is not training
        assert metrics.epoch_seconds == 102.0  # the epoch's time holds both


# --- recipe options ----------------------------------------------------------------------------------


def test_without_bn_bias_decay_only_conv_and_linear_weights_are_decayed() -> None:
    model = train_module.build_model(tiny(widths=(8, 16), blocks=(1, 1)))
    for optimizer in ("sgd", "adam", "adamw"):
        groups = make_optimizer(tiny(optimizer=optimizer, weight_decay=0.01, bn_bias_decay=False), model).param_groups
        decayed, undecayed = ({id(p) for p in g["params"]} for g in groups)
        assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
        norms_and_biases = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
                            for p in m.parameters()} | {id(model.head.bias)}
        assert undecayed == norms_and_biases
        assert decayed == {id(p) for p in model.parameters()} - norms_and_biases
        assert all(p.ndim == 4 for p in groups[0]["params"] if p is not model.head.weight)
    (single,) = make_optimizer(tiny(weight_decay=0.01), model).param_groups  # the default decays all
    assert single["weight_decay"] == 0.01 and len(single["params"]) == len(list(model.parameters()))


def test_an_undecayed_batchnorm_weight_does_not_shrink_without_gradient() -> None:
    """The effect itself: with no gradient, decay alone moves a parameter; the undecayed group stays put."""
    model = train_module.build_model(tiny())
    for bn_bias_decay, moved in ((True, True), (False, False)):
        optimizer = make_optimizer(tiny(lr=0.1, momentum=0, weight_decay=0.5, bn_bias_decay=bn_bias_decay), model)
        before = model.stem[1].weight.detach().clone()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        assert (not torch.equal(model.stem[1].weight, before)) == moved


def test_zero_init_residual_holds_at_step_0_of_fit(small: DataSplits) -> None:
    run = TrainingState.start(tiny(widths=(8, 16), blocks=(2, 1), zero_init_residual=True), len(small.train),
                              torch.device("cpu"))
    last_norms = [block.bn2.weight for block in run.model.modules() if isinstance(block, BasicBlock)]
    assert len(last_norms) == 3 and all(not w.any() for w in last_norms)


def record_training_batches(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Make fit record every augmented batch it steps on (as [0, 1] floats), in order."""
    batches: list[torch.Tensor] = []
    step = train_module._optimizer_step

    def recording_step(run: Any, unit: torch.Tensor, *args: Any) -> Any:
        batches.append(unit.detach().clone())
        return step(run, unit, *args)

    monkeypatch.setattr(train_module, "_optimizer_step", recording_step)
    return batches


def sides(batches: list[torch.Tensor], split: DataSplits) -> dict[int, bool]:
    """{training image index: whether it was seen mirrored} for the images of `batches`."""
    originals = torch.from_numpy(split.train.images).permute(0, 3, 1, 2).float() / 255
    index = {image.numpy().tobytes(): (i, False) for i, image in enumerate(originals)}
    index.update({image.flip(2).numpy().tobytes(): (i, True) for i, image in enumerate(originals)})
    seen = [index[image.numpy().tobytes()] for batch in batches for image in batch]
    return dict(seen)


def test_alternating_flips_show_each_image_mirrored_on_every_other_epoch(
    small: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = record_training_batches(monkeypatch)
    steps = len(small.train) // 32
    fit(tiny(epochs=3, crop_padding=0, alternate_flip=True), small, device="cpu")
    epochs = [sides(batches[e * steps : (e + 1) * steps], small) for e in range(3)]
    assert all(len(epoch) == len(small.train) for epoch in epochs)  # batch 32 divides 160: all images, each epoch
    for i in range(len(small.train)):
        assert epochs[0][i] != epochs[1][i] and epochs[1][i] != epochs[2][i], i
    assert 50 < sum(epochs[0].values()) < 110  # the first epoch mirrors a random half


def test_final_plain_epochs_train_on_the_images_as_they_are(
    small: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = record_training_batches(monkeypatch)
    augmented_calls: list[int] = []
    augment = train_module.augment_batch
    monkeypatch.setattr(train_module, "augment_batch", lambda *a, **k: augmented_calls.append(1) or augment(*a, **k))
    fit(tiny(epochs=3, final_plain_epochs=2, color_jitter=0.2), small, device="cpu")
    steps = len(small.train) // 32
    assert len(augmented_calls) == steps  # the first epoch alone draws any augmentation
    originals = {image.numpy().tobytes() for image in
                 torch.from_numpy(small.train.images).permute(0, 3, 1, 2).float() / 255}
    first = [image.numpy().tobytes() in originals for batch in batches[:steps] for image in batch]
    plain = [image.numpy().tobytes() in originals for batch in batches[steps:] for image in batch]
    assert sum(first) < len(first) / 2  # jittered, cropped and flipped: hardly an image as it is
    assert len(plain) == 2 * len(small.train) and all(plain)


def test_translate_tta_is_what_fit_scores_and_its_checkpoint_reproduces(small: DataSplits) -> None:
    result = fit(tiny(epochs=1, tta_translate=1), small, device="cpu")
    model, config = model_from_checkpoint(result.checkpoint)
    loss, accuracy = evaluate_images(model, small.val, config.tta_flip, "cpu", tta_translate=config.tta_translate)
    assert accuracy == result.history[-1].val_acc
    assert loss == pytest.approx(result.history[-1].val_loss, rel=1e-5)
    flip_only_loss, _ = evaluate_images(model, small.val, config.tta_flip, "cpu")
    assert flip_only_loss != pytest.approx(loss, rel=1e-6)  # the shifted views count


# --- exact resume ------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


# Every recipe option at once: state a resume must rebuild (alternating flips' first half, the plain phase,
# the undecayed parameter group, the initialisation).
RECIPE_OPTIONS = dict(alternate_flip=True, final_plain_epochs=1, bn_bias_decay=False, zero_init_residual=True,
                      dirac_init=True, tta_translate=1)


def resume_config(optimizer: str, schedule: str, ema_epochs: float = 0.0, **options: Any) -> TrainConfig:
    # every source of randomness in play: shuffling, crop, flip, jitter, rotation, translation
    return TrainConfig.from_dict(dict(
        widths=(8, 16), blocks=(1, 1), epochs=3, batch_size=32, warmup_epochs=0.5, optimizer=optimizer,
        lr=0.05 if optimizer == "sgd" else 2e-3, schedule=schedule, plateau_patience=0,
        color_jitter=0.2, rotation=15, translate=0.1, deterministic=True, seed=7, ema_epochs=ema_epochs,
        **options,
    ))


@pytest.mark.parametrize(("optimizer", "schedule", "ema_epochs", "options"),
                         [("sgd", "onecycle", 0.0, {}), ("adam", "plateau", 0.0, {}), ("sgd", "onecycle", 1.0, {}),
                          ("sgd", "onecycle", 0.0, RECIPE_OPTIONS)],
                         ids=["sgd", "adam-plateau", "sgd-ema", "sgd-recipe-options"])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(
    small: DataSplits, tmp_path: Path, restore_determinism: None, optimizer: str, schedule: str, ema_epochs: float,
    options: dict[str, Any],
) -> None:
    config = resume_config(optimizer, schedule, ema_epochs, **options)
    uninterrupted = fit(config, small, device="cpu")

    def crash_after_epoch_1(metrics: EpochMetrics, checkpoint: Callable[[], dict[str, Any]]) -> None:
        save_checkpoint(checkpoint(), tmp_path / "epoch1.pt")
        raise Interrupted  # the process dies right after saving its checkpoint

    with pytest.raises(Interrupted):
        fit(config, small, crash_after_epoch_1, device="cpu")
    torch.manual_seed(12345)  # a different process state before resuming must not matter
    torch.rand(100)

    state = load_checkpoint(tmp_path / "epoch1.pt")
    assert state["epoch"] == 1
    epochs_seen: list[int] = []
    resumed = fit(config, small, lambda m, _: epochs_seen.append(m.epoch), resume=state, device="cpu")

    assert epochs_seen == [2, 3]  # epoch 1 is not run again
    assert resumed.status == "completed"
    for weights in ("model", "trained") if ema_epochs else ("model",):
        final, expected = resumed.checkpoint[weights], uninterrupted.checkpoint[weights]
        assert final.keys() == expected.keys()
        for name in expected:
            assert torch.equal(final[name], expected[name]), f"{weights}: {name}"
    assert _tensors(resumed.checkpoint["optimizer"]) == _tensors(uninterrupted.checkpoint["optimizer"])
    assert [_reproducible(m) for m in resumed.history] == [_reproducible(m) for m in uninterrupted.history]


def _reproducible(metrics: EpochMetrics) -> tuple[float, ...]:
    return tuple(getattr(metrics, name) for name in REPRODUCIBLE)


def _tensors(value: Any) -> list[tuple[float, ...]]:
    """Every tensor in a nested state dict, flattened to exact values in a stable order."""
    if isinstance(value, torch.Tensor):
        return [tuple(value.flatten().tolist())]
    if isinstance(value, dict):
        return [t for key in sorted(value, key=str) for t in _tensors(value[key])]
    if isinstance(value, list):
        return [t for item in value for t in _tensors(item)]
    return []


def test_the_weight_average_is_what_is_evaluated_and_checkpointed(small: DataSplits) -> None:
    averaged = fit(tiny(ema_epochs=1.0), small, device="cpu")  # 5 steps an epoch: about a 5-step average
    state = averaged.checkpoint
    assert any(not torch.equal(state["model"][k], state["trained"][k]) for k in state["model"])
    model, _ = model_from_checkpoint(state)
    loss, accuracy = evaluate_images(model, small.val, tta_flip=True, device="cpu")
    assert accuracy == averaged.history[-1].val_acc
    assert loss == pytest.approx(averaged.history[-1].val_loss, rel=1e-5)
    # a one-step "average" is the trained weights: same checkpoint, same figures as no average at all
    one_step = fit(tiny(ema_epochs=0.2), small, device="cpu")
    plain = fit(tiny(), small, device="cpu")
    for name, value in one_step.checkpoint["model"].items():
        assert torch.equal(value, one_step.checkpoint["trained"][name]), name
        assert torch.allclose(value.float(), plain.checkpoint["model"][name].float()), name
    assert [m.val_acc for m in one_step.history] == [m.val_acc for m in plain.history]


def test_checkpoint_is_plain_tensors_and_values(small: DataSplits, tmp_path: Path) -> None:
    result = fit(tiny(epochs=1, warmup_epochs=0), small, device="cpu")
    path = save_checkpoint(result.checkpoint, tmp_path / "run" / "final.pt")
    assert path.exists() and not path.with_name("final.pt.partial").exists()
    state = torch.load(path, map_location="cpu", weights_only=True)  # loads under the safe loader
    assert state["config"] == tiny(epochs=1, warmup_epochs=0).to_dict()
    assert state["epoch"] == 1 and len(state["history"]) == 1


# --- divergence --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [dict(optimizer="sgd", lr=1e6), dict(optimizer="adam", lr=1e9), dict(optimizer="sgd", lr=1e6, weight_decay=0)],
    ids=["sgd-1e6", "adam-1e9", "sgd-1e6-no-decay"],
)
def test_huge_lr_is_reported_as_diverged_and_stops_at_once(
    tiny_steps: DataSplits, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any]
) -> None:
    steps = count_training_steps(monkeypatch)
    config = tiny(epochs=3, warmup_epochs=0, batch_size=8, **overrides)
    epochs_seen: list[int] = []
    result = fit(config, tiny_steps, lambda m, _: epochs_seen.append(m.epoch), device="cpu")
    assert result.status == "diverged"
    assert len(result.history) < config.epochs and epochs_seen == [m.epoch for m in result.history]
    assert result.checkpoint is None
    assert steps[0] <= DIVERGENCE_CHECK_EVERY  # stopped at the first check, not at the end of the run


@pytest.fixture(scope="module")
def tiny_steps(small: DataSplits) -> DataSplits:
    """The small split with batch 8 gives 20 steps per epoch: room to show the run stops early."""
    assert len(small.train) // 8 > DIVERGENCE_CHECK_EVERY
    return small


# --- checkpoint files --------------------------------------------------------------------------------


def test_loading_a_missing_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_loading_a_corrupt_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path)


def test_loading_a_truncated_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    state = {"config": tiny().to_dict(), "model": {"w": torch.ones(1000)}}
    path = save_checkpoint(state, tmp_path / "ok.pt")
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_tuner_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="not a tuner checkpoint"):
        load_checkpoint(path)


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save({"model": {}, "config": _RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(UserError):
        load_checkpoint(path)
    assert not marker.exists()


def test_fit_result_best_is_none_without_history() -> None:
    assert train_module.FitResult("diverged").best is None


def test_warmup_longer_than_the_run_is_capped_not_rejected() -> None:
    schedule = LrSchedule(tiny(lr=1.0, epochs=1, warmup_epochs=2), steps_per_epoch=4)
    assert [schedule.lr(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_deterministic_mode_is_on_during_fit_and_does_not_leak_out(small: DataSplits) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    during: list[bool] = []

    def record(*_: Any) -> None:
        during.append(torch.are_deterministic_algorithms_enabled())

    fit(tiny(deterministic=True, epochs=1), small, record, device="cpu")
    assert during == [True]
    assert torch.are_deterministic_algorithms_enabled() == before


def test_fit_refuses_a_damaged_training_state_before_any_epoch(small: DataSplits, tmp_path: Path) -> None:
    """What a sweep's trial resumes goes through the same checks as `tuner.train --resume` (restore runs them)."""
    config = tiny(epochs=1)
    state = fit(config, small, device="cpu").checkpoint
    state["schedule"] = {}
    state["epoch"] = 1
    seen: list[int] = []
    with pytest.raises(UserError, match=r"^the checkpoint to resume from is damaged or from another version: its "
                                        r"'schedule'.*start without --resume$"):
        fit(tiny(epochs=2), small, lambda m, _: seen.append(m.epoch), resume=state, device="cpu")
    assert seen == []
