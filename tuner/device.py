"""Where and in which precision a network runs: the device, and bf16 autocast where it is native."""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU (so trials run on CPU-only nodes too)."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """oneDNN runs bf16 natively here (AVX512-BF16 or AMX); elsewhere bf16 on CPU is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA and on CPUs with native bf16 for `auto` (docs/benchmarks.md#trainer-speed),
    always for `bf16`, never for `fp32`."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())):
        return torch.bfloat16
    return None
