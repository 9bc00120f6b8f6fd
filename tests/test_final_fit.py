"""The final fit end to end: `python -m tuner.run` with a `final:` section on a real Ray node, a sqlite MLflow
store and generated data (700 training images: 500 train + 200 val). The champion is trained again on all 700,
that checkpoint is registered with lineage to the search trial's run and the final fit's run, and promotion
scores it on the test split; every checkpoint records the space's data split, which `python -m tuner.train
--resume` keeps (and refuses for a final fit on all images); without `final:`, or when the final fit fails,
the search checkpoint is registered; a driver killed during the final fit is resumed into it, and a finished
sweep resumed fits and registers nothing again. Failures are injected by a driver that swaps
`tuner.final_fit.train_final` for a task of its own (a `__main__` function: Ray ships it to the worker by value)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from tests.ray_nodes import RayNode, ray_env, started_head
from tests.test_sweep import assert_each_epoch_once, child_runs, finish, study_of, wait_for_line
from tests.test_train_cli import assert_one_line_error, run_train
from tuner.checkpoint import load_checkpoint
from tuner.data import load_splits, write_synthetic_cifar10
from tuner.mlflow_names import DEFAULT_MODEL_NAME
from tuner.tracking import find_sweep_run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SPACE = """
name: final
fixed: {batch_size: 50, warmup_epochs: 0, blocks: [1, 1], crop_padding: 2, tta_flip: false, widths: [4, 8]}
parameters:
  lr: {type: float, low: 0.01, high: 0.3, log: true}
search: {seed: 5, startup_trials: 2, max_concurrent: 2}
scheduler: {type: fifo, max_epochs: 1}
resources: {cpus: 1, gpus: 0}
budget: {trials: 2}
data: {val_size: 200}
"""
FINAL = "final: {epochs: 2, train_on: all}\n"
ALL_IMAGES = 700  # write_synthetic_cifar10(n_train=700): the 500 of the training split and the 200 of val

# Drivers whose final-fit task fails, or sleeps until it is killed, in the worker
FAILING = """
import sys
import tuner.final_fit as final_fit
def train_final(*args, **kwargs):
    raise RuntimeError("injected failure of the final fit")
final_fit.train_final = train_final
from tuner.run import main
main(sys.argv[1:])
"""
SLOW = FAILING.replace('raise RuntimeError("injected failure of the final fit")', "import time; time.sleep(600)")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNode]:
    yield from started_head(tmp_path_factory.mktemp("ray"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("final")
    write_synthetic_cifar10(root / "data", n_train=ALL_IMAGES, n_test=200, seed=2)
    (root / "final.yaml").write_text(textwrap.dedent(SPACE) + FINAL)
    (root / "search-only.yaml").write_text(textwrap.dedent(SPACE))
    return root


def driver(workdir: Path, head: RayNode, uri: str, *args: str, code: str | None = None) -> subprocess.Popen:
    """`python -m tuner.run ...` (or `python -c code ...`, which runs tuner.run's main) against the Ray node."""
    start = ["-c", code] if code else ["-m", "tuner.run"]
    command = [sys.executable, *start, "--address", head.address, "--mlflow-uri", uri,
               "--storage", str(workdir / "runs"), "--data-dir", str(workdir / "data"), *args]
    env = {**ray_env(head.token), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def version_of(client: MlflowClient, sweep: str) -> ModelVersion:
    versions = [v for v in client.search_model_versions(f"name = '{DEFAULT_MODEL_NAME}'")
                if v.tags.get("sweep") == sweep]
    assert len(versions) == 1, f"sweep {sweep} registered {len(versions)} versions"
    return versions[0]


def final_runs(uri: str, sweep: str) -> list[Run]:
    return [r for r in child_runs(uri, sweep) if "tuner.final_of" in r.data.tags]


def trial_run(uri: str, sweep: str, trial_id: str) -> Run:
    return next(r for r in child_runs(uri, sweep) if r.data.tags.get("tuner.trial_id") == trial_id)


@pytest.fixture(scope="module")
def final_sweep(workdir: Path, ray_head: RayNode) -> tuple[str, str]:
    """(output, tracking URI) of a sweep with `final:` that ran to its end undisturbed."""
    uri = f"sqlite:///{workdir / 'final.db'}"
    return finish(driver(workdir, ray_head, uri, "--space", str(workdir / "final.yaml"), "--name", "with-final")), uri


def test_a_sweep_with_final_registers_its_final_fit_linked_to_the_search_trial(
        final_sweep: tuple[str, str], workdir: Path) -> None:
    out, uri = final_sweep
    client = MlflowClient(uri)
    version = version_of(client, "with-final")
    tags = version.tags
    assert tags["checkpoint_kind"] == "final_fit"
    assert tags["train_images"] == str(ALL_IMAGES) and tags["final_epochs"] == "2" and tags["final_train_on"] == "all"
    # lineage: the version is the final fit's run's; that run names the search trial's run, as the version does
    final = final_runs(uri, "with-final")
    assert len(final) == 1
    final = final[0]
    search = trial_run(uri, "with-final", tags["search_trial_id"])
    assert version.run_id == tags["final_run_id"] == tags["run_id"] == final.info.run_id
    assert tags["search_run_id"] == search.info.run_id == final.data.tags["tuner.search_run_id"]
    assert final.data.tags["tuner.final_of"] == tags["search_trial_id"] and "tuner.trial_id" not in final.data.tags
    assert tags["checkpoint_uri"] == f"runs:/{final.info.run_id}/checkpoint/checkpoint.pt"
    assert tags["val_acc"] == tags["search_val_acc"] and "final fit" in version.description
    # the final fit's run: its name, config, per-epoch training figures, and no validation figure at all
    assert final.info.run_name == f"final fit of {search.data.tags['tuner.trial_label']}"
    assert final.info.status == "FINISHED" and final.data.tags["tuner.final_status"] == "completed"
    assert final.data.params["epochs"] == "2" and final.data.params["lr"] == search.data.params["lr"]
    assert final.data.params["final.train_images"] == str(ALL_IMAGES)
    for key in ("train_loss", "train_acc"):
        assert sorted(m.step for m in client.get_metric_history(final.info.run_id, key)) == [1, 2]
    assert not {"val_acc", "val_loss"} & set(final.data.metrics)
    # the driver stored the checkpoint the task returned; no validation figure inside either
    stored = load_checkpoint(workdir / "runs" / "_driver" / "with-final" / "final_fit.pt")
    assert stored["final_fit"] == {"train_on": "all", "train_images": ALL_IMAGES} and stored["epoch"] == 2
    assert all(math.isnan(epoch["val_acc"]) for epoch in stored["history"])
    registered = json.loads((workdir / "runs" / "_driver" / "with-final" / "registered.json").read_text())
    assert registered["checkpoint_kind"] == "final_fit" and registered["final_run_id"] == final.info.run_id
    label = search.data.tags["tuner.trial_label"]
    assert f"final fit of {label}: 2 epochs on {ALL_IMAGES} images" in out
    assert f"  final fit:   2 epochs on {ALL_IMAGES} images (train + validation)" in out
    assert f"registered as model version {version.version} of {DEFAULT_MODEL_NAME}: the final fit's checkpoint" in out


def test_sweep_checkpoints_record_the_spaces_split_and_tuner_train_resumes_on_it(
        final_sweep: tuple[str, str], workdir: Path, tmp_path: Path) -> None:
    """Every checkpoint of the sweep records the split of the space's `data:` section (val_size 200, where
    tuner.train's default is 5000): `python -m tuner.train --resume` of a trial's continues on that split without
    a flag and refuses another; the final fit's records that it trained on the validation images too and is not
    resumed (a resumed run would validate on images it trained on)."""
    split = {"val_size": 200, "split_seed": 0, "subset": None,
             "fingerprint": load_splits(workdir / "data", 200).fingerprint(), "train_on": "train"}
    trials = sorted((workdir / "runs" / "with-final").glob("t*/checkpoint_*/checkpoint.pt"))
    assert trials, "the sweep kept no trial checkpoint"
    assert all(load_checkpoint(path)["split"] == split for path in trials)
    final = workdir / "runs" / "_driver" / "with-final" / "final_fit.pt"
    assert load_checkpoint(final)["split"] == {**split, "train_on": "all"}

    trial = trials[0]
    common = ["--data-dir", workdir / "data", "--device", "cpu", "--epochs", "2"]
    other = run_train(*common, "--resume", trial, "--val-size", "300", "--out", tmp_path / "other.pt", cwd=tmp_path)
    assert_one_line_error(other, f"flags: --val-size 300 differs from the split checkpoint {trial} trained on "
                                 "(val_size=200)", "leave --val-size out")
    out = tmp_path / "resumed.pt"
    resumed = run_train(*common, "--resume", trial, "--out", out, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "train 500 / val 200 images" in resumed.stdout and "records no data split" not in resumed.stdout
    assert load_checkpoint(out)["split"] == split and load_checkpoint(out)["epoch"] == 2
    everything = run_train(*common[:-1], "3", "--resume", final, "--out", tmp_path / "final.pt", cwd=tmp_path)
    assert_one_line_error(everything, f"checkpoint {final} is a final fit that trained on the training and the "
                                      "validation images (train_on all)")
    assert not (tmp_path / "other.pt").exists() and not (tmp_path / "final.pt").exists()


def test_promote_scores_the_final_fit_on_the_test_split(final_sweep: tuple[str, str], workdir: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from tuner.promote import promote, score_on_val

    _, uri = final_sweep
    assert promote(DEFAULT_MODEL_NAME, None, "with-final", workdir / "data", False, False, uri)
    version = version_of(MlflowClient(uri), "with-final")
    assert version.tags["eval.images"] == "200" and 0 <= float(version.tags["eval.test_acc"]) <= 1
    # without a test split (--allow-val) the figure compared is the search checkpoint's, and promote says so
    assert score_on_val(version, DEFAULT_MODEL_NAME).accuracy == float(version.tags["search_val_acc"])
    assert "its val_acc is its search checkpoint's" in capsys.readouterr().out
    # --version N on a database store, whose client gives versions as int (a server's as str)
    assert promote(DEFAULT_MODEL_NAME, str(version.version), None, workdir / "data", False, False, uri)
    assert f"version {version.version} already holds the 'champion' alias" in capsys.readouterr().out


def test_the_report_lists_trials_not_the_final_fit(final_sweep: tuple[str, str]) -> None:
    from tuner.report import collect
    from tuner.tracking import find_sweep_run

    _, uri = final_sweep
    client = MlflowClient(uri)
    trials, _ = collect(client, find_sweep_run(client, "with-final"))
    assert not trials.empty and not trials["run_name"].str.startswith("final fit").any()
    assert len(trials) == len([r for r in child_runs(uri, "with-final") if "tuner.final_of" not in r.data.tags])


def test_without_final_the_search_checkpoint_is_registered(workdir: Path, ray_head: RayNode) -> None:
    uri = f"sqlite:///{workdir / 'search-only.db'}"
    out = finish(driver(workdir, ray_head, uri, "--space", str(workdir / "search-only.yaml"), "--name", "no-final"))
    version = version_of(MlflowClient(uri), "no-final")
    assert version.tags["checkpoint_kind"] == "search" and "final_run_id" not in version.tags
    assert version.run_id == version.tags["search_run_id"] == trial_run(uri, "no-final",
                                                                        version.tags["search_trial_id"]).info.run_id
    assert not final_runs(uri, "no-final") and "final fit" not in out
    assert "the search checkpoint (not yet @champion" in out


def test_a_failing_final_fit_registers_the_search_checkpoint_and_says_so(workdir: Path, ray_head: RayNode) -> None:
    uri = f"sqlite:///{workdir / 'failing.db'}"
    out = finish(driver(workdir, ray_head, uri, "--space", str(workdir / "final.yaml"), "--name", "failing",
                        code=FAILING))
    version = version_of(MlflowClient(uri), "failing")
    assert version.tags["checkpoint_kind"] == "search" and version.run_id == version.tags["search_run_id"]
    label = trial_run(uri, "failing", version.tags["search_trial_id"]).data.tags["tuner.trial_label"]
    said = [line for line in out.splitlines() if line.startswith(f"final fit of {label} failed")]
    assert said == [f"final fit of {label} failed (RuntimeError: injected failure of the final fit): registering "
                    f"the search checkpoint of {label} instead (checkpoint_kind=search)"], out[-3000:]
    # what was recorded stays: the final fit's run, ended FAILED with the reason
    (final,) = final_runs(uri, "failing")
    assert final.info.status == "FAILED" and "injected failure" in final.data.tags["tuner.final_error"]
    registered = json.loads((workdir / "runs" / "_driver" / "failing" / "registered.json").read_text())
    assert registered["checkpoint_kind"] == "search"


def test_a_driver_killed_during_the_final_fit_resumes_into_it_and_a_finished_sweep_registers_once(
        workdir: Path, ray_head: RayNode) -> None:
    uri = f"sqlite:///{workdir / 'killed.db'}"
    first = driver(workdir, ray_head, uri, "--space", str(workdir / "final.yaml"), "--name", "killed-final",
                   code=SLOW)
    wait_for_line(first, "final fit of t")  # the task has started (and sleeps)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    assert not (workdir / "runs" / "_driver" / "killed-final" / "registered.json").exists()

    out = finish(driver(workdir, ray_head, uri, "--resume", "killed-final"))
    assert "[1/2]" not in out and "[2/2]" not in out, "a trial ran again"
    assert f"2 epochs on {ALL_IMAGES} images" in out
    assert version_of(MlflowClient(uri), "killed-final").tags["checkpoint_kind"] == "final_fit"
    (final,) = final_runs(uri, "killed-final")  # the killed driver's run, finished by the resumed one
    assert final.info.status == "FINISHED"
    assert len([t for t in study_of(workdir, "killed-final").trials if "ray_trial_id" in t.user_attrs]) == 2
    assert_each_epoch_once(uri, child_runs(uri, "killed-final"))

    # the sweep is finished: resumed again, it neither fits nor registers a second time
    out = finish(driver(workdir, ray_head, uri, "--resume", "killed-final"))
    assert "already registered" in out and "(final_fit checkpoint)" in out
    assert "epochs on" not in out.replace("  final fit:   2 epochs on", "")  # no final fit started
    version_of(MlflowClient(uri), "killed-final")  # still one version
    assert len(final_runs(uri, "killed-final")) == 1

    # other images under --data-dir: refused in one line before anything is reopened or trained
    other = workdir / "other-images"
    write_synthetic_cifar10(other / "data", n_train=ALL_IMAGES, n_test=200, seed=3)
    refused = driver(workdir, ray_head, uri, "--resume", "killed-final", "--data-dir", str(other / "data"))
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode == 2, out
    assert "holds other images than sweep killed-final ran on" in out and "Traceback" not in out
    assert find_sweep_run(MlflowClient(uri), "killed-final").info.status == "FINISHED"  # not reopened

    # another tracking store, where the sweep has no run: refused with the store it ran with, none made there
    other_uri = f"sqlite:///{workdir / 'other.db'}"
    refused = driver(workdir, ray_head, other_uri, "--resume", "killed-final")
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode == 2, out
    assert f"sweep killed-final has no run in the tracking store '{other_uri}'; it ran with '{uri}': resume " \
           f"with --mlflow-uri '{uri}'" in out and "Traceback" not in out and "registered" not in out
    assert MlflowClient(other_uri).get_experiment_by_name("tuner") is None


def test_train_on_all_trains_on_train_and_val_and_monitors_a_few_of_them() -> None:
    import numpy as np

    from tuner.data import DataSplits, ImageSet
    from tuner.final_fit import final_splits

    def images(n: int, label: int) -> ImageSet:
        return ImageSet(np.full((n, 32, 32, 3), label, dtype=np.uint8), np.full(n, label, dtype=np.int64))

    data = DataSplits(images(3000, 1), images(1500, 2))
    every = final_splits(data, "all")
    assert len(every.train) == 4500 and set(every.train.labels) == {1, 2}
    assert len(every.val) == 1000 and set(every.val.labels) == {2}  # FINAL_MONITOR_IMAGES of the trained-on val
    assert final_splits(data, "train") is data


def test_bad_final_values_exit_2_with_one_line_each(tmp_path: Path) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text(textwrap.dedent(SPACE) + "final:\n  epochs: 0\n  train_on: test\n  lr: 0.1\n")
    result = subprocess.run([sys.executable, "-m", "tuner.run", "--space", str(space), "--dry-run"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"error: {space}:") for line in lines), lines
    assert "final.epochs=0 must be a whole number from 1 to 10,000" in lines[0]
    assert "final.train_on='test' must be one of all, train" in lines[1]
    assert "unknown key 'lr' in final" in lines[2]


def test_the_dry_run_says_a_final_fit_follows_and_prices_it(workdir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tuner.run", "--space", str(workdir / "final.yaml"), "--dry-run"],
                            cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "final fit: the champion's configuration trained again for 2 epochs on the training and validation" \
        in result.stdout
    assert "final fit, after the search: 2 epochs on 50,000 images" in result.stdout  # priced on CIFAR-10
