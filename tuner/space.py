"""Search-space files: parse and validate once, then sample TrainConfigs define-by-run.

A space file (schema and examples in search_spaces/README.md) names TrainConfig fields. Everything is
checked before anything starts, and every error is one line with the file, the line and the fix:
unknown keys and field names (with a suggestion), empty or inverted ranges, log ranges with low <= 0,
conditions on unknown parameters, and constraints that no configuration in the space can meet.

Sampling is define-by-run (`sample(trial)` takes an Optuna trial) so conditional parameters exist only
when their condition holds, e.g. momentum only for sgd. Parameter count and MACs are computed
analytically (tuner.model), so an infeasible configuration is rejected before it reaches a GPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from tuner.errors import UserError, suggest, yaml_error
from tuner.model import count_macs, count_params
from tuner.train import STAGE_FIELDS, TrainConfig, format_stages, parse_stages

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
TOP_KEYS = ("name", "metric", "mode", "fixed", "parameters", "search", "scheduler",
            "resources", "budget", "constraints", "data")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "per_stage", "when")
PARAM_TYPES = ("float", "int", "categorical")
METRICS = ("val_acc", "val_loss")
# Fields fixed by the sweep, not by trials: ASHA needs one epoch budget for every trial.
SWEEP_OWNED_FIELDS = ("epochs",)
# An assumption, not a measurement, used only for the dry run's rough GPU-hour estimate: small 32x32 convs
# with BatchNorm reach a small part of a GPU's bf16 peak (the rate achieved is under
# docs/benchmarks.md#trainer-speed).
GPU_SUSTAINED_MACS = 30e12


class SuggestingTrial(Protocol):
    """The part of optuna.Trial that sampling uses."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


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

    def _parse_choice(self, choice: Any) -> Any:
        return parse_stages(choice) if self.name in STAGE_FIELDS and isinstance(choice, str) else choice


@dataclass(frozen=True)
class SearchSettings:
    algorithm: str = "tpe"          # tpe | random
    seed: int = 0
    startup_trials: int = 8
    max_concurrent: int = 4


@dataclass(frozen=True)
class SchedulerSettings:
    type: str = "asha"              # asha | fifo (no early stopping)
    max_epochs: int = 15
    grace_period: int = 3
    reduction_factor: int = 3

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
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class Budget:
    trials: int = 16
    wall_time_s: float | None = None
    gpu_hours: float | None = None
    epochs: int | None = None   # total epochs over all trials (equal-budget comparisons)


@dataclass(frozen=True)
class Constraints:
    max_params: int | None = None
    max_macs: int | None = None

    def violation(self, config: TrainConfig) -> str | None:
        """Why the config breaks a constraint, or None when it is feasible."""
        if self.max_params is not None and (n := count_params(config)) > self.max_params:
            return f"{n:,} params > max_params {self.max_params:,}"
        if self.max_macs is not None and (n := count_macs(config)) > self.max_macs:
            return f"{n:,} MACs > max_macs {self.max_macs:,}"
        return None


@dataclass(frozen=True)
class DataSettings:
    val_size: int = 5000
    subset: int | None = None
    split_seed: int = 0


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

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def base_config(self) -> dict[str, Any]:
        return {**self.fixed, "epochs": self.scheduler.max_epochs}

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

    def summary(self) -> dict[str, Any]:
        """Settings that describe the search (for the dry run and the MLflow parent run's params)."""
        flat: dict[str, Any] = {"space": self.name, "metric": self.metric, "mode": self.mode}
        for section in ("search", "scheduler", "resources", "budget", "constraints", "data"):
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                flat[f"{section}.{key}"] = value
        flat["parameters"] = ",".join(p.name for p in self.parameters)
        return flat


class _LineLoader(yaml.SafeLoader):
    """safe_load that also remembers the line of every mapping key, for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = _LineDict()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = key_node.start_mark.line + 1
    return mapping


class _LineDict(dict):
    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def resolve_space_path(name: str | Path) -> Path:
    """A path as given, else a bare name looked up in ./search_spaces and the repository's folder."""
    path = Path(name)
    for candidate in (path, Path("search_spaces") / path, SPACES_DIR / path):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.name for p in SPACES_DIR.glob("*.yaml")) if SPACES_DIR.is_dir() else []
    raise UserError(f"space file '{name}' not found (looked in ., search_spaces/ and {SPACES_DIR}); "
                    f"shipped spaces: {', '.join(shipped) or 'none'}")


def load_space(name: str | Path) -> SearchSpace:
    """Read, parse and fully validate a space file. Raises UserError with file:line and the fix."""
    path = resolve_space_path(name)
    text = path.read_text()
    try:
        loader = _LineLoader(text)  # a SafeLoader that also records key lines (what yaml.safe_load does)
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise yaml_error(path, err, "fix the file (schema: search_spaces/README.md)") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a space file is a mapping with keys like 'parameters:' and 'scheduler:'")
    return _SpaceParser(path, text).parse(raw)


class _SpaceParser:
    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text

    def error(self, section: Mapping | None, key: Any, message: str) -> UserError:
        line = getattr(section, "lines", {}).get(key) if section is not None else None
        return UserError(f"{self.path}{f':{line}' if line else ''}: {message}")

    def check_keys(self, section: Mapping, allowed: tuple[str, ...], where: str) -> None:
        for key in section:
            if key not in allowed:
                raise self.error(section, key, f"unknown key '{key}' in {where}{suggest(str(key), allowed)}; "
                                               f"valid keys: {', '.join(allowed)}")

    def mapping(self, raw: Mapping, key: str) -> Mapping:
        value = raw.get(key) or {}
        if not isinstance(value, dict):
            raise self.error(raw, key, f"'{key}' must be a mapping (key: value lines indented below it)")
        return value

    def settings(self, raw: Mapping, key: str, cls: type) -> Any:
        section = self.mapping(raw, key)
        names = tuple(f.name for f in dataclasses.fields(cls))
        aliases = {"wall_time": "wall_time_s"} if cls is Budget else {}
        self.check_keys(section, names + tuple(aliases), key)
        defaults = cls()
        values = {}
        for k, v in section.items():
            name = aliases.get(k, k)
            default = getattr(defaults, name)
            if name == "wall_time_s" and isinstance(v, str):
                v = _parse_duration(v, self.error(section, k, f"{key}.{k}={v!r}: use seconds or e.g. '2h', '30m'"))
            if v is not None and not isinstance(default, str) and not isinstance(v, (int, float)):
                raise self.error(section, k, f"{key}.{k}={v!r} must be a number")
            if isinstance(default, str) and not isinstance(v, str):
                raise self.error(section, k, f"{key}.{k}={v!r} must be a word")
            if isinstance(v, float) and isinstance(default, int) and name not in ("cpus", "gpus"):
                v = int(v) if v == int(v) else v
            values[name] = v
        return cls(**values)

    def parse(self, raw: Mapping) -> SearchSpace:
        self.check_keys(raw, TOP_KEYS, "the space file")
        fields = TrainConfig.field_names()
        fixed = dict(self.mapping(raw, "fixed"))
        for key in fixed:
            if key not in fields:
                raise self.error(raw["fixed"], key, f"unknown TrainConfig field '{key}' in fixed"
                                                    f"{suggest(key, fields)}; valid fields: {', '.join(fields)}")
            if key in SWEEP_OWNED_FIELDS:
                raise self.error(raw["fixed"], key, "set the epoch budget with scheduler.max_epochs, not fixed.epochs")
        params_raw = self.mapping(raw, "parameters")
        parameters = tuple(self.param(params_raw, name, spec, fields, fixed) for name, spec in params_raw.items())
        metric, mode = raw.get("metric", "val_acc"), raw.get("mode")
        if metric not in METRICS:
            raise self.error(raw, "metric", f"metric '{metric}' is not reported; choose one of {', '.join(METRICS)}")
        mode = mode or ("max" if metric == "val_acc" else "min")
        if mode not in ("max", "min"):
            raise self.error(raw, "mode", f"mode '{mode}' must be max or min")
        space = SearchSpace(
            name=str(raw.get("name") or self.path.stem), path=self.path, text=self.text, metric=metric, mode=mode,
            fixed=fixed, parameters=parameters,
            search=self.settings(raw, "search", SearchSettings),
            scheduler=self.settings(raw, "scheduler", SchedulerSettings),
            resources=self.settings(raw, "resources", Resources),
            budget=self.settings(raw, "budget", Budget),
            constraints=self.settings(raw, "constraints", Constraints),
            data=self.settings(raw, "data", DataSettings),
        )
        self.check_settings(raw, space)
        return space

    def param(self, section: Mapping, name: str, spec: Any, fields: list[str], fixed: Mapping) -> Param:
        """One entry of `parameters:`: the checks every kind shares, then those of its kind."""
        spec, kind = self.param_spec(section, name, spec, fields, fixed)

        def bad(message: str) -> UserError:
            return self.error(section, name, f"parameter '{name}': {message}")

        per_stage = _per_stage(name, kind, spec, bad)
        when = _condition(spec, fields, bad)
        if kind == "categorical":
            return Param(name, kind, choices=self.choices(name, spec, bad), when=when)
        return self.range_param(name, kind, spec, per_stage, when, bad)

    def param_spec(self, section: Mapping, name: str, spec: Any, fields: list[str],
                   fixed: Mapping) -> tuple[Mapping, str]:
        """(the parameter's mapping, its kind) once its name is a searchable field and its keys are known;
        a bare list is the short form of `{type: categorical, choices: [...]}`."""
        if name not in fields:
            raise self.error(section, name, f"unknown TrainConfig field '{name}' in parameters"
                                            f"{suggest(str(name), fields)}; valid fields: {', '.join(fields)}")
        if name in SWEEP_OWNED_FIELDS:
            raise self.error(section, name,
                             "epochs cannot be searched (ASHA needs one budget); set scheduler.max_epochs")
        if name in fixed:
            raise self.error(section, name, f"'{name}' is both fixed and searched; remove it from one of them")
        if isinstance(spec, list):
            spec = {"type": "categorical", "choices": spec}
        if not isinstance(spec, dict):
            raise self.error(section, name, f"parameter '{name}' needs a mapping, e.g. {{type: float, low: 0.01, "
                                            f"high: 0.5, log: true}} or a list of choices")
        self.check_keys(spec, PARAM_KEYS, f"parameter '{name}'")
        kind = spec.get("type") or ("categorical" if "choices" in spec else None)
        if kind not in PARAM_TYPES:
            raise self.error(section, name, f"parameter '{name}' type {kind!r} must be one of {', '.join(PARAM_TYPES)}")
        return spec, kind

    def choices(self, name: str, spec: Mapping, bad: Callable[[str], UserError]) -> tuple[Any, ...]:
        """A categorical's choices, each a valid value of its field."""
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad("give a non-empty list of choices")
        for choice in choices:
            try:
                TrainConfig.from_dict(_choice_values(name, choice), source=f"{self.path.name} parameter '{name}'")
            except UserError as err:
                raise bad(f"choice {choice!r} is invalid ({str(err).split(': ', 1)[-1]})") from None
            except ValueError as err:
                raise bad(f"choice {choice!r} is invalid ({err})") from None
        # Optuna categoricals must be scalars: a stage tuple written as a list is kept as format_stages text.
        return tuple(format_stages(c) if name in STAGE_FIELDS and isinstance(c, list) else c for c in choices)

    def range_param(self, name: str, kind: str, spec: Mapping, per_stage: int | None, when: Mapping[str, Any],
                    bad: Callable[[str], UserError]) -> Param:
        """A float or int range, checked as Optuna will sample it; both bounds must be valid values."""
        low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log", False))
        _check_bounds(name, kind, low, high, log, bad)
        _check_step(step, log, bad)
        number = float if kind == "float" else int
        param = Param(name, kind, low=number(low), high=number(high), log=log, step=step, per_stage=per_stage,
                      when=when)
        for value in param.extremes():
            try:
                values = _stage_pair(name, value) if per_stage else {name: value}
                TrainConfig.from_dict(values, source=f"{self.path.name} parameter '{name}'")
            except UserError as err:
                raise bad(f"bound {value!r} is invalid ({str(err).split(': ', 1)[-1]})") from None
        return param

    def check_settings(self, raw: Mapping, space: SearchSpace) -> None:
        sched, search, res, budget = space.scheduler, space.search, space.resources, space.budget
        if sched.type not in ("asha", "fifo"):
            raise self.error(raw.get("scheduler"), "type", f"scheduler.type '{sched.type}' must be asha or fifo")
        if sched.max_epochs < 1:
            raise self.error(raw.get("scheduler"), "max_epochs", "scheduler.max_epochs must be at least 1")
        if sched.type == "asha":
            if not 1 <= sched.grace_period <= sched.max_epochs:
                raise self.error(raw.get("scheduler"), "grace_period",
                                 f"scheduler.grace_period {sched.grace_period} must be between 1 and max_epochs")
            if sched.reduction_factor < 2:
                raise self.error(raw.get("scheduler"), "reduction_factor", "scheduler.reduction_factor must be >= 2")
        if search.algorithm not in ("tpe", "random"):
            raise self.error(raw.get("search"), "algorithm", f"search.algorithm '{search.algorithm}' must be tpe "
                                                            "or random")
        if search.max_concurrent < 1 or search.startup_trials < 0:
            raise self.error(raw.get("search"), "max_concurrent", "search.max_concurrent must be >= 1 and "
                                                                  "startup_trials >= 0")
        if res.cpus <= 0 or res.gpus < 0 or (res.gpus > 1 and res.gpus != int(res.gpus)):
            raise self.error(raw.get("resources"), "gpus" if res.gpus else "cpus",
                             "resources need cpus > 0 and gpus >= 0 (a fraction below 1, or a whole number)")
        if budget.trials < 1:
            raise self.error(raw.get("budget"), "trials", "budget.trials must be at least 1")
        for key in ("wall_time_s", "gpu_hours", "epochs"):
            if getattr(budget, key) is not None and getattr(budget, key) <= 0:
                raise self.error(raw.get("budget"), key.replace("_s", ""), f"budget.{key} must be positive")
        try:
            small, _ = space.corner_configs()
        except UserError as err:
            raise UserError(f"{self.path}: the fixed values and parameters do not form a valid config: "
                            f"{str(err).split(': ', 1)[-1]}") from None
        reason = space.constraints.violation(small)
        if reason:
            raise self.error(raw.get("constraints"), "max_params" if "params" in reason else "max_macs",
                             f"no configuration can meet the constraints: even the smallest network "
                             f"(widths {list(small.widths)}, blocks {list(small.blocks)}) has {reason}; "
                             "raise the limit or shrink the widths/blocks ranges")
        if len(small.widths) != len(small.blocks):
            raise UserError(f"{self.path}: widths give {len(small.widths)} stages but blocks give "
                            f"{len(small.blocks)}; use the same number of stages for both")


def _per_stage(name: str, kind: str, spec: Mapping, bad: Callable[[str], UserError]) -> int | None:
    """How many stages a widths/blocks range samples, one value each; None for every other parameter."""
    per_stage = spec.get("per_stage")
    is_stage_field = name in STAGE_FIELDS
    if is_stage_field and kind != "categorical" and not per_stage:
        raise bad("widths/blocks ranges need per_stage: N (one value per stage), or give choices")
    if per_stage is not None and (not is_stage_field or isinstance(per_stage, bool) or not isinstance(per_stage, int)
                                  or per_stage < 1):
        raise bad("per_stage must be a positive integer and only applies to widths and blocks")
    if per_stage is not None and kind != "int":
        raise bad("per_stage needs type: int (a stage holds a whole number); with choices, give one list per "
                  "choice instead, e.g. choices: [[1, 1, 1], [2, 2, 2]]")
    return per_stage


def _condition(spec: Mapping, fields: list[str], bad: Callable[[str], UserError]) -> Mapping[str, Any]:
    """The `when` mapping: the parameter is sampled only when every named field has that value."""
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise bad("when must be a mapping like {optimizer: sgd}")
    for key in when:
        if key not in fields:
            raise bad(f"condition on unknown field '{key}'{suggest(str(key), fields)}")
    return when


def _check_bounds(name: str, kind: str, low: Any, high: Any, log: bool, bad: Callable[[str], UserError]) -> None:
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or isinstance(low, bool):
        raise bad("give numeric low and high")
    if low > high:
        raise bad(f"range is inverted (low {low} > high {high}); swap them")
    if low == high:
        raise bad(f"range is empty (low = high = {low}); fix it with fixed: {{{name}: {low}}} instead")
    if log and low <= 0:
        raise bad(f"log range needs low > 0 (got {low}); use a positive low or log: false")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise bad("int ranges need whole-number low and high")


def _check_step(step: Any, log: bool, bad: Callable[[str], UserError]) -> None:
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise bad(f"step {step!r} must be a positive number")
    if step is not None and log:
        raise bad("step and log cannot be combined (Optuna does not support it); drop one")


def _choice_values(name: str, choice: Any) -> dict[str, Any]:
    """The TrainConfig values one choice stands for; ValueError when a stage choice is not whole numbers."""
    if name not in STAGE_FIELDS:
        return {name: choice}
    try:
        return _stage_pair(name, parse_stages(choice))
    except (TypeError, ValueError):
        raise ValueError("give whole numbers, one per stage, as a list, e.g. [64, 128, 256]") from None


def _stage_pair(name: str, value: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """A valid widths/blocks pair around one stage tuple, so a bound or a choice is checked on its own: the
    other field repeats its default first stage."""
    return {other: value if other == name else (getattr(TrainConfig, other)[0],) * len(value)
            for other in STAGE_FIELDS}


def _parse_duration(text: str, error: UserError) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise error from None


def describe(space: SearchSpace) -> str:
    """The dry-run report: validated space, ASHA rungs, trial count, params/MACs range, GPU-hour estimate."""
    small, large = space.corner_configs()
    lines = [f"space {space.name} ({space.path}), sha256 {space.digest}",
             f"metric {space.metric} ({space.mode})"]
    lines.append("fixed: " + (", ".join(f"{k}={v}" for k, v in space.fixed.items()) or "none"))
    lines.append("parameters:")
    for p in space.parameters:
        rng = f"choices {list(p.choices)}" if p.type == "categorical" else (
            f"{p.type} [{p.low}, {p.high}]{' log' if p.log else ''}{f' step {p.step}' if p.step else ''}")
        stage = f" x{p.per_stage} stages" if p.per_stage else ""
        cond = f" when {dict(p.when)}" if p.when else ""
        lines.append(f"  {p.name}: {rng}{stage}{cond}")
    sched = space.scheduler
    rungs = sched.rungs()
    lines.append(f"scheduler {sched.type}: max {sched.max_epochs} epochs" + (
        f", grace {sched.grace_period}, reduction {sched.reduction_factor}, rungs at epochs {rungs}" if rungs else ""))
    b = space.budget
    lines.append(f"trials: {b.trials} (max {space.search.max_concurrent} at once, {space.search.algorithm}, "
                 f"seed {space.search.seed})" + (f", wall time {b.wall_time_s:.0f}s" if b.wall_time_s else "")
                 + (f", GPU budget {b.gpu_hours} h" if b.gpu_hours else "")
                 + (f", epoch budget {b.epochs}" if b.epochs else ""))
    lines.append(f"network size in this space: {count_params(small):,} to {count_params(large):,} params, "
                 f"{count_macs(small) / 1e6:.1f} to {count_macs(large) / 1e6:.1f} M MACs per image")
    c = space.constraints
    if c.max_params or c.max_macs:
        lines.append(f"constraints: max_params {c.max_params or '-'}, max_macs {c.max_macs or '-'} "
                     "(infeasible samples are rejected before launch)")
    lines.append(f"resources per trial: {space.resources.cpus} CPU, {space.resources.gpus} GPU")
    lines.append(f"data: val {space.data.val_size}, subset {space.data.subset or 'all'}, split seed "
                 f"{space.data.split_seed}")
    epochs = estimate_epochs(space)
    images = (space.data.subset or 50_000 - space.data.val_size)
    # A training step costs about 3x the forward MACs. A trial at a fraction of a GPU runs about that much
    # slower, so GPU-hours do not depend on the fraction.
    gpu_hours = epochs * images * 3 * count_macs(large) / GPU_SUSTAINED_MACS / 3600 if space.resources.gpus else 0.0
    why = "the epoch budget stops the sweep" if b.epochs and epochs == b.epochs else (
        "ASHA stops most trials early" if sched.type == "asha" else "every trial runs every epoch")
    lines.append(f"expected epochs: about {epochs:.0f} in all ({why})"
                 + (f"; estimated {gpu_hours:.2f} GPU-hours at the largest network" if gpu_hours else
                    "; no GPU requested, so 0 GPU-hours"))
    return "\n".join(lines)


def estimate_epochs(space: SearchSpace) -> float:
    """Expected total epochs: under ASHA a fraction 1/rf of the trials passes each rung; an epoch budget
    stops the sweep sooner."""
    sched, trials = space.scheduler, space.budget.trials
    if sched.type != "asha":
        total = float(trials * sched.max_epochs)
    else:
        total, alive, previous = 0.0, float(trials), 0
        for rung in sched.rungs():
            total += alive * (rung - previous)
            alive, previous = alive / sched.reduction_factor, rung
        total += alive * (sched.max_epochs - previous)
    return min(total, float(space.budget.epochs)) if space.budget.epochs else total

