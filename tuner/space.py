"""Search-space files: parse and validate once, then sample TrainConfigs define-by-run.

A space file (schema and examples in search_spaces/README.md; the JSON Schema for editors,
search_spaces/space.schema.json, is generated from this module's declarations by tuner.space_schema) names
TrainConfig fields. This module declares the format and holds the parsed space; tuner.space_parser reads a
file into it. Everything is checked before anything starts, and every error of a file is reported in one
run, one line each with the file, the line and the fix: unknown keys and field names (with "did you mean",
known aliases included), values of the wrong type, out of range or not finite, empty or inverted ranges, log
ranges with low <= 0, conditions that name unknown or later parameters or can never hold, constraints that
no configuration in the space can meet, and a `final:` fit too short for the space's epoch-counted settings.

Every setting of the format is read by one typed reader (`Setting.read`), declared beside its field, and the
JSON Schema is written from the same declarations, so a rule cannot be checked in one place and forgotten in
the other.

Sampling takes an Optuna trial (`sample(trial)`); a conditional parameter, e.g. momentum only for sgd, is
drawn in every trial but reaches the configuration only when its condition holds. Parameter count and MACs
are computed analytically (tuner.architecture), so an infeasible configuration is rejected before it reaches
a GPU. This module imports neither torch, Ray, MLflow nor Optuna: `--dry-run` and `--help` stay fast.
"""
from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuner.architecture import count_macs, count_params
from tuner.config import (
    MAX_EPOCHS,
    MAX_SEED,
    MAX_STAGES,
    STAGE_FIELDS,
    TrainConfig,
    parse_stages,
    real_number,
    whole_number,
)
from tuner.errors import UserError, excerpt, suggest
from tuner.estimate import describe_cost, estimate_epochs, format_duration
from tuner.yamlfile import load_yaml

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
        """One configuration: fixed values, then each parameter whose `when` condition holds.

        Every parameter is drawn in every trial, its condition holding or not, and the configuration takes it
        only where the condition holds (momentum is drawn for an adamw trial and left out of its config).
        Optuna's TPE models jointly only the parameters every trial has: drawn only for sgd, momentum and
        nesterov fell out of the joint model, and the search ended below stock OptunaSearch, which is given
        no conditions (docs/benchmarks.md#search-efficiency)."""
        values = self.base_config()
        for param in self.parameters:
            value = param.sample(trial)
            if all(values.get(k, getattr(TrainConfig, k, None)) == v for k, v in param.when.items()):
                values[param.name] = value
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


def searchable_fields() -> list[str]:
    """The TrainConfig fields a space may fix or search (the sweep owns the others)."""
    return [name for name in TrainConfig.field_names() if name not in SWEEP_OWNED_FIELDS]


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
    from tuner.space_parser import SpaceParser  # it builds this module's classes, so it imports this module

    return SpaceParser(path, text).parse(raw)


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
