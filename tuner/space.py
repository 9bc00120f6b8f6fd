"""Search-space files: parse and validate once, then sample TrainConfigs define-by-run.

A space file (schema and examples in search_spaces/README.md; the JSON Schema for editors,
search_spaces/space.schema.json, is generated from this module's declarations by tuner.space_schema)
names TrainConfig fields. Everything is
checked before anything starts, and every error of a file is reported in one run, one line each with the
file, the line and the fix: unknown keys and field names (with "did you mean", known aliases included),
values of the wrong type, out of range or not finite, empty or inverted ranges, log ranges with low <= 0,
conditions that name unknown or later parameters or can never hold, constraints that no configuration
in the space can meet, and a `final:` fit too short for the space's epoch-counted settings.

Every setting of the format is read by one typed reader (`Setting.read`), declared beside its field, and
the JSON Schema is written from the same declarations, so a rule cannot be checked in one place and
forgotten in the other.

Sampling is define-by-run (`sample(trial)` takes an Optuna trial) so conditional parameters exist only
when their condition holds, e.g. momentum only for sgd. Parameter count and MACs are computed
analytically (tuner.architecture), so an infeasible configuration is rejected before it reaches a GPU.
This module imports neither torch, Ray, MLflow nor Optuna: `--dry-run` and `--help` stay fast.
"""
from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuner.architecture import count_macs, count_params
from tuner.config import (
    FIELD_ALIASES,
    MAX_EPOCHS,
    MAX_SEED,
    MAX_STAGES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    STAGE_FIELDS,
    TrainConfig,
    format_stages,
    parse_stages,
    real_number,
    whole_number,
)
from tuner.errors import UserError, excerpt, suggest
from tuner.estimate import describe_cost, estimate_epochs, format_duration
from tuner.yamlfile import LineDict, load_yaml

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
FORMAT_HELP = "schema: search_spaces/README.md"
PARAM_TYPES = ("float", "int", "categorical")
METRICS = ("val_acc", "val_loss")
# Fields fixed by the sweep, not by trials: ASHA needs one epoch budget for every trial.
SWEEP_OWNED_FIELDS = ("epochs",)
# Limits of the format, each far above any sweep we run, so a typo or a hostile file is caught here.
MAX_TRIALS = 100_000
MAX_CONCURRENT = 10_000
MAX_WALL_TIME_S = 30 * 86400
MAX_GPU_HOURS = 1_000_000
MAX_CHOICES = 1_000
MAX_GRID_VALUES = 10**9  # values of a stepped range; finer steps are a continuous range in all but name
RAY_RESOURCE_STEP = 0.0001  # Ray refuses fractional resource quantities finer than this when the trial starts
CIFAR_TRAIN_IMAGES = 50_000
MAX_NAME = 64
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # sweep names become folder names
DURATION_PATTERN = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*[smhd])+\s*")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SuggestingTrial(Protocol):
    """The part of optuna.Trial that sampling uses."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


# ---------------------------------------------------------------------------------------------
# settings: one typed reader for every value of the format


@dataclass(frozen=True)
class Setting:
    """How one setting of a space file is read (`read`) and published (`schema`).

    kind: int (a whole number), float (a finite number), word (one of `words`), duration (seconds, or
    text like 30m, 2h, 1d) or name (letters, digits, . _ -, as in a folder name).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    above: float | None = None  # an exclusive lower bound (cpus > 0)
    words: tuple[str, ...] = ()
    optional: bool = False  # null means "no limit"
    resolution: float | None = None  # the value is a whole multiple of this (Ray's resource quantities)
    key: str | None = None  # the name in the file when it differs from the field's
    doc: str = ""  # what the setting does, for the JSON Schema (an editor shows it)

    def read(self, value: Any, unset: str = "null") -> Any:
        """`value` in this setting's type; ValueError with the rule it breaks. `unset`: how the reader's source
        says "no limit" for an optional setting (null in a file, leaving out a flag on a command line)."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"needs a value: {self.rule(unset)}")
        if self.kind in ("word", "name"):
            if isinstance(value, datetime.date):  # YAML reads an unquoted 2026-01-01 as a date
                raise ValueError(f"{self.rule(unset)}; YAML reads it as a date: put it in quotes")
            if not isinstance(value, str):
                raise ValueError(self.rule(unset))
            if self.kind == "word" and value not in self.words:
                raise ValueError(f"{self.rule(unset)}{suggest(value, self.words)}")
            if self.kind == "name" and not NAME_PATTERN.fullmatch(value):
                raise ValueError(self.rule(unset))
            return value
        try:
            if self.kind == "duration" and isinstance(value, str) and DURATION_PATTERN.fullmatch(value):
                number: float = sum(float(amount) * DURATION_UNITS[unit]
                                    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", value))
            else:
                number = whole_number(value) if self.kind == "int" else real_number(value)
        except ValueError:
            raise ValueError(self.rule(unset)) from None
        if (self.low is not None and number < self.low) or (self.above is not None and number <= self.above):
            raise ValueError(self.rule(unset))
        if self.high is not None and number > self.high:
            shown = format_duration(self.high) if self.kind == "duration" else f"{self.high:,}"
            raise ValueError(f"is above the limit of {shown}")
        rounded = round(number / self.resolution) * self.resolution if self.resolution else number
        if abs(rounded - number) > 1e-9 * (self.resolution or 0):
            if self.above is not None and rounded <= self.above:
                rounded = self.above + self.resolution
            raise ValueError(f"has more decimals than Ray counts resources in (steps of {self.resolution:g}); "
                             f"round it to {rounded:.4g}")
        return number

    def rule(self, unset: str = "null") -> str:
        """What the setting accepts, as a sentence ending."""
        if self.kind == "word":
            return f"must be one of {', '.join(self.words)}"
        if self.kind == "name":
            return (f"must be 1-{MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit "
                    "(it names folders)")
        what = {"int": "a whole number", "float": "a finite number",
                "duration": "a duration: seconds, or e.g. 90s, 30m, 2h, 1d"}[self.kind]
        if self.kind == "duration":
            bounds = f" above 0 and at most {format_duration(self.high)}" if self.high else ""
        elif self.above is not None:
            bounds = f" above {self.above:g}" + (f" and at most {self.high:,}" if self.high is not None else "")
        else:
            bounds = f" from {self.low:,} to {self.high:,}" if self.high is not None else f" >= {self.low:,}"
        return f"must be {what}{bounds}" + (f" (or {unset} for no limit)" if self.optional else "")

    def schema(self) -> dict[str, Any]:
        """This setting as JSON Schema."""
        if self.kind == "word":
            out: dict[str, Any] = {"enum": list(self.words)}
        elif self.kind == "name":
            out = {"type": "string", "pattern": f"^{NAME_PATTERN.pattern}$"}
        elif self.kind == "duration":
            out = {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": self.high},
                             {"type": "string", "pattern": f"^{DURATION_PATTERN.pattern}$"}]}
        else:
            out = {"type": "integer" if self.kind == "int" else "number"}
            if self.low is not None:
                out["minimum"] = self.low
            if self.above is not None:
                out["exclusiveMinimum"] = self.above
            if self.high is not None:
                out["maximum"] = self.high
        if self.optional:
            out = {"anyOf": [out, {"type": "null"}]}
        rule = self.rule()
        return {"description": f"{self.doc}; {rule}" if self.doc else rule[0].upper() + rule[1:], **out}


def _setting(default: Any, kind: str, low: float | None = None, high: float | None = None, **rest: Any) -> Any:
    """A dataclass field whose value a space file sets, read by `Setting(kind, low, high, **rest)`."""
    return field(default=default, metadata={"setting": Setting(kind, low, high, **rest)})


def declared_settings(cls: type) -> Iterator[tuple[str, str, Setting]]:
    """(field name, key in the file, Setting) of every setting of a section class."""
    for f in dataclasses.fields(cls):
        spec = f.metadata["setting"]
        yield f.name, spec.key or f.name, spec


@dataclass(frozen=True)
class SearchSettings:
    algorithm: str = _setting("tpe", "word", words=("tpe", "random"),
                              doc="tpe (Optuna's TPE) or random (the baseline)")
    seed: int = _setting(0, "int", 0, MAX_SEED, doc="seed of the sampler")
    startup_trials: int = _setting(10, "int", 0, MAX_TRIALS,
                                   doc="random trials before TPE starts modelling (Optuna's default, 10)")
    max_concurrent: int = _setting(4, "int", 1, MAX_CONCURRENT, doc="trials running at once")


@dataclass(frozen=True)
class SchedulerSettings:
    type: str = _setting("asha", "word", words=("asha", "fifo"), doc="asha, or fifo (no early stopping)")
    max_epochs: int = _setting(15, "int", 1, MAX_EPOCHS, doc="every trial's epoch budget (TrainConfig.epochs)")
    grace_period: int = _setting(3, "int", 1, MAX_EPOCHS, doc="the first rung: epochs every trial runs")
    reduction_factor: int = _setting(3, "int", 2, 100, doc="1/reduction_factor of the trials pass each rung")

    def rungs(self) -> list[int]:
        """Epochs at which ASHA compares trials: grace * rf^k below max_epochs."""
        if self.type != "asha":
            return []
        rungs, epoch = [], self.grace_period
        while epoch < self.max_epochs:
            rungs.append(epoch)
            epoch *= self.reduction_factor
        return rungs


@dataclass(frozen=True)
class Resources:
    cpus: float = _setting(1.0, "float", high=1024, above=0, resolution=RAY_RESOURCE_STEP, doc="CPUs per trial")
    gpus: float = _setting(0.0, "float", 0, 64, resolution=RAY_RESOURCE_STEP,
                           doc="GPUs per trial: a fraction packs trials onto one GPU; 0 trains on CPU")


@dataclass(frozen=True)
class Budget:
    trials: int = _setting(16, "int", 1, MAX_TRIALS, doc="samples that become trials (rejected ones do not count)")
    wall_time_s: float | None = _setting(None, "duration", high=MAX_WALL_TIME_S, above=0, optional=True,
                                         key="wall_time", doc="stop the sweep after this long (across --resume)")
    gpu_hours: float | None = _setting(None, "float", high=MAX_GPU_HOURS, above=0, optional=True,
                                       doc="stop once trials have used this much GPU time (share x wall time)")
    epochs: int | None = _setting(None, "int", 1, MAX_TRIALS * MAX_EPOCHS, optional=True,
                                  doc="stop once all trials together ran this many epochs")


@dataclass(frozen=True)
class Constraints:
    max_params: int | None = _setting(None, "int", 1, 10**12, optional=True,
                                      doc="largest network, in trainable parameters")
    max_macs: int | None = _setting(None, "int", 1, 10**15, optional=True,
                                    doc="most multiply-accumulates per 32x32 image")

    def violation(self, config: TrainConfig) -> str | None:
        """Why the config breaks a constraint, or None when it is feasible."""
        if self.max_params is not None and (n := count_params(config)) > self.max_params:
            return f"{n:,} params > max_params {self.max_params:,}"
        if self.max_macs is not None and (n := count_macs(config)) > self.max_macs:
            return f"{n:,} MACs > max_macs {self.max_macs:,}"
        return None


@dataclass(frozen=True)
class DataSettings:
    val_size: int = _setting(5000, "int", 10, CIFAR_TRAIN_IMAGES - 1,  # at least one image per class
                             doc="validation images carved from the 50,000 training images")
    subset: int | None = _setting(None, "int", 1, CIFAR_TRAIN_IMAGES, optional=True,
                                  doc="train on the first N training images only")
    split_seed: int = _setting(0, "int", 0, MAX_SEED, doc="seed of the stratified train/validation split")


TRAIN_ON = ("all", "train")
# With train_on all the final fit has no held-out images, but `fit` evaluates every epoch (the plateau schedule
# steps on that loss): it evaluates on this many of the validation images it also trains on, and the figures
# are dropped. Few, so the evaluation costs little next to an epoch on 50,000 images.
FINAL_MONITOR_IMAGES = 1_000


@dataclass(frozen=True)
class FinalFit:
    """The optional `final:` section: once the search ends, the champion's configuration is trained again and
    that checkpoint, not the search's, is registered (tuner/final_fit.py)."""

    epochs: int | None = _setting(None, "int", 1, MAX_EPOCHS, optional=True,
                                  doc="epochs of the final fit; null (the default): scheduler.max_epochs")
    train_on: str = _setting("all", "word", words=TRAIN_ON,
                             doc="all: every training image the sweep loaded, the validation split included; "
                                 "train: the search's training split only (the validation split still scores it)")

    def images(self, train_images: int, val_images: int) -> tuple[int, int]:
        """(images the final fit trains on, images it evaluates each epoch) for a sweep's split sizes."""
        if self.train_on == "all":
            return train_images + val_images, min(val_images, FINAL_MONITOR_IMAGES)
        return train_images, val_images

    def describe(self, short: bool = False) -> str:
        """The images, as a person reads them."""
        if short:
            return "train + validation" if self.train_on == "all" else "training split"
        return ("the training and validation images (train_on all)" if self.train_on == "all"
                else "the search's training split (train_on train)")


SECTIONS: dict[str, type] = {"search": SearchSettings, "scheduler": SchedulerSettings, "resources": Resources,
                             "budget": Budget, "constraints": Constraints, "data": DataSettings, "final": FinalFit}
# Sections a space may leave out altogether, with a meaning of their own: without `final:` there is no final fit.
OPTIONAL_SECTIONS = ("final",)
TOP_SETTINGS = {
    "name": Setting("name", doc="sweeps are named <name>-<date>-<time>; default: the file name"),
    "metric": Setting("word", words=METRICS, doc="what the search optimises, on the validation split"),
    "mode": Setting("word", words=("max", "min"), optional=True, doc="default: max for val_acc, min for val_loss"),
}
TOP_KEYS = ("name", "metric", "mode", "fixed", "parameters", *SECTIONS)
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "per_stage", "when")
RANGE_KEYS = ("low", "high", "log", "step")
PER_STAGE = Setting("int", 1, MAX_STAGES, doc="widths/blocks only: sample one value per stage")

# Names from other tools (Ray Tune, Optuna, W&B sweeps) and papers, and where they belong in this format.
SPACE_ALIASES = {
    "epochs": "scheduler.max_epochs", "max_t": "scheduler.max_epochs", "num_epochs": "scheduler.max_epochs",
    "max_epochs": "scheduler.max_epochs", "grace": "scheduler.grace_period", "eta": "scheduler.reduction_factor",
    "trials": "budget.trials", "num_samples": "budget.trials", "n_trials": "budget.trials",
    "samples": "budget.trials", "time_budget_s": "budget.wall_time", "timeout": "budget.wall_time",
    "time_limit": "budget.wall_time", "gpu_budget": "budget.gpu_hours",
    "concurrency": "search.max_concurrent", "max_concurrent_trials": "search.max_concurrent",
    "sampler": "search.algorithm", "searcher": "search.algorithm", "n_startup_trials": "search.startup_trials",
    "gpu": "resources.gpus", "num_gpus": "resources.gpus", "gpus_per_trial": "resources.gpus",
    "cpu": "resources.cpus", "num_cpus": "resources.cpus", "cpus_per_trial": "resources.cpus",
    "params": "parameters", "search_space": "parameters", "space": "parameters", "hyperparameters": "parameters",
    "fixed_params": "fixed", "constants": "fixed", "defaults": "fixed",
    "max_flops": "constraints.max_macs", "flops": "constraints.max_macs", "macs": "constraints.max_macs",
    "max_parameters": "constraints.max_params", "param_budget": "constraints.max_params",
    "validation_size": "data.val_size", "val": "data.val_size", "objective": "metric", "direction": "mode",
    "final_fit": "final", "refit": "final", "retrain": "final", "final_epochs": "final.epochs",
}
PARAM_KEY_ALIASES = {
    "min": "low", "max": "high", "lower": "low", "upper": "high", "values": "choices", "options": "choices",
    "log_scale": "log", "logscale": "log", "q": "step", "condition": "when", "if": "when", "only_if": "when",
    "kind": "type", "dist": "type", "distribution": "type", "stages": "per_stage",
}
PARAM_TYPE_ALIASES = {"uniform": "float", "loguniform": "float", "real": "float", "integer": "int",
                      "randint": "int", "choice": "categorical", "categories": "categorical"}


# ---------------------------------------------------------------------------------------------
# the space


@dataclass(frozen=True)
class Param:
    """One searched TrainConfig field. per_stage=k samples k values named name_0..name_{k-1}."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    per_stage: int | None = None
    when: Mapping[str, Any] = field(default_factory=dict)

    def sample(self, trial: SuggestingTrial) -> Any:
        if self.per_stage:
            return tuple(self._one(trial, f"{self.name}_{i}") for i in range(self.per_stage))
        return self._one(trial, self.name)

    def _one(self, trial: SuggestingTrial, name: str) -> Any:
        if self.type == "float":
            return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        # Optuna categoricals must be scalars, so stage tuples travel as format_stages text, "32,64,128".
        return self._parse_choice(trial.suggest_categorical(name, list(self.choices)))

    def extremes(self) -> tuple[Any, Any]:
        """(smallest, largest) value, for the analytic bounds of params and MACs."""
        if self.type == "categorical":
            values = [self._parse_choice(c) for c in self.choices]
            size = sum if isinstance(values[0], tuple) else None  # a stage tuple is as large as its total
            return min(values, key=size), max(values, key=size)
        low, high = self.low, self.high
        if self.type == "int":  # the largest value on the step grid
            step = int(self.step or 1)
            low, high = int(low), int(low) + (int(high) - int(low)) // step * step
        if self.per_stage:
            return (low,) * self.per_stage, (high,) * self.per_stage
        return low, high

    def values(self) -> list[Any]:
        """The values a condition on this parameter can match: its choices, or the ends of its range."""
        if self.type == "categorical":
            return [self._parse_choice(c) for c in self.choices]
        return list(self.extremes())

    def _parse_choice(self, choice: Any) -> Any:
        return parse_stages(choice) if self.name in STAGE_FIELDS and isinstance(choice, str) else choice


@dataclass(frozen=True)
class SearchSpace:
    name: str
    path: Path
    text: str
    metric: str
    mode: str
    fixed: Mapping[str, Any]
    parameters: tuple[Param, ...]
    search: SearchSettings
    scheduler: SchedulerSettings
    resources: Resources
    budget: Budget
    constraints: Constraints
    data: DataSettings
    final: FinalFit | None = None  # None: no `final:` section, the search checkpoint is registered

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def base_config(self) -> dict[str, Any]:
        return {**self.fixed, "epochs": self.scheduler.max_epochs}

    @property
    def final_epochs(self) -> int | None:
        """Epochs of the final fit (final.epochs, else scheduler.max_epochs); None without a final fit."""
        if self.final is None:
            return None
        return self.final.epochs or self.scheduler.max_epochs

    def sample(self, trial: SuggestingTrial) -> TrainConfig:
        """One configuration: fixed values, then each parameter whose `when` condition holds."""
        values = self.base_config()
        for param in self.parameters:
            if all(values.get(k, getattr(TrainConfig, k, None)) == v for k, v in param.when.items()):
                values[param.name] = param.sample(trial)
        return TrainConfig.from_dict(values, source=f"{self.path.name} (sampled)")

    def corner_configs(self) -> tuple[TrainConfig, TrainConfig]:
        """The smallest and the largest network in the space (params and MACs grow with both)."""
        small, large = self.base_config(), self.base_config()
        for param in self.parameters:
            if param.name in STAGE_FIELDS:
                small[param.name], large[param.name] = param.extremes()
        return TrainConfig.from_dict(small, self.path.name), TrainConfig.from_dict(large, self.path.name)

    def with_trials(self, trials: int, source: str = "--trials") -> SearchSpace:
        """This space with another trial budget (`--trials N`), checked like budget.trials."""
        spec = next(s for name, _, s in declared_settings(Budget) if name == "trials")
        try:
            trials = spec.read(trials)
        except ValueError as err:
            raise UserError(f"{source} {excerpt(trials)} {err}") from None
        return dataclasses.replace(self, budget=dataclasses.replace(self.budget, trials=trials))

    def summary(self) -> dict[str, Any]:
        """Settings that describe the search (for the dry run and the MLflow parent run's params)."""
        flat: dict[str, Any] = {"space": self.name, "metric": self.metric, "mode": self.mode}
        for section in SECTIONS:
            settings = getattr(self, section)
            if settings is None:  # an optional section left out
                continue
            for key, value in dataclasses.asdict(settings).items():
                flat[f"{section}.{key}"] = value
        flat["parameters"] = ",".join(p.name for p in self.parameters)
        return flat


def grid_high(low: float, high: float, step: float) -> float:
    """The largest value of low + k * step that is <= high, in decimal arithmetic as Optuna computes it (it
    shortens a range that `step` does not divide, with a warning a user may never see)."""
    span, stride = decimal.Decimal(str(high)) - decimal.Decimal(str(low)), decimal.Decimal(str(step))
    last = decimal.Decimal(str(low)) + (span // stride) * stride
    return int(last) if isinstance(low, int) and isinstance(step, int) else float(last)


def resolve_space_path(name: str | Path) -> Path:
    """A path as given, else a bare name looked up in ./search_spaces and the repository's folder; a name
    without a suffix also as name.yaml (`--space smoke`)."""
    path = Path(name)
    names = [path, path.with_name(path.name + ".yaml")] if path.name and not path.suffix else [path]
    for folder in (Path(), Path("search_spaces"), SPACES_DIR):
        for candidate in (folder / n for n in names):
            if candidate.is_file():
                return candidate
    if path.is_dir():
        raise UserError(f"space file '{name}' is a directory; give a .yaml file (shipped: "
                        f"{', '.join(_shipped()) or 'none'})")
    if path.exists():  # a FIFO or a device: read_text names it
        return path
    raise UserError(f"space file '{name}' not found (looked in ., search_spaces/ and {SPACES_DIR}); "
                    f"shipped spaces: {', '.join(_shipped()) or 'none'}")


def _shipped() -> list[str]:
    return sorted(p.name for p in SPACES_DIR.glob("*.yaml")) if SPACES_DIR.is_dir() else []


def load_space(name: str | Path) -> SearchSpace:
    """Read, parse and fully validate a space file. Raises a UserError listing every problem, one per line,
    each with file:line and the fix."""
    path = resolve_space_path(name)
    raw = load_yaml(path, "space file", FORMAT_HELP)
    text = path.read_text()
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a space file is a mapping with keys like 'parameters:' and 'scheduler:' "
                        f"(got {'an empty file' if raw is None else type(raw).__name__}); {FORMAT_HELP}")
    return _SpaceParser(path, text).parse(raw)


# ---------------------------------------------------------------------------------------------
# parsing: every error of the file is collected, then all are raised together


class _SpaceParser:
    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self.errors: list[tuple[int, str]] = []
        self.sweep_owned: dict[str, Any] = {}  # TrainConfig fields the sweep sets, by value, once known

    def fail(self, section: Any, key: Any, message: str) -> None:
        """Record an error at the line of `key` in `section` (a LineDict), or at the file when unknown."""
        line = section.lines.get(key) if isinstance(section, LineDict) else None
        self.errors.append((line or 0, f"{self.path}{f':{line}' if line else ''}: {message}"))

    def raise_errors(self) -> None:
        if self.errors:
            raise UserError.of(message for _, message in sorted(self.errors, key=lambda e: e[0]))

    def unknown(self, section: Mapping, key: Any, where: str, valid: tuple[str, ...] | list[str],
                aliases: Mapping[str, str] | None = None) -> None:
        local = {name: target.removeprefix(f"{where}.") for name, target in (aliases or {}).items()}
        hint = suggest(str(key), valid, local) or _elsewhere(str(key), where)
        self.fail(section, key, f"unknown key {excerpt(key)} in {where}{hint}; valid keys: {', '.join(valid)}")

    def mapping(self, raw: Mapping, key: str) -> Mapping:
        value = raw.get(key)
        if value is None:
            return LineDict()
        if not isinstance(value, dict):
            self.fail(raw, key, f"'{key}' must be a mapping (key: value lines indented below it), "
                                f"not {excerpt(value, 40)}; {FORMAT_HELP}")
            return LineDict()
        return value

    def parse(self, raw: Mapping) -> SearchSpace:
        for key in raw:
            if key not in TOP_KEYS:
                self.unknown(raw, key, "the space file", TOP_KEYS, SPACE_ALIASES)
        top: dict[str, Any] = dict.fromkeys(TOP_SETTINGS)  # a value in error reads as unset: parsing goes on
        for key, spec in TOP_SETTINGS.items():
            try:
                top[key] = spec.read(raw[key]) if key in raw else None
            except ValueError as err:
                self.fail(raw, key, f"{key}={excerpt(raw[key])} {err}")
        metric = top["metric"] or "val_acc"
        natural = "max" if metric == "val_acc" else "min"
        if top["mode"] not in (None, natural):
            self.fail(raw, "mode", f"mode: {top['mode']} with metric: {metric} would search for the worst "
                                   f"{'accuracy' if metric == 'val_acc' else 'loss'}; use mode: {natural} "
                                   "(or leave mode out)")
        mode = natural
        sections = {name: self.settings(raw, name, cls) for name, cls in SECTIONS.items()
                    if name not in OPTIONAL_SECTIONS or name in raw}
        fixed = self.fixed(raw, sections["scheduler"])
        parameters = self.parameters(raw, fixed, sections["scheduler"])
        self.check_final(raw, sections.get("final"), fixed, parameters)
        self.raise_errors()
        space = SearchSpace(name=top["name"] or _default_name(self.path), path=self.path, text=self.text,
                            metric=metric, mode=mode, fixed=fixed, parameters=parameters, **sections)
        self.check_space(raw, space)
        self.raise_errors()
        return space

    def settings(self, raw: Mapping, name: str, cls: type) -> Any:
        """One section (search, scheduler, ...), every value through its Setting; defaults for the rest."""
        section = self.mapping(raw, name)
        specs = {key: (field_name, spec) for field_name, key, spec in declared_settings(cls)}
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key not in specs:
                self.unknown(section, key, name, tuple(specs), SPACE_ALIASES)
                continue
            field_name, spec = specs[key]
            try:
                values[field_name] = spec.read(value)
            except ValueError as err:
                self.fail(section, key, f"{name}.{key}={excerpt(value)} {err}")
        settings = cls(**values)
        if cls is SchedulerSettings and settings.type == "asha" and settings.grace_period > settings.max_epochs:
            self.fail(section, "grace_period", f"scheduler.grace_period {settings.grace_period} is above "
                                               f"max_epochs {settings.max_epochs}; lower it (the first rung)")
        if cls is Resources and settings.gpus > 1 and not float(settings.gpus).is_integer():
            self.fail(section, "gpus", f"resources.gpus={excerpt(settings.gpus)}: above 1 a trial takes whole GPUs; "
                                       "give a fraction below 1 (trials share a GPU) or a whole number")
        return settings

    def fixed(self, raw: Mapping, scheduler: SchedulerSettings) -> dict[str, Any]:
        """`fixed:` values, each a valid value of its TrainConfig field."""
        section = self.mapping(raw, "fixed")
        fields = searchable_fields()
        fixed: dict[str, Any] = {}
        for key, value in section.items():
            if key in SWEEP_OWNED_FIELDS:
                self.fail(section, key, "set the epoch budget with scheduler.max_epochs, not fixed.epochs")
            elif key not in fields:
                self.unknown_field(section, key, "fixed", fields)
            else:
                fixed[key] = value
        for key, message in _problems({**fixed, "epochs": scheduler.max_epochs}, fixed):
            self.fail(section, key, f"fixed {message}")
            fixed.pop(key, None)
        return {key: TrainConfig.coerce(key, value) for key, value in fixed.items()}

    def unknown_field(self, section: Mapping, key: Any, where: str, fields: list[str]) -> None:
        hint = suggest(str(key), fields, FIELD_ALIASES) or _elsewhere(str(key), where)
        self.fail(section, key, f"unknown TrainConfig field {excerpt(key)} in {where}{hint}; "
                                f"valid fields: {', '.join(fields)}")

    def parameters(self, raw: Mapping, fixed: Mapping[str, Any], scheduler: SchedulerSettings) -> tuple[Param, ...]:
        section = self.mapping(raw, "parameters")
        base = {**fixed, "epochs": scheduler.max_epochs}
        self.sweep_owned = {"epochs": scheduler.max_epochs}
        parsed: list[Param] = []
        for name, spec in section.items():
            errors = len(self.errors)

            def bad(message: str, name: Any = name) -> None:
                self.fail(section, name, f"parameter {excerpt(name)}: {message}")

            param = self.param(section, name, spec, fixed, parsed, bad)
            if param is not None and len(self.errors) == errors:
                self.check_values(param, base, bad)
                if len(self.errors) == errors:
                    parsed.append(param)
        return tuple(parsed)

    def param(self, section: Mapping, name: Any, spec: Any, fixed: Mapping[str, Any], earlier: list[Param],
              bad: Callable[[str], None]) -> Param | None:
        """One entry of `parameters:`; None (with its errors recorded) when it is not valid."""
        fields = searchable_fields()
        if name in SWEEP_OWNED_FIELDS:
            bad("epochs cannot be searched (ASHA needs one budget); set scheduler.max_epochs")
            return None
        if name not in fields:
            self.unknown_field(section, name, "parameters", fields)
            return None
        if name in fixed:
            bad(f"'{name}' is both fixed and searched; remove it from one of them")
            return None
        if isinstance(spec, list):
            spec = {"type": "categorical", "choices": spec}
        if not isinstance(spec, dict):
            bad("needs a mapping, e.g. {type: float, low: 0.01, high: 0.5, log: true}, or a list of choices")
            return None
        for key in spec:
            if key not in PARAM_KEYS:
                self.unknown(spec, key, f"parameter '{name}'", PARAM_KEYS, PARAM_KEY_ALIASES)
        kind = spec.get("type", "categorical" if "choices" in spec else None)
        if "type" not in spec and "choices" not in spec:
            bad("needs a type: e.g. {type: float, low: 0.01, high: 0.5}, {type: int, low: 1, high: 4} or "
                "choices: [...]")
            return None
        if kind not in PARAM_TYPES:
            hint = suggest(str(kind), PARAM_TYPES, PARAM_TYPE_ALIASES) if isinstance(kind, str) else ""
            bad(f"type {excerpt(kind)} must be one of {', '.join(PARAM_TYPES)}{hint}"
                + (" (a log range is type: float with log: true)" if kind == "loguniform" else ""))
            return None
        # a key of the other kind would be ignored without a word: a range's bounds beside choices, or choices
        # beside type: float
        ignored = [key for key in (RANGE_KEYS if kind == "categorical" else ("choices",)) if key in spec]
        if ignored:
            one = len(ignored) == 1
            bad(f"{', '.join(ignored)} do{'es' if one else ''} not apply to a "
                + (f"categorical parameter (choices): remove {'it' if one else 'them'}, or drop choices and give "
                   "type: float or int" if kind == "categorical"
                   else f"{kind} range: remove choices, or drop type, low and high"))
            return None
        errors = len(self.errors)
        per_stage = self.per_stage(name, kind, spec, bad)
        when = self.condition(name, spec, fixed, earlier, list(section), bad)
        if len(self.errors) > errors:
            return None
        field_type = type(getattr(TrainConfig, name))
        if kind != "categorical" and name not in STAGE_FIELDS and field_type in (bool, str):
            bad(f"{name} takes words or true/false: give choices, e.g. {name}: "
                f"{_choices_example(name)}")
            return None
        if kind == "float" and field_type is int and name not in STAGE_FIELDS:
            bad(f"{name} is a whole number: use type: int (or give choices)")
            return None
        if kind == "categorical":
            choices = self.choices(name, spec, bad)
            return None if choices is None else Param(name, kind, choices=choices, when=when)
        return self.range_param(name, kind, spec, per_stage, when, bad)

    def per_stage(self, name: str, kind: str, spec: Mapping, bad: Callable[[str], None]) -> int | None:
        """How many stages a widths/blocks range samples, one value each; None for every other parameter."""
        if "per_stage" not in spec:
            if name in STAGE_FIELDS and kind != "categorical":
                bad("widths/blocks ranges need per_stage: N (one value per stage), or give choices")
            return None
        if name not in STAGE_FIELDS:
            bad("per_stage must be a positive integer and only applies to widths and blocks")
            return None
        if kind != "int":
            bad("per_stage needs type: int (a stage holds a whole number); with choices, give one list per "
                "choice instead, e.g. choices: [[1, 1, 1], [2, 2, 2]]")
            return None
        try:
            return PER_STAGE.read(spec["per_stage"])
        except ValueError as err:
            bad(f"per_stage={excerpt(spec['per_stage'])} {err}")
            return None

    def condition(self, name: str, spec: Mapping, fixed: Mapping[str, Any], earlier: list[Param],
                  listed: list[Any], bad: Callable[[str], None]) -> Mapping[str, Any]:
        """The `when` mapping, each value in its field's type: the parameter is sampled only when every named
        field has that value. A condition must be able to hold: on a parameter listed above this one (one of
        its choices), or on a fixed or default value it equals."""
        when = spec.get("when")
        if when is None:  # `when:` left empty: no condition
            return {}
        if not isinstance(when, dict):
            bad("when must be a mapping like {optimizer: sgd}")
            return {}
        fields = TrainConfig.field_names()
        by_name = {p.name: p for p in earlier}
        coerced: dict[str, Any] = {}
        for key, value in when.items():
            if key == name:
                bad(f"a parameter cannot depend on itself: remove '{key}' from its when")
                continue
            if key not in fields:
                bad(f"condition on unknown field {excerpt(key)}{suggest(str(key), fields, FIELD_ALIASES)}")
                continue
            if key not in by_name and key in listed:
                if listed.index(key) > listed.index(name):
                    bad(f"condition on '{key}', which is listed after this parameter; list '{key}' above it")
                continue  # listed above, with an error of its own
            try:
                coerced[key] = TrainConfig.coerce(key, value)
            except ValueError as err:
                bad(f"condition {err}")
                continue
            if key in by_name:
                param = by_name[key]
                possible = param.values() if param.type == "categorical" else None
            elif key in SWEEP_OWNED_FIELDS:  # every trial's config has epochs = scheduler.max_epochs
                possible = [self.sweep_owned[key]] if key in self.sweep_owned else None
            else:
                possible = [TrainConfig.coerce(key, fixed[key]) if key in fixed else getattr(TrainConfig, key)]
            if possible is not None and coerced[key] not in possible:
                where = ("its choices are" if key in by_name else
                         "every trial has scheduler.max_epochs =" if key in SWEEP_OWNED_FIELDS else
                         "it is fixed at" if key in fixed else "it is not searched; its default is")
                shown = ", ".join(excerpt(list(v) if isinstance(v, tuple) else v, 24) for v in possible)
                bad(f"condition {key}={excerpt(value)} never holds: {where} {shown}")
        return coerced

    def choices(self, name: str, spec: Mapping, bad: Callable[[str], None]) -> tuple[Any, ...] | None:
        """A categorical's choices, each a scalar (or, for widths/blocks, a list of whole numbers)."""
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            bad("give a non-empty list of choices")
            return None
        if len(choices) > MAX_CHOICES:
            bad(f"{len(choices):,} choices is above the limit of {MAX_CHOICES:,}; use a range")
            return None
        out = []
        for choice in choices:
            if name in STAGE_FIELDS:
                try:
                    out.append(format_stages(parse_stages(choice)))
                except (TypeError, ValueError):
                    bad(f"choice {excerpt(choice)} is invalid (give whole numbers, one per stage, as a list, "
                        "e.g. [64, 128, 256])")
                    return None
            elif isinstance(choice, (list, dict)):
                bad(f"choice {excerpt(choice)} is invalid: choices of {name} are single values")
                return None
            else:
                out.append(choice)
        if len(set(out)) != len(out):
            bad("a choice is listed twice; list each once")
            return None
        try:  # as the trial will read them: true and 'true', 32 and '32' are one choice
            values = [TrainConfig.coerce(name, choice) for choice in out]
        except ValueError:
            return tuple(out)  # check_values names the invalid choice
        for i, value in enumerate(values):
            if value in values[:i]:
                first = out[values.index(value)]
                bad(f"choices {excerpt(first)} and {excerpt(out[i])} are the same {name} once read "
                    f"({excerpt(value)}); list it once")
                return None
        return tuple(out)

    def range_param(self, name: str, kind: str, spec: Mapping, per_stage: int | None, when: Mapping[str, Any],
                    bad: Callable[[str], None]) -> Param | None:
        """A float or int range, checked as Optuna will sample it."""
        number = whole_number if kind == "int" else real_number
        bounds = {}
        for key in ("low", "high"):
            if key not in spec:
                bad(f"give {key} (a {kind} range needs low and high)")
                continue
            try:
                bounds[key] = number(spec[key])
            except ValueError:
                bad(f"{key}={excerpt(spec[key])} must be a {'whole' if kind == 'int' else 'finite'} number"
                    + (" (int ranges need whole-number low and high)" if kind == "int" else ""))
        log = spec.get("log", False)
        if not isinstance(log, bool):
            bad(f"log={excerpt(log)} must be true or false")
            return None
        step = spec.get("step")
        if step is not None:
            try:
                step = number(step)
                if step <= 0:
                    raise ValueError
            except ValueError:
                bad(f"step {excerpt(spec['step'])} must be a positive {'whole ' if kind == 'int' else ''}number")
                return None
            if log:
                bad("step and log cannot be combined (Optuna does not support it); drop one")
                return None
        if len(bounds) < 2:
            return None
        low, high = bounds["low"], bounds["high"]
        if low > high:
            bad(f"range is inverted (low {low} > high {high}); swap them")
        elif low == high:
            bad(f"range is empty (low = high = {low}); fix it with fixed: {{{name}: {low}}} instead")
        elif log and low <= 0:
            bad(f"log range needs low > 0 (got {low}); use a positive low or log: false")
        elif step is not None and step > high - low:
            bad(f"step {step} is wider than the range {low} to {high}; a smaller step, or fix the value")
        elif step is not None and (high - low) / step > MAX_GRID_VALUES:
            bad(f"step {step:g} makes more than {MAX_GRID_VALUES:,} values from {low} to {high}; drop step for a "
                "continuous range, or use a coarser one")
        elif step is not None and (shortened := grid_high(low, high, step)) != high:
            bad(f"step {step:g} does not divide the range {low} to {high} (Optuna would end it at {shortened:g}); "
                f"set high to {shortened:g} or {grid_high(low, high + step, step):g}")
        else:
            return Param(name, kind, low=low, high=high, log=log, step=step, per_stage=per_stage, when=when)
        return None

    def check_values(self, param: Param, base: Mapping[str, Any], bad: Callable[[str], None]) -> None:
        """Every choice, or both ends of a range, must be a valid value of the field with the fixed values."""
        what = "choice" if param.type == "categorical" else "bound"
        values = param.values()
        for value, written in zip(values, param.choices or values):
            problems = _problems({**base, param.name: value}, {param.name: value})
            if problems:
                shown = excerpt(list(value) if isinstance(value, tuple) else value) if param.type != "categorical" \
                    else excerpt(written if param.name not in STAGE_FIELDS else list(value))
                bad(f"{what} {shown} is invalid ({problems[0][1]})")
                return

    def check_space(self, raw: Mapping, space: SearchSpace) -> None:
        """What only the whole space can tell: the fixed values and parameters form a valid config, with
        as many stages in widths as in blocks, and the smallest network meets the constraints."""
        try:
            small, _ = space.corner_configs()
        except UserError as err:
            self.fail(None, None, "the fixed values and parameters do not form a valid config: "
                                  f"{str(err).splitlines()[0].split(': ', 1)[-1]}")
            return
        if len(small.widths) != len(small.blocks):
            self.fail(None, None, f"widths give {len(small.widths)} stages but blocks give {len(small.blocks)}; "
                                  "use the same number of stages for both")
            return
        reason = space.constraints.violation(small)
        if reason:
            self.fail(raw.get("constraints"), "max_params" if "params" in reason else "max_macs",
                      f"no configuration can meet the constraints: even the smallest network "
                      f"(widths {list(small.widths)}, blocks {list(small.blocks)}) has {reason}; "
                      "raise the limit or shrink the widths/blocks ranges")


    def check_final(self, raw: Mapping, final: FinalFit | None, fixed: Mapping[str, Any],
                    parameters: tuple[Param, ...]) -> None:
        """The final fit trains the champion's config with epochs = final.epochs: every fixed value and every
        value a parameter can take must still be valid then (ema_epochs and final_plain_epochs count epochs)."""
        if final is None or final.epochs is None:
            return
        epochs = final.epochs
        base = {**fixed, "epochs": epochs}
        problems = _problems(base, fixed)
        for param in parameters:
            for value in param.values():
                problems += _problems({**base, param.name: value}, {param.name: value})
        if problems:
            field_name, message = problems[0]
            self.fail(self.mapping(raw, "final"), "epochs",
                      f"final.epochs={epochs} is too few for this space: with {epochs} epoch{'s' * (epochs != 1)}, "
                      f"{message}; raise "
                      f"final.epochs or lower {field_name}")


def _default_name(path: Path) -> str:
    """The file's stem as a sweep name, with anything a folder name should not hold replaced."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem)[:64].lstrip("._-")
    return name or "space"


def searchable_fields() -> list[str]:
    return [name for name in TrainConfig.field_names() if name not in SWEEP_OWNED_FIELDS]


def _choices_example(name: str) -> str:
    default = getattr(TrainConfig, name)
    if isinstance(default, bool):
        return "[true, false]"
    known = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS}.get(name, (default,))
    return f"[{', '.join(known)}]"


def _elsewhere(key: str, where: str) -> str:
    """' (did you mean 'scheduler.max_epochs'?)' when `key` is an alias of, or the name of, a setting that
    belongs in another part of the file; '' otherwise."""
    normal = key.strip().lower().replace("-", "_")
    target = SPACE_ALIASES.get(normal)
    if target is None:
        for section, cls in SECTIONS.items():
            if section != where and normal in {k for _, k, _ in declared_settings(cls)}:
                target = f"{section}.{normal}"
        if normal in TrainConfig.field_names() and where not in ("fixed", "parameters"):
            target = f"fixed.{normal}' or 'parameters.{normal}"
        elif normal in FIELD_ALIASES and where not in ("fixed", "parameters"):
            target = f"fixed.{FIELD_ALIASES[normal]}' or 'parameters.{FIELD_ALIASES[normal]}"
    if target is None or target == f"{where}.{normal}" or target == normal:
        return ""
    return f" (did you mean '{target}'?)"


def _problems(values: Mapping[str, Any], of: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems of the fields in `of`, as TrainConfig values together with `values` (which include them):
    each value is coerced to its field's type on its own, then the ranges are checked together. A lone
    widths or blocks is checked against a matching other one, so a bound or a choice is judged on its own."""
    coerced: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key, value in values.items():
        try:
            coerced[key] = TrainConfig.coerce(key, value)
        except ValueError as err:
            if key in of:
                problems.append((key, str(err)))
    if problems:
        return problems
    stages = [k for k in STAGE_FIELDS if k in coerced]
    if len(stages) == 1:
        other = next(k for k in STAGE_FIELDS if k not in coerced)
        coerced[other] = (getattr(TrainConfig, other)[0],) * len(coerced[stages[0]])
    _, found = TrainConfig.check(coerced)
    return [(key, message) for key, message in found if key in of]


# ---------------------------------------------------------------------------------------------
# the dry run


def describe(space: SearchSpace) -> str:
    """The dry-run report: the validated space, ASHA rungs, network sizes, and what the sweep will cost
    (tuner.estimate: feasible share of random samples, GPU-hours, wall clock)."""
    small, large = space.corner_configs()
    lines = [f"space {space.name} ({space.path}), sha256 {space.digest}",
             f"metric {space.metric} ({space.mode})"]
    lines.append("fixed: " + (", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}"
                                         for k, v in space.fixed.items()) or "none"))
    lines.append("parameters:")
    for p in space.parameters:
        rng = f"choices {list(p.choices)}" if p.type == "categorical" else (
            f"{p.type} [{p.low:g}, {p.high:g}]{' log' if p.log else ''}{f' step {p.step:g}' if p.step else ''}")
        stage = f" x{p.per_stage} stages" if p.per_stage else ""
        cond = f" when {dict(p.when)}" if p.when else ""
        lines.append(f"  {p.name}: {rng}{stage}{cond}")
    sched = space.scheduler
    rungs = sched.rungs()
    lines.append(f"scheduler {sched.type}: max {sched.max_epochs} epochs" + (
        f", grace {sched.grace_period}, reduction {sched.reduction_factor}, rungs at epochs {rungs}" if rungs else ""))
    b = space.budget
    limits = [f"wall time {format_duration(b.wall_time_s)}" if b.wall_time_s else "",
              f"GPU budget {b.gpu_hours:g} GPU-hours" if b.gpu_hours else "",
              f"epoch budget {b.epochs:,}" if b.epochs else ""]
    lines.append(f"trials: {b.trials} (max {space.search.max_concurrent} at once, {space.search.algorithm}, "
                 f"seed {space.search.seed})" + "".join(f", {limit}" for limit in limits if limit))
    sizes = [(f"{count_params(small):,}", f"{count_params(large):,}"),
             (f"{count_macs(small) / 1e6:.1f}", f"{count_macs(large) / 1e6:.1f}")]
    params, macs = (low if low == high else f"{low} to {high}" for low, high in sizes)
    lines.append(f"network size in this space: {params} params, {macs} M MACs per image")
    c = space.constraints
    if c.max_params or c.max_macs:
        limits = ", ".join(f"{name} {value:,}" for name, value in (("max_params", c.max_params),
                                                                     ("max_macs", c.max_macs)) if value)
        lines.append(f"constraints: {limits} (computed from the architecture; infeasible samples never launch)")
    lines.append(f"resources per trial: {space.resources.cpus:g} CPU, {space.resources.gpus:g} GPU")
    lines.append(f"data: val {space.data.val_size}, subset {space.data.subset or 'all'}, split seed "
                 f"{space.data.split_seed}")
    if space.final is None:
        lines.append("final fit: none (no final: section): the best trial's search checkpoint is registered")
    else:
        lines.append(f"final fit: the champion's configuration trained again for {space.final_epochs} epochs on "
                     f"{space.final.describe()}, as one task with the trials' resources; that checkpoint is "
                     "registered")
    lines += describe_cost(space)
    return "\n".join(lines)


__all__ = ["SearchSpace", "describe", "estimate_epochs", "load_space", "resolve_space_path"]
