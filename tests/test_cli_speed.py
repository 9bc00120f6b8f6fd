"""Commands answer `--help`, `--dry-run` and flag mistakes without importing torch, MLflow or Ray (each takes
seconds to import). Checked by what is imported (`python -X importtime`), never by a clock, so the tests hold
on a loaded machine."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = {"torch", "mlflow", "ray", "pandas", "matplotlib", "torchvision"}
ROOT = Path(__file__).resolve().parents[1]


def imported(*args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -X importtime ARGS`; (the result, the top-level packages it imported)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    modules = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    return result, modules


@pytest.mark.parametrize("command", ["tuner.run", "tuner.train", "tuner.predict", "tuner.promote", "tuner.report"])
def test_help_imports_no_heavy_package(command: str) -> None:
    result, modules = imported("-m", command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: python -m " + command in result.stdout
    assert "example" in result.stdout
    assert not modules & HEAVY, sorted(modules & HEAVY)


@pytest.mark.parametrize("space", ["smoke.yaml", "widths.yaml"])
def test_dry_run_imports_no_heavy_package(space: str) -> None:
    result, modules = imported("-m", "tuner.run", "--space", space, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cost estimate" in result.stdout and "dry run: no trial started" in result.stdout
    assert not modules & HEAVY, sorted(modules & HEAVY)


def test_train_flag_mistakes_answer_before_torch_is_imported(tmp_path: Path) -> None:
    for flags, fragment in ((["--device", "banana"], "--device 'banana' is not a device; give cpu, cuda"),
                            (["--optimizer", "lion"], "invalid choice: 'lion'"),
                            (["--lr", "fast"], "flags: lr='fast' is not a valid finite number"),
                            (["--config", str(tmp_path)], "is a directory, not a config file")):
        result, modules = imported("-m", "tuner.train", *flags, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
        assert len(errors) == 1 and errors[0].startswith("error: ") and fragment in errors[0], errors
        assert not modules & HEAVY, (flags, sorted(modules & HEAVY))


def test_choice_flags_list_their_choices() -> None:
    result = subprocess.run([sys.executable, "-m", "tuner.train", "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    text = " ".join(result.stdout.split())
    for choices in ("--optimizer {sgd,adam,adamw}", "--schedule {onecycle,cosine,plateau}",
                    "--precision {auto,bf16,fp32}", "--device {cpu,cuda,cuda:N,mps}"):
        assert choices in text


def test_config_space_and_counts_import_without_torch() -> None:
    code = ("import sys, tuner.config, tuner.space, tuner.architecture, tuner.estimate, tuner.train_command, "
            "tuner.mlflow_names; heavy = {'torch', 'mlflow', 'ray', 'optuna'} & set(sys.modules); "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_old_import_paths_still_work() -> None:
    from tuner import architecture, config, model, train

    assert train.TrainConfig is config.TrainConfig and train.format_stages is config.format_stages
    assert model.count_params is architecture.count_params and model.count_macs is architecture.count_macs


def test_the_light_mlflow_names_match_tracking() -> None:
    from tuner import mlflow_names, tracking

    assert mlflow_names.DEFAULT_MODEL_NAME == tracking.DEFAULT_MODEL_NAME
    assert mlflow_names.CHAMPION_ALIAS == tracking.CHAMPION_ALIAS
