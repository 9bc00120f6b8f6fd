"""Sweeps on real Ray clusters: fractional GPUs, two nodes, and the faults a sweep must survive.

Every test runs `python -m tuner.run --address HEAD` against `ray start` nodes of its own (tests/ray_nodes.py)
and the session's real mlflow server, on generated data. What Ray recorded is read back from the storage
folder that all (local) nodes share: `<storage>/<sweep>/<trial>/result.json` has one line per report with our
metrics plus Ray's `pid` (the trial's worker process), `timestamp` and `time_this_iter_s`, and the trainable's
`reported_at`.

Not tested here: a trial that runs out of GPU memory. It needs a real GPU to happen, and a faked
torch.cuda.OutOfMemoryError would only test the fake (tuner/trainable.py reports it and returns, so Ray
does not retry it, the same path as divergence, which is tested below).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.ray_nodes import RayNode, new_token, ray_env, trial_failures, trial_results
from tuner.data import write_synthetic_cifar10
from tuner.tracking import EPOCH_METRICS, find_sweep_run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SWEEP_TIMEOUT_S = 360  # each sweep here takes 30-60 s on 2 loaded cores
T = TypeVar("T")

FIXED = "fixed: {batch_size: 50, warmup_epochs: 0, blocks: [1, 1], crop_padding: 2, tta_flip: false%s}"
# 4 trials of 0.25 CPU + 0.5 GPU: exactly what the head's 1 CPU and 2 (declared) GPUs hold at once.
PACKING = f"""
name: packing
{FIXED % ", widths: [4, 8]"}
parameters: {{lr: {{type: float, low: 0.01, high: 0.2, log: true}}}}
search: {{algorithm: random, seed: 1, max_concurrent: 4}}
scheduler: {{type: fifo, max_epochs: 3}}
resources: {{cpus: 0.25, gpus: 0.5}}
budget: {{trials: 4}}
data: {{val_size: 100, subset: 1000}}
"""
# One CPU per trial on nodes of one CPU each: two trials at a time, one per node.
MULTI_NODE = f"""
name: multinode
{FIXED % ""}
parameters:
  widths: {{choices: [[4, 8], [8, 16]]}}
  lr: {{type: float, low: 0.01, high: 0.2, log: true}}
search: {{seed: 3, startup_trials: 2, max_concurrent: 2}}
scheduler: {{type: fifo, max_epochs: 3}}
resources: {{cpus: 1, gpus: 0}}
budget: {{trials: 4}}
data: {{val_size: 100, subset: 1000}}
"""
# Fault sweeps train on all 2,900 images: epochs of ~2 s leave time to strike mid-trial.
FAULT_EPOCHS = 7
FAULT = f"""
name: fault
{FIXED % ", widths: [8, 16]"}
parameters: {{lr: {{type: float, low: 0.01, high: 0.2, log: true}}}}
search: {{algorithm: random, seed: 1, max_concurrent: 2}}
scheduler: {{type: fifo, max_epochs: {FAULT_EPOCHS}}}
resources: {{cpus: CPUS, gpus: 0}}
budget: {{trials: 2}}
data: {{val_size: 100}}
"""
# Random sampling with seed 7 draws lr 1e6, 1e6, 0.05, 0.05: two trials diverge in their first epoch,
# then two ordinary ones run. (YAML reads a bare 1e6 as a string, hence 1000000.0.)
HUGE_LR = 1e6
DIVERGING = f"""
name: diverging
{FIXED % ", widths: [4, 8]"}
parameters: {{lr: [0.05, 1000000.0]}}
search: {{algorithm: random, seed: 7, max_concurrent: 2}}
scheduler: {{type: fifo, max_epochs: 3}}
resources: {{cpus: 0.5, gpus: 0}}
budget: {{trials: 4}}
data: {{val_size: 100, subset: 1000}}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    write_synthetic_cifar10(root / "data", n_train=3000, seed=1)
    return root


@pytest.fixture(scope="module")
def head(workdir: Path) -> Iterator[RayNode]:
    """The head: 1 CPU and 2 declared GPUs (no real GPU behind them; trials fall back to the CPU)."""
    node = RayNode(workdir / "head.log", new_token(), cpus=1, gpus=2)
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


@pytest.fixture
def worker(workdir: Path, head: RayNode, request: pytest.FixtureRequest) -> Iterator[RayNode]:
    """A second node (1 CPU, no GPU) joined to the head; a test may stop it early."""
    node = RayNode(workdir / f"worker-{request.node.name}.log", head.token, head_address=head.address, cpus=1)
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


def write_space(workdir: Path, text: str, name: str) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def driver_env(head: RayNode) -> dict[str, str]:
    return {**ray_env(head.token), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@contextmanager
def sweep(workdir: Path, head: RayNode, mlflow_uri: str, space: Path, name: str,
          as_a_ray_job: bool = False) -> Iterator[subprocess.Popen]:
    """`python -m tuner.run --address HEAD` in its own session (output in <name>.log, not a pipe that could
    fill while the test polls); killed with everything it started if the test leaves early. `as_a_ray_job`:
    the address in RAY_ADDRESS and no --address, as `ray job submit` and KubeRay's RayJob run the driver."""
    log = open(workdir / f"{name}.log", "w")
    address = [] if as_a_ray_job else ["--address", head.address]
    command = [sys.executable, "-m", "tuner.run", *address, "--mlflow-uri", mlflow_uri,
               "--storage", str(workdir / "runs"), "--data-dir", str(workdir / "data"),
               "--space", str(space), "--name", name]
    env = {**driver_env(head), **({"RAY_ADDRESS": head.address} if as_a_ray_job else {})}
    driver = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        yield driver
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        log.close()


def finish(driver: subprocess.Popen, workdir: Path, name: str, timeout_s: float = SWEEP_TIMEOUT_S) -> str:
    try:
        driver.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sweep {name} still running after {timeout_s:.0f} s:\n"
                    + (workdir / f"{name}.log").read_text()[-4000:])
    out = (workdir / f"{name}.log").read_text()
    assert driver.returncode == 0, out[-4000:]
    return out


def wait_for(condition: Callable[[], T | None], driver: subprocess.Popen, what: str, timeout_s: float = 240) -> T:
    """Poll condition() until it returns something; fail if the sweep ends first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value is not None:
            return value
        if driver.poll() is not None:
            pytest.fail(f"the sweep ended (exit {driver.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout_s:.0f} s")


def child_runs(uri: str, sweep_name: str) -> dict[str, Run]:
    """The sweep's child runs in MLflow by Ray trial id."""
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parent = client.search_runs(experiments, f"tags.`tuner.sweep` = '{sweep_name}' "
                                             "and tags.`mlflow.parentRunId` IS NULL")
    assert len(parent) == 1, f"one parent run per sweep, found {len(parent)}"
    runs = client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'",
                              max_results=1000)
    return {run.data.tags["tuner.trial_id"]: run for run in runs}


def metric_steps(uri: str, run: Run, metric: str = "val_acc") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, metric))


def running_trials(experiment: Path) -> list[tuple[str, int, int]]:
    """(trial id, worker pid, epochs reported) of each trial whose pid Ray has recorded so far.

    result.json reaches the storage folder when the driver syncs it (every few seconds), but a worker
    writes each checkpoint there itself as it reports: checkpoint_00000k exists once epoch k+1 is reported.
    """
    found = []
    for result_file in experiment.glob("*/result.json"):
        trial_dir, lines = result_file.parent, result_file.read_text().splitlines()
        checkpoints = [int(m.group(1)) for p in trial_dir.iterdir() if (m := re.fullmatch(r"checkpoint_(\d+)", p.name))]
        try:
            last = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:  # caught mid-sync
            continue
        if last and checkpoints:
            found.append((last["trial_id"], last["pid"], max(checkpoints) + 1))
    return found


def assert_resumed_from_checkpoint(uri: str, run: Run, rows: list[dict], first_pid: int) -> None:
    """The trial's new worker went on from a checkpoint, not from epoch 1, and MLflow has every epoch once.

    Ray registers a result and its checkpoint as separate events, so a failure between them restarts the
    trial from the checkpoint before the last recorded result: that epoch and the one in flight run twice,
    and result lines not yet synced to storage when the worker dies are missing from result.json. The
    driver logs each epoch it receives and never a step twice, so MLflow keeps the first of each.
    """
    after = [r for r in rows if r["pid"] != first_pid]
    assert after, "no report from a new worker: the trial was not restarted"
    resumed_at = after[0]["epoch"]
    assert resumed_at > 1 and after[0]["iterations_since_restore"] == 1, f"restarted at epoch {resumed_at}"
    assert [r["epoch"] for r in after] == list(range(resumed_at, FAULT_EPOCHS + 1))
    for metric in EPOCH_METRICS:
        steps = Counter(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, metric))
        assert steps == Counter(range(1, FAULT_EPOCHS + 1)), f"{metric}: epochs logged {sorted(steps.items())}"
    assert run.data.tags["tuner.outcome"] == "completed"


def test_fractional_gpus_run_four_trials_at_once_on_two_declared_gpus(workdir: Path, head: RayNode,
                                                                     mlflow_server) -> None:
    space = write_space(workdir, PACKING, "packing")
    with sweep(workdir, head, mlflow_server.uri, space, "packing") as driver:
        finish(driver, workdir, "packing")
    trials = trial_results(workdir / "runs" / "packing")
    assert len(trials) == 4
    # Each trial ran from its start (first report minus the time to it) to its last report.
    starts = {t: rows[0]["reported_at"] - rows[0]["time_this_iter_s"] for t, rows in trials.items()}
    ends = {t: rows[-1]["reported_at"] for t, rows in trials.items()}
    assert max(starts.values()) < min(ends.values()), f"the 4 trials did not all run at once: {starts} {ends}"
    assert len({rows[0]["pid"] for rows in trials.values()}) == 4, "4 trials at once means 4 worker processes"
    for rows in trials.values():
        last = rows[-1]
        assert [r["epoch"] for r in rows] == [1, 2, 3] and not last["diverged"]
        assert last["gpu_seconds"] == pytest.approx(0.5 * last["trial_seconds"], rel=1e-3)  # a half-GPU share
    # A quarter CPU per trial: torch in each trial runs one thread (rounded up), not one per core.
    assert {r["threads"] for rows in trials.values() for r in rows} == {1}
    # The only node with GPUs is the head, so every trial ran there.
    assert len({r["node_id"] for rows in trials.values() for r in rows}) == 1
    # Without CUDA (the CI machines) Ray gave each trial half of a GPU that does not exist: the trainer found
    # no CUDA (tuner.device.pick_device), trained on the CPU, and every trial completed.
    runs = child_runs(mlflow_server.uri, "packing")
    assert {runs[t].data.tags["tuner.outcome"] for t in trials} == {"completed"}
    assert all(metric_steps(mlflow_server.uri, runs[t]) == [1, 2, 3] for t in trials)


def test_two_node_sweep_uses_both_nodes_and_tracks_every_epoch(workdir: Path, head: RayNode, worker: RayNode,
                                                              mlflow_server) -> None:
    space = write_space(workdir, MULTI_NODE, "multinode")
    figures_file = workdir / "multinode.json"
    command = [sys.executable, str(REPO / "bench" / "multinode_sweep.py"), "--address", head.address,
               "--space", str(space), "--name", "multinode", "--storage", str(workdir / "runs"),
               "--data-dir", str(workdir / "data"), "--mlflow-uri", mlflow_server.uri, "--min-nodes", "2",
               "--json", str(figures_file)]
    bench = subprocess.Popen(command, cwd=workdir, env=driver_env(head), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = bench.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    assert bench.returncode == 0, out[-4000:]
    print(out)  # the figures for docs/benchmarks.md (pytest -s)

    figures = json.loads(figures_file.read_text())
    assert figures["alive_nodes"] == 2 and figures["slots"] == 2
    assert figures["trials"] == 4 and figures["epochs"] == 12
    # busy and span come from the same clocks (sub-second), so the slots cannot be more than full
    assert 0 < figures["slot_utilisation"] <= 1.01
    trials = trial_results(workdir / "runs" / "multinode")
    assert len({r["node_id"] for rows in trials.values() for r in rows}) == 2, "trials ran on one node only"

    runs = child_runs(mlflow_server.uri, "multinode")
    assert set(runs) == set(trials)
    client = MlflowClient(mlflow_server.uri)
    for trial_id, run in runs.items():
        assert run.data.tags["tuner.outcome"] == "completed"
        for metric in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
            assert steps == [1, 2, 3], f"trial {trial_id}: {metric} logged for epochs {steps}"


def test_killed_trial_worker_resumes_from_its_last_checkpoint(workdir: Path, head: RayNode, mlflow_server) -> None:
    space = write_space(workdir, FAULT.replace("CPUS", "0.5"), "killed-worker")
    experiment = workdir / "runs" / "killed-worker"

    def trial_past_epoch_3() -> tuple[str, int] | None:
        for trial_id, pid, epochs in running_trials(experiment):
            if 3 <= epochs <= FAULT_EPOCHS - 2:
                return trial_id, pid
        return None

    with sweep(workdir, head, mlflow_server.uri, space, "killed-worker") as driver:
        trial_id, pid = wait_for(trial_past_epoch_3, driver, "a trial reported epoch 3")
        assert pid in head.pids(), f"pid {pid} is not a process of this test's Ray node"
        os.kill(pid, signal.SIGKILL)
        finish(driver, workdir, "killed-worker")

    trials = trial_results(experiment)
    run = child_runs(mlflow_server.uri, "killed-worker")[trial_id]
    assert_resumed_from_checkpoint(mlflow_server.uri, run, trials[trial_id], pid)
    assert trial_failures(experiment) == {t: int(t == trial_id) for t in trials}  # the other trial ran on


def test_trial_on_a_stopped_node_moves_to_the_other_node_and_completes(workdir: Path, head: RayNode,
                                                                      worker: RayNode, mlflow_server) -> None:
    space = write_space(workdir, FAULT.replace("CPUS", "1"), "lost-node")
    experiment = workdir / "runs" / "lost-node"

    def trial_on_worker_past_epoch_3() -> tuple[str, int] | None:
        pids = worker.pids()
        for trial_id, pid, epochs in running_trials(experiment):
            if pid in pids and 3 <= epochs <= FAULT_EPOCHS - 2:
                return trial_id, pid
        return None

    with sweep(workdir, head, mlflow_server.uri, space, "lost-node") as driver:
        trial_id, pid = wait_for(trial_on_worker_past_epoch_3, driver, "a trial on the worker reported epoch 3")
        stopped = time.monotonic()
        worker.stop()
        finish(driver, workdir, "lost-node")
        print(f"lost-node sweep finished {time.monotonic() - stopped:.0f} s after its worker node was stopped")

    trials = trial_results(experiment)
    rows = trials[trial_id]
    lost_node = next(r["node_id"] for r in rows if r["pid"] == pid)
    head_node = {r["node_id"] for t, other in trials.items() if t != trial_id for r in other}
    assert {r["node_id"] for r in rows if r["pid"] != pid} == head_node != {lost_node}, \
        "the trial did not move to the remaining node"
    run = child_runs(mlflow_server.uri, "lost-node")[trial_id]
    assert_resumed_from_checkpoint(mlflow_server.uri, run, rows, pid)
    assert trial_failures(experiment)[trial_id] >= 1


def test_diverged_trial_is_recorded_not_retried_and_the_sweep_goes_on(workdir: Path, head: RayNode,
                                                                      mlflow_server) -> None:
    space = write_space(workdir, DIVERGING, "diverging")
    with sweep(workdir, head, mlflow_server.uri, space, "diverging", as_a_ray_job=True) as driver:
        out = finish(driver, workdir, "diverging")
    # run as a Ray job runs it (RAY_ADDRESS, no --address): on the cluster, not on a local Ray of its own
    assert find_sweep_run(MlflowClient(mlflow_server.uri), "diverging").data.tags["tuner.ray_address"] == head.address
    experiment = workdir / "runs" / "diverging"
    trials = trial_results(experiment)
    assert len(trials) == 4
    huge = {t for t, rows in trials.items() if rows[0]["config"]["train"]["lr"] == HUGE_LR}
    assert 0 < len(huge) < 4, "the seeded draw should hold both learning rates"
    for trial_id, rows in trials.items():
        if trial_id in huge:  # one report, from one worker: it returned normally and Ray did not run it again
            assert [(r["epoch"], r["diverged"]) for r in rows] == [(1, True)]
        else:
            assert [r["epoch"] for r in rows] == [1, 2, 3] and not rows[-1]["diverged"]
    assert set(trial_failures(experiment).values()) == {0}
    runs = child_runs(mlflow_server.uri, "diverging")
    for trial_id, rows in trials.items():
        assert float(runs[trial_id].data.params["lr"]) == rows[0]["config"]["train"]["lr"]
        outcome, status = ("diverged", "FAILED") if trial_id in huge else ("completed", "FINISHED")
        assert (runs[trial_id].data.tags["tuner.outcome"], runs[trial_id].info.status) == (outcome, status)
    assert "best trial" in out
    # its line names the epoch it diverged in, not the placeholder metric it reported (the worst value)
    assert "trial t00" in out and " diverged in epoch 1 | " in out and " diverged: " not in out, out[-3000:]
