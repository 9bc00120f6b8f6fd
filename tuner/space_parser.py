"""Reading a space file into a SearchSpace (tuner.space): every error of the file is collected with its
line, then all are raised together, one line each with the file, the line and the fix. Unknown keys get a
"did you mean", names from other tools (Ray Tune, Optuna, W&B sweeps) included, pointing at where the
setting belongs in this format."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tuner.config import (
    FIELD_ALIASES,
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
from tuner.space import (
    FORMAT_HELP,
    MAX_CHOICES,
    MAX_GRID_VALUES,
    OPTIONAL_SECTIONS,
    PARAM_KEYS,
    PARAM_TYPES,
    PER_STAGE,
    RANGE_KEYS,
    SECTIONS,
    SWEEP_OWNED_FIELDS,
    TOP_KEYS,
    TOP_SETTINGS,
    FinalFit,
    Param,
    Resources,
    SchedulerSettings,
    SearchSpace,
    declared_settings,
    grid_high,
    searchable_fields,
)
from tuner.yamlfile import LineDict

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



class SpaceParser:
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


