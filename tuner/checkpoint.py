"""Checkpoints of `fit`: written atomically, read back as tensors and plain values only, turned into a model.

A checkpoint is the dict `tuner.train.TrainingState.checkpoint` builds (and `restore` reads back):
`format`, `config` (TrainConfig as a dict), `epoch`, `model` (the evaluated weights), `optimizer`,
`schedule`, `rng`, `history`, and with a weight average `trained` + `averaged_steps`. Every writer
(`python -m tuner.train`, a sweep's trials, its final fit) adds `split`: the data split it trained on, as
`tuner.data.split_record` builds it and `tuner.data.recorded_split` reads it back. Reading uses
`torch.load(weights_only=True)`, so a planted file cannot run code.

Reading checks only that `model` and `config` are there (bookkeeping reads just the history of checkpoints
it finds). What a use needs beyond that is checked where it is used, each as one UserError naming the
checkpoint: `load_weights` (weights that fit the config's network, for every use that builds one) and
`require_resumable` (everything `fit(resume=...)` restores: each part's structure, types, ranges and shapes,
so that a damaged or edited training state is one line before any training, never a TypeError from the middle
of restoring it nor a RuntimeError epochs later; `TrainingState.restore` runs it too).
"""
from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.config import TrainConfig, is_int, is_number
from tuner.errors import UserError, excerpt
from tuner.metrics import EpochMetrics
from tuner.model import build_model

# What to do about a checkpoint that is damaged, for callers that hold a checkpoint file the user named.
CHECKPOINT_FIX = "give a checkpoint written by tuner (python -m tuner.train --out, or a trial's checkpoint.pt)"
MAX_NAMES = 3  # parameter names an error lists before counting the rest


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file + rename) so a killed process never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(dict(state), partial)
    partial.replace(path)
    return path


def load_checkpoint(path: str | Path, name: str | None = None, fix: str = CHECKPOINT_FIX,
                    resumable: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; tensors and plain values only (weights_only).

    `name` is what errors call it (default `checkpoint PATH`: give a name when the path is a temporary copy
    the user never saw), `fix` what they tell the user to do; `resumable` also checks `require_resumable`.
    """
    path = Path(path)
    name = name or f"checkpoint {path}"
    if path.is_dir():
        raise UserError(f"{name} is a directory, not a file: give the path of a .pt file written by tuner")
    if not path.is_file():
        raise UserError(f"{name} does not exist: give the path of a .pt file written by tuner")
    state = _checked(path, name, fix)
    if resumable:
        require_resumable(state, name, fix)
    return state


def checkpoint_from_bytes(data: bytes, where: str, fix: str = CHECKPOINT_FIX) -> dict[str, Any]:
    """A checkpoint read from storage as bytes (`where` names it in errors); as `load_checkpoint`."""
    return _checked(io.BytesIO(data), f"checkpoint {where}", fix)


def _checked(source: Path | io.BytesIO, name: str, fix: str) -> dict[str, Any]:
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise UserError(f"{name} cannot be read ({type(err).__name__}): it is corrupt, truncated or not a tuner "
                        f"checkpoint; {fix}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{name} is not a tuner checkpoint (no model/config inside); {fix}")
    return state


def checkpoint_config(state: Mapping[str, Any], name: str = "checkpoint", fix: str = CHECKPOINT_FIX) -> TrainConfig:
    """The TrainConfig a checkpoint embeds; a bad one is ONE error line naming the checkpoint (the config's
    own check lists every problem, one a line)."""
    values = state.get("config")
    if not isinstance(values, Mapping):
        raise UserError(f"{name} holds no config (found {type(values).__name__}); {fix}")
    try:
        return TrainConfig.from_dict(values, source=f"{name} config")
    except UserError as err:
        problems = str(err).splitlines()
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}; the checkpoint is damaged or was edited: {fix}") from None


def weight_problems(network: nn.Module, weights: object) -> list[str]:
    """What keeps `weights` from loading into `network` exactly (strict): not a mapping of tensors, missing or
    unexpected names, shapes that differ. [] when they fit."""
    if not isinstance(weights, Mapping):
        return [f"the weights are a {type(weights).__name__}, not a state dict"]
    expected = network.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [excerpt(key, 40) for key in weights if key not in expected]  # names from the file: cut short
    not_tensors = [key for key in expected if key in weights and not isinstance(weights[key], torch.Tensor)]
    resized = [f"{key} is {list(weights[key].shape)}, the network's {list(value.shape)}"
               for key, value in expected.items()
               if key in weights and key not in not_tensors and weights[key].shape != value.shape]

    def listed(what: str, names: list[str], shown: int = MAX_NAMES) -> list[str]:
        if not names:
            return []
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return [f"{len(names)} {what} ({', '.join(names[:shown])}{more})"]

    return [*listed("missing", missing), *listed("unexpected", unexpected), *listed("not tensors", not_tensors),
            *listed("of another shape", resized, shown=1)]


def require_weights_fit(network: nn.Module, weights: object, name: str = "checkpoint", fix: str = CHECKPOINT_FIX,
                        part: str = "model") -> None:
    """Weights (the checkpoint's `part`) that do not fit `network` exactly (cut, emptied, or from another
    config) are one UserError naming the checkpoint, never torch's RuntimeError from load_state_dict."""
    problems = weight_problems(network, weights)
    if problems:
        raise UserError(f"{name}: its '{part}' weights do not fit the network of its config "
                        f"({'; '.join(problems)}): it is damaged or its config was edited; {fix}")


def load_weights(network: nn.Module, weights: object, name: str = "checkpoint", fix: str = CHECKPOINT_FIX,
                 part: str = "model") -> None:
    """Load a checkpoint's weights into `network`, strictly, after `require_weights_fit`: the one checked way
    weights reach a network."""
    require_weights_fit(network, weights, name, fix, part)
    network.load_state_dict(weights)  # type: ignore[arg-type]  # checked above: a mapping that fits


def model_from_checkpoint(state: Mapping[str, Any], name: str = "checkpoint",
                          fix: str = CHECKPOINT_FIX) -> tuple[nn.Module, TrainConfig]:
    """The trained network (eval mode, CPU) and its config from a checkpoint dict; `name` and `fix` word the
    error when the config or weights are bad."""
    config = checkpoint_config(state, name, fix)
    model = build_model(config)
    load_weights(model, state.get("model"), name, fix)
    return model.eval(), config


# What `fit(resume=...)` restores besides the weights, and the type each must have.
_RESUMED: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "optimizer": Mapping, "schedule": Mapping, "rng": Mapping, "history": list,
}


def require_resumable(state: Mapping[str, Any], name: str = "checkpoint", fix: str = CHECKPOINT_FIX) -> None:
    """Everything `fit(resume=state)` restores is there and fits the config's network, else one UserError
    naming the checkpoint (not a KeyError or RuntimeError from the middle of restoring it)."""
    config = checkpoint_config(state, name, fix)
    for key, kind in _RESUMED.items():
        if key not in state:
            raise UserError(f"{name} cannot be resumed: it has no '{key}' (training state); {fix}, "
                            f"or train from the start without --resume")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise UserError(f"{name} cannot be resumed: its '{key}' is a {type(state[key]).__name__}; {fix}")
    rng = state["rng"]
    if not all(isinstance(rng.get(key), torch.Tensor) for key in ("generator", "torch")):
        raise UserError(f"{name} cannot be resumed: its 'rng' lacks the generator/torch states; {fix}")
    with torch.device("meta"):  # shapes only: no memory, no initialisation, no random numbers drawn
        network = build_model(config)
    for part in ("model", "trained"):
        if part in state:
            require_weights_fit(network, state[part], name, fix, part)
    groups = state["optimizer"].get("param_groups")
    params = [p for group in groups if isinstance(group, Mapping) for p in group.get("params", ())] \
        if isinstance(groups, list) else None
    if params is None or "state" not in state["optimizer"] or len(params) != len(list(network.parameters())):
        raise UserError(f"{name} cannot be resumed: its 'optimizer' state does not match the network of its "
                        f"config; {fix}")
    problem = training_state_problem(state, config, network)
    if problem:
        raise UserError(f"{name} is damaged or from another version: {problem}; {fix}, or start without --resume")


_METRICS = [f.name for f in dataclasses.fields(EpochMetrics)]


def training_state_problem(state: Mapping[str, Any], config: TrainConfig, network: nn.Module) -> str | None:
    """What in the training state of checkpoint `state` (its parts' types already checked by
    `require_resumable`) `TrainingState.restore` or the epochs after it would fail on, in a few words; None
    when it fits. `network` is the config's, on any device (meta: shapes only)."""
    if not (isinstance(state["epoch"], int) and state["epoch"] >= 1):  # fit numbers epochs from 1
        return f"its 'epoch' is {excerpt(state['epoch'])}, not an epoch it trained (1 or more)"
    if "averaged_steps" in state and not (is_int(state["averaged_steps"]) and state["averaged_steps"] >= 0):
        return f"its 'averaged_steps' is {excerpt(state['averaged_steps'])}, not a count of steps"
    for i, entry in enumerate(state["history"]):
        if not (isinstance(entry, Mapping) and set(entry) == set(_METRICS)
                and all(is_number(value) for value in entry.values())):
            return (f"entry {i} of its 'history' is not an epoch's metrics (numbers named "
                    f"{', '.join(_METRICS)})")
    schedule = state["schedule"]
    if not (all(is_number(schedule.get(key)) for key in ("scale", "best", "bad"))
            and isinstance(schedule["bad"], int) and schedule["bad"] >= 0 and math.isfinite(schedule["scale"])):
        return f"its 'schedule' is not the learning-rate schedule's state (scale, best, bad: {excerpt(schedule)})"
    for key in ("generator", "torch"):
        value = state["rng"][key]
        if value.dtype != torch.uint8 or value.dim() != 1:
            return f"its 'rng' {key} state is a {value.dtype} tensor of shape {list(value.shape)}, not bytes"
    if state["rng"]["torch"].numel() != torch.get_rng_state().numel():
        return f"its 'rng' torch state has {state['rng']['torch'].numel()} bytes, not {torch.get_rng_state().numel()}"
    # The run's generator is on its device, whose state size differs (CPU, CUDA); which device the run takes is
    # decided later, so any of this machine's sizes passes here and `TrainingState.restore` checks the one it uses
    sizes = {torch.Generator().get_state().numel()}
    if torch.cuda.is_available():
        sizes.add(torch.Generator(device="cuda").get_state().numel())
    if state["rng"]["generator"].numel() not in sizes:
        return (f"its 'rng' generator state has {state['rng']['generator'].numel()} bytes, not "
                f"{' or '.join(map(str, sorted(sizes)))} (this machine's generators)")
    return _optimizer_problem(state["optimizer"], config, network)


def _optimizer_problem(saved: Mapping[str, Any], config: TrainConfig, network: nn.Module) -> str | None:
    """What keeps the saved optimizer state from continuing the config's optimizer: torch's own load checks the
    groups; the per-parameter state it does not check (a momentum buffer of another shape fails only at the
    first step), nor its names (an SGD's state under adam) nor the groups' settings (a probe step tries them)."""
    from tuner.train import make_optimizer  # here, not at the top: tuner.train imports this module

    optimizer = make_optimizer(config, network)
    try:
        optimizer.load_state_dict(saved)  # type: ignore[arg-type]  # a mapping; torch checks the rest
        for group in optimizer.param_groups:
            probe = torch.zeros(1, requires_grad=True)  # what state this group's settings keep, on a real tensor
            settings = {k: v for k, v in group.items() if k != "params"}
            trial = type(optimizer)([probe], **settings)
            probe.grad = torch.zeros(1)
            trial.step()
            kept = set(trial.state[probe])
            for param in group["params"]:
                found = optimizer.state.get(param, {})
                if found and set(found) != kept:
                    return (f"its 'optimizer' state holds {', '.join(sorted(map(str, found)))} per parameter, where "
                            f"the config's {config.optimizer} keeps {', '.join(sorted(kept))}")
                for key, value in found.items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                        return (f"its 'optimizer' {key} of a {list(param.shape)} parameter is "
                                f"{list(value.shape)}")
    except Exception as err:  # noqa: BLE001 - torch's load and the optimizers raise several types for bad input
        said = str(err).strip().splitlines()
        return f"its 'optimizer' state does not load ({type(err).__name__}: {excerpt(said[0] if said else '')})"
    return None
