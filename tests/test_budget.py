"""Sweep budgets that stop the whole sweep: GPU-hours, total epochs and wall time, kept across resumes."""
from __future__ import annotations

import pickle
import time
from pathlib import Path

from tuner.run import BudgetStopper, OutcomeRecorder


def test_gpu_hours_budget_counts_each_trials_latest_gpu_seconds() -> None:
    stopper = BudgetStopper(gpu_hours=1.0, epochs=None)
    stopper("a", {"gpu_seconds": 1000.0, "epoch": 1})
    stopper("a", {"gpu_seconds": 2000.0, "epoch": 2})  # cumulative per trial: replaces, not adds
    stopper("b", {"gpu_seconds": 1500.0, "epoch": 1})
    assert not stopper.stop_all()
    stopper("b", {"gpu_seconds": 1600.0, "epoch": 2})
    assert stopper.stop_all()


def test_epoch_budget_sums_epochs_over_trials() -> None:
    stopper = BudgetStopper(gpu_hours=None, epochs=5)
    for epoch in (1, 2, 3):
        stopper("a", {"epoch": epoch})
    stopper("b", {"epoch": 1})
    assert not stopper.stop_all()
    stopper("b", {"epoch": 2})
    assert stopper.stop_all()


def test_no_budget_never_stops() -> None:
    stopper = BudgetStopper(gpu_hours=None, epochs=None)
    stopper("a", {"gpu_seconds": 1e9, "epoch": 10_000})
    assert not stopper.stop_all()


def test_the_ledger_carries_what_was_spent_into_a_restored_stopper(tmp_path: Path) -> None:
    """Tune restores the stopper it pickled before the first result: the ledger brings back the tallies."""
    ledger = tmp_path / "budget.json"
    stopper = BudgetStopper(gpu_hours=None, epochs=6, ledger=ledger)
    restored = pickle.loads(pickle.dumps(stopper))  # what --resume gets
    for epoch in (1, 2, 3):
        stopper("a", {"epoch": epoch})
    stopper("b", {"epoch": 2})
    assert not stopper.stop_all()
    restored("b", {"epoch": 3})  # trial b continues after the resume; trial a finished before it
    assert restored.stop_all() and BudgetStopper.read(ledger).reason == "epochs"


def test_wall_time_runs_while_a_driver_runs_and_adds_up_over_resumes(tmp_path: Path) -> None:
    ledger = tmp_path / "budget.json"
    stopper = BudgetStopper(wall_time_s=1.0, ledger=ledger)
    assert not stopper.stop_all()  # the clock starts at the first check
    time.sleep(0.6)
    stopper.stop_all()
    stopper("a", {"epoch": 1})  # each result writes the ledger
    restored = pickle.loads(pickle.dumps(BudgetStopper(wall_time_s=1.0, ledger=ledger)))
    assert not restored.stop_all() and restored.wall_s >= 0.6
    time.sleep(0.6)
    assert restored.stop_all() and BudgetStopper.read(ledger).reason == "wall_time"


def test_a_budget_spent_is_named_in_the_ledger(tmp_path: Path) -> None:
    ledger = tmp_path / "budget.json"
    assert BudgetStopper.read(ledger).reason is None  # no sweep has run yet
    stopper = BudgetStopper(gpu_hours=0.001, ledger=ledger)
    stopper("a", {"gpu_seconds": 2.0, "epoch": 1})
    assert not stopper.stop_all() and BudgetStopper.read(ledger).reason is None
    stopper("a", {"gpu_seconds": 4.0, "epoch": 2})
    assert stopper.stop_all() and BudgetStopper.read(ledger).reason == "gpu_hours"


def test_outcome_names_who_stopped_a_trial(tmp_path: Path) -> None:
    outcomes = OutcomeRecorder("parent", "val_acc", 9, trials=10, study_url="sqlite://", study_name="s",
                               ledger=tmp_path / "budget.json")
    assert outcomes.outcome({"epoch": 3}, errored=False) == "stopped_by_asha_at_epoch_3"
    assert outcomes.outcome({"epoch": 3}, errored=False, stopped_by="budget") == "stopped_by_budget_at_epoch_3"
    assert outcomes.outcome({"epoch": 9}, errored=False, stopped_by="budget") == "completed"
    assert outcomes.outcome({"epoch": 2, "diverged": True}, errored=False, stopped_by="budget") == "diverged"
