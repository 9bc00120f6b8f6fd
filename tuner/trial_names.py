"""What a trial is called and which of its settings it shows, the same in the console, in MLflow and under
--storage: the label `t007`, the searched values of a space (`SpaceOutline`), the fields a configuration's
training reads, the child run's name and its params. Plain values only: importable without mlflow or Ray."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuner.config import TrainConfig, format_stages


def trial_label(index: int) -> str:
    """`t007`: the trial's sample number, shared by its run name and its folder under --storage."""
    return f"t{index:03d}"


@dataclass(frozen=True)
class SpaceOutline:
    """What the child runs need of a space, as plain values (Ray pickles it with the driver's state): the
    metric and its direction, and each searched field with the `when` condition under which it is sampled."""

    metric: str = "val_acc"
    mode: str = "max"
    searched: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @classmethod
    def of(cls, space: Any) -> SpaceOutline:
        """From a tuner.space.SearchSpace."""
        return cls(space.metric, space.mode,
                   tuple((p.name, tuple(sorted(dict(p.when).items()))) for p in space.parameters))

    def searched_values(self, config: TrainConfig) -> dict[str, Any]:
        """The searched fields this config used (those whose condition holds), in the space's order."""
        values = config.to_dict()
        return {name: values[name] for name, when in self.searched
                if name in values and all(_same(values.get(k), v) for k, v in when)}

    def better(self, value: float, than: float | None) -> bool:
        return than is None or (value > than if self.mode == "max" else value < than)


def _same(value: Any, wanted: Any) -> bool:
    return (list(value) == list(wanted) if isinstance(value, (list, tuple)) and isinstance(wanted, (list, tuple))
            else value == wanted)


# TrainConfig fields the training reads only in some configurations (tuner.train): (field, applies).
_APPLIES: dict[str, Callable[[TrainConfig], bool]] = {
    "momentum": lambda c: c.optimizer == "sgd",
    "nesterov": lambda c: c.optimizer == "sgd" and c.momentum > 0,
    "plateau_patience": lambda c: c.schedule == "plateau",
    "plateau_factor": lambda c: c.schedule == "plateau",
    "alternate_flip": lambda c: c.flip,
}


def used_fields(config: TrainConfig, outline: SpaceOutline | None = None) -> list[str]:
    """The TrainConfig fields this config's training reads: an adamw trial has no momentum or nesterov, and
    a searched field whose `when` condition fails was never sampled."""
    searched = set(outline.searched_values(config)) if outline else set()
    skipped = {name for name, _ in outline.searched} - searched if outline else set()
    return [name for name in config.field_names()
            if name not in skipped and (name in searched or _APPLIES.get(name, lambda _: True)(config))]


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def trial_run_name(index: int, config: TrainConfig, outline: SpaceOutline | None = None) -> str:
    """The child run's name from the trial's label and its searched values: `t007 lr=0.031 optimizer=adamw`;
    without searched values, `t007 w64-128-256 b2-2-2 lr0.05`."""
    values = outline.searched_values(config) if outline else {}
    if values:
        return f"{trial_label(index)} " + " ".join(f"{k}={_shown(v)}" for k, v in values.items())[:240]
    widths, blocks = (format_stages(stages).replace(",", "-") for stages in (config.widths, config.blocks))
    return f"{trial_label(index)} w{widths} b{blocks} lr{config.lr:g}"


def config_params(config: TrainConfig, fields: list[str] | None = None) -> dict[str, str]:
    """TrainConfig as MLflow params (only `fields` when given): stage tuples as `64,128,256`, all strings."""
    return {key: format_stages(value) if isinstance(value, list) else str(value)
            for key, value in config.to_dict().items() if fields is None or key in fields}

