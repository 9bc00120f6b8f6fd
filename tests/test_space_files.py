"""Space files as people write them: the documented example works as written, every error of a file is
reported at once with its line, every numeric setting refuses what would fail later, the published JSON
Schema matches the parser, and the dry run prices the feasible configurations."""
from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.test_space import write
from tuner.architecture import count_params
from tuner.errors import UserError
from tuner.estimate import estimate_cost, format_duration, sample_configs
from tuner.space import SECTIONS, SPACES_DIR, describe, load_space
from tuner.space_schema import SCHEMA_FILE, schema_text
from tuner.yamlfile import MAX_BYTES, load_yaml

README = SPACES_DIR / "README.md"
SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))
# A README block whose first line is this comment shows a mistake on purpose: it must fail to load.
BAD_EXAMPLE = "# bad example"

VALID = """
parameters:
  lr: {type: float, low: 0.01, high: 0.5, log: true}
  optimizer: [sgd, adamw]
  momentum: {type: float, low: 0.8, high: 0.95, when: {optimizer: sgd}}
  widths: {type: int, low: 8, high: 64, step: 8, per_stage: 3}
  blocks: {type: int, low: 1, high: 2, per_stage: 3}
search: {seed: 0, startup_trials: 4, max_concurrent: 2}
scheduler: {type: asha, max_epochs: 9, grace_period: 1, reduction_factor: 3}
resources: {cpus: 1, gpus: 0}
budget: {trials: 5}
constraints: {max_params: 300000}
data: {val_size: 1000}
"""


def errors_of(path: Path) -> list[str]:
    with pytest.raises(UserError) as info:
        load_space(path)
    return str(info.value).splitlines()


def readme_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)


# --- the documented format ----------------------------------------------------------------------


def test_every_yaml_block_of_the_readme_loads_as_written(tmp_path: Path) -> None:
    blocks = readme_blocks()
    assert blocks, "search_spaces/README.md shows the schema in ```yaml blocks"
    for index, block in enumerate(blocks):
        path = write(tmp_path, block, f"readme-{index}.yaml")
        if block.lstrip().startswith(BAD_EXAMPLE):
            with pytest.raises(UserError):
                load_space(path)
        else:
            describe(load_space(path))  # parses, validates and prices


def test_the_published_schema_is_the_one_the_parser_generates() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "search_spaces/space.schema.json is stale: python -m tuner.space_schema > search_spaces/space.schema.json")
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


def test_shipped_spaces_and_readme_examples_validate_against_the_schema(tmp_path: Path) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    texts = {path.name: path.read_text() for path in SHIPPED}
    texts.update({f"README block {i}": b for i, b in enumerate(readme_blocks()) if not b.startswith(BAD_EXAMPLE)})
    assert {"smoke.yaml", "widths.yaml", "recipe.yaml", "full.yaml"} <= set(texts)
    for name, text in texts.items():
        data = load_yaml(write(tmp_path, text), "space file", "")
        assert [e.message for e in validator.iter_errors(data)] == [], name


@pytest.mark.parametrize("text", [
    VALID + "schedular: {}\n",  # unknown key
    VALID.replace("trials: 5", "trials: 1.5"),
    VALID.replace("trials: 5", "trials: 0"),
    VALID.replace("low: 0.01, high: 0.5", "lo: 0.01, high: 0.5"),
    VALID.replace("cpus: 1", "cpus: -1"),
    VALID.replace("type: asha", "type: hyperband"),
])
def test_the_schema_refuses_what_the_parser_refuses(tmp_path: Path, text: str) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    path = write(tmp_path, text)
    assert list(validator.iter_errors(load_yaml(path, "space file", "")))
    with pytest.raises(UserError):
        load_space(path)


def test_shipped_spaces_name_the_schema_for_editors() -> None:
    for path in SHIPPED:
        assert path.read_text().startswith("# yaml-language-server: $schema=space.schema.json"), path.name
    assert "yaml-language-server" in README.read_text()


# --- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["1.0e9", "1e9", "1E9", "1.0e+9", "1_000_000_000", "'1e9'", "1000000000.0"])
def test_numbers_in_any_usual_notation_are_numbers(tmp_path: Path, written: str) -> None:
    space = load_space(write(tmp_path, VALID.replace("max_params: 300000", f"max_params: 300000, max_macs: {written}")))
    assert space.constraints.max_macs == 1_000_000_000 and isinstance(space.constraints.max_macs, int)


def test_lr_bounds_in_exponent_notation(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID.replace("low: 0.01, high: 0.5", "low: 1e-3, high: 5e-1")))
    lr = next(p for p in space.parameters if p.name == "lr")
    assert (lr.low, lr.high) == (0.001, 0.5)


def numeric_settings() -> list[tuple[str, str, object]]:
    """(section, key, Setting) of every numeric setting of the format, read from the parser's declarations,
    so a setting added later is covered without touching this test."""
    from tuner.space import declared_settings

    return [(section, key, spec) for section, cls in SECTIONS.items() for _, key, spec in declared_settings(cls)
            if spec.kind in ("int", "float", "duration")]


def bad_values(spec: object) -> list[str]:
    values = [".inf", "-.inf", ".nan", "true", "'many'", "[1]", "1e21"]
    if spec.kind == "int":
        values += ["1.5", "1.7"]
    if not spec.optional:
        values.append("null")
    return values


CASES = [(section, key, value) for section, key, spec in numeric_settings() for value in bad_values(spec)]


def test_every_numeric_setting_is_covered() -> None:
    keys = {f"{section}.{key}" for section, key, _ in numeric_settings()}
    assert {"search.seed", "search.startup_trials", "search.max_concurrent", "scheduler.max_epochs",
            "scheduler.grace_period", "scheduler.reduction_factor", "resources.cpus", "resources.gpus",
            "budget.trials", "budget.wall_time", "budget.gpu_hours", "budget.epochs", "constraints.max_params",
            "constraints.max_macs", "data.val_size", "data.subset", "data.split_seed"} <= keys


@pytest.mark.parametrize(("section", "key", "value"), CASES, ids=[f"{s}.{k}={v}" for s, k, v in CASES])
def test_every_numeric_setting_refuses_values_that_would_fail_later(tmp_path: Path, section: str, key: str,
                                                                     value: str) -> None:
    others = yaml.safe_load(VALID).get(section, {})
    rest = [line for line in VALID.strip().splitlines() if not line.startswith(f"{section}:")]
    setting = [f"{section}:", *(f"  {k}: {json.dumps(v)}" for k, v in others.items() if k != key), f"  {key}: {value}"]
    text = "\n".join(rest + setting) + "\n"
    path = write(tmp_path, text)
    errors = errors_of(path)
    line = len(text.splitlines())  # the setting is on the file's last line
    assert any(e.startswith(f"{path}:{line}: {section}.{key}=") for e in errors), errors
    assert all("Traceback" not in e for e in errors)


def test_limits_are_stated_in_the_message(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, VALID.replace("trials: 5", "trials: 1e21")))
    assert "above the limit of 100,000" in errors[0]
    errors = errors_of(write(tmp_path, VALID.replace("budget: {trials: 5}", "budget: {trials: 5, wall_time: 90d}")))
    assert "above the limit of 30d" in errors[0]


@pytest.mark.parametrize(("written", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200),
                                                  ("1d", 86400), ("1h 30m", 5400), ("1.5h", 5400)])
def test_wall_time_takes_seconds_or_units(tmp_path: Path, written: str, seconds: float) -> None:
    space = load_space(write(tmp_path, VALID.replace("budget: {trials: 5}",
                                                     f"budget: {{trials: 5, wall_time: '{written}'}}")))
    assert space.budget.wall_time_s == seconds


@pytest.mark.parametrize(("replace", "pattern"), [
    ("low: 0.01, high: 0.5", "low: .inf, high: 0.5"),
    ("low: 0.01, high: 0.5", "low: 0.01, high: .nan"),
    ("low: 0.01, high: 0.5", "low: true, high: 0.5"),
    ("low: 8, high: 64", "low: 8, high: 64.5"),
    ("step: 8", "step: .inf"),
    ("step: 8", "step: 2.5"),
    ("per_stage: 3}\n  blocks", "per_stage: 1.5}\n  blocks"),
    ("per_stage: 3}\n  blocks", "per_stage: true}\n  blocks"),
    ("per_stage: 3}\n  blocks", "per_stage: 100}\n  blocks"),
    ("high: 64, step: 8", "high: 100000, step: 8"),  # a width far above any GPU's memory
])
def test_parameter_ranges_refuse_values_that_would_fail_later(tmp_path: Path, replace: str, pattern: str) -> None:
    errors = errors_of(write(tmp_path, VALID.replace(replace, pattern)))
    assert len(errors) == 1 and "parameter '" in errors[0], errors


# --- every error at once, each with its line, each one line --------------------------------------


def test_all_errors_of_a_file_are_reported_in_one_run_in_line_order(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        fixed:
          learning_rate: 0.1
        parameters:
          lr: {type: float, low: 0.5, high: 0.01}
          optimizer: [sgd, lion]
        search: {seed: 1.7}
        scheduler: {max_epochs: 9, grace_period: 1.5}
        budget: {trials: true, gpu_hours: -1}
        """)
    path = write(tmp_path, text)
    errors = errors_of(path)
    assert [int(e.split(":")[1]) for e in errors] == [2, 4, 5, 6, 7, 8, 8], errors
    assert "learning_rate" in errors[0] and "did you mean 'lr'" in errors[0]
    assert "range is inverted" in errors[1] and "'lion'" in errors[2]
    assert "search.seed=1.7 must be a whole number" in errors[3]
    assert "scheduler.grace_period=1.5" in errors[4]
    assert "budget.trials=true" in errors[5] and "budget.gpu_hours=-1" in errors[6]
    assert all(e.startswith(f"{path}:") for e in errors)


def test_a_file_with_thousands_of_errors_prints_a_bounded_list(tmp_path: Path) -> None:
    text = "fixed:\n" + "".join(f"  nonsense_{i}: 1\n" for i in range(5000))
    errors = errors_of(write(tmp_path, text))
    assert len(errors) <= 25 and "more errors" in errors[-1]


@pytest.mark.parametrize(("text", "hint"), [
    (VALID.replace("  lr:", "  learning_rate:"), "did you mean 'lr'"),
    (VALID + "fixed: {wd: 0.001}\n", "did you mean 'weight_decay'"),
    (VALID + "fixed: {weight-decay: 0.001}\n", "did you mean 'weight_decay'"),
    (VALID + "fixed: {bs: 64}\n", "did you mean 'batch_size'"),
    (VALID + "fixed: {epochs: 5}\n", "scheduler.max_epochs"),
    (VALID + "epochs: 5\n", "did you mean 'scheduler.max_epochs'"),
    (VALID + "num_samples: 5\n", "did you mean 'budget.trials'"),
    (VALID + "trials: 5\n", "did you mean 'budget.trials'"),
    (VALID.replace("budget: {trials: 5}", "budget: {trials: 5, max_epochs: 3}"),
     "did you mean 'scheduler.max_epochs'"),
    (VALID.replace("low: 0.01, high: 0.5", "min: 0.01, high: 0.5"), "did you mean 'low'"),
    (VALID.replace("type: float, low: 0.01", "type: loguniform, low: 0.01"), "did you mean 'float'"),
    (VALID.replace("search: {", "search: {n_startup_trials: 3, "), "did you mean 'startup_trials'"),
    (VALID.replace("scheduler: {", "schedular: {"), "did you mean 'scheduler'"),
])
def test_did_you_mean_covers_close_names_and_other_tools_names(tmp_path: Path, text: str, hint: str) -> None:
    errors = errors_of(write(tmp_path, text))
    assert any(hint in e for e in errors), errors


@pytest.mark.parametrize(("text", "pattern"), [
    (VALID.replace("when: {optimizer: sgd}", "when: {optimizer: sdg}"), "condition optimizer='sdg' never holds"),
    (VALID.replace("when: {optimizer: sgd}", "when: {schedule: cosine}"), "never holds: it is not searched"),
    ("parameters:\n  momentum: {type: float, low: 0.8, high: 0.9, when: {optimizer: sgd}}\n"
     "  optimizer: [sgd, adamw]\n", "which is listed after this parameter"),
    (VALID.replace("  lr:", "  batch_size: {type: float, low: 32, high: 256}\n  lr:"), "use type: int"),
    (VALID.replace("  lr:", "  nesterov: {type: int, low: 0, high: 1}\n  lr:"), "give choices"),
    (VALID.replace("  lr:", "  ema_epochs: {type: float, low: 0, high: 20}\n  lr:"), "bound 20.0 is invalid"),
    (VALID.replace("[sgd, adamw]", "[sgd, sgd]"), "listed twice"),
    (VALID.replace("low: 0.01, high: 0.5, log: true", "low: 0.01, high: 0.5, step: 1.0"), "wider than the range"),
    ("name: ../../etc\n" + VALID, "name='../../etc' must be 1-64 letters"),
    ("fixed:\n  lr: 0.1\n  lr: 0.2\n", "repeats the one on line 2"),
    ("", "got an empty file"),
    ("- lr\n", "a space file is a mapping"),
    (VALID.replace("[sgd, adamw]", "{choices: [sgd, adamw], low: 1}"),
     "parameter 'optimizer': low does not apply to a categorical parameter"),
    (VALID.replace("high: 0.5, log: true}", "high: 0.5, log: true, choices: [0.1]}"),
     "parameter 'lr': choices does not apply to a float range"),
    (VALID.replace("when: {optimizer: sgd}", "when: 0"), "when must be a mapping"),
    (VALID.replace("[sgd, adamw]", "{choices: [sgd, adamw], when: {optimizer: sgd}}"), "cannot depend on itself"),
    (VALID.replace("when: {optimizer: sgd}", "when: []"), "when must be a mapping"),
    ("parameters:\n  lr: {low: 0.01, high: 0.5}\n", "parameter 'lr': needs a type"),
    ("name: 2026-12-06\n" + VALID, "name=2026-12-06 must be .*YAML reads it as a date: put it in quotes"),
    ("fixed:\n  weight_decay: 5e4\n", r"fixed weight_decay=50000.0 is invalid: must be between 0 and 10 \(5e-4 is "
     r"written with its minus sign\)"),
    (VALID.replace("  lr:", "  weight_decay: {type: float, low: 5e-5, high: 5e4, log: true}\n  lr:"),
     "weight_decay=50000.0 is invalid: must be between 0 and 10"),
])
def test_mistakes_that_used_to_pass_or_crash_later_are_refused(tmp_path: Path, text: str, pattern: str) -> None:
    errors = errors_of(write(tmp_path, text))
    assert any(re.search(pattern, e) for e in errors), errors


TOP_CASES = [(key, value) for key in ("name", "metric", "mode")
             for value in ("'accuracy'", ".inf", "true", "1e21", "[1]", "{a: 1}", "2026-12-06")
             if (key, value) != ("name", "'accuracy'")]  # a valid name


@pytest.mark.parametrize(("key", "value"), TOP_CASES, ids=[f"{k}={v}" for k, v in TOP_CASES])
def test_every_top_level_setting_refuses_a_wrong_value_on_its_line_and_goes_on(tmp_path: Path, key: str,
                                                                              value: str) -> None:
    path = write(tmp_path, f"{key}: {value}\n" + VALID.replace("budget: {trials: 5}", "budget: {trials: 0}"))
    errors = errors_of(path)
    assert errors[0].startswith(f"{path}:1: {key}="), errors
    assert any("budget.trials=0" in e for e in errors), errors  # the rest of the file was still read


# --- hostile files --------------------------------------------------------------------------------


def test_yaml_aliases_are_refused_with_one_line(tmp_path: Path) -> None:
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    path = write(tmp_path, "\n".join(lines) + "\nparameters: {}\n")
    started = time.monotonic()
    errors = errors_of(path)
    assert time.monotonic() - started < 5  # refused, not expanded (the expansion is 9^9 items)
    assert len(errors) == 1 and f"{path}:2:" in errors[0] and "aliases" in errors[0]


@pytest.mark.parametrize("text", ["parameters: " + "[" * 5000 + "]" * 5000 + "\n",
                                  "budget: {trials: " + "9" * 5000 + "}\n",
                                  "? [a, b]\n: 1\n",
                                  "parameters: !!python/object/apply:os.system ['true']\n"])
def test_files_that_break_the_yaml_reader_are_one_line_errors(tmp_path: Path, text: str) -> None:
    errors = errors_of(write(tmp_path, text))
    assert len(errors) == 1 and len(errors[0]) < 400, errors


# Values PyYAML's constructors fail on (IndexError, KeyError, AttributeError, TypeError, ValueError)
BAD_TAGGED = [('seed: !!int ""', "an integer"), ('lr: !!float ""', "a number"), ('seed: !!int "-"', "an integer"),
              ("flip: !!bool maybe", "true or false"), ("seed: !!timestamp abc", "a date"),
              ("lr: !!float '-'", "a number"), ("widths: !!map [8, 16]", "a mapping"),
              ("widths: [8, !!int x]", "an integer")]


@pytest.mark.parametrize(("line", "expected"), BAD_TAGGED, ids=[line for line, _ in BAD_TAGGED])
def test_a_value_pyyaml_cannot_construct_is_one_line_with_its_line_and_what_to_write(
        tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "tagged.yaml"
    path.write_text(f"epochs: 2\n{line}\n")
    with pytest.raises(UserError) as err:
        load_yaml(path, "config file", "see the docs")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:2: "), message
    assert f"cannot be read as {expected}" in message and f"write {expected}" in message
    assert ("remove the !!" in message) == ("!!" in line)


def test_a_bad_tag_at_the_top_of_a_shipped_space_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "mode: !!bool maybe\n" + (SPACES_DIR / "smoke.yaml").read_text())
    errors = errors_of(path)
    assert errors == [f"{path}:1: 'maybe' cannot be read as true or false; write true or false there instead, "
                      "or remove the !!bool tag"], errors


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "# padding\n" * (MAX_BYTES // 10 + 10))
    assert f"more than a space file can be ({MAX_BYTES:,})" in errors_of(path)[0]


@pytest.mark.parametrize("text", ["x" * 100_000 + ": 1\n", "name: " + "y" * 100_000 + "\n",
                                  "fixed: {optimizer: " + "z" * 100_000 + "}\n",
                                  "parameters: {lr: {type: float, low: 0.1, high: '" + "9" * 100_000 + "'}}\n"])
def test_error_messages_echo_only_a_short_excerpt_of_a_value(tmp_path: Path, text: str) -> None:
    errors = errors_of(write(tmp_path, text))
    assert errors and all(len(e) < 1000 for e in errors), [len(e) for e in errors]


def test_a_directory_or_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        load_space(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_space(tmp_path / "nope.yaml")


def test_a_shipped_space_is_found_by_its_bare_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: found in the installed package's folder
    assert load_space("smoke").path == SPACES_DIR / "smoke.yaml"
    (tmp_path / "mine.yaml").write_text(VALID)
    assert load_space("mine").path == Path("mine.yaml")


# --- the dry run's estimate -----------------------------------------------------------------------


def test_widths_dry_run_prices_feasible_configurations_and_says_how_many_are_rejected() -> None:
    space = load_space("widths.yaml")
    estimate = estimate_cost(space)
    configs = sample_configs(space)
    feasible = [c for c in configs if count_params(c) <= 5_000_000]
    assert estimate.rejected == len(configs) - len(feasible)
    assert 0.3 < estimate.rejected / estimate.samples < 0.7  # about half break the 5M limit
    assert all(count_params(c) <= 5_000_000 for c in feasible)
    text = describe(space)
    share = round(100 * estimate.rejected / estimate.samples)
    assert f"{share}% break max_params 5,000,000: they are rejected before launch" in text
    assert "T MAC/s per GPU" in text and "docs/benchmarks.md#gpu-h200" in text
    assert re.search(r"GPU time: about [\d.]+ GPU-hours", text)
    assert re.search(r"wall clock: about .* with 8 trials at once \(max_concurrent 8; needs 4 GPUs and 32 CPUs\)",
                     text)
    # priced at the feasible mean, far below the largest network the ranges allow (issue #16: 3.66 GPU-hours)
    assert estimate.device_seconds / 3600 < 1.0


def test_the_estimate_is_reproducible() -> None:
    space = load_space("widths.yaml")
    assert estimate_cost(space) == estimate_cost(space)


def test_dry_run_durations_are_in_human_units() -> None:
    text = describe(load_space("smoke.yaml"))
    assert "wall time 10m" in text and "600s" not in text


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (45, "45s"), (90, "1m 30s"), (600, "10m"),
                                               (3599, "1h"), (13200, "3h 40m"), (7200, "2h"),
                                               (86400 * 2 + 3600 * 5, "2d 5h")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_trial_override_is_checked_like_the_file(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID))
    assert space.with_trials(7).budget.trials == 7
    for bad in (0, 10**9, 1.5, True):
        with pytest.raises(UserError, match="--trials"):
            space.with_trials(bad)


# --- any value anywhere ------------------------------------------------------------------------------

WRONG = [None, "abc", -1, 1e30, float("nan"), True, [], {"a": 1}]


def _key_paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key and list index of a parsed YAML document, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [path for key, value in items for path in [(*prefix, key), *_key_paths(value, (*prefix, key))]]


@pytest.mark.parametrize("shipped", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_any_value_at_any_key_of_a_shipped_space_loads_or_is_a_user_error(shipped: Path, tmp_path: Path) -> None:
    """What a mutation search over the shipped spaces found once (a wrong metric crashed the parser with
    KeyError): every key of every shipped space, deleted or set to each wrong value, parses or gives
    UserErrors, never another exception."""
    original = yaml.safe_load(shipped.read_text())
    path = tmp_path / "mutated.yaml"
    for key_path in _key_paths(original):
        for value in [*WRONG, "delete"]:
            document = yaml.safe_load(shipped.read_text())
            parent = document
            for key in key_path[:-1]:
                parent = parent[key]
            if value == "delete":
                parent.pop(key_path[-1])
            else:
                parent[key_path[-1]] = value
            path.write_text(yaml.safe_dump(document, sort_keys=False))
            try:
                load_space(path)
            except UserError as err:
                assert str(err).strip() and "Traceback" not in str(err), (key_path, value)


CUT = """
fixed: {blocks: [1, 1, 1]}
parameters:
  widths: {type: int, low: 8, high: 512, step: 8, per_stage: 3}
scheduler: {type: fifo, max_epochs: 1}
budget: {trials: 2}
constraints: {max_params: 12000}
"""


def test_a_space_none_of_whose_samples_meets_the_constraints_is_refused_by_the_dry_run_and_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Its sweep would record 1,000 infeasible runs, then give up with nothing trained: the dry run said only
    `warning` and exited 0, and the real run started. Both refuse, in one line, before anything is written."""
    from tuner import run

    path = write(tmp_path, CUT)
    space = load_space(path)  # loads: the smallest network fits, only no random sample does
    assert all(space.constraints.violation(c) for c in sample_configs(space))
    monkeypatch.chdir(tmp_path)
    common = ["--space", str(path), "--storage", str(tmp_path / "store"),
              "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--data-dir", str(tmp_path / "data")]
    for argv in ([*common, "--dry-run"], common):
        with pytest.raises(SystemExit) as exited:
            run.main(argv)
        assert exited.value.code == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: none of 1,000 random samples"), captured.err
        assert "max_params 12,000 breaks 1,000" in lines[0] and "raise max_params" in lines[0], lines[0]
        assert captured.out == ""
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "store").exists()
