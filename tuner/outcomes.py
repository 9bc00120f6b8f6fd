"""How a trial ended: the outcome names that MLflow tags, the study and the reports share.

`completed` ran every epoch; `stopped_by_asha_at_epoch_N` / `stopped_by_budget_at_epoch_N` were stopped
by the scheduler or the sweep's budget; `stopped_by_driver_kill_at_epoch_N` was started and checkpointed after
a killed driver's last snapshot, so no driver can continue it; `diverged` and `errored_*` failed; `infeasible` broke the
space's constraints and never ran; `abandoned` was started by a driver that died before saving it;
`not_run` was queued when the budget ran out.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COMPLETED = "completed"
INFEASIBLE = "infeasible"
DIVERGED = "diverged"
ERRORED = "errored"
ERRORED_OUT_OF_GPU_MEMORY = "errored_out_of_gpu_memory"
ABANDONED = "abandoned"
NOT_RUN = "not_run"
STOPPED_PREFIX = "stopped_by_"
FAILED = (DIVERGED, ERRORED)  # prefixes: errored_out_of_gpu_memory is a failure too
# A trial's first result after it continued from a checkpoint carries the checkpoint's per-epoch metrics under
# this key: epochs a killed driver received from it but never wrote (or never received) reach MLflow and the
# study from there, each once.
RESUMED_EPOCHS = "resumed_epochs"
# In the one result of a trial Ray restarted although a driver had already ended it (sweep_state.ENDED_TRIALS)
ENDED_EARLIER = "ended_earlier"


def stopped(epoch: int, by: str = "asha") -> str:
    """The outcome of a trial stopped after `epoch` epochs by the ASHA scheduler or the sweep's budget."""
    return f"{STOPPED_PREFIX}{by}_at_epoch_{epoch}"


def is_failed(outcome: str) -> bool:
    return outcome.startswith(FAILED)


def group(outcome: str) -> str:
    """completed | stopped | failed | other: the four colours of the reports."""
    if outcome == COMPLETED:
        return "completed"
    if outcome.startswith(STOPPED_PREFIX):
        return "stopped"
    return "failed" if is_failed(outcome) else "other"


def run_status(outcome: str) -> str:
    """MLflow run status: failed trials show as FAILED, abandoned ones as KILLED, the rest FINISHED."""
    if outcome == ABANDONED:
        return "KILLED"
    return "FAILED" if is_failed(outcome) else "FINISHED"


def of_result(result: Mapping[str, Any], errored: bool, max_epochs: int, stopped_by: str = "asha") -> str:
    """The outcome of a trial from its last reported result (`errored`: Ray gave up on it)."""
    if errored:
        return ERRORED
    if result.get("error"):
        return str(result["error"])
    if result.get("diverged"):
        return DIVERGED
    epoch = int(result.get("epoch", 0))
    return COMPLETED if epoch >= max_epochs else stopped(epoch, stopped_by)
