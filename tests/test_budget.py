"""Sweep budgets that stop the whole sweep: GPU-hours, total epochs and wall time, kept across resumes."""
from __future__ import annotations

import pickle
import time
from pathlib import Path

from tuner import outcomes
from tuner.bookkeeping import BudgetStop, BudgetStopper
from tuner.sweep_state import BUDGET_LEDGER, SweepState


def test_gpu_hours_budget_counts_each_trials_latest_gpu_seconds() -> None:
    stop = BudgetStop(BudgetStopper(gpu_hours=1.0, epochs=None))
    stop("a", {"gpu_seconds": 1000.0, "epoch": 1})
    stop("a", {"gpu_seconds": 2000.0, "epoch": 2})  # cumulative per trial: replaces, not adds
    stop("b", {"gpu_seconds": 1500.0, "epoch": 1})
    assert not stop.stop_all()
    stop("b", {"gpu_seconds": 1600.0, "epoch": 2})
    assert stop.stop_all() and stop.budget.spent_reason() == "gpu_hours"


def test_epoch_budget_sums_epochs_over_trials() -> None:
    stop = BudgetStop(BudgetStopper(gpu_hours=None, epochs=5))
    for epoch in (1, 2, 3):
        stop("a", {"epoch": epoch})
    stop("b", {"epoch": 1})
    assert not stop.stop_all()
    stop("b", {"epoch": 2})
    assert stop.stop_all()


def test_no_budget_never_stops() -> None:
    stop = BudgetStop(BudgetStopper(gpu_hours=None, epochs=None))
    stop("a", {"gpu_seconds": 1e9, "epoch": 10_000})
    assert not stop.stop_all()


def test_the_ledger_carries_what_was_spent_into_a_restored_stopper(tmp_path: Path) -> None:
    """Tune restores its stopper from a snapshot older than the last results: the ledger brings them back."""
    ledger = SweepState(str(tmp_path), "s")
    stop = BudgetStop(BudgetStopper(gpu_hours=None, epochs=6, ledger=ledger))
    restored = pickle.loads(pickle.dumps(stop))  # what --resume gets
    for epoch in (1, 2, 3):
        stop("a", {"epoch": epoch})
    stop("b", {"epoch": 2})
    assert not stop.stop_all()
    restored("b", {"epoch": 3})  # trial b continues after the resume; trial a finished before it
    assert restored.stop_all()
    assert BudgetStopper(ledger=ledger).spent_reason() == "epochs"  # a later driver reads it too


def test_one_stopper_is_what_the_recorder_asks(tmp_path: Path) -> None:
    """In one driver the recorder and Tune's stopper hold the same object: no file in between."""
    ledger = SweepState(str(tmp_path), "s")
    budget = BudgetStopper(epochs=2, ledger=ledger)
    stop = BudgetStop(budget)
    stop("a", {"epoch": 2})
    assert stop.stop_all()
    ledger.fs.delete_file(ledger.where(BUDGET_LEDGER))
    assert budget.spent_reason() == "epochs"


def test_wall_time_runs_while_a_driver_runs_and_adds_up_over_resumes(tmp_path: Path) -> None:
    ledger = SweepState(str(tmp_path), "s")
    stop = BudgetStop(BudgetStopper(wall_time_s=1.0, ledger=ledger))
    assert not stop.stop_all()  # the clock starts at the first check
    time.sleep(0.6)
    stop.stop_all()
    stop("a", {"epoch": 1})  # each result writes the ledger
    restored = pickle.loads(pickle.dumps(BudgetStop(BudgetStopper(wall_time_s=1.0, ledger=ledger))))
    assert not restored.stop_all() and restored.budget.wall_s >= 0.6
    time.sleep(0.6)
    assert restored.stop_all() and BudgetStopper(ledger=ledger).spent_reason() == "wall_time"


def test_a_budget_spent_is_named_in_the_ledger(tmp_path: Path) -> None:
    ledger = SweepState(str(tmp_path), "s")
    assert BudgetStopper(ledger=ledger).spent_reason() is None  # no sweep has run yet
    stop = BudgetStop(BudgetStopper(gpu_hours=0.001, ledger=ledger))
    stop("a", {"gpu_seconds": 2.0, "epoch": 1})
    assert not stop.stop_all() and BudgetStopper(ledger=ledger).spent_reason() is None
    stop("a", {"gpu_seconds": 4.0, "epoch": 2})
    assert stop.stop_all() and BudgetStopper(ledger=ledger).spent_reason() == "gpu_hours"


def test_outcome_names_who_stopped_a_trial() -> None:
    assert outcomes.of_result({"epoch": 3}, errored=False, max_epochs=9) == "stopped_by_asha_at_epoch_3"
    assert outcomes.of_result({"epoch": 3}, False, 9, stopped_by="budget") == "stopped_by_budget_at_epoch_3"
    assert outcomes.of_result({"epoch": 9}, False, 9, stopped_by="budget") == "completed"
    assert outcomes.of_result({"epoch": 2, "diverged": True}, False, 9, stopped_by="budget") == "diverged"
