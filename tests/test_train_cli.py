"""`python -m tuner.train` as a user runs it: one line per epoch, a checkpoint, and one-line errors (exit 2)."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tuner.checkpoint import load_checkpoint
from tuner.data import BATCH_DIR, TEST_FILE, DataSplits, load_splits, split_record, write_synthetic_cifar10
from tuner.errors import UserError
from tuner.train_command import ValueSources, build_config, check_batch_size

TIMEOUT_S = 120
TINY_FLAGS = ["--widths", "8,16", "--blocks", "1,1", "--batch-size", "32", "--warmup-epochs", "0.5",
              "--val-size", "40", "--device", "cpu"]


def start_train(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    # One thread: the runs are tiny and the test machine is shared.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tuner.train", *map(str, args)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_train(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return finish(start_train(*args, cwd=cwd))


@pytest.fixture(scope="module")
def with_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("with-test")
    write_synthetic_cifar10(root, n_train=200, n_test=50)
    return root


@pytest.fixture(scope="module")
def without_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("without-test")
    write_synthetic_cifar10(root, n_train=200, n_test=0)
    return root


def epoch_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("epoch ")]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_training_prints_each_epoch_saves_a_checkpoint_and_measures_test_accuracy(
    with_test: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs" / "final.pt"
    result = run_train("--data-dir", with_test, *TINY_FLAGS, "--epochs", "2", "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = epoch_lines(result.stdout)
    assert [line.split()[1] for line in lines] == ["1", "2"]
    assert all("val loss" in line and "img/s" in line for line in lines)
    assert out.exists()
    state = load_checkpoint(out)
    assert state["epoch"] == 2 and state["config"]["widths"] == [8, 16]
    assert f"saved {out}" in result.stdout
    assert "test acc" in result.stdout and "(50 images" in result.stdout
    assert "not measured" not in result.stdout


def test_config_file_sets_fields_and_flags_override_it_and_no_test_batch_is_reported(
    without_test: Path, tmp_path: Path
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("widths: [8, 16]\nblocks: [1, 1]\nbatch_size: 32\nepochs: 3\nwarmup_epochs: 0.5\n")
    out = tmp_path / "final.pt"
    result = run_train("--config", config, "--data-dir", without_test, "--val-size", "40", "--device", "cpu",
                       "--epochs", "1", "--no-flip", "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(epoch_lines(result.stdout)) == 1  # --epochs 1 beat the file's 3
    state = load_checkpoint(out)
    assert state["config"]["batch_size"] == 32 and state["config"]["flip"] is False
    assert "test accuracy not measured" in result.stdout
    assert "test acc " not in result.stdout


def test_help_shows_an_example(tmp_path: Path) -> None:
    result = run_train("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "example: python -m tuner.train" in result.stdout


@dataclass(frozen=True)
class BadRuns:
    """Results of every bad invocation, by case name, and the folder their files live in."""

    root: Path
    results: dict[str, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def bad_runs(with_test: Path, tmp_path_factory: pytest.TempPathFactory) -> BadRuns:
    """All bad invocations, started together: each only imports torch and stops, so they overlap well."""
    root = tmp_path_factory.mktemp("bad-runs")
    truncated_test = root / "truncated-test"
    test_batch = write_synthetic_cifar10(truncated_test, n_train=200, n_test=50) / TEST_FILE
    test_batch.write_bytes(test_batch.read_bytes()[:5000])
    blocker = root / "not-a-folder"  # a data dir under a plain file: the download fails at once, offline or not
    blocker.write_text("")
    (root / "typo.yaml").write_text("lrr: 0.1\n")
    (root / "broken.yaml").write_text("lr: 0.1\nbatch_size: 32\n  epochs: 2\n")
    (root / "list.yaml").write_text("- lr\n- 0.1\n")
    (root / "bomb.yaml").write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                                    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
                                              for p, c in zip("abcdefgh", "bcdefghi")))
    (root / "many.yaml").write_text("lr: .inf\nseed: 1.7\nepochs: 1e21\nlearning_rate: 0.1\n")
    cases = {
        "device-index": ["--data-dir", with_test, *TINY_FLAGS[:-2], "--device", "cuda:99", "--epochs", "1"],
        "config-directory": ["--config", root, "--data-dir", with_test],
        "config-missing": ["--config", root / "nope.yaml", "--data-dir", with_test],
        "config-list": ["--config", root / "list.yaml", "--data-dir", with_test],
        "config-aliases": ["--config", root / "bomb.yaml", "--data-dir", with_test],
        "config-many": ["--config", root / "many.yaml", "--data-dir", with_test],
        "out-directory": ["--data-dir", with_test, *TINY_FLAGS, "--epochs", "1", "--out", root],
        "missing-data": ["--data-dir", blocker / "data", *TINY_FLAGS, "--epochs", "1"],
        "unknown-key": ["--config", root / "typo.yaml", "--data-dir", with_test],
        "yaml-syntax": ["--config", root / "broken.yaml", "--data-dir", with_test],
        "negative-lr": ["--data-dir", with_test, "--epochs", "2", "--lr=-0.1"],
        "zero-batch": ["--data-dir", with_test, "--epochs", "2", "--batch-size", "0"],
        "zero-width": ["--data-dir", with_test, "--epochs", "2", "--widths", "0,16"],
        "decay-lost-minus": ["--data-dir", with_test, "--epochs", "2", "--weight-decay", "5e4"],
        "negative-split-seed": ["--data-dir", with_test, *TINY_FLAGS, "--epochs", "1", "--split-seed", "-1"],
        # writable by permissions for root, but no file can be made there
        "out-unwritable": ["--data-dir", with_test, *TINY_FLAGS, "--epochs", "1", "--out", "/proc/tuner/final.pt"],
        "widths-without-blocks": ["--data-dir", with_test, "--widths", "8,8"],
        "val-size-above-images": ["--data-dir", with_test, *TINY_FLAGS, "--val-size", "5000", "--epochs", "1"],
        "subset-above-images": ["--data-dir", with_test, *TINY_FLAGS, "--subset", "1000", "--epochs", "1"],
        "batch-above-images": ["--data-dir", with_test, *TINY_FLAGS, "--batch-size", "5000", "--epochs", "1"],
        "flag-without-effect": ["--data-dir", with_test, *TINY_FLAGS, "--epochs", "1", "--no-flip",
                                "--alternate-flip"],
        "truncated-test-batch": ["--data-dir", truncated_test, *TINY_FLAGS, "--epochs", "1",
                                 "--out", root / "truncated-run" / "final.pt"],
    }
    running = {name: start_train(*args, cwd=root) for name, args in cases.items()}
    return BadRuns(root, {name: finish(process) for name, process in running.items()})


def test_missing_data_says_where_to_put_the_files(bad_runs: BadRuns) -> None:
    batches = bad_runs.root / "not-a-folder" / "data" / BATCH_DIR
    assert_one_line_error(bad_runs.results["missing-data"], str(batches), "put the python-version CIFAR-10 batches in")


def test_unknown_key_in_the_config_file_is_named_with_a_suggestion(bad_runs: BadRuns) -> None:
    config = bad_runs.root / "typo.yaml"
    assert_one_line_error(bad_runs.results["unknown-key"], str(config), "'lrr'", "did you mean 'lr'")


def test_yaml_syntax_error_names_the_file_and_line(bad_runs: BadRuns) -> None:
    assert_one_line_error(bad_runs.results["yaml-syntax"], f"{bad_runs.root / 'broken.yaml'}:3", "YAML syntax error")


@pytest.mark.parametrize(
    ("case", "field"), [("negative-lr", "lr="), ("zero-batch", "batch_size="), ("zero-width", "widths="),
                        ("decay-lost-minus", "weight_decay=50000.0")]
)
def test_impossible_flags_are_one_line_errors_and_nothing_is_trained(bad_runs: BadRuns, case: str, field: str) -> None:
    assert_one_line_error(bad_runs.results[case], f"flags: {field}")
    assert not (bad_runs.root / "runs").exists()  # nothing trained, nothing saved


@pytest.mark.parametrize(("case", "fragments"), [
    ("device-index", ["--device cuda:99"]),
    ("config-directory", ["is a directory, not a config file"]),
    ("config-missing", ["nope.yaml does not exist"]),
    ("config-list", ["list.yaml: expected a mapping of TrainConfig fields"]),
    ("config-aliases", ["bomb.yaml:2: YAML aliases (*name) are not accepted"]),
    ("out-directory", ["is a directory; give a file path"]),
    ("out-unwritable", ["--out /proc/tuner/final.pt", "choose a writable path"]),
    ("negative-split-seed", ["--split-seed -1 must be a whole number from 0"]),
    # a rule between two values blames the one the user gave, and names the other
    ("widths-without-blocks", ["flags: widths=[8, 8] does not fit the default blocks=[2, 2, 2]",
                               "widths has 2 stages and blocks 3: give blocks with 2 values"]),
    # the flag's name, and the lower bound the flag check has (10: one image per class)
    ("val-size-above-images", ["--val-size 5000 must be between 10 (one per class) and 199 (the 200 training"]),
    ("subset-above-images", ["--subset 1000 asks for more training images than the 160 left", "give at most 160"]),
    ("batch-above-images", ["--batch-size 5000 is more than the 160 training images", "--batch-size 160 or less"]),
    ("flag-without-effect", ["--alternate-flip has no effect with flip=false (flags)", "drop --alternate-flip"]),
    # found before training, not after a finished run was saved
    ("truncated-test-batch", [f"{TEST_FILE} is not a readable CIFAR-10 batch"]),
])
def test_bad_paths_devices_and_files_are_one_line_errors_before_training(bad_runs: BadRuns, case: str,
                                                                         fragments: list[str]) -> None:
    result = bad_runs.results[case]
    line = assert_one_line_error(result, *fragments)
    assert not epoch_lines(result.stdout)  # refused before any training
    assert "is invalid" not in line  # no value the user never gave is called invalid
    assert "saved" not in result.stdout


def test_every_problem_of_a_config_file_is_reported_with_its_line(bad_runs: BadRuns) -> None:
    result = bad_runs.results["config-many"]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    config = bad_runs.root / "many.yaml"
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [f"{config}:{n}" for n in (1, 2, 3, 4)], lines
    assert "lr=.inf is not a valid finite number" in lines[0]
    assert "seed=1.7 is not a valid whole number" in lines[1]
    assert "epochs=" in lines[2] and "between 1 and 10,000" in lines[2]
    assert "did you mean 'lr'" in lines[3]


def test_resume_continues_the_checkpoints_config_and_refuses_contradicting_flags(with_test: Path,
                                                                                 tmp_path: Path) -> None:
    first = tmp_path / "first.pt"
    result = run_train("--data-dir", with_test, *TINY_FLAGS, "--epochs", "1", "--out", first, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # no architecture flags: the checkpoint's config (widths 8,16) is continued, one more epoch
    more = run_train("--data-dir", with_test, "--val-size", "40", "--device", "cpu", "--resume", first,
                     "--epochs", "2", "--out", tmp_path / "second.pt", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert [line.split()[1] for line in epoch_lines(more.stdout)] == ["2"]
    clash = run_train("--data-dir", with_test, "--val-size", "40", "--device", "cpu", "--resume", first,
                      "--widths", "16,32", cwd=tmp_path)
    assert_one_line_error(clash, "flags: widths=[16, 32] contradicts the checkpoint", "widths=[8, 16]")


# --- flags that cannot act as typed (each pair: the flag and the setting that makes it do nothing) -------------


@pytest.mark.parametrize(("flags", "fragments"), [
    ({"optimizer": "adam", "momentum": "0.5"}, ["--momentum 0.5 has no effect with optimizer=adam (flags)",
                                                "drop --momentum 0.5 or change --optimizer"]),
    ({"optimizer": "adamw", "nesterov": True}, ["--nesterov has no effect with optimizer=adamw (flags)"]),
    ({"momentum": "0", "nesterov": True}, ["--nesterov has no effect with momentum=0.0 (flags)"]),
    ({"plateau_patience": "9"}, ["--plateau-patience 9 has no effect with schedule=onecycle (the default)",
                                 "change --schedule"]),
    ({"schedule": "cosine", "plateau_factor": "0.3"}, ["--plateau-factor 0.3 has no effect with schedule=cosine"]),
    ({"flip": False, "alternate_flip": True}, ["--alternate-flip has no effect with flip=false (flags)"]),
    ({"weight_decay": "0", "bn_bias_decay": True}, ["--bn-bias-decay has no effect with weight_decay=0.0 (flags)"]),
    ({"epochs": "2", "final_plain_epochs": "2", "color_jitter": "0.2"},
     ["--color-jitter 0.2 has no effect with final_plain_epochs=2 (flags), epochs=2 (flags)"]),
    ({"epochs": "1", "final_plain_epochs": "1", "crop_padding": "4"}, ["--crop-padding 4 has no effect"]),
    ({"warmup_epochs": "5", "epochs": "1"},
     ["flags: --warmup-epochs 5.0 is longer than the run, epochs=1 (flags)", "give --warmup-epochs 1 or less"]),
])
def test_a_flag_that_cannot_act_under_the_other_settings_is_refused_naming_both(flags: dict,
                                                                                fragments: list[str]) -> None:
    with pytest.raises(UserError) as caught:
        build_config({}, flags, None)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("flags", [
    {"optimizer": "adam", "nesterov": False},  # switching off what the optimizer lacks is no contradiction
    {"flip": False, "alternate_flip": False},
    {"epochs": "2", "final_plain_epochs": "2", "flip": False, "crop_padding": "0"},
    {"optimizer": "sgd", "momentum": "0.5", "nesterov": True, "schedule": "plateau", "plateau_patience": "3"},
    {"warmup_epochs": "1", "epochs": "1"},
])
def test_flags_that_act_or_switch_off_are_accepted(flags: dict) -> None:
    build_config({}, flags, None)


def test_values_from_a_config_file_may_be_unused_as_in_a_space(tmp_path: Path) -> None:
    # A config exported from a sweep where momentum was fixed and the optimizer searched: legal, as in the space.
    config = build_config({"optimizer": "adam", "momentum": 0.9, "plateau_patience": 9}, {}, "best.yaml")
    assert config.optimizer == "adam" and config.momentum == 0.9
    # ... but a flag typed against the file's optimizer does nothing, and says which line decides it
    with pytest.raises(UserError, match=r"--momentum 0.5 has no effect with optimizer=adam \(best.yaml\)"):
        build_config({"optimizer": "adam"}, {"momentum": "0.5"}, "best.yaml")


def test_a_batch_size_not_typed_that_exceeds_the_images_is_stated(capsys: pytest.CaptureFixture[str]) -> None:
    check_batch_size(build_config({}, {}, None), 100, ValueSources({}, {}))
    assert "note: batch_size=256 (the default) is more than the 100 training images" in capsys.readouterr().out


# --- resuming: the checkpoint's epochs and data split ------------------------------------------------------------


@pytest.fixture(scope="module")
def one_epoch(with_test: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint after one epoch of TINY_FLAGS (--val-size 40 of the 200 images)."""
    out = tmp_path_factory.mktemp("one-epoch") / "first.pt"
    result = run_train("--data-dir", with_test, *TINY_FLAGS, "--epochs", "1", "--out", out, cwd=out.parent)
    assert result.returncode == 0, result.stderr
    return out


def test_resume_refuses_epochs_that_leave_nothing_to_train_and_saves_nothing(one_epoch: Path, with_test: Path,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "again.pt"
    common = ["--data-dir", with_test, "--device", "cpu", "--resume", one_epoch, "--out", out]
    lower, unchanged = start_train(*common, "--epochs", "1", cwd=tmp_path), start_train(*common, cwd=tmp_path)
    assert_one_line_error(finish(lower), "flags: --epochs 1 is not above the 1 epoch", "give --epochs 2 or more")
    assert_one_line_error(finish(unchanged), f"checkpoint {one_epoch} has trained all 1 epoch",
                          "give --epochs 2 or more")
    assert not out.exists()


def test_resume_keeps_the_checkpoints_split_and_refuses_another(one_epoch: Path, with_test: Path,
                                                                tmp_path: Path) -> None:
    assert load_checkpoint(one_epoch)["split"] == {"val_size": 40, "split_seed": 0, "subset": None,
                                                   "fingerprint": load_splits(with_test, 40).fingerprint(),
                                                   "train_on": "train"}
    other_data = tmp_path / "other-data"
    write_synthetic_cifar10(other_data, n_train=200, seed=7)
    common = ["--device", "cpu", "--resume", one_epoch, "--epochs", "2", "--out", tmp_path / "refused.pt"]
    other_split = start_train("--data-dir", with_test, *common, "--val-size", "60", "--split-seed", "5", cwd=tmp_path)
    other_images = start_train("--data-dir", other_data, *common, cwd=tmp_path)
    out = tmp_path / "second.pt"
    same = run_train("--data-dir", with_test, "--device", "cpu", "--resume", one_epoch, "--epochs", "2",
                     "--out", out, cwd=tmp_path)  # no split flags: the checkpoint's split
    assert same.returncode == 0, same.stderr
    assert "train 160 / val 40 images" in same.stdout
    assert load_checkpoint(out)["split"] == load_checkpoint(one_epoch)["split"]
    assert_one_line_error(finish(other_split), "flags: --val-size 60 --split-seed 5 differ from the split",
                          "(val_size=40, split_seed=0)", "leave --val-size --split-seed out")
    assert_one_line_error(finish(other_images), f"--data-dir {other_data} holds other images than checkpoint")
    assert not (tmp_path / "refused.pt").exists()


def test_resuming_a_checkpoint_without_a_split_record_says_so_and_records_it(one_epoch: Path, with_test: Path,
                                                                            tmp_path: Path) -> None:
    state = load_checkpoint(one_epoch)
    recorded = state.pop("split")
    old = tmp_path / "old.pt"
    torch.save(state, old)
    out = tmp_path / "second.pt"
    result = run_train("--data-dir", with_test, "--device", "cpu", "--val-size", "40", "--resume", old,
                       "--epochs", "2", "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"note: checkpoint {old} records no data split" in result.stdout
    assert load_checkpoint(out)["split"] == recorded


def test_a_final_fit_on_every_image_is_not_resumed_and_older_records_are_read_as_train(
        one_epoch: Path, with_test: Path, tmp_path: Path) -> None:
    """A sweep's final fit with `train_on: all` records that it trained on the validation images too: resuming it
    would validate on trained-on images, so it is refused whatever the flags. A record from before `train_on` was
    recorded (this command's, which trained on the training split) resumes as before."""
    state = load_checkpoint(one_epoch)
    common = ["--data-dir", with_test, "--device", "cpu", "--epochs", "2"]
    every = tmp_path / "every-image.pt"
    torch.save({**state, "split": {**state["split"], "train_on": "all"}}, every)
    older = tmp_path / "older-record.pt"
    torch.save({**state, "split": {k: v for k, v in state["split"].items() if k != "train_on"}}, older)
    unrecorded = tmp_path / "final-fit-before-split-records.pt"  # its own entry says what it trained on
    torch.save({**{k: v for k, v in state.items() if k != "split"},
                "final_fit": {"train_on": "all", "train_images": 200}}, unrecorded)
    damaged = tmp_path / "damaged.pt"
    torch.save({**state, "split": {**state["split"], "train_on": "test"}}, damaged)
    refused, refused_unrecorded, old, broken = (
        start_train(*common, "--resume", path, "--out", tmp_path / f"out-{path.name}", cwd=tmp_path)
        for path in (every, unrecorded, older, damaged))
    for process, path in ((refused, every), (refused_unrecorded, unrecorded)):
        assert_one_line_error(finish(process), f"checkpoint {path} is a final fit that trained on the training and "
                                               "the validation images (train_on all)", "raise final.epochs")
    assert_one_line_error(finish(broken), f"checkpoint {damaged}: its record of the data split is damaged")
    resumed = finish(old)
    assert resumed.returncode == 0, resumed.stderr
    assert "train 160 / val 40 images" in resumed.stdout and "records no data split" not in resumed.stdout
    assert load_checkpoint(tmp_path / "out-older-record.pt")["split"] == state["split"]
    assert [path.name for path in tmp_path.glob("out-*")] == ["out-older-record.pt"]


def test_splits_made_by_hand_record_no_split_and_train_on_is_checked(with_test: Path) -> None:
    data = load_splits(with_test, 40, subset=100, seed=3)
    assert split_record(data, "all") == {"val_size": 40, "split_seed": 3, "subset": 100,
                                         "fingerprint": data.fingerprint(), "train_on": "all"}
    assert split_record(DataSplits(data.train, data.val)) is None  # nobody said how they were split
    with pytest.raises(ValueError, match="train_on='val'"):
        split_record(data, "val")


# --- a damaged training state: one line before any training -----------------------------------------------------


def _momentum_of_another_shape(state: dict) -> None:
    first = next(iter(state["optimizer"]["state"].values()))
    first["momentum_buffer"] = torch.zeros(3)


DAMAGES = {  # what a damaged or edited checkpoint.pt held, and the words its error line must have
    "history-entry": (lambda s: s.update(history=[{"epoch": 1}]), "entry 0 of its 'history'"),
    "history-number": (lambda s: s.update(history=[5]), "entry 0 of its 'history'"),
    "schedule-empty": (lambda s: s.update(schedule={}), "its 'schedule'"),
    "generator-size": (lambda s: s["rng"].update(generator=torch.zeros(7, dtype=torch.uint8)), "generator state"),
    "rng-float": (lambda s: s["rng"].update(torch=s["rng"]["torch"].float()), "'rng' torch state"),
    "momentum-shape": (_momentum_of_another_shape, "momentum_buffer of a"),
    "optimizer-lr": (lambda s: s["optimizer"]["param_groups"][0].update(lr="x"), "'optimizer' state does not load"),
    "epoch-negative": (lambda s: s.update(epoch=-5), "its 'epoch' is -5"),
    "averaged-steps": (lambda s: s.update(averaged_steps="x"), "'averaged_steps'"),
    "split-seed": (lambda s: s["split"].update(split_seed=-1), "its record of the data split is damaged"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_training_state_is_one_line_before_any_training(one_epoch: Path, with_test: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   damage: str) -> None:
    from tuner.train_command import main

    edit, words = DAMAGES[damage]
    state = torch.load(one_epoch, weights_only=True)
    edit(state)
    damaged = tmp_path / f"{damage}.pt"
    torch.save(state, damaged)
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(with_test), "--device", "cpu", "--resume", str(damaged), "--epochs", "3",
              "--out", str(tmp_path / "out.pt")])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and not epoch_lines(out), out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {damaged}") and words in lines[0], err
    assert "without --resume" in lines[0]
    assert not (tmp_path / "out.pt").exists()


def test_a_config_value_yaml_cannot_construct_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tuner.train_command import main

    config = tmp_path / "tagged.yaml"
    config.write_text('lr: 0.1\nseed: !!int ""\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: {config}:2: '' cannot be read as an integer; write an integer such as "
                                       "42 there instead, or remove the !!int tag\n")
