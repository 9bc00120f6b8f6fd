"""What the driver does at the end of a sweep: for trials Ray Tune ends without calling on_trial_complete (the
ones a spent budget stops, and the ones a killed driver started after its last snapshot: abandoned), what a
resumed driver writes from the trials' result files (the backfill), and Ctrl-C after Tune's fit (during the
final fit and the registration): the driver stops at once, exit 130 with the resume command, and the resumed
sweep registers what the interrupted one had stored.

Real Optuna study and a real MLflow store (sqlite); Tune's trials are stood in for by the fields the
recorder reads (trial_id, status, last_result, config, and where the experiment is stored). The interrupt
tests run `python -m tuner.run`'s main on a real Ray node (tests/test_final_fit.py's space and drivers)."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import optuna
import pyarrow.fs
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.ray_nodes import RayNode, started_head
from tests.test_final_fit import driver, final_runs, version_of, workdir  # noqa: F401, F811 - workdir: fixture
from tests.test_sweep import assert_each_epoch_once, child_runs, finish
from tuner import tracking
from tuner.bookkeeping import BudgetStop, BudgetStopper, OutcomeRecorder
from tuner.config import TrainConfig
from tuner.mlflow_names import DEFAULT_MODEL_NAME
from tuner.outcomes import ABANDONED
from tuner.searcher import fail_trials, finished_results
from tuner.sweep_state import SweepState
from tuner.tracking import SweepRun

pytestmark = pytest.mark.integration

CONFIG = TrainConfig(widths=(8, 16, 32), blocks=(1, 1, 1), epochs=4)


def make_study(url: str, reported: dict[str, list[int]], complete: set[str]) -> optuna.Study:
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    for ray_id, epochs in reported.items():
        trial = study.ask()
        trial.set_user_attr("ray_trial_id", ray_id)
        for epoch in epochs:
            trial.report(0.1 * epoch, epoch)
        if ray_id in complete:
            study.tell(trial, 0.1 * epochs[-1])
    return study


def tune_trial(trial_id: str, epoch: int | None, status: str = "PENDING", experiment: Path | None = None):
    """A trial as Tune holds it; epoch None: no result since Tune restored it."""
    return SimpleNamespace(trial_id=trial_id, status=status, config={"train": CONFIG.to_dict(), "index": 1},
                           last_result={"epoch": epoch, "val_acc": 0.1 * epoch} if epoch else {},
                           storage=SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem()),
                           remote_experiment_path=str(experiment or "/nonexistent"))


def start(tmp_path: Path, name: str = "end") -> SweepRun:
    space = tmp_path / "space.yaml"
    space.write_text("parameters: {}\n")
    return SweepRun.start(f"sqlite:///{tmp_path / 'mlflow.db'}", name, space, {}, {})


def end_sweep(tmp_path: Path, spent: bool) -> tuple[MlflowClient, SweepRun, optuna.Study]:
    """Trial a completed 4 epochs; b was running at epoch 2; c was started by a killed driver, which had
    not saved it, so Tune does not know it; d ran 3 epochs under the killed driver, whose snapshot held
    no result of it, and the resumed driver never started it again; e was sampled but never started; f
    started (it has its MLflow run) but did not finish an epoch."""
    study_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_study(study_url, {"a": [1, 2, 3, 4], "b": [1, 2], "c": [1], "d": [1, 2, 3], "e": [], "f": []},
                       complete={"a"})
    budget = BudgetStopper(epochs=9 if spent else 100, ledger=SweepState(str(tmp_path), "end"))
    stop = BudgetStop(budget)
    for trial_id, epoch in (("a", 4), ("b", 2), ("d", 3)):
        stop(trial_id, {"epoch": epoch, "gpu_seconds": 1.5 * epoch})
    stop.stop_all()
    sweep = start(tmp_path)
    runs = sweep.trial_runs()
    runs.start("f", 1, CONFIG)
    recorder = OutcomeRecorder(runs, SimpleNamespace(study=study), budget, "val_acc", max_epochs=4, trials=3)
    recorder.experiment_end([tune_trial("a", 4, "TERMINATED"), tune_trial("b", 2, "TERMINATED"),
                             tune_trial("d", None), tune_trial("e", None), tune_trial("f", None, "TERMINATED")])
    assert sweep.end()
    return MlflowClient(sweep.uri), sweep, optuna.load_study(study_name="s", storage=study_url)


def outcomes(client: MlflowClient, sweep: SweepRun) -> dict[str, tuple[str | None, str, str | None]]:
    return {r.data.tags["tuner.trial_id"]: (r.data.tags.get("tuner.outcome"), r.info.status,
                                            r.data.tags.get("tuner.gpu_seconds"))
            for r in tracking.trial_runs(client, client.get_run(sweep.run_id))}


def states(study: optuna.Study) -> dict[str, TrialState]:
    return {t.user_attrs["ray_trial_id"]: t.state for t in study.trials}


def test_a_spent_budget_prunes_the_running_trials_and_abandons_the_unknown_ones(tmp_path: Path, capsys) -> None:
    client, sweep, study = end_sweep(tmp_path, spent=True)
    # e never started (no run is made for it): its line names it as its run would have been, not by Ray's id
    never_run = [line for line in capsys.readouterr().out.splitlines() if "stopped_by_budget_at_epoch_0" in line]
    assert len(never_run) == 2 and all(" trial t001 stopped_by_budget_at_epoch_0" in line for line in never_run), \
        never_run
    assert outcomes(client, sweep) == {"b": ("stopped_by_budget_at_epoch_2", "FINISHED", "0.0"),
                                       "c": ("abandoned", "KILLED", None),
                                       "d": ("stopped_by_budget_at_epoch_3", "FINISHED", "4.5"),
                                       "f": ("stopped_by_budget_at_epoch_0", "FINISHED", "0.0")}
    assert states(study) == {"a": TrialState.COMPLETE, "b": TrialState.PRUNED, "c": TrialState.FAIL,
                             "d": TrialState.PRUNED, "e": TrialState.FAIL, "f": TrialState.FAIL}
    b, c, d, e, f = study.trials[1:]
    assert b.intermediate_values == {1: 0.1, 2: 0.2} and c.user_attrs["abandoned"] is True
    assert d.value == pytest.approx(0.3) and e.user_attrs["not_run"] is True and f.user_attrs["not_run"] is True


def test_an_interrupted_driver_leaves_its_running_trials_for_resume(tmp_path: Path) -> None:
    client, sweep, study = end_sweep(tmp_path, spent=False)
    assert outcomes(client, sweep) == {"c": ("abandoned", "KILLED", None), "f": (None, "RUNNING", None)}
    assert states(study) == {"a": TrialState.COMPLETE, "b": TrialState.RUNNING, "c": TrialState.FAIL,
                             "d": TrialState.RUNNING, "e": TrialState.RUNNING, "f": TrialState.RUNNING}


def test_a_trial_the_study_already_had_finished_is_not_counted_or_ended_again(tmp_path: Path, capsys) -> None:
    """A driver killed after the study had a trial's outcome but before ended.json did: Ray restarts the trial,
    it trains on without ENDED_EARLIER, and its end must not count against the budget a second time."""
    study = make_study(f"sqlite:///{tmp_path / 'optuna.db'}", {"a": [1, 2, 3, 4], "b": [1]}, complete={"a"})
    sweep = start(tmp_path)
    runs = sweep.trial_runs()
    budget = BudgetStopper(epochs=100, ledger=SweepState(str(tmp_path), "end"))
    recorder = OutcomeRecorder(runs, SimpleNamespace(study=study), budget, "val_acc", max_epochs=4, trials=3)
    recorder.count_finished()
    assert recorder.done == 1
    recorder.complete("a", {"epoch": 4, "val_acc": 0.4}, errored=False)  # the restarted "a", trained on
    recorder.complete("b", {"epoch": 4, "val_acc": 0.5}, errored=False)
    assert recorder.done == 2
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(printed) == 1 and printed[0].startswith("[2/3] trial "), printed
    assert sweep.end()


def test_the_workers_end_again_on_what_the_study_heard_of_each_trial_it_holds_finished(tmp_path: Path) -> None:
    """What a resumed driver hands the workers besides ended.json: the last epoch the study heard of each
    finished trial (completed or stopped; a failed one by its last epoch); not a running one, not one the
    driver abandoned (a resumed sweep trains it on), not one with no epoch heard."""
    study = make_study(f"sqlite:///{tmp_path / 'optuna.db'}",
                       {"done": [1, 2, 3, 4], "running": [1], "stopped": [1, 2], "abandoned": [1, 2, 3],
                        "no-epoch": []}, complete={"done"})
    for frozen in study.trials:
        ray_id = frozen.user_attrs["ray_trial_id"]
        if ray_id == "stopped":
            study.tell(frozen.number, state=TrialState.PRUNED)
        elif ray_id == "no-epoch":
            study.tell(frozen.number, state=TrialState.FAIL)
    fail_trials(study, [t for t in study.trials if t.user_attrs["ray_trial_id"] == "abandoned"], ABANDONED)
    ended = finished_results(study, "val_acc")
    assert ended.keys() == {"done", "stopped"}
    assert ended["done"] == {"epoch": 4, "val_acc": pytest.approx(0.4)}
    assert ended["stopped"] == {"epoch": 2, "val_acc": pytest.approx(0.2)}


def write_results(experiment: Path, trial_id: str, epochs: range, cut_short: bool = False) -> None:
    """A trial folder as Ray writes it: result.json, one reported result a line."""
    folder = experiment / f"t001-{trial_id}"
    folder.mkdir(parents=True)
    lines = [json.dumps({"trial_id": trial_id, "epoch": epoch, "val_acc": 0.1 * epoch, "train_loss": 1.0 / epoch,
                         "reported_at": 1_700_000_000.0 + epoch, "diverged": False,
                         "config": {"train": CONFIG.to_dict(), "index": 1}}) for epoch in epochs]
    (folder / "result.json").write_text("\n".join(lines) + ("\n{\"trial_id\": " if cut_short else "\n"))


def test_a_resumed_driver_writes_what_the_killed_one_had_not_and_nothing_twice(tmp_path: Path) -> None:
    """The killed driver had written epochs 1-2 of trial x and nothing of y; Ray's result files hold
    x's epochs 1-3 and y's 1-2 (the last line cut short). The resumed driver, which also hears x
    report epoch 3 again, ends with every epoch exactly once."""
    experiment = tmp_path / "runs" / "end"
    write_results(experiment, "x", range(1, 4))
    write_results(experiment, "y", range(1, 3), cut_short=True)
    sweep = start(tmp_path)
    killed = sweep.trial_runs()
    killed.start("x", 1, CONFIG)
    for epoch in (1, 2):
        killed.log_epoch("x", {"val_acc": 0.1 * epoch, "train_loss": 1.0 / epoch}, epoch,
                         timestamp_ms=1000 * (1_700_000_000 + epoch))
    assert killed.flush(timeout_s=30)

    resumed = start(tmp_path)  # the same parent run, a new writer
    study = make_study(f"sqlite:///{tmp_path / 'optuna.db'}", {"x": [1, 2, 3], "y": [1, 2]}, complete={"x", "y"})
    recorder = OutcomeRecorder(resumed.trial_runs(), SimpleNamespace(study=study), BudgetStopper(), "val_acc",
                               max_epochs=4, trials=2)
    trials = [tune_trial("x", 3, "RUNNING", experiment), tune_trial("y", 2, "TERMINATED", experiment)]
    recorder.backfill(trials)
    recorder.result(trials[0], {"epoch": 3, "val_acc": 0.9, "train_loss": 0.1, "reported_at": 1_700_000_100.0})
    recorder.experiment_end(trials)
    assert resumed.end()

    client = MlflowClient(resumed.uri)
    runs = {r.data.tags["tuner.trial_id"]: r for r in tracking.trial_runs(client, client.get_run(resumed.run_id))}
    assert set(runs) == {"x", "y"}
    for trial_id, epochs in (("x", [1, 2, 3]), ("y", [1, 2])):
        for key in ("val_acc", "train_loss"):
            history = client.get_metric_history(runs[trial_id].info.run_id, key)
            assert sorted(m.step for m in history) == epochs, (trial_id, key)
            assert max(Counter(m.step for m in history).values()) == 1
    assert [m.value for m in client.get_metric_history(runs["x"].info.run_id, "val_acc") if m.step == 3] \
        == [pytest.approx(0.3)]  # the first value of an epoch is kept
    # y finished under the killed driver, which could not write its outcome: the resumed one does
    assert runs["y"].data.tags["tuner.outcome"] == "stopped_by_asha_at_epoch_2"
    assert runs["y"].data.params["widths"] == "8,16,32"


def test_a_trial_that_checkpointed_after_the_killed_drivers_last_snapshot_ends_stopped_not_abandoned(
        tmp_path: Path) -> None:
    """g was started and checkpointed by a driver killed before its next snapshot: Ray's restored state does not
    list it, so no driver can continue it. It ends where its result file says it stopped (two epochs, where
    the study heard of one), PRUNED, its run FINISHED; c, which never checkpointed, is abandoned."""
    state = SweepState(str(tmp_path), "end")
    experiment = Path(state.experiment_path)
    write_results(experiment, "g", range(1, 3))
    (experiment / "t001-g" / "checkpoint_000001").mkdir()
    study_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_study(study_url, {"a": [1, 2, 3, 4], "c": [1], "g": [1]}, complete={"a"})
    sweep = start(tmp_path)
    recorder = OutcomeRecorder(sweep.trial_runs(), SimpleNamespace(study=study),
                               BudgetStopper(epochs=100, ledger=state), "val_acc", max_epochs=4, trials=3)
    recorder.experiment_end([tune_trial("a", 4, "TERMINATED", experiment)])
    assert sweep.end()
    client = MlflowClient(sweep.uri)
    found = outcomes(client, sweep)
    assert found["g"][:2] == ("stopped_by_driver_kill_at_epoch_2", "FINISHED") and found["c"][0] == "abandoned"
    study = optuna.load_study(study_name="s", storage=study_url)
    assert states(study) == {"a": TrialState.COMPLETE, "c": TrialState.FAIL, "g": TrialState.PRUNED}
    assert study.trials[2].intermediate_values == {1: pytest.approx(0.1), 2: pytest.approx(0.2)}


def test_such_a_trial_ends_at_the_later_of_its_result_file_and_the_study(tmp_path: Path) -> None:
    """The killed driver told the study of epoch 3, which the trial's result file never got."""
    state = SweepState(str(tmp_path), "end")
    experiment = Path(state.experiment_path)
    write_results(experiment, "g", range(1, 3))
    (experiment / "t001-g" / "checkpoint_000001").mkdir()
    study_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_study(study_url, {"a": [1, 2, 3, 4], "g": [1, 2, 3]}, complete={"a"})
    sweep = start(tmp_path)
    recorder = OutcomeRecorder(sweep.trial_runs(), SimpleNamespace(study=study),
                               BudgetStopper(epochs=100, ledger=state), "val_acc", max_epochs=4, trials=2)
    recorder.experiment_end([tune_trial("a", 4, "TERMINATED", experiment)])
    assert sweep.end()
    assert outcomes(MlflowClient(sweep.uri), sweep)["g"][0] == "stopped_by_driver_kill_at_epoch_3"


@pytest.mark.parametrize("torn_newest", [False, True])
def test_such_a_trial_ends_at_its_newest_checkpoint_when_its_result_file_and_the_study_lag(
        tmp_path: Path, torn_newest: bool, capsys) -> None:
    """The flake this pins (tests/test_sweep.py, 1 run in 4 under load): the killed driver logged epoch 1 of g to
    MLflow, but died before its result file was synced and before the study was stored again; only g's own
    checkpoint, which the worker wrote to --storage, says how far it got. Its run ends with epochs_run equal to
    the epochs it holds, each once, and the study learns both epochs. With `torn_newest` the worker died too,
    while writing epoch 3's checkpoint: the newest whole one (epoch 2) counts."""
    from tuner.checkpoint import save_checkpoint
    from tuner.trainable import CHECKPOINT_FILE

    state = SweepState(str(tmp_path), "end")
    experiment = Path(state.experiment_path)
    (experiment / "t001-g").mkdir(parents=True)
    history = [{"epoch": epoch, "val_acc": 0.1 * epoch, "train_loss": 1.0 / epoch} for epoch in (1, 2)]
    for epoch in (1, 2):
        save_checkpoint({"model": {}, "config": CONFIG.to_dict(), "epoch": epoch, "history": history[:epoch]},
                        experiment / "t001-g" / f"checkpoint_00000{epoch}" / CHECKPOINT_FILE)
    if torn_newest:
        (experiment / "t001-g" / "checkpoint_000003").mkdir()
        (experiment / "t001-g" / "checkpoint_000003" / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04torn")
    study_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_study(study_url, {"a": [1, 2, 3, 4], "g": []}, complete={"a"})
    sweep = start(tmp_path)
    killed = sweep.trial_runs()  # the killed driver's writes: g's run, and its first epoch
    killed.start("g", 1, CONFIG)
    killed.log_epoch("g", {"val_acc": 0.1}, 1, 1_700_000_001_000)
    assert killed.flush(30)
    recorder = OutcomeRecorder(sweep.trial_runs(), SimpleNamespace(study=study),
                               BudgetStopper(epochs=100, ledger=state), "val_acc", max_epochs=4, trials=2)
    recorder.experiment_end([tune_trial("a", 4, "TERMINATED", experiment)])
    assert sweep.end()
    client = MlflowClient(sweep.uri)
    run = next(r for r in tracking.trial_runs(client, client.get_run(sweep.run_id))
               if r.data.tags["tuner.trial_id"] == "g")
    assert (run.data.tags["tuner.outcome"], run.data.tags["tuner.epochs_run"]) == (
        "stopped_by_driver_kill_at_epoch_2", "2")
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc")) == [1, 2]
    study = optuna.load_study(study_name="s", storage=study_url)
    assert states(study)["g"] == TrialState.PRUNED
    assert study.trials[1].intermediate_values == {1: pytest.approx(0.1), 2: pytest.approx(0.2)}
    assert ("checkpoint_000003); trying an older checkpoint" in capsys.readouterr().out) is torn_newest


def test_a_resumed_trial_that_errors_before_reporting_again_ends_at_its_newest_checkpoint(tmp_path: Path) -> None:
    """Seen in test_sweep's chaos test: the killed driver logged epochs 1-3 of e (its checkpoints hold them), its
    snapshot only epoch 1; the resumed e failed on every retry before it reported. Its outcome counts the 3
    epochs its run holds (was: epochs_run 1 beside metrics for epochs 1-3); a trial without such checkpoints
    ends on its last result, as before."""
    from tuner.checkpoint import save_checkpoint
    from tuner.trainable import CHECKPOINT_FILE

    state = SweepState(str(tmp_path), "end")
    experiment = Path(state.experiment_path)
    history = [{"epoch": epoch, "val_acc": 0.1 * epoch, "train_loss": 1.0 / epoch} for epoch in (1, 2, 3)]
    for epoch in (1, 3):
        save_checkpoint({"model": {}, "config": CONFIG.to_dict(), "epoch": epoch, "history": history[:epoch]},
                        experiment / "t001-e" / f"checkpoint_00000{epoch}" / CHECKPOINT_FILE)
    study = make_study(f"sqlite:///{tmp_path / 'optuna.db'}", {"e": [1], "h": [1]}, complete=set())
    sweep = start(tmp_path)
    killed = sweep.trial_runs()  # the killed driver's writes
    killed.start("e", 1, CONFIG)
    for epoch in (1, 2, 3):
        killed.log_epoch("e", {"val_acc": 0.1 * epoch}, epoch, 1_700_000_000_000 + epoch)
    assert killed.flush(30)
    runs = sweep.trial_runs()
    recorder = OutcomeRecorder(runs, SimpleNamespace(study=study), BudgetStopper(epochs=100, ledger=state),
                               "val_acc", max_epochs=4, trials=2)
    for trial_id in ("e", "h"):
        runs.start(trial_id, 1, CONFIG)
        recorder.errored(trial_id, {"epoch": 1, "val_acc": 0.1})  # the snapshot's last result
    assert sweep.end()
    client = MlflowClient(sweep.uri)
    ended = {r.data.tags["tuner.trial_id"]: r for r in tracking.trial_runs(client, client.get_run(sweep.run_id))}
    assert (ended["e"].data.tags["tuner.outcome"], ended["e"].data.tags["tuner.epochs_run"]) == ("errored", "3")
    assert sorted(m.step for m in client.get_metric_history(ended["e"].info.run_id, "val_acc")) == [1, 2, 3]
    assert ended["h"].data.tags["tuner.epochs_run"] == "1"


def test_a_restarted_trials_first_result_brings_the_epochs_its_checkpoint_held(tmp_path: Path) -> None:
    """The flake this pins: a trial continued from a checkpoint of epoch 3 that its killed driver never heard
    of; its first result (epoch 4) carries the checkpoint's epochs, and the run ends with 1-4, each once."""
    study = make_study(f"sqlite:///{tmp_path / 'optuna.db'}", {"r": []}, complete=set())
    sweep = start(tmp_path)
    killed = sweep.trial_runs()
    killed.start("r", 1, CONFIG)
    for epoch in (1, 2):
        killed.log_epoch("r", {"val_acc": 0.1 * epoch}, epoch, 1_700_000_000_000 + epoch)
    assert killed.flush(30)
    recorder = OutcomeRecorder(sweep.trial_runs(), SimpleNamespace(study=study),
                               BudgetStopper(epochs=100, ledger=SweepState(str(tmp_path), "end")), "val_acc",
                               max_epochs=4, trials=1)
    trial = tune_trial("r", None, "RUNNING")
    history = [{"epoch": epoch, "val_acc": 0.1 * epoch, "train_loss": 1.0 / epoch} for epoch in (1, 2, 3)]
    recorder.result(trial, {"epoch": 4, "val_acc": 0.4, "resumed_epochs": history})
    recorder.complete("r", {"epoch": 4, "val_acc": 0.4}, errored=False)
    assert sweep.end()
    client = MlflowClient(sweep.uri)
    run = tracking.trial_runs(client, client.get_run(sweep.run_id))[0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3, 4]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2, 3]


# A driver that signals itself at one point of the sweep's end (after Tune's fit): the point, the signal and how
# many times are set in its first lines. os.kill runs the handler before the next line of the wrapper.
INTERRUPTING = """
import os, signal, sys, threading
import tuner.final_fit as final_fit
from tuner.tracking import SweepRun

def interrupt():
    for _ in range(times):
        os.kill(os.getpid(), stop)

def wrap(owner, name, before, when=lambda *args: True):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if before and when(*args):
            interrupt()
        result = original(*args, **kwargs)
        if not before and when(*args):
            interrupt()
        return result
    setattr(owner, name, wrapper)

if point == "fitting":  # while the driver waits for the final fit's task (one that sleeps, as in test_final_fit)
    def train_final(*args, **kwargs):
        import time
        time.sleep(600)
    final_fit.train_final = train_final
    original_run_task = final_fit.run_task
    def run_task(*args, **kwargs):
        threading.Timer(3, interrupt).start()
        return original_run_task(*args, **kwargs)
    final_fit.run_task = run_task
elif point == "fit_returned":  # the final fit's task has returned: after its last look for Ctrl-C
    wrap(final_fit, "run_task", before=False)
elif point == "registering":  # the champion is about to be registered
    wrap(SweepRun, "register_best", before=True)
from tuner.run import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNode]:
    yield from started_head(tmp_path_factory.mktemp("ray"))


# One case per window of the end phase; the signals are spread over them (each is one handler in the driver, and
# tests/test_sweep.py stops a running sweep with each): a sweep and its resume cost about 25 s a case.
@pytest.mark.parametrize(("point", "stop", "times"), [
    ("fitting", "SIGTERM", 1),
    ("fit_returned", "SIGUSR1", 1),  # Tune's other stop signal
    ("registering", "SIGTERM", 1),  # the registration completes, then the driver stops: the resume only prints
    ("registering", "SIGINT", 2),  # the second before the driver got to stop: at once, still with the resume command
])
def test_an_interrupt_in_the_sweeps_end_stops_it_for_resume_and_loses_nothing(
        workdir: Path, ray_head: RayNode, point: str, stop: str, times: int) -> None:  # noqa: F811 - the fixture
    name = f"end-{point}-{stop.lower()}-{times}"
    uri = f"sqlite:///{workdir / f'{name}.db'}"
    code = f"import signal\npoint, stop, times = {point!r}, signal.{stop}, {times}\n" + INTERRUPTING
    first = driver(workdir, ray_head, uri, "--space", str(workdir / "final.yaml"), "--name", name, code=code)
    out, _ = first.communicate(timeout=400)
    assert first.returncode == 130, out[-4000:]
    stopped = f"sweep {name} interrupted; continue it with: python -m tuner.run --resume {name} --storage " \
              f"{workdir / 'runs'}"
    assert out.count(stopped + "\n") == 1, out[-4000:]
    assert 'tuner/run.py", line' not in out and "registered as model version" not in out, out[-4000:]
    assert "Stop signal received" not in out, out[-4000:]  # Tune's handler, left over from its fit: not ours now
    assert "failed (" not in out, out[-4000:]  # an interrupted final fit is not a failed one
    client = MlflowClient(uri)
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                f"tags.`tuner.sweep` = '{name}' and tags.`mlflow.parentRunId` IS NULL")
    assert [r.info.status for r in parent] == ["KILLED"]
    stored = workdir / "runs" / "_driver" / name
    fitted = point != "fitting"
    assert (stored / "final_fit.json").exists() is fitted, "a final fit that had finished was not kept"
    assert (stored / "registered.json").exists() is ((point, times) == ("registering", 1))

    out = finish(driver(workdir, ray_head, uri, "--resume", name))
    assert "[1/2]" not in out and "[2/2]" not in out, "a trial ran again"
    assert ("epochs on" in out.replace("  final fit:   2 epochs on", "")) is not fitted, "a stored final fit ran again"
    version = version_of(client, name)  # exactly one
    assert version.tags["checkpoint_kind"] == "final_fit"
    (final,) = final_runs(uri, name)
    assert final.info.status == "FINISHED" and version.run_id == final.info.run_id
    assert f"registered as model version {version.version} of {DEFAULT_MODEL_NAME}" in out
    assert [r.info.status for r in client.search_runs([parent[0].info.experiment_id],
                                                      f"attributes.run_id = '{parent[0].info.run_id}'")] == ["FINISHED"]
    assert_each_epoch_once(uri, child_runs(uri, name))


@pytest.mark.parametrize("champion", [False, True])
def test_the_summary_says_whether_the_registered_version_is_the_champion_already(champion: bool) -> None:
    """A --resume of a sweep whose version was promoted since must not tell the user to promote it."""
    from tuner.run import SweepSummary

    best = {"label": "t001", "trial_id": "abc", "val_acc": 0.5, "epoch": 3, "epochs_run": 3, "params": 1000,
            "gpu_seconds": 0.0, "run_name": "t001 lr=0.1", "searched": "lr=0.1", "checkpoint": "/x"}
    text = SweepSummary("s", best, 1, 0, 0.0, 3, 1.0, "4", "m", champion=champion).text()
    assert ("registered as model version 4 of m: the search checkpoint (@champion)" in text) is champion
    assert ("(not yet @champion: promote it below)" in text) is not champion
