"""End to end: `python -m tuner.run` against a real Ray node and a real mlflow server, on generated data."""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.ray_nodes import RayNode, ray_env, started_head, trial_results
from tuner.data import write_synthetic_cifar10
from tuner.tracking import EPOCH_METRICS

pytestmark = pytest.mark.integration

TINY = """
name: tiny
fixed: {batch_size: 50, warmup_epochs: 0, blocks: [1, 1], crop_padding: 2, tta_flip: false, ema_epochs: 0.5}
parameters:
  nesterov: {choices: [true, false]}  # first: the two trials launched before any result differ in it
  widths: {choices: [[4, 8], [8, 16], [32, 64], [48, 96]]}
  lr: {type: float, low: 0.005, high: 0.5, log: true}
  momentum: {type: float, low: 0.85, high: 0.95, when: {nesterov: true}}
search: {seed: 3, startup_trials: 3, max_concurrent: 2}
scheduler: {type: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}
resources: {cpus: 1, gpus: 0}
budget: {trials: 7}
constraints: {max_params: 30000}
data: {val_size: 200}
"""
MAX_EPOCHS = 4


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNode]:
    yield from started_head(tmp_path_factory.mktemp("ray"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    write_synthetic_cifar10(root / "data", n_train=700, seed=1)
    (root / "tiny.yaml").write_text(textwrap.dedent(TINY))
    return root


def tuner_run(workdir: Path, head: RayNode, mlflow_uri: str, *args: str, **popen: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "tuner.run", "--address", head.address, "--mlflow-uri", mlflow_uri,
               "--storage", str(workdir / "runs"), "--data-dir", str(workdir / "data"), *args]
    env = {**ray_env(head.token), "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def finish(process: subprocess.Popen, timeout_s: float = 400) -> str:
    out, _ = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, out[-4000:]
    return out


def wait_for_line(driver: subprocess.Popen, prefix: str, timeout_s: float = 300) -> list[str]:
    """Read the driver's output up to the first line starting with `prefix`; the lines read."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = driver.stdout.readline()
        if not line and driver.poll() is not None:
            pytest.fail(f"the sweep ended (exit {driver.returncode}) before {prefix!r}:\n" + "".join(seen[-40:]))
        seen.append(line)
        if line.startswith(prefix):
            return seen
    driver.kill()
    pytest.fail(f"no {prefix!r} line in {timeout_s:.0f} s:\n" + "".join(seen[-50:]))


def kill_after_trials(driver: subprocess.Popen, finished: int) -> set[str]:
    """SIGKILL the driver (and its process group) once `finished` trials have ended; their ids."""
    seen = wait_for_line(driver, f"[{finished}/")
    time.sleep(3)  # past one snapshot period (TUNE_GLOBAL_CHECKPOINT_S=2 in tuner.run)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    return {m.group(1) for line in seen if (m := re.match(r"\[\d+/\d+\] trial (\S+)", line))}


def study_of(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'runs' / '_driver' / name / 'optuna.db'}")


def child_runs(uri: str, sweep: str) -> list:
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parent = client.search_runs(experiments, f"tags.`tuner.sweep` = '{sweep}' and tags.`mlflow.parentRunId` IS NULL")
    assert len(parent) == 1, f"one parent run per sweep, found {len(parent)}"
    return client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'",
                              max_results=1000)


def assert_each_epoch_once(uri: str, runs: list) -> None:
    """No metric of any child run has a step twice: one writer, and it never sends a step again."""
    client = MlflowClient(uri)
    for run in runs:
        for key in run.data.metrics:
            counts = Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert max(counts.values()) == 1, (run.data.tags["tuner.trial_id"], key, counts)


def test_sweep_with_asha_prunes_some_and_tells_optuna_pruned(workdir: Path, ray_head: RayNode, mlflow_server) -> None:
    out = finish(tuner_run(workdir, ray_head, mlflow_server.uri, "--space", str(workdir / "tiny.yaml"),
                           "--name", "asha"))
    study = study_of(workdir, "asha")
    launched = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(launched) == 7
    pruned = [t for t in launched if t.state == TrialState.PRUNED]
    complete = [t for t in launched if t.state == TrialState.COMPLETE]
    assert pruned, "ASHA stopped no trial"
    assert complete, "no trial ran to max_epochs"
    for trial in pruned:  # told PRUNED with the epochs it ran, never COMPLETE with a low-epoch score
        assert max(trial.intermediate_values) < MAX_EPOCHS
    for trial in complete:
        assert sorted(trial.intermediate_values) == list(range(1, MAX_EPOCHS + 1))
    # infeasible samples were rejected before launch and counted
    rejected = [t for t in study.trials if "infeasible" in t.user_attrs]
    assert all(t.params["widths"] in ("4,8", "8,16") for t in launched)
    assert f"{len(rejected)} infeasible configs rejected before launch" in out

    runs = child_runs(mlflow_server.uri, "asha")
    trial_runs = [r for r in runs if r.data.tags.get("tuner.outcome") != "infeasible"]
    assert len(trial_runs) == 7 and len({r.data.tags["tuner.trial_id"] for r in trial_runs}) == 7
    assert len(runs) - len(trial_runs) == len(rejected)
    client = MlflowClient(mlflow_server.uri)
    outcomes = {r.data.tags["tuner.outcome"] for r in trial_runs}
    assert "completed" in outcomes and any(o.startswith("stopped_by_asha_at_epoch_") for o in outcomes)
    for run in trial_runs:
        epochs = int(run.data.tags["tuner.epochs_run"])
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        assert "val_acc" not in run.data.params and run.data.params["widths"] in ("4,8", "8,16")
        # momentum is drawn in every trial but is a trial's setting only where its `when:` holds
        assert ("momentum" in run.data.params) == (run.data.params["nesterov"] == "True")
    assert all("momentum" in t.params for t in launched)
    assert {t.params["nesterov"] for t in launched} == {True, False}
    assert "registered as model version" in out
    # Ray's own noise stays off the console: a worker's teardown SystemExit (ASHA's stops end actors; see
    # test_a_workers_teardown_systemexit_stays_off_the_console) and ray.init's SIGTERM warning
    assert "SystemExit" not in out and "Exception ignored" not in out and "SIGTERM handler" not in out, out[-4000:]
    # What --resume unpickles names the driver's classes by module (tuner.bookkeeping), never `__main__`: a
    # sweep started by `python -m tuner.run` resumes under tuner.run.main([...]), and the other way round.
    saved = [workdir / "runs" / "asha" / "tuner.pkl", *(workdir / "runs" / "asha").glob("searcher-state-*.pkl")]
    assert len(saved) == 2 and not [p.name for p in saved if b"__main__" in p.read_bytes()]
    # each trial's torch used the one CPU its resources ask for (not a thread per core of the node)
    assert {row["threads"] for rows in trial_results(workdir / "runs" / "asha").values() for row in rows} == {1}


def test_resume_after_driver_sigkill_loses_no_finished_trial(workdir: Path, ray_head: RayNode,
                                                            mlflow_server) -> None:
    driver = tuner_run(workdir, ray_head, mlflow_server.uri, "--space", str(workdir / "tiny.yaml"),
                       "--name", "killed", start_new_session=True)
    finished_before = kill_after_trials(driver, 3)
    assert len(finished_before) >= 3

    out = finish(tuner_run(workdir, ray_head, mlflow_server.uri, "--resume", "killed"))
    assert "[1/7]" not in out, "the progress count restarted at the resume"
    study = study_of(workdir, "killed")
    launched = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert not [t for t in launched if t.state == TrialState.RUNNING], "a trial was left RUNNING in the study"
    # A trial the killed driver started after its last snapshot is unknown to the resumed one: abandoned, or,
    # when it checkpointed first, ended where it stopped (outcome stopped_by_driver_kill_at_epoch_N / completed).
    abandoned = {t.user_attrs["ray_trial_id"] for t in launched if t.user_attrs.get("abandoned")}
    runs = [r for r in child_runs(mlflow_server.uri, "killed") if r.data.tags.get("tuner.outcome") != "infeasible"]
    assert {r.data.tags["tuner.trial_id"] for r in runs if r.data.tags.get("tuner.outcome") == "abandoned"} == abandoned
    lost = set(re.findall(r"trial (\S+) was started after its killed driver's last snapshot", out))
    assert not lost & abandoned
    assert len({t.user_attrs["ray_trial_id"] for t in launched}) == 7 + len(abandoned) + len(lost)
    runs = [r for r in runs if r.data.tags["tuner.trial_id"] not in abandoned]
    trial_ids = [r.data.tags["tuner.trial_id"] for r in runs]
    assert len(trial_ids) == len(set(trial_ids)) == 7 + len(lost), "a trial was rerun or logged twice"
    assert finished_before <= {r.data.tags["tuner.trial_label"] for r in runs}  # the console prints labels
    client = MlflowClient(mlflow_server.uri)
    for run in runs:
        assert run.data.tags.get("tuner.outcome"), f"trial {run.data.tags['tuner.trial_id']} has no outcome"
        epochs = int(run.data.tags["tuner.epochs_run"])
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        trial_id = run.data.tags["tuner.trial_id"]
        assert steps == list(range(1, epochs + 1)), (trial_id, run.data.tags["tuner.outcome"], steps,
                                                     [line for line in out.splitlines() if trial_id in line])
    assert_each_epoch_once(mlflow_server.uri, child_runs(mlflow_server.uri, "killed"))
    assert "best trial" in out


RESTARTED_TRIAL = """
import json, sys
from pathlib import Path
import ray
from ray import tune
from tuner.checkpoint import save_checkpoint
from tuner.config import TrainConfig
from tuner.data import load_splits
from tuner.train import fit
from tuner.trainable import CHECKPOINT_FILE, TrialSettings, train_trial

root, address = Path(sys.argv[1]), sys.argv[2]
experiment = root / "runs" / "restarted"
config = TrainConfig(widths=(4, 8), blocks=(1, 1), epochs=2, batch_size=50, warmup_epochs=0, tta_flip=False)
data = load_splits(root / "data", 200)
finished = fit(config, data).checkpoint  # both epochs, stored before Ray's state could list them

def trainable(trial_config):
    own = experiment / f"t001-{tune.get_context().get_trial_id()}" / "checkpoint_000001"
    save_checkpoint(finished, own / CHECKPOINT_FILE)
    train_trial(trial_config, data, TrialSettings(gpus=0, cpus=1, metric="val_acc", experiment=str(experiment)))

ray.init(address=address)
results = tune.Tuner(trainable, param_space={"train": config.to_dict(), "index": 1},
                     run_config=tune.RunConfig(name="restarted", storage_path=str(root / "runs"))).fit()
frame = results[0].metrics_dataframe
print(json.dumps({"epochs": frame["epoch"].tolist(), "val_acc": frame["val_acc"].tolist(),
                  "stored": finished["history"][-1]["val_acc"],
                  "resumed": [row["epoch"] for row in results[0].metrics.get("resumed_epochs", [])]}))
"""


def run_trial_script(code: str, workdir: Path, ray_head: RayNode, tmp_path: Path) -> dict:
    """Run a script that drives one trial on the Ray node (argv: the work folder, the node's address); the JSON
    line it prints about what the trial reported."""
    script = tmp_path / "trial.py"
    script.write_text(code)
    env = {**ray_env(ray_head.token), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script), str(workdir), ray_head.address], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith('{"epochs"'))
    return json.JSONDecoder().raw_decode(line)[0]  # a worker's log line may follow it on the same line


def test_a_trial_restarted_after_all_its_epochs_reports_its_last_one_again_and_trains_nothing(
        workdir: Path, ray_head: RayNode, tmp_path: Path) -> None:
    """The trial's own folder holds a checkpoint of its last epoch that Ray's state does not list (its driver was
    killed first): it continues from there, which leaves nothing to train, so it reports that epoch once more
    and ends."""
    reported = run_trial_script(RESTARTED_TRIAL, workdir, ray_head, tmp_path)
    assert reported["epochs"] == [2] and reported["val_acc"] == [pytest.approx(reported["stored"])]
    assert reported["resumed"] == [1, 2]  # the checkpoint's epochs, for the driver to fill in (outcomes.RESUMED_EPOCHS)


DELETED_CHECKPOINT_TRIAL = """
import json, os, shutil, sys, tempfile
from pathlib import Path
import ray
from ray import tune
from tuner.checkpoint import save_checkpoint
from tuner.config import TrainConfig
from tuner.data import load_splits
from tuner.sweep_state import SweepState
from tuner.train import fit
from tuner.trainable import CHECKPOINT_FILE, TrialSettings, train_trial

root, address = Path(sys.argv[1]), sys.argv[2]
experiment = root / "runs" / "stand-in"
config = TrainConfig(widths=(4, 8), blocks=(1, 1), epochs=3, batch_size=50, warmup_epochs=0, tta_flip=False)
data = load_splits(root / "data", 200)
states = {}
fit(config, data, lambda metrics, make: states.__setitem__(metrics.epoch, make()))
first_attempt = root / "stand-in-first-attempt"

def trainable(trial_config):
    trial_id = tune.get_context().get_trial_id()
    if first_attempt.exists():  # Ray restarted it from the checkpoint it holds: the stand-in
        train_trial(trial_config, data, TrialSettings(gpus=0, cpus=1, metric="val_acc", experiment=str(experiment)))
        return
    first_attempt.write_text("")
    with tempfile.TemporaryDirectory() as folder:  # epoch 1, the checkpoint Ray's snapshot names
        save_checkpoint(states[1], Path(folder) / CHECKPOINT_FILE)
        tune.report({"epoch": 1, "val_acc": states[1]["history"][-1]["val_acc"]},
                    checkpoint=tune.Checkpoint.from_directory(folder))
    # What a killed driver leaves: epoch 2 checkpointed (not yet in a snapshot), epoch 1's deleted by retention
    own = experiment / f"t001-{trial_id}"
    save_checkpoint(states[2], own / "checkpoint_000001" / CHECKPOINT_FILE)
    shutil.rmtree(own / "checkpoint_000000")
    state = SweepState(str(root / "runs"), "stand-in")
    state.restored_checkpoints = {trial_id: "checkpoint_000000"}
    assert state.stand_in_for_deleted_checkpoints() == [f"t001-{trial_id}/checkpoint_000000"]
    assert state.stand_in_for_deleted_checkpoints() == []  # once
    raise RuntimeError("the trial's worker dies")

ray.init(address=address)
results = tune.Tuner(
    trainable, param_space={"train": config.to_dict(), "index": 1},
    tune_config=tune.TuneConfig(trial_dirname_creator=lambda trial: f"t001-{trial.trial_id}"),
    run_config=tune.RunConfig(name="stand-in", storage_path=str(root / "runs"),
                              failure_config=tune.FailureConfig(max_failures=1))).fit()
frame = results[0].metrics_dataframe
stand_in = experiment / f"t001-{results[0].metrics['trial_id']}" / "checkpoint_000000"
print(json.dumps({"epochs": frame["epoch"].tolist(), "error": str(results[0].error),
                  "resumed": [row["epoch"] for row in results[0].metrics.get("resumed_epochs", [])],
                  "stand_in": sorted(os.listdir(stand_in)) if stand_in.is_dir() else None}))
"""


def test_a_trial_whose_restored_checkpoint_was_deleted_continues_from_its_newest_through_a_stand_in(
        workdir: Path, ray_head: RayNode, tmp_path: Path) -> None:
    """Ray's retention deletes a trial's older checkpoints; a driver killed after such a deletion and before its
    next snapshot leaves a snapshot naming a deleted folder, and Ray fails a trial it cannot restore from there.
    The resumed driver stands a note-only folder in for it (SweepState.stand_in_for_deleted_checkpoints): Ray
    restores from that, and the trial continues from its newest checkpoint, losing and repeating no epoch."""
    reported = run_trial_script(DELETED_CHECKPOINT_TRIAL, workdir, ray_head, tmp_path)
    assert reported["error"] == "None", reported
    assert reported["epochs"] == [1, 3] and reported["resumed"] == [1, 2], reported  # epoch 3 trained, on epoch 2's
    assert reported["stand_in"] == ["deleted_by_ray.txt"], reported


ENDED_TRIAL = """
import json, sys
import ray
from ray import tune
from tuner.config import TrainConfig
from tuner.data import load_splits
from tuner.trainable import TrialSettings, train_trial

root, address = sys.argv[1], sys.argv[2]
config = TrainConfig(widths=(4, 8), blocks=(1, 1), epochs=2, batch_size=50, warmup_epochs=0, tta_flip=False)
data = load_splits(root + "/data", 200)

def trainable(trial_config):  # what the resumed driver hands over: this trial was ended at epoch 1, val_acc 0.25
    ended = {tune.get_context().get_trial_id(): {"epoch": 1, "val_acc": 0.25, "gpu_seconds": 0.0}}
    train_trial(trial_config, data, TrialSettings(gpus=0, cpus=1, metric="val_acc", ended=ended))

ray.init(address=address)
results = tune.Tuner(trainable, param_space={"train": config.to_dict(), "index": 1},
                     run_config=tune.RunConfig(name="ended", storage_path=root + "/runs")).fit()
frame = results[0].metrics_dataframe
print(json.dumps({"epochs": frame["epoch"].tolist(), "val_acc": frame["val_acc"].tolist(),
                  "ended_earlier": frame["ended_earlier"].tolist()}))
"""


def test_a_trial_an_earlier_driver_ended_reports_that_result_again_and_trains_nothing(
        workdir: Path, ray_head: RayNode, tmp_path: Path) -> None:
    """Its settings (from the resumed driver's read of ended.json) say how it ended; its worker reads nothing of
    the driver's state under --storage."""
    reported = run_trial_script(ENDED_TRIAL, workdir, ray_head, tmp_path)
    assert reported == {"epochs": [1], "val_acc": [0.25], "ended_earlier": [True]}


# A driver connected as tuner.run connects (connect_ray) whose task provokes, in its worker, what a worker's
# teardown meets: the raylet's SIGTERM handled inside a finalizer (Ray's handler raises SystemExit there, which
# Python can only print), then a finalizer's own error. It waits for stdin to close (2 minutes at most).
FINALIZERS = """
import os, select, signal, sys, weakref
import ray
from tuner.ray_cluster import connect_ray

connect_ray(sys.argv[1])

@ray.remote(num_cpus=1)
def finalizers() -> str:
    class Held:
        pass

    def exit_requested(_ref):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # Ray's handler runs at one of these instructions: inside the callback
            pass

    def own_error(_ref):
        raise ValueError("a finalizer's own error")

    for callback in (exit_requested, own_error):
        held = Held()
        ref = weakref.ref(held, callback)
        del held
    return f"worker {os.getpid()} done"

print(ray.get(finalizers.remote()), flush=True)
select.select([sys.stdin], [], [], 120)  # until the test closes stdin
"""


def test_a_workers_teardown_systemexit_stays_off_the_console(ray_head: RayNode, tmp_path: Path) -> None:
    """A worker Ray ends (an actor ASHA's stop left idle, the final fit's worker) disconnects from its raylet,
    which sends it SIGTERM at once; Ray's handler raises SystemExit wherever the exiting worker is, often in a
    weakref callback, and Python prints that ("Exception ignored in ... SystemExit: 1") to the worker's stderr,
    which Ray shows on the driver's console (1 sweep in ~10 here, by the worker logs). The race is reproduced
    directly: the driver shows the finalizer's own error, and no SystemExit before it."""
    env = {**ray_env(ray_head.token), "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-c", FINALIZERS, ray_head.address], cwd=tmp_path, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    deadline = time.monotonic() + 120
    try:  # Ray prefixes a worker's lines with its name and pid
        while not (any("ValueError: a finalizer's own error" in line for line in seen)
                   and any(re.match(r"worker \d+ done", line) for line in seen)):
            line = driver.stdout.readline()
            assert (line or driver.poll() is None) and time.monotonic() < deadline, "".join(seen[-40:])
            seen.append(line)
    finally:
        driver.stdin.close()
        driver.wait(timeout=60)
    assert not [line for line in seen if "SystemExit" in line], "".join(seen)


def test_a_trial_ended_just_before_a_kill_is_not_trained_or_recorded_again(workdir: Path, ray_head: RayNode,
                                                                         mlflow_server) -> None:
    """SIGKILL half a second after a trial's outcome line: Ray's newest snapshot (every 2 s) may still list it
    as running, and the restored sweep starts it again. It must end again at once (ended.json), keeping the
    outcome, study state and epochs the first driver recorded, and not count against the budget twice."""
    driver = tuner_run(workdir, ray_head, mlflow_server.uri, "--space", str(workdir / "tiny.yaml"),
                       "--name", "ended-kill", start_new_session=True)
    seen = wait_for_line(driver, "[1/")
    first = re.match(r"\[1/7\] trial (\S+) (\S+):", seen[-1])
    assert first, seen[-1]
    time.sleep(0.5)  # past the driver's writes of that outcome (study, ended.json), before Tune's next snapshot
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    ended_before = {t.user_attrs["ray_trial_id"]: t.state for t in study_of(workdir, "ended-kill").trials
                    if "ray_trial_id" in t.user_attrs and t.state.is_finished()}

    out = finish(tuner_run(workdir, ray_head, mlflow_server.uri, "--resume", "ended-kill"))
    counts = [int(m.group(1)) for m in re.finditer(r"^\[(\d+)/7\] trial", out, re.MULTILINE)]
    assert counts and max(counts) <= 7 and len(counts) == len(set(counts)), (counts, out[-6000:])
    after = {t.user_attrs["ray_trial_id"]: t.state for t in study_of(workdir, "ended-kill").trials
             if "ray_trial_id" in t.user_attrs}
    assert all(after[trial_id] == state for trial_id, state in ended_before.items())
    runs = child_runs(mlflow_server.uri, "ended-kill")
    assert_each_epoch_once(mlflow_server.uri, runs)
    ended = json.loads((workdir / "runs" / "_driver" / "ended-kill" / "ended.json").read_text())
    label, outcome = first.groups()
    assert [r.data.tags["tuner.outcome"] for r in runs if r.data.tags.get("tuner.trial_label") == label
            and r.data.tags["tuner.trial_id"] in ended] == [outcome]


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "SIGUSR1"])
def test_ctrl_c_stops_the_sweep_unfinished_and_resume_completes_it(workdir: Path, ray_head: RayNode,
                                                                   tmp_path: Path, stop: str) -> None:
    """Ctrl-C, and SIGTERM (systemd, Kubernetes, `timeout`) the same way; and SIGUSR1, on which Tune stops its
    run as on Ctrl-C (Slurm sends it before a job's time is up): a sweep Tune stopped is not a finished one.
    Once stopped, the three leave the same state, so the second driver and the resume run with SIGINT only."""
    name = f"ctrl-c-{stop.lower()}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = tuner_run(workdir, ray_head, uri, "--space", str(workdir / "tiny.yaml"), "--name", name)
    seen = wait_for_line(driver, "[2/7]")
    if stop == "SIGINT":  # a second driver of the running sweep is refused before it writes anything
        second = tuner_run(workdir, ray_head, uri, "--resume", name)
        refused, _ = second.communicate(timeout=120)
        assert second.returncode == 2 and "Traceback" not in refused, refused[-3000:]
        assert [line for line in refused.splitlines() if line.startswith("error: ")] == [
            line for line in refused.splitlines() if line.startswith(f"error: sweep {name} is being driven now by "
                                                                     f"pid {driver.pid} on host ")], refused[-3000:]
    driver.send_signal(getattr(signal, stop))
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, ("".join(seen) + out)[-3000:]
    assert f"sweep {name} interrupted; continue it with: python -m tuner.run --resume {name} --storage " \
           f"{workdir / 'runs'}\n" in out
    # No traceback through our code (Ray may log one of its own, e.g. a snapshot upload that failed under
    # load, and carry on).
    assert 'tuner/run.py", line' not in out, out[-3000:]
    assert "registered as model version" not in out
    assert "Tuner.restore(" not in out, out[-3000:]  # one way to continue: the driver's --resume line
    client = MlflowClient(uri)
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                f"tags.`tuner.sweep` = '{name}' and tags.`mlflow.parentRunId` IS NULL")
    assert [r.info.status for r in parent] == ["KILLED"]
    unfinished = [t for t in study_of(workdir, name).trials if t.state == TrialState.RUNNING]
    assert unfinished, "Ctrl-C finished the running trials instead of leaving them to --resume"
    if stop != "SIGINT":
        return
    out = finish(tuner_run(workdir, ray_head, uri, "--resume", name))
    launched = [t for t in study_of(workdir, name).trials if "ray_trial_id" in t.user_attrs]
    assert not [t for t in launched if t.state == TrialState.RUNNING]
    assert len([t for t in launched if not t.user_attrs.get("abandoned")]) == 7
    assert "registered as model version" in out
    assert_each_epoch_once(uri, child_runs(uri, name))


def block_folder(folder: Path, aside: Path) -> None:
    """Move `folder` to `aside` and put a file in its place. The driver may write into `folder` between the two
    steps, which makes it again: what it wrote joins the files moved aside (newer, so it replaces them)."""
    folder.rename(aside)
    while True:
        try:
            folder.write_text("storage away")
            return
        except IsADirectoryError:
            for item in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):  # a partial file the driver renamed meanwhile
                    os.replace(item, aside / item.name)
            with contextlib.suppress(OSError):  # not empty: another write came in; move that one too
                folder.rmdir()


def unblock_folder(folder: Path, aside: Path) -> None:
    """Undo block_folder: the files moved aside go back to `folder`, with what the driver wrote there meanwhile."""
    folder.unlink()
    while True:
        try:
            aside.rename(folder)  # onto nothing, or onto a folder the driver just made while still empty
            return
        except OSError:  # the driver made `folder` and wrote into it: its files are newer
            for item in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):  # a partial file the driver renamed meanwhile
                    os.replace(item, aside / item.name)
            with contextlib.suppress(OSError):
                folder.rmdir()


def test_a_storage_outage_mid_sweep_delays_the_drivers_state_and_stops_nothing(workdir: Path, ray_head: RayNode,
                                                                               tmp_path: Path) -> None:
    """tuner's own state under --storage (`_driver/<sweep>/`: study, ledger, digests, lease) cannot be written
    for a while; the sweep goes on and stores it once it can (Ray's trial folders stay reachable here)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = tuner_run(workdir, ray_head, uri, "--space", str(workdir / "tiny.yaml"), "--name", "storage-outage")
    seen = wait_for_line(driver, "[1/7]")
    folder, aside = workdir / "runs" / "_driver" / "storage-outage", workdir / "runs" / "storage-outage-aside"
    block_folder(folder, aside)  # every write under it now fails with a real OSError
    seen += wait_for_line(driver, "[3/7]")  # the study upload after a trial's end failed
    time.sleep(1)
    unblock_folder(folder, aside)
    out = "".join(seen) + finish(driver)
    assert out.count("warning: could not store") == 1 and "works again after" in out, out[-3000:]
    assert "registered as model version" in out and "Traceback" not in out, out[-3000:]
    launched = [t for t in study_of(workdir, "storage-outage").trials if "ray_trial_id" in t.user_attrs]
    assert len(launched) == 7 and all(t.state.is_finished() for t in launched)


def test_epoch_budget_holds_across_a_resume_and_says_what_it_stopped(workdir: Path, ray_head: RayNode,
                                                                      tmp_path: Path) -> None:
    """FIFO trials of 4 epochs, 10 epochs in all; the driver is killed after the first trial and resumed."""
    space = (workdir / "tiny.yaml").read_text().replace("type: asha,", "type: fifo,").replace(
        "budget: {trials: 7}", "budget: {trials: 7, epochs: 10}")
    (tmp_path / "budget.yaml").write_text(space)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = tuner_run(workdir, ray_head, uri, "--space", str(tmp_path / "budget.yaml"), "--name", "budget",
                       start_new_session=True)
    assert kill_after_trials(driver, 1)
    out = finish(tuner_run(workdir, ray_head, uri, "--resume", "budget"))
    assert "budget.epochs is spent" in out

    runs = [r for r in child_runs(uri, "budget") if r.data.tags.get("tuner.outcome") != "infeasible"]
    outcomes = [r.data.tags.get("tuner.outcome", "no outcome") for r in runs]
    # (trials the killed driver started after its last snapshot are `abandoned`; their epochs count)
    saved = [r for r in runs if r.data.tags.get("tuner.outcome") != "abandoned"]
    assert len(saved) < 7, "the epoch budget did not stop the sweep"
    assert any(o.startswith("stopped_by_budget_at_epoch_") for o in outcomes), outcomes
    assert not any(o.startswith("stopped_by_asha") for o in outcomes), outcomes  # FIFO never stops a trial
    assert all(r.info.status == "FINISHED" for r in saved), [(o, r.info.status) for o, r in zip(outcomes, runs)]
    # The trial finished before the kill counts too: a stopper that forgot it would run about 14 epochs.
    epochs = sum(int(r.data.tags["tuner.epochs_run"]) for r in runs)
    assert 10 <= epochs <= 12, (epochs, outcomes)
    assert_each_epoch_once(uri, runs)
    launched = [t for t in study_of(workdir, "budget").trials if "ray_trial_id" in t.user_attrs]
    assert not [t for t in launched if t.state == TrialState.RUNNING], "a stopped trial was left RUNNING"
    for trial in launched:  # FAIL only for a trial stopped before its first epoch, or abandoned
        assert trial.state != TrialState.FAIL or {"not_run", "abandoned"} & set(trial.user_attrs), trial
    assert any(t.state == TrialState.PRUNED and t.intermediate_values for t in launched)


def test_dry_run_starts_no_trial(tmp_path: Path, workdir: Path) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tuner.run", "--space", str(workdir / "tiny.yaml"), "--dry-run",
                             "--storage", str(tmp_path / "runs")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "rungs at epochs [1, 2]" in result.stdout and "trials: 7" in result.stdout
    assert "no trial started" in result.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    assert time.monotonic() - started < 60


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path: Path, workdir: Path) -> None:
    from tests.ray_nodes import free_port

    result = subprocess.run([sys.executable, "-m", "tuner.run", "--space", str(workdir / "tiny.yaml"),
                             "--mlflow-uri", f"http://127.0.0.1:{free_port()}", "--storage", str(tmp_path / "runs"),
                             "--data-dir", str(workdir / "data")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:")
    assert not (tmp_path / "runs").exists()


def test_resources_no_node_has_fail_clearly(tmp_path: Path, workdir: Path, ray_head: RayNode) -> None:
    space = (workdir / "tiny.yaml").read_text().replace("gpus: 0}", "gpus: 1}")
    (tmp_path / "gpu.yaml").write_text(space)
    process = tuner_run(workdir, ray_head, f"sqlite:///{tmp_path / 'mlflow.db'}",
                        "--space", str(tmp_path / "gpu.yaml"), "--name", "needs-gpu")
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 2, out[-3000:]
    assert "resources.gpus=1 per trial but the largest node has 0 GPU" in out
    assert "Traceback" not in out


def test_tracking_outage_mid_sweep_loses_no_metric(workdir: Path, ray_head: RayNode, mlflow_server) -> None:
    """The server goes away after the first trial ends and comes back later: every epoch still lands."""
    driver = tuner_run(workdir, ray_head, mlflow_server.uri, "--space", str(workdir / "tiny.yaml"),
                       "--name", "outage")
    seen = wait_for_line(driver, "[1/7]")
    mlflow_server.stop()
    try:
        time.sleep(30)  # the outage the issue names; trials keep training and buffering meanwhile
    finally:
        mlflow_server.start()
    out, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, ("".join(seen) + out)[-4000:]
    runs = [r for r in child_runs(mlflow_server.uri, "outage") if r.data.tags.get("tuner.outcome") != "infeasible"]
    assert len(runs) == 7
    client = MlflowClient(mlflow_server.uri)
    for run in runs:
        epochs = int(run.data.tags["tuner.epochs_run"])
        for key in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (run.data.tags["tuner.trial_id"], key, steps)
    assert_each_epoch_once(mlflow_server.uri, runs)


def test_driver_chaos_sigkill_at_random_moments_then_resume_accounts_for_every_trial_once(
        workdir: Path, ray_head: RayNode, mlflow_server) -> None:
    """SIGKILL the driver at seeded random moments (three times, bounded), --resume after each; at the end
    every trial is finished exactly once in the study and in MLflow, and every epoch is logged once."""
    chaos = random.Random(20261129)
    driver = tuner_run(workdir, ray_head, mlflow_server.uri, "--space", str(workdir / "tiny.yaml"),
                       "--name", "chaos", start_new_session=True)
    kills, printed = 0, []
    for _ in range(3):
        deadline = time.monotonic() + 120
        while not (workdir / "runs" / "chaos" / "tuner.pkl").exists() and time.monotonic() < deadline:
            time.sleep(0.5)  # a kill before the sweep has any state would leave nothing to resume
        try:
            printed.append(driver.communicate(timeout=chaos.uniform(4, 25))[0])  # reads output: no full pipe
        except subprocess.TimeoutExpired:
            os.killpg(driver.pid, signal.SIGKILL)
            printed.append(driver.communicate()[0])
            kills += 1
            driver = tuner_run(workdir, ray_head, mlflow_server.uri, "--resume", "chaos", start_new_session=True)
        else:
            break  # it finished before this kill: nothing left to interrupt
    if driver.returncode is None:
        printed.append(finish(driver))  # the last resume runs to the end
    assert driver.returncode == 0
    assert kills >= 1, "no kill landed: the sweep is too short for this test"

    study = study_of(workdir, "chaos")
    launched = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    ids = [t.user_attrs["ray_trial_id"] for t in launched]
    assert len(ids) == len(set(ids)), "a Ray trial has two trials in the study"
    assert all(t.state.is_finished() for t in launched), "a trial was left unfinished in the study"
    abandoned = {t.user_attrs["ray_trial_id"] for t in launched if t.user_attrs.get("abandoned")}
    # started and checkpointed after a killed driver's last snapshot: Ray does not know them, so its budget
    # samples others in their place (as in the single-kill test above); they end stopped where they got
    lost = set(re.findall(r"trial (\S+) was started after its killed driver's last snapshot", "".join(printed)))
    assert len(set(ids) - abandoned - lost) == 7, "the budget of 7 trials was not met exactly"
    runs = [r for r in child_runs(mlflow_server.uri, "chaos") if r.data.tags.get("tuner.outcome") != "infeasible"]
    run_ids = [r.data.tags["tuner.trial_id"] for r in runs]
    assert len(run_ids) == len(set(run_ids)), "a trial has two MLflow runs"
    assert set(run_ids) == set(ids), "the study and MLflow disagree on which trials ran"
    client = MlflowClient(mlflow_server.uri)
    for run in runs:
        if run.data.tags["tuner.trial_id"] in abandoned:
            continue
        assert run.data.tags.get("tuner.outcome"), f"trial {run.data.tags['tuner.trial_id']} has no outcome"
        epochs = int(run.data.tags["tuner.epochs_run"])
        for key in ("val_acc", "train_loss"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (run.data.tags["tuner.trial_id"], key, steps)
    assert_each_epoch_once(mlflow_server.uri, runs)
