"""The Ray Tune function trainable: one trial = one `tuner.train.fit` call, reported every epoch.

Thin on purpose (the Ray Tune function-trainable pattern): read the TrainConfig from the trial, take
the dataset from the object store (put there once by the driver, shared by every trial on a node),
resume from `tune.get_checkpoint()`, and `tune.report(metrics, checkpoint)` after each epoch. Metrics
also go straight from the worker to MLflow (`tracking.TrialRun`), so no shared filesystem is needed.
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

from tuner.checkpoint import load_checkpoint, save_checkpoint
from tuner.data import DataSplits
from tuner.device import pick_device
from tuner.model import count_macs, count_params
from tuner.train import TrainConfig, fit

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares besides the data (plain values: Ray pickles it)."""

    gpus: float
    metric: str
    tracking_uri: str | None = None
    parent_run_id: str | None = None


def worst_value(metric: str) -> float:
    return 0.0 if metric == "val_acc" else math.inf


def train_trial(config: dict[str, Any], data: DataSplits, settings: TrialSettings) -> None:
    """Ray Tune entry point; `data` and `settings` are bound with tune.with_parameters."""
    train_config = TrainConfig.from_dict(config["train"], source="trial config")
    trial_id = tune.get_context().get_trial_id()
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    earlier_seconds = float(resume.get("trial_seconds", 0.0)) if resume else 0.0
    started = time.monotonic()
    run = _open_tracking(settings, trial_id, int(config.get("index", 0)), train_config)
    # node_id: which Ray node ran the epoch (multi-node checks, and where a resumed trial moved to)
    size = {"params": count_params(train_config), "macs": count_macs(train_config),
            "node_id": ray.get_runtime_context().get_node_id(), "device": pick_device().type}

    def seconds() -> float:
        return earlier_seconds + time.monotonic() - started

    last_epoch = int(resume["epoch"]) if resume else 0

    def on_epoch(metrics: Any, make_checkpoint: Any) -> None:
        nonlocal last_epoch
        last_epoch = metrics.epoch
        values = {**metrics.as_dict(), **size, "gpu_seconds": settings.gpus * seconds(),
                  "trial_seconds": seconds(), "diverged": False}
        if run is not None:
            run.log_epoch(metrics.as_dict(), metrics.epoch)
        state = make_checkpoint()
        state["trial_seconds"] = seconds()
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state, Path(folder) / CHECKPOINT_FILE)
            # Ray's own `timestamp` is whole seconds, too coarse to time trials of a few seconds. Taken last,
            # like Ray's time_this_iter_s, so that reported_at - time_this_iter_s is when the epoch began.
            values["reported_at"] = time.time()
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(folder))

    outcome = "completed"
    try:
        result = fit(train_config, data, on_epoch, resume=resume)
    except torch.cuda.OutOfMemoryError:
        # Not raised on: Ray would retry it on the same GPU share and fail the same way.
        outcome = "errored_out_of_gpu_memory"
        tune.report({"epoch": last_epoch + 1, settings.metric: worst_value(settings.metric),
                     "diverged": False, "error": outcome, **size, "gpu_seconds": settings.gpus * seconds()})
    else:
        if result.status == "diverged":
            outcome = "diverged"
            # Reported as a result, not raised: a diverged config is a finding, not a crash to retry.
            tune.report({"epoch": last_epoch + 1, settings.metric: worst_value(settings.metric),
                         "diverged": True, **size, "gpu_seconds": settings.gpus * seconds()})
    if run is not None:
        # 30 s, not longer: the trial holds its GPU share while it waits, and the driver fills in at the
        # end whatever epochs a worker could not deliver during a tracking outage.
        run.finish(outcome, {"tuner.gpu_seconds": f"{settings.gpus * seconds():.1f}"}, timeout_s=30.0)


def _open_tracking(settings: TrialSettings, trial_id: str, index: int, config: TrainConfig) -> Any:
    if settings.tracking_uri is None or settings.parent_run_id is None:
        return None
    from tuner import tracking  # MLflow is needed only where trials are tracked

    return tracking.TrialRun(settings.tracking_uri, settings.parent_run_id, trial_id,
                             tracking.trial_run_name(index, config), config, {"tuner.index": str(index)})
