"""Search-space files: shipped spaces parse, bad files fail with one clear line, sampling obeys the space."""
from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from tuner.architecture import count_params
from tuner.config import TrainConfig
from tuner.errors import UserError
from tuner.space import SPACES_DIR, describe, estimate_epochs, load_space

SHIPPED = ("smoke.yaml", "widths.yaml", "recipe.yaml", "full.yaml")

VALID = """
name: t
fixed:
  batch_size: 64
parameters:
  lr: {type: float, low: 0.01, high: 0.5, log: true}
  optimizer: [sgd, adamw]
  momentum: {type: float, low: 0.8, high: 0.95, when: {optimizer: sgd}}
  widths: {type: int, low: 8, high: 64, step: 8, per_stage: 3}
  blocks: {type: int, low: 1, high: 2, per_stage: 3}
scheduler: {type: asha, max_epochs: 9, grace_period: 1, reduction_factor: 3}
budget: {trials: 5}
constraints: {max_params: 300000}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_parse_and_describe(name: str) -> None:
    space = load_space(name)  # a bare name resolves against search_spaces/
    assert space.path.resolve() == (SPACES_DIR / name).resolve()
    text = describe(space)
    assert "rungs at epochs" in text and f"trials: {space.budget.trials}" in text


def test_widths_space_has_a_five_million_parameter_budget_and_fixed_recipe() -> None:
    space = load_space("widths.yaml")
    assert space.constraints.max_params == 5_000_000
    assert {p.name for p in space.parameters} == {"widths", "blocks"}


def test_sampling_respects_conditions_and_ranges(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_optimizers = set()
    for _ in range(40):
        trial = study.ask()
        config = space.sample(trial)
        seen_optimizers.add(config.optimizer)
        assert 0.01 <= config.lr <= 0.5
        assert config.batch_size == 64 and config.epochs == 9
        assert len(config.widths) == 3 and all(w % 8 == 0 and 8 <= w <= 64 for w in config.widths)
        # momentum is drawn in every trial (TPE models it jointly with the rest) and configured only for sgd
        assert "momentum" in trial.params
        expected = trial.params["momentum"] if config.optimizer == "sgd" else TrainConfig.momentum
        assert config.momentum == expected
        study.tell(trial, 0.5)
    assert seen_optimizers == {"sgd", "adamw"}


def test_stage_choices_sample_whole_tuples_and_bound_the_network(tmp_path: Path) -> None:
    text = VALID.replace("{type: int, low: 8, high: 64, step: 8, per_stage: 3}",
                         "{choices: [[16, 32, 64], [8, 16, 32]]}")
    space = load_space(write(tmp_path, text))
    widths = next(p for p in space.parameters if p.name == "widths")
    assert widths.choices == ("16,32,64", "8,16,32")  # Optuna's categoricals hold scalars: format_stages text
    small, large = space.corner_configs()
    assert (small.widths, small.blocks) == ((8, 16, 32), (1, 1, 1))
    assert (large.widths, large.blocks) == ((16, 32, 64), (2, 2, 2))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = {space.sample(study.ask()).widths for _ in range(12)}
    assert sampled == {(16, 32, 64), (8, 16, 32)}


def test_rung_schedule_and_epoch_estimate(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID))
    assert space.scheduler.rungs() == [1, 3]
    # 5 trials to epoch 1, 5/3 continue to epoch 3, 5/9 run to 9
    assert estimate_epochs(space) == pytest.approx(5 * 1 + 5 / 3 * 2 + 5 / 9 * 6)
    # an epoch budget below that stops the sweep first
    capped = load_space(write(tmp_path, VALID.replace("budget: {", "budget: {epochs: 7, ")))
    assert capped.budget.epochs == 7 and estimate_epochs(capped) == 7
    assert "epochs: about 7 in all (the epoch budget stops the sweep)" in describe(capped)


BAD_FILES = {
    "syntax": ("parameters:\n  lr: {type: float, low: 0.1\n", r"space.yaml:\d+: YAML syntax error"),
    "unknown_top_key": (VALID + "schedular: {}\n", "unknown key 'schedular'.*did you mean 'scheduler'"),
    "unknown_field": (VALID.replace("  lr:", "  lrr:"), r"unknown TrainConfig field 'lrr'.*did you mean 'lr'"),
    "unknown_param_key": (VALID.replace("log: true", "logg: true"), "unknown key 'logg'.*did you mean 'log'"),
    "inverted": (VALID.replace("low: 0.01, high: 0.5", "low: 0.5, high: 0.01"), "range is inverted"),
    "empty": (VALID.replace("low: 0.01, high: 0.5", "low: 0.1, high: 0.1"), "range is empty"),
    "log_low_zero": (VALID.replace("low: 0.01, high: 0.5", "low: 0.0, high: 0.5"), "log range needs low > 0"),
    "impossible_constraint": (VALID.replace("max_params: 300000", "max_params: 1000"),
                              "no configuration can meet the constraints"),
    "bad_choice": (VALID.replace("[sgd, adamw]", "[sgd, lion]"), "choice 'lion' is invalid"),
    "epochs_searched": (VALID.replace("  lr:", "  epochs: [5, 10]\n  lr:"), "scheduler.max_epochs"),
    "condition_on_unknown": (VALID.replace("when: {optimizer: sgd}", "when: {optimiser: sgd}"),
                             "condition on unknown field 'optimiser'"),
    "fixed_bad_value": (VALID.replace("batch_size: 64", "batch_size: 0"), "batch_size=0 is invalid"),
    "negative_gpus": (VALID + "resources: {cpus: 1, gpus: -1}\n",
                      "resources.gpus=-1 must be a finite number from 0 to 64"),
    "stage_choice_not_numbers": (VALID.replace("{type: int, low: 8, high: 64, step: 8, per_stage: 3}",
                                               "{choices: [[8, x, 32]]}"),
                                 r"choice \[8, 'x', 32\] is invalid \(give whole numbers, one per stage"),
    "stage_range_without_per_stage": (VALID.replace("low: 1, high: 2, per_stage: 3", "low: 1, high: 2"),
                                      "widths/blocks ranges need per_stage: N"),
    "per_stage_on_choices": (VALID.replace("{type: int, low: 1, high: 2, per_stage: 3}",
                                           "{choices: [1, 2], per_stage: 3}"), "per_stage needs type: int"),
    "per_stage_off_stages": (VALID.replace("high: 0.5, log: true}", "high: 0.5, log: true, per_stage: 2}"),
                             "per_stage must be a positive integer and only applies to widths and blocks"),
    "step_with_log": (VALID.replace("log: true}", "log: true, step: 0.01}"), "step and log cannot be combined"),
    "int_range_fractional": (VALID.replace("low: 1, high: 2, per_stage", "low: 1.5, high: 2, per_stage"),
                             "int ranges need whole-number low and high"),
    "bound_invalid": (VALID.replace("low: 0.8, high: 0.95", "low: 0.8, high: 1.0"),
                      r"bound 1.0 is invalid \(momentum=1.0 is invalid: must be in \[0, 1\)\)"),
    "final_unknown_key": (VALID + "final: {epochs: 3, train_on: all, epoch: 2}\n",
                          r"space.yaml:\d+: unknown key 'epoch' in final \(did you mean 'epochs'\?\); valid keys: "
                          "epochs, train_on"),
    "final_epochs_zero": (VALID + "final: {epochs: 0}\n",
                          r"space.yaml:\d+: final.epochs=0 must be a whole number from 1 to 10,000"),
    "final_epochs_fraction": (VALID + "final: {epochs: 2.5}\n", "final.epochs=2.5 must be a whole number"),
    "final_train_on_word": (VALID + "final: {train_on: everything}\n",
                            "final.train_on='everything' must be one of all, train"),
    "final_not_a_mapping": (VALID + "final: yes\n", "'final' must be a mapping"),
    "final_too_few_epochs": (VALID.replace("batch_size: 64", "batch_size: 64\n  ema_epochs: 2")
                             + "final: {epochs: 1}\n",
                             r"final.epochs=1 is too few for this space: with 1 epoch, ema_epochs=2.0 is invalid.*"
                             "raise final.epochs or lower ema_epochs"),
    # values Ray or Optuna would take another way than written, or refuse only after launch
    "cpus_finer_than_ray_counts": (VALID + "resources: {cpus: 0.000001}\n",
                                   r"resources.cpus=1e-06 has more decimals than Ray counts resources in.*"
                                   "round it to 0.0001"),
    "gpus_finer_than_ray_counts": (VALID + "resources: {gpus: 0.33333}\n", "round it to 0.3333"),
    "step_not_dividing_the_range": (VALID.replace("high: 0.95,", "high: 0.95, step: 0.1,"),
                                    r"step 0.1 does not divide the range 0.8 to 0.95 \(Optuna would end it at 0.9\); "
                                    "set high to 0.9 or 1"),
    "int_step_not_dividing_the_range": (VALID.replace("low: 8, high: 64, step: 8", "low: 8, high: 60, step: 8"),
                                        "step 8 does not divide the range 8 to 60.*set high to 56 or 64"),
    "step_too_fine_to_be_a_grid": (VALID.replace("high: 0.95,", "high: 0.95, step: 1e-30,"),
                                   "step 1e-30 makes more than 1,000,000,000 values"),
    "choices_the_same_once_read": (VALID.replace("[sgd, adamw]", "[sgd, adamw]\n  flip: [true, 'true']"),
                                   "choices true and 'true' are the same flip once read"),
    "condition_on_epochs_never_holds": (VALID.replace("when: {optimizer: sgd}", "when: {epochs: 99}"),
                                        "condition epochs=99 never holds: every trial has scheduler.max_epochs = 9"),
    "mode_against_the_metric": (VALID + "metric: val_loss\nmode: max\n",
                                "mode: max with metric: val_loss would search for the worst loss; use mode: min"),
    "name_starting_with_a_dot": (VALID.replace("name: t", "name: .hidden"), "starting with a letter or digit"),
    "control_character": (VALID.replace("name: t", "name: a\x00b"), "YAML syntax error.*unacceptable character"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_space_files_fail_with_one_clear_line(tmp_path: Path, case: str) -> None:
    text, pattern = BAD_FILES[case]
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=pattern) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_final_section_is_optional_and_defaults_to_the_search_epochs_on_all_images(tmp_path: Path) -> None:
    assert load_space(write(tmp_path, VALID)).final is None
    assert "final fit: none" in describe(load_space(write(tmp_path, VALID)))
    space = load_space(write(tmp_path, VALID + "final: {}\n"))
    assert (space.final.train_on, space.final_epochs) == ("all", 9)  # scheduler.max_epochs
    # train + val images, evaluated on a few of its own (nothing held out); train_on train keeps val held out
    assert space.final.images(45_000, 5_000) == (50_000, 1_000)
    held_out = load_space(write(tmp_path, VALID + "final: {epochs: 4, train_on: train}\n"))
    assert held_out.final_epochs == 4 and held_out.final.images(45_000, 5_000) == (45_000, 5_000)
    text = describe(space)
    assert "final fit: the champion's configuration trained again for 9 epochs" in text
    assert "final fit, after the search: 9 epochs on 50,000 images" in text
    assert space.summary()["final.train_on"] == "all"


@pytest.mark.parametrize("name", ["widths.yaml", "recipe.yaml", "full.yaml"])
def test_the_gpu_spaces_retrain_their_champion_on_every_training_image(name: str) -> None:
    space = load_space(name)
    assert space.final is not None and space.final.train_on == "all"
    assert space.final_epochs == space.scheduler.max_epochs


def test_the_smoke_space_registers_its_search_checkpoint() -> None:
    assert load_space("smoke.yaml").final is None  # make run stays quick


def test_errors_point_at_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("low: 0.01, high: 0.5", "low: 0.5, high: 0.01"))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("lr:"))
    with pytest.raises(UserError, match=rf"space.yaml:{line}:"):
        load_space(path)


def test_missing_space_lists_the_shipped_ones() -> None:
    with pytest.raises(UserError, match="smoke.yaml"):
        load_space("no-such-space.yaml")


def test_constraint_violation_is_computed_analytically(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID))
    small, large = space.corner_configs()
    assert space.constraints.violation(small) is None
    assert count_params(large) > 300_000 and "max_params" in space.constraints.violation(large)


def test_a_space_path_that_is_not_a_regular_file_is_named_as_such(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "space.yaml"
    os.mkfifo(fifo)  # reading it would block until a writer comes
    with pytest.raises(UserError, match="is not a regular file, so it is not read as a space file"):
        load_space(fifo)
