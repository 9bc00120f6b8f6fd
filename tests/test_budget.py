"""Sweep budgets that stop the whole sweep: GPU-hours and total epochs."""
from __future__ import annotations

from tuner.run import BudgetStopper, OutcomeRecorder
from tuner.space import Budget


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



def recorder(budget: Budget) -> OutcomeRecorder:
    return OutcomeRecorder("parent", "val_acc", 9, budget, trials=10, study_url="sqlite://", study_name="s")


def test_the_recorder_tallies_the_budget_like_the_stopper() -> None:
    outcomes = recorder(Budget(epochs=4))
    for trial, epoch in (("a", 1), ("b", 1), ("b", 2)):
        outcomes.budget(trial, {"epoch": epoch})
    assert not outcomes.budget_spent()
    outcomes.budget("b", {"epoch": 3})
    assert outcomes.budget_spent()


def test_wall_time_budget_is_spent_after_its_deadline() -> None:
    assert not recorder(Budget(wall_time_s=3600)).budget_spent()
    assert recorder(Budget(wall_time_s=1e-9)).budget_spent()
    assert not recorder(Budget()).budget_spent()


def test_outcome_names_who_stopped_a_trial() -> None:
    outcomes = recorder(Budget())
    assert outcomes.outcome({"epoch": 3}, errored=False) == "stopped_by_asha_at_epoch_3"
    assert outcomes.outcome({"epoch": 3}, errored=False, stopped_by="budget") == "stopped_by_budget_at_epoch_3"
    assert outcomes.outcome({"epoch": 9}, errored=False, stopped_by="budget") == "completed"
    assert outcomes.outcome({"epoch": 2, "diverged": True}, errored=False, stopped_by="budget") == "diverged"
