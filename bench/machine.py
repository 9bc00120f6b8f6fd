"""What a benchmark figure was measured on: processor (and whether it runs bf16 natively), GPU, torch, threads.

Imported by the scripts beside it (bench/ is on sys.path when one of them runs), so every figure they
write carries its machine: a proxy accuracy depends on bf16 autocast, which `precision: auto` uses only
where the processor has it (tuner.device.autocast_dtype).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def describe_machine(device: str | None = None) -> dict[str, Any]:
    """{'cpu': model name, 'cpu_bf16': avx512_bf16 present, 'cores', 'torch', 'threads', 'gpu' (or None),
    'load_average'}; the load average says how much other work shared the cores during the run."""
    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu in ("", platform.machine(), platform.processor()):
                cpu = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
    gpu = None
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "cpu": cpu,
        "cpu_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def machine_line(machine: dict[str, Any]) -> str:
    """One line for a log: `AMD EPYC (avx512_bf16), 2 cores, torch 2.x, 2 threads, load 3.1`."""
    where = machine["gpu"] or f"{machine['cpu']} ({'avx512_bf16' if machine['cpu_bf16'] else 'no native bf16'})"
    load = machine["load_average"][0] if machine["load_average"] else "?"
    return (f"{where}, {machine['cores']} cores, torch {machine['torch']}, {machine['threads']} threads, "
            f"load average {load}")
