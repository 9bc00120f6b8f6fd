"""A trial's use of its machine, sampled in the background (`SystemSampler`): CPU %, resident memory and, on
a GPU, utilisation and memory, as the `system/...` metrics the driver logs on each trial's MLflow run.
Torch-only (its allocator's figures without pynvml); no Ray, no MLflow."""
from __future__ import annotations

import os
import threading
from typing import Any

import torch

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
