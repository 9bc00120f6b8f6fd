"""Sweep budgets that stop the whole sweep: GPU-hours and total epochs."""
from __future__ import annotations

from tuner.run import BudgetStopper


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
