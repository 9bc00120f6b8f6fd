"""Where and in which precision a network runs: the device, and bf16 autocast where it is native."""
from __future__ import annotations

import torch

from tuner.config import PRECISIONS, check_device_name  # noqa: F401 - PRECISIONS re-exported (it lives with TrainConfig)
from tuner.errors import UserError


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU (so trials run on CPU-only nodes too)."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_device(requested: str) -> torch.device:
    """The device a user named, once it exists here; otherwise a UserError that says what does.

    The name's form is checked first (`check_device_name`, torch-free, for the CLIs' flag parsing).
    """
    device = torch.device(check_device_name(requested))
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {requested}: no CUDA GPU is visible to torch here; use --device cpu "
                            "(or check the driver and CUDA_VISIBLE_DEVICES)")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {requested}: this machine has {count} CUDA GPU(s), cuda:0 to "
                            f"cuda:{count - 1}; pick one of those")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"--device {requested}: Apple's MPS is not available here; use --device cpu")
    return device


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
