"""What the driver does for trials Ray Tune ends without calling on_trial_complete: the ones a spent
budget stops, and the ones a killed driver started after its last snapshot (abandoned).

Real Optuna study and a real MLflow store (sqlite); Tune's trials are stood in for by the three fields
the recorder reads (trial_id, last_result, config)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tuner import tracking
from tuner.run import _LIVE_SWEEPS, BudgetStopper, OutcomeRecorder
from tuner.tracking import SweepRun
from tuner.train import TrainConfig

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


def tune_trial(trial_id: str, epoch: int | None) -> SimpleNamespace:
    """A trial as Tune holds it; epoch None: no result since Tune restored it."""
    return SimpleNamespace(trial_id=trial_id, config={"train": CONFIG.to_dict(), "index": 1},
                           last_result={"epoch": epoch, "val_acc": 0.1 * epoch} if epoch else {})


def end_sweep(tmp_path: Path, spent: bool) -> tuple[MlflowClient, SweepRun, optuna.Study]:
    """Trial a completed 4 epochs; b was running at epoch 2; c was started by a killed driver, which had
    not saved it, so Tune does not know it; d ran 3 epochs under the killed driver, whose snapshot held
    no result of it, and the resumed driver never started it again; e was sampled but never started; f
    started (it has its MLflow run) but did not finish an epoch."""
    uri, study_url = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    make_study(study_url, {"a": [1, 2, 3, 4], "b": [1, 2], "c": [1], "d": [1, 2, 3], "e": [], "f": []},
               complete={"a"})
    ledger = tmp_path / "budget.json"
    stopper = BudgetStopper(epochs=9 if spent else 100, ledger=ledger)
    for trial_id, epoch in (("a", 4), ("b", 2), ("d", 3)):
        stopper(trial_id, {"epoch": epoch, "gpu_seconds": 1.5 * epoch})
    stopper.stop_all()
    space = tmp_path / "space.yaml"
    space.write_text("parameters: {}\n")
    sweep = SweepRun.start(uri, "end", space, {}, {})
    _LIVE_SWEEPS[sweep.run_id] = sweep
    sweep.child_run_id("f", create=True)
    try:
        OutcomeRecorder(sweep.run_id, "val_acc", 4, 3, study_url, "s", ledger).experiment_end(
            [tune_trial("a", 4), tune_trial("b", 2), tune_trial("d", None), tune_trial("e", None),
             tune_trial("f", None)])
        assert sweep.end()
    finally:
        del _LIVE_SWEEPS[sweep.run_id]
    return MlflowClient(uri), sweep, optuna.load_study(study_name="s", storage=study_url)


def outcomes(client: MlflowClient, sweep: SweepRun) -> dict[str, tuple[str | None, str, str | None]]:
    return {r.data.tags["tuner.trial_id"]: (r.data.tags.get("tuner.outcome"), r.info.status,
                                            r.data.tags.get("tuner.gpu_seconds"))
            for r in tracking.trial_runs(client, client.get_run(sweep.run_id))}


def states(study: optuna.Study) -> dict[str, TrialState]:
    return {t.user_attrs["ray_trial_id"]: t.state for t in study.trials}


def test_a_spent_budget_prunes_the_running_trials_and_abandons_the_unknown_ones(tmp_path: Path) -> None:
    client, sweep, study = end_sweep(tmp_path, spent=True)
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
