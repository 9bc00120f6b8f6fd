"""The Ray Tune function trainable: one trial = one `tuner.train.fit` call, reported every epoch.

Thin on purpose (the Ray Tune function-trainable pattern): read the TrainConfig from the trial, take
the dataset from the object store (put there once by the driver, shared by every trial on a node),
resume from `tune.get_checkpoint()`, and `tune.report(metrics, checkpoint)` after each epoch. The
driver records what is reported (MLflow, the Optuna study); a trial only trains and reports.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tuner.architecture import count_macs, count_params
from tuner.checkpoint import load_checkpoint, save_checkpoint
from tuner.config import TrainConfig
from tuner.data import SPLIT_RECORD, DataSplits, split_record
from tuner.device import pick_device
from tuner.errors import UserError
from tuner.outcomes import ENDED_EARLIER, ERRORED_OUT_OF_GPU_MEMORY, RESUMED_EPOCHS
from tuner.system_metrics import SystemSampler
from tuner.train import EpochMetrics, fit

CHECKPOINT_FILE = "checkpoint.pt"
def readable_checkpoint(newest: tune.Checkpoint) -> dict[str, Any] | None:
    """The state of the newest readable checkpoint of the trial, from `newest` back through the older
    `checkpoint_NNNNNN` folders beside it; None (start from epoch 0) when none can be read. Says which."""
    from tuner.sweep_state import checkpoints_in

    candidates = [newest]
    try:
        parent, _, name = newest.path.rstrip("/").rpartition("/")
        older = sorted((path for path in checkpoints_in(newest.filesystem, parent)
                        if path.rpartition("/")[2] < name), reverse=True)
        candidates += [tune.Checkpoint(path, filesystem=newest.filesystem) for path in older]
    except OSError:
        pass
    for candidate in candidates:
        try:
            with candidate.as_directory() as folder:
                state = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
        except (UserError, OSError) as err:
            print(f"checkpoint {candidate.path} is unreadable ({str(err).splitlines()[0][:200]}); trying an older one",
                  flush=True)
            continue
        if candidate is not newest:
            print(f"continuing from the older checkpoint {candidate.path} (epoch {state.get('epoch')})", flush=True)
        return state
    print("no readable checkpoint: the trial starts again from epoch 0", flush=True)
    return None


def newest_checkpoint(restored: tune.Checkpoint | None, experiment: str, trial_id: str) -> tune.Checkpoint | None:
    """The checkpoint a (re)started trial continues from: the newest of its folder under the sweep's storage when
    that is newer than the one Ray restored. A driver killed between two of Ray's snapshots leaves trials whose
    later epochs (checkpointed by the worker itself) Ray's state does not list; without this they would train
    those epochs again, and their MLflow runs would hold epochs their outcome does not count."""
    from tuner.sweep_state import checkpoint_folders, resolve_storage

    if not experiment:
        return restored
    try:
        _, fs, path = resolve_storage(experiment)
        folders = checkpoint_folders(fs, path, trial_id)
    except (UserError, OSError):
        return restored
    if not folders:
        return restored
    newest = max(folders)
    restored_name = restored.path.rstrip("/").rpartition("/")[2] if restored is not None else ""
    if newest.rpartition("/")[2] <= restored_name:
        return restored
    print(f"continuing from {newest}, newer than the checkpoint Ray restored ({restored_name or 'none'}): "
          "its driver was killed before saving it", flush=True)
    return tune.Checkpoint(newest, filesystem=fs)


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares besides the data (plain values: Ray pickles it)."""

    gpus: float
    cpus: float
    metric: str
    experiment: str = ""  # Ray's folder of the sweep (a path or URI): where a trial finds its own checkpoints
    # The last result of each trial an earlier driver of this sweep ended (sweep_state.ended_results), read by the
    # resumed driver: the workers never read the driver's state themselves
    ended: Mapping[str, dict[str, Any]] = field(default_factory=dict)


def worst_value(metric: str) -> float:
    return 0.0 if metric == "val_acc" else math.inf


def use_cpus(cpus: float) -> int:
    """Torch threads for a task holding `cpus` CPUs (a trial, the final fit); returns the count. Torch would
    otherwise start a thread per core of the node in every task, however few CPUs the task holds. Set on
    every task: Ray reuses a worker for the next one."""
    threads = max(1, math.ceil(cpus))
    torch.set_num_threads(threads)
    return threads


def train_trial(config: dict[str, Any], data: DataSplits, settings: TrialSettings) -> None:
    """Ray Tune entry point; `data` and `settings` are bound with tune.with_parameters."""
    use_cpus(settings.cpus)
    # Ray logs "Checkpoint successfully created at ..." at INFO for every report: one line per epoch per trial
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    train_config = TrainConfig.from_dict(config["train"], source="trial config")
    trial_id = tune.get_context().get_trial_id()
    ended = settings.ended.get(trial_id)
    if ended is not None:
        # A driver gave this trial its outcome and was killed before Ray's next snapshot, so Ray restarted it:
        # it ends again on the result it ended on, without training (the driver records nothing twice).
        print(f"trial {trial_id} was ended by an earlier driver at epoch {ended['epoch']}: it ends again "
              "without training", flush=True)
        tune.report({**ended, ENDED_EARLIER: True})
        return
    checkpoint = newest_checkpoint(tune.get_checkpoint(), settings.experiment, trial_id)
    resume = readable_checkpoint(checkpoint) if checkpoint is not None else None
    earlier_seconds = float(resume.get("trial_seconds", 0.0)) if resume else 0.0
    started = time.monotonic()
    # node_id: which Ray node ran the epoch (multi-node checks, and where a resumed trial moved to)
    size = {"params": count_params(train_config), "macs": count_macs(train_config),
            "node_id": ray.get_runtime_context().get_node_id(), "device": pick_device().type,
            "threads": torch.get_num_threads()}

    def seconds() -> float:
        return earlier_seconds + time.monotonic() - started

    last_epoch = int(resume["epoch"]) if resume else 0
    resumed_epochs = list(resume.get("history", [])) if resume else []
    # Every checkpoint records the sweep's split (the space's `data:` section), as python -m tuner.train's do: a
    # `tuner.train --resume` of it then trains and validates on the images this trial did. Once per trial: it
    # hashes every image.
    split = split_record(data)

    def on_epoch(metrics: Any, make_checkpoint: Any) -> None:
        nonlocal last_epoch, resumed_epochs
        last_epoch = metrics.epoch
        values = {**metrics.as_dict(), **size, "gpu_seconds": settings.gpus * seconds(),
                  "trial_seconds": seconds(), "diverged": False, **sampler.fresh()}
        if resumed_epochs:  # once, with the first result after the restart
            values[RESUMED_EPOCHS], resumed_epochs = resumed_epochs, []
        state = make_checkpoint()
        state["trial_seconds"] = seconds()
        if split is not None:
            state[SPLIT_RECORD] = split
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state, Path(folder) / CHECKPOINT_FILE)
            # Ray's own `timestamp` is whole seconds, too coarse to time trials of a few seconds. Taken last,
            # like Ray's time_this_iter_s, so that reported_at - time_this_iter_s is when the epoch began.
            # The driver also logs the epoch's metrics at this time (one epoch, one timestamp).
            values["reported_at"] = time.time()
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(folder))

    if resume is not None and int(resume.get("epoch", 0)) >= train_config.epochs and resume.get("history"):
        # Every epoch ran before the restart: its last result again, so that Tune ends the trial on it.
        with SystemSampler() as sampler:
            on_epoch(EpochMetrics(**resume["history"][-1]), lambda: dict(resume))
        return
    try:
        with SystemSampler() as sampler:
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
