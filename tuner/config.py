"""TrainConfig: every hyperparameter of one training run, validated without torch.

Everything speaks it (DESIGN.md, "One config type"): a space file names its fields, a trial receives one,
MLflow logs it, a checkpoint embeds it, `python -m tuner.train --config` reads it back. It lives apart from
the trainer (`tuner.train`, which re-exports it) so that the commands that only read and check configs,
`python -m tuner.run --dry-run` and every `--help`, never import torch.

Values arrive as YAML scalars, MLflow's text params or flags; `TrainConfig.from_dict` coerces each to its
field's type and checks its range, and reports every problem of the values at once, each naming the field,
the value (an excerpt) and the rule.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tuner.errors import UserError, excerpt, suggest

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "plateau")
# auto: bf16 autocast where the device runs it natively (tuner.device.autocast_dtype), else fp32
PRECISIONS = ("auto", "bf16", "fp32")
STAGE_FIELDS = ("widths", "blocks")  # one value per stage
DEVICES = "cpu, cuda, cuda:N or mps"  # torch's names for the devices tuner trains on (`--device`)
_DEVICE_NAME = re.compile(r"cpu|cuda|cuda:[0-9]{1,2}|mps")
# Upper limits: far beyond any useful run, low enough that a typo (an extra zero or three) is caught here
# instead of by an out-of-memory error or a sweep that would run for years.
MAX_STAGES = 8  # a 32x32 image is 1x1 after six stride-2 stages
MAX_WIDTH = 4096
MAX_BLOCKS = 64
MAX_EPOCHS = 10_000
MAX_BATCH = 50_000  # the CIFAR-10 training set
MAX_SEED = 2**32 - 1  # what numpy's generators accept
MAX_TTA_SHIFT = 8  # a quarter of the image; airbench shifts by one pixel
# Far beyond any useful decay (0 to 0.1 in practice): 5e4 for 5e-4, a lost minus sign, is the typo it catches.
# lr has no such limit: with BatchNorm SGD still trains at lr 10, and a huge lr fails fast as `diverged`.
MAX_WEIGHT_DECAY = 10.0

# Names people write for a field, from other tools and papers: each gets "did you mean" the field.
FIELD_ALIASES = {
    "learning_rate": "lr", "lr0": "lr", "base_lr": "lr", "wd": "weight_decay", "l2": "weight_decay",
    "bs": "batch_size", "batch": "batch_size", "batchsize": "batch_size", "mom": "momentum",
    "optim": "optimizer", "opt": "optimizer", "sched": "schedule", "lr_schedule": "schedule",
    "scheduler": "schedule", "warmup": "warmup_epochs", "smoothing": "label_smoothing",
    "jitter": "color_jitter", "colour_jitter": "color_jitter", "padding": "crop_padding", "pad": "crop_padding",
    "width": "widths", "channels": "widths", "depth": "blocks", "depths": "blocks", "layers": "blocks",
    "ema": "ema_epochs", "num_epochs": "epochs", "n_epochs": "epochs", "max_epochs": "epochs",
    "amp": "precision", "dtype": "precision", "tta": "tta_flip",
    "zero_init": "zero_init_residual", "zero_init_last_bn": "zero_init_residual", "identity_init": "dirac_init",
    "altflip": "alternate_flip", "alt_flip": "alternate_flip", "no_bn_decay": "bn_bias_decay",
    "bn_weight_decay": "bn_bias_decay", "plain_epochs": "final_plain_epochs", "tta_shift": "tta_translate",
}


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of one training run. The defaults are our best recipe.

    The recipe options from the fast-CIFAR literature (`zero_init_residual`, `dirac_init`, `bn_bias_decay`,
    `alternate_flip`, `final_plain_epochs`, `tta_translate`) keep today's behaviour by default until a
    measurement says otherwise: docs/benchmarks.md#recipe-candidates (bench/recipe_candidates.py).
    """

    # architecture: stem width = widths[0]; stride 2 entering every stage after the first
    widths: tuple[int, ...] = (64, 128, 256)
    blocks: tuple[int, ...] = (2, 2, 2)
    # initialisation (tuner.model.initialise): the last BatchNorm of each residual branch starts at zero, so
    # every block starts as its shortcut; convolutions start as identities on the channels they can carry
    zero_init_residual: bool = False
    dirac_init: bool = False
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    # false: BatchNorm weights and biases and every bias (the head's) are not decayed, only conv/linear weights
    bn_bias_decay: bool = True
    batch_size: int = 256
    epochs: int = 15
    schedule: str = "onecycle"
    warmup_epochs: float = 2.0
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    label_smoothing: float = 0.1
    # augmentation (on the device, batched)
    crop_padding: int = 4
    flip: bool = True
    # with flip: each image is mirrored on every other epoch (a random half on odd epochs, the others on even
    # ones, as airbench's alternating flip) instead of by a coin toss per epoch
    alternate_flip: bool = False
    color_jitter: float = 0.0
    rotation: float = 0.0
    translate: float = 0.0
    # the last this many epochs train on the images as they are: no crop, flip, jitter, rotation or translation
    final_plain_epochs: int = 0
    # evaluation
    tta_flip: bool = True
    # also average the logits of the image shifted by this many pixels (up-left and down-right, reflected
    # border), each with its mirror when tta_flip; 0: off
    tta_translate: int = 0
    # Evaluate (and checkpoint) an exponential moving average of the weights over about this many epochs;
    # 0 evaluates the weights as trained.
    ema_epochs: float = 0.0
    # execution
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build and validate from plain values (YAML, MLflow params, checkpoints).

        Unknown names, wrong types and impossible values are one UserError listing every problem, one per
        line, each as `source: name=value ...` with the rule and the fix.
        """
        config, problems = cls.check(values)
        if problems:
            raise UserError.of(f"{source}: {message}" for _, message in problems)
        assert config is not None
        return config

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> tuple[TrainConfig | None, list[tuple[str, str]]]:
        """(the config, []) or (None, [(field, problem), ...]) with every problem of `values`: unknown names,
        values of the wrong type, and values out of range (of those that have the right type)."""
        names = cls.field_names()
        problems: list[tuple[str, str]] = []
        coerced: dict[str, Any] = {}
        for key, value in values.items():
            if key not in names:
                problems.append((str(key), f"unknown field {excerpt(key)}{suggest(str(key), names, FIELD_ALIASES)}; "
                                           f"valid fields: {', '.join(names)}"))
                continue
            try:
                coerced[key] = cls.coerce(key, value)
            except ValueError as err:
                problems.append((key, str(err)))
        config = dataclasses.replace(cls(), **coerced)
        found = config.problems()
        # A value that did not convert keeps its default, whose range is not the user's problem; a rule that
        # compares two fields (blocks with widths) is left out when the other one is wrong already.
        wrong = {key for key, _ in problems} | {key for key, _ in found}
        for key, message in found:
            related = _RELATED.get(key)
            if not (key in coerced or key not in values) or related in wrong:
                continue
            if key not in values and related in coerced:
                # The user gave the other field and this one is the default: the problem is theirs, and the
                # message says so instead of calling a value they never wrote invalid.
                key, message = related, (f"{related}={excerpt(_shown(getattr(config, related)))} does not fit the "
                                         f"default {message.replace(' is invalid: ', ': ', 1)}")
            problems.append((key, message))
        return (None, problems) if problems else (config, [])

    @classmethod
    def coerce(cls, name: str, value: Any) -> Any:
        """`value` in the type of field `name` (from YAML, MLflow's text params or flags); ValueError saying
        `name=value is not a valid <type>; e.g. ...` when it cannot be. Ranges are `problems`' business."""
        return _coerce(name, value, getattr(cls, name))

    def to_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(self).items()}

    def validate(self, source: str = "config") -> None:
        """Raise a UserError naming every impossible value and its fix."""
        problems = self.problems()
        if problems:
            raise UserError.of(f"{source}: {message}" for _, message in problems)

    def problems(self) -> list[tuple[str, str]]:
        """[(field, 'name=value is invalid: rule'), ...] for every value out of its range (RULES)."""
        return [(name, f"{name}={excerpt(_shown(getattr(self, name)))} is invalid: "
                       f"{rule(self) if callable(rule) else rule}")
                for name, holds, rule in RULES if not holds(self)]


# rules that read another field
_RELATED = {"blocks": "widths", "ema_epochs": "epochs", "final_plain_epochs": "epochs"}


def _blocks_rule(config: TrainConfig) -> str:
    if len(config.blocks) != len(config.widths):  # name both counts: either list may be the one to change
        return (f"widths has {len(config.widths)} stage{'s' * (len(config.widths) != 1)} and blocks "
                f"{len(config.blocks)}: give blocks with {len(config.widths)} value{'s' * (len(config.widths) != 1)}, "
                f"one block count (1 to {MAX_BLOCKS}) per stage")
    return f"give one block count (1 to {MAX_BLOCKS}) per stage, as many as widths has"


# (field, whether a config's value is valid, the rule as an error states it, or a function of the config that
# states it when it names another field's value); a table, so that checking the thousands of configurations
# the dry run samples builds no message until one fails.
RULES: tuple[tuple[str, Callable[[TrainConfig], bool], str | Callable[[TrainConfig], str]], ...] = (
    ("widths", lambda c: 1 <= len(c.widths) <= MAX_STAGES and all(1 <= w <= MAX_WIDTH for w in c.widths),
     f"give one channel count per stage (1 to {MAX_STAGES} stages), each 1 to {MAX_WIDTH}, e.g. [64, 128, 256]"),
    ("blocks", lambda c: len(c.blocks) == len(c.widths) and all(1 <= b <= MAX_BLOCKS for b in c.blocks),
     _blocks_rule),
    ("optimizer", lambda c: c.optimizer in OPTIMIZERS, f"choose one of {', '.join(OPTIMIZERS)}"),
    ("schedule", lambda c: c.schedule in SCHEDULES, f"choose one of {', '.join(SCHEDULES)}"),
    ("precision", lambda c: c.precision in PRECISIONS, f"choose one of {', '.join(PRECISIONS)}"),
    ("lr", lambda c: c.lr > 0, "must be > 0"),
    ("batch_size", lambda c: 1 <= c.batch_size <= MAX_BATCH,
     f"must be a positive number of images, at most {MAX_BATCH:,} (the training set)"),
    ("epochs", lambda c: 1 <= c.epochs <= MAX_EPOCHS, f"must be between 1 and {MAX_EPOCHS:,}"),
    ("momentum", lambda c: 0 <= c.momentum < 1, "must be in [0, 1)"),
    ("weight_decay", lambda c: 0 <= c.weight_decay <= MAX_WEIGHT_DECAY,
     f"must be between 0 and {MAX_WEIGHT_DECAY:g} (5e-4 is written with its minus sign)"),
    ("warmup_epochs", lambda c: 0 <= c.warmup_epochs <= MAX_EPOCHS, "must be >= 0 (it is capped at epochs)"),
    ("plateau_patience", lambda c: 0 <= c.plateau_patience <= MAX_EPOCHS, f"must be between 0 and {MAX_EPOCHS:,}"),
    ("plateau_factor", lambda c: 0 < c.plateau_factor < 1, "must be in (0, 1)"),
    ("label_smoothing", lambda c: 0 <= c.label_smoothing < 1, "must be in [0, 1)"),
    ("crop_padding", lambda c: 0 <= c.crop_padding <= 16, "must be between 0 and 16 pixels"),
    ("color_jitter", lambda c: 0 <= c.color_jitter <= 1, "must be in [0, 1]"),
    ("rotation", lambda c: 0 <= c.rotation <= 180, "must be between 0 and 180 degrees"),
    ("translate", lambda c: 0 <= c.translate <= 0.5, "must be a fraction of the image in [0, 0.5]"),
    ("final_plain_epochs", lambda c: 0 <= c.final_plain_epochs <= c.epochs,
     lambda c: f"must be between 0 (off) and epochs ({c.epochs})"),
    ("tta_translate", lambda c: 0 <= c.tta_translate <= MAX_TTA_SHIFT,
     f"must be between 0 (off) and {MAX_TTA_SHIFT} pixels"),
    ("ema_epochs", lambda c: 0 <= c.ema_epochs <= c.epochs,
     lambda c: f"must be between 0 (off) and epochs ({c.epochs})"),
    ("seed", lambda c: 0 <= c.seed <= MAX_SEED, f"must be between 0 and {MAX_SEED:,}"),
)


def check_device_name(name: str) -> str:
    """`name` when it names a device tuner trains on (DEVICES), else a UserError; whether that device exists
    here is `tuner.device.require_device`'s question, which needs torch."""
    if not _DEVICE_NAME.fullmatch(name):
        raise UserError(f"--device {excerpt(name)} is not a device; give {DEVICES}")
    return name


def format_stages(values: Iterable[Any]) -> str:
    """A per-stage tuple as text, `64,128,256`: how MLflow params and Optuna categoricals hold it."""
    return ",".join(str(int(v)) for v in values)


def parse_stages(value: str | Iterable[Any]) -> tuple[int, ...]:
    """`64,128,256`, `[64, 128, 256]` or a sequence -> (64, 128, 256).

    ValueError when an item is not a whole number (64.5, true, 'wide'), TypeError when `value` is neither
    text nor a sequence.
    """
    if isinstance(value, str):
        items: list[Any] = value.strip().strip("[]()").split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise TypeError(f"expected text or a sequence, got {type(value).__name__}")
    if len(items) > 10 * MAX_STAGES:
        raise ValueError("too many stages")
    return tuple(whole_number(v) for v in items if str(v).strip() != "")


def is_number(value: object) -> bool:
    """An int or a float, not a bool (True is an int to Python, never a number in our files)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def whole_number(value: Any) -> int:
    """An int from an int, a whole finite float, or text of one ('256', '1e3'); ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError("true/false is not a number")
    if isinstance(value, int):
        return value
    number = real_number(value)
    if not number.is_integer():
        raise ValueError(f"{excerpt(value)} is not a whole number")
    return int(number)


def real_number(value: Any) -> float:
    """A finite float from a number or its text ('1e-3', '5_000'); ValueError for true/false, NaN, inf, words."""
    if isinstance(value, bool):
        raise ValueError("true/false is not a number")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            raise ValueError("text too long for a number")
        value = text
    if not isinstance(value, (int, float, str)):
        raise ValueError(f"{type(value).__name__} is not a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{excerpt(value)} is not a number") from None
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _shown(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _coerce(name: str, value: Any, default: Any) -> Any:
    """A value from YAML, MLflow params or flags in the field's type; ValueError (the message) when it cannot be."""
    expected = {tuple: "list of whole numbers, one per stage", bool: "true/false", int: "whole number",
                float: "finite number", str: "word"}[type(default)]
    example = list(default) if isinstance(default, tuple) else default
    try:
        if name in STAGE_FIELDS:
            return parse_stages(value)
        if isinstance(default, bool):
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(default, int):
            return whole_number(value)
        if isinstance(default, float):
            return real_number(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ValueError(f"{name}={excerpt(value)} is not a valid {expected}; e.g. {name}={excerpt(example)}") from None
