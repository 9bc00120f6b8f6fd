"""Checkpoints of `fit`: written atomically, read back as tensors and plain values only, turned into a model.

A checkpoint is the dict `tuner.train.TrainingState.checkpoint` builds (and `restore` reads back):
`format`, `config` (TrainConfig as a dict), `epoch`, `model` (the evaluated weights), `optimizer`,
`schedule`, `rng`, `history`, and with a weight average `trained` + `averaged_steps`. Reading uses
`torch.load(weights_only=True)`, so a planted file cannot run code.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.config import TrainConfig
from tuner.errors import UserError
from tuner.model import build_model


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file + rename) so a killed process never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(dict(state), partial)
    partial.replace(path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; tensors and plain values only (weights_only)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory: give the path of a .pt file written by tuner")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give the path of a .pt file written by tuner")
    return _checked(path, f"checkpoint {path}")


def checkpoint_from_bytes(data: bytes, where: str) -> dict[str, Any]:
    """A checkpoint read from storage as bytes (`where` names it in errors); as `load_checkpoint`."""
    return _checked(io.BytesIO(data), f"checkpoint {where}")


def _checked(source: Path | io.BytesIO, name: str) -> dict[str, Any]:
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise UserError(f"{name} cannot be read ({type(err).__name__}): it is corrupt or not a tuner checkpoint") \
            from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{name} is not a tuner checkpoint (no model/config inside)")
    return state


def model_from_checkpoint(state: Mapping[str, Any]) -> tuple[nn.Module, TrainConfig]:
    """The trained network (eval mode, CPU) and its config from a checkpoint dict."""
    config = TrainConfig.from_dict(state["config"], source="checkpoint config")
    model = build_model(config)
    model.load_state_dict(state["model"])
    return model.eval(), config
