"""The Ray Tune function trainable: one trial = one `tuner.train.fit` call, reported every epoch.

Thin on purpose (the Ray Tune function-trainable pattern): read the TrainConfig from the trial, take
the dataset from the object store (put there once by the driver, shared by every trial on a node),
resume from `tune.get_checkpoint()`, and `tune.report(metrics, checkpoint)` after each epoch. The
driver records what is reported (MLflow, the Optuna study); a trial only trains and reports.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tuner.architecture import count_macs, count_params
from tuner.checkpoint import load_checkpoint, save_checkpoint
from tuner.config import TrainConfig
from tuner.data import DataSplits
from tuner.device import pick_device
from tuner.outcomes import ERRORED_OUT_OF_GPU_MEMORY
from tuner.train import fit

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares besides the data (plain values: Ray pickles it)."""

    gpus: float
    cpus: float
    metric: str


def worst_value(metric: str) -> float:
    return 0.0 if metric == "val_acc" else math.inf


def train_trial(config: dict[str, Any], data: DataSplits, settings: TrialSettings) -> None:
    """Ray Tune entry point; `data` and `settings` are bound with tune.with_parameters."""
    # Torch would otherwise start a thread per core of the node in every trial, however few CPUs the trial
    # holds. Set on every trial: Ray reuses a worker for the next trial.
    torch.set_num_threads(max(1, math.ceil(settings.cpus)))
    train_config = TrainConfig.from_dict(config["train"], source="trial config")
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    earlier_seconds = float(resume.get("trial_seconds", 0.0)) if resume else 0.0
    started = time.monotonic()
    # node_id: which Ray node ran the epoch (multi-node checks, and where a resumed trial moved to)
    size = {"params": count_params(train_config), "macs": count_macs(train_config),
            "node_id": ray.get_runtime_context().get_node_id(), "device": pick_device().type,
            "threads": torch.get_num_threads()}

    def seconds() -> float:
        return earlier_seconds + time.monotonic() - started

    last_epoch = int(resume["epoch"]) if resume else 0

    def on_epoch(metrics: Any, make_checkpoint: Any) -> None:
        nonlocal last_epoch
        last_epoch = metrics.epoch
        values = {**metrics.as_dict(), **size, "gpu_seconds": settings.gpus * seconds(),
                  "trial_seconds": seconds(), "diverged": False}
        state = make_checkpoint()
        state["trial_seconds"] = seconds()
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state, Path(folder) / CHECKPOINT_FILE)
            # Ray's own `timestamp` is whole seconds, too coarse to time trials of a few seconds. Taken last,
            # like Ray's time_this_iter_s, so that reported_at - time_this_iter_s is when the epoch began.
            # The driver also logs the epoch's metrics at this time (one epoch, one timestamp).
            values["reported_at"] = time.time()
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        result = fit(train_config, data, on_epoch, resume=resume)
    except torch.cuda.OutOfMemoryError:
        # Not raised on: Ray would retry it on the same GPU share and fail the same way.
        tune.report({"epoch": last_epoch + 1, settings.metric: worst_value(settings.metric),
                     "diverged": False, "error": ERRORED_OUT_OF_GPU_MEMORY, **size,
                     "gpu_seconds": settings.gpus * seconds()})
        return
    if result.status == "diverged":
        # Reported as a result, not raised: a diverged config is a finding, not a crash to retry.
        tune.report({"epoch": last_epoch + 1, settings.metric: worst_value(settings.metric),
                     "diverged": True, **size, "gpu_seconds": settings.gpus * seconds()})
