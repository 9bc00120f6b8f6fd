"""The Ray Tune function trainable: one trial = one `tuner.train.fit` call, reported every epoch.

Thin on purpose (the Ray Tune function-trainable pattern): read the TrainConfig from the trial, take
the dataset from the object store (put there once by the driver, shared by every trial on a node),
resume from `tune.get_checkpoint()`, and `tune.report(metrics, checkpoint)` after each epoch. The
driver records what is reported (MLflow, the Optuna study); a trial only trains and reports.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
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
from tuner.train import EpochMetrics, fit

CHECKPOINT_FILE = "checkpoint.pt"
SYSTEM_SAMPLE_S = 10.0  # how often a trial samples its CPU, memory and GPU use (MLflow's own default period)


class SystemSampler:
    """Samples this trial's process every SYSTEM_SAMPLE_S in a daemon thread: CPU % and resident memory
    (psutil), and where the trial has a GPU its utilisation and memory (pynvml when installed, else torch's
    allocator). `fresh()` hands the latest sample once, as `system/...` keys the driver logs on the child run:
    what a user needs to choose how many trials to pack per GPU."""

    def __init__(self, period_s: float = SYSTEM_SAMPLE_S) -> None:
        self.period_s = period_s
        self._latest: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tuner-system-sampler")

    def __enter__(self) -> SystemSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def fresh(self) -> dict[str, float]:
        with self._lock:
            sample, self._latest = self._latest, {}
        return sample

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:  # psutil is a declared dependency; without it, no system metrics
            return
        process = psutil.Process(os.getpid())
        process.cpu_percent(None)  # the first call starts the interval
        gpu = _gpu_reader()
        wait = min(2.0, self.period_s)  # a first sample early: trials of a few seconds get one too
        while not self._stop.wait(wait):
            wait = self.period_s
            sample = {"system/cpu_percent": process.cpu_percent(None),
                      "system/memory_rss_mb": process.memory_info().rss / 2**20}
            if gpu is not None:
                sample.update(gpu())
            with self._lock:
                self._latest = sample


def _gpu_reader() -> Any:
    """A function returning the GPU's utilisation and memory, or None without a GPU."""
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    try:
        import pynvml

        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        physical = int(visible[index]) if visible and visible[0] and visible[index].isdigit() else index
        handle = pynvml.nvmlDeviceGetHandleByIndex(physical)

        def read() -> dict[str, float]:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            return {"system/gpu_utilization_percent": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                    "system/gpu_memory_used_mb": memory.used / 2**20,
                    "system/gpu_memory_trial_mb": torch.cuda.memory_reserved(index) / 2**20}
        return read
    except Exception:  # noqa: BLE001 - no pynvml (the optional `gpu` extra) or no NVML: torch's own figures
        def read_torch() -> dict[str, float]:
            values = {"system/gpu_memory_trial_mb": torch.cuda.memory_reserved(index) / 2**20}
            try:
                values["system/gpu_utilization_percent"] = float(torch.cuda.utilization(index))
            except Exception:  # noqa: BLE001 - torch.cuda.utilization needs pynvml too
                pass
            return values
        return read_torch


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
