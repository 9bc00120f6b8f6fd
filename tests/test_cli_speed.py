"""Commands answer `--help`, `--dry-run` and flag mistakes without importing torch, MLflow or Ray (each takes
seconds to import). Checked by what is imported (`python -X importtime`), never by a clock, so the tests hold
on a loaded machine."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

HEAVY = {"torch", "mlflow", "ray", "pandas", "matplotlib", "torchvision"}
ROOT = Path(__file__).resolve().parents[1]


def imported(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
             ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -X importtime ARGS` (in `env`, default ours); (the result, the top-level packages it imported)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120, env={**(os.environ if env is None else env), "PYTHONDONTWRITEBYTECODE": "1"})
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


def test_dry_run_says_where_data_and_tracking_are_and_writes_nothing(tmp_path: Path) -> None:
    result, modules = imported("-m", "tuner.run", "--space", "smoke", "--dry-run", "--data-dir", "nowhere",
                               cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    missing = tmp_path.resolve() / "nowhere" / "cifar-10-batches-py"
    assert f"data: no CIFAR-10 in {missing}: the run downloads it" in result.stdout
    assert f"tracking: sqlite:///{tmp_path.resolve()}/mlflow.db" in result.stdout
    assert not modules & HEAVY and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--mlflow-uri", "bogus://x"], "scheme 'bogus' is not one MLflow tracks to"),
    (["--mlflow-uri", "http://127.0.0.1:9"], "MLflow tracking server http://127.0.0.1:9 is not reachable"),
    (["--data-dir", "a-file"], "--data-dir a-file: a-file is a file; give the folder that holds"),
    (["--mlflow-uri", "http://[::1"], "tracking URI 'http://[::1' cannot be parsed"),
    (["--mlflow-uri", "some-folder"], "is MLflow's file store, which MLflow 3 refuses to open"),
    (["--mlflow-uri", "a-file"], "a-file is not an SQLite database"),
    (["--mlflow-uri", "sqlite:///."], "is a folder, not an SQLite database"),
    (["--storage", "a-file/runs"], "lies under"),
    (["--address", "bogus"], "--address 'bogus' is not a Ray address"),
    (["--resume", "s", "--trials", "3"], "leave out --space, --trials"),
    (["--mlflow-uri", "HTTP://127.0.0.1:9"], "MLflow tracking server http://127.0.0.1:9 is not reachable"),
    (["--mlflow-uri", "sqlite:/mlflow.db"], "is not an SQLite URL SQLAlchemy can read: write sqlite:///mlflow.db"),
    (["--mlflow-uri", "sqlite://"], "tracking URI 'sqlite://' is an SQLite database in memory"),
    (["--mlflow-uri", "sqlite:///:memory:"], "is an SQLite database in memory"),
    (["--mlflow-uri", "postgresql+psycopg2://tuner:s3cret@127.0.0.1:9/db"],
     "the database server of tracking URI 'postgresql+psycopg2://tuner:***@127.0.0.1:9/db' is not reachable"),
    (["--mlflow-uri", "postgresql+nosuch://u@127.0.0.1:9/db"], "SQLAlchemy knows no driver 'nosuch' for postgresql"),
    pytest.param(["--mlflow-uri", "postgresql://u@127.0.0.1:9/db"],
                 "SQLAlchemy opens postgresql:// with the Python module 'psycopg', which is not installed; use "
                 "postgresql+psycopg2:// (its driver is installed), or pip install 'psycopg[binary]'",
                 marks=pytest.mark.skipif(bool(find_spec("psycopg")) or not find_spec("psycopg2"),
                                          reason="needs psycopg2 without psycopg 3")),
])
def test_dry_run_refuses_what_the_run_would_fail_on(tmp_path: Path, flags: list[str], fragment: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    result, modules = imported("-m", "tuner.run", "--space", "smoke", "--dry-run", *flags, cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(errors) == 1 and fragment in errors[0], errors
    assert not modules & HEAVY and [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_dry_run_refuses_databricks_with_no_workspace_and_takes_one_configured(tmp_path: Path) -> None:
    """MLflow fails at the first request, with a traceback about credentials, when no workspace is configured."""
    config = tmp_path / "databrickscfg"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DATABRICKS_")}
    env["DATABRICKS_CONFIG_FILE"] = str(config)
    for uri, fragment in (("databricks", f"neither DATABRICKS_HOST nor a [DEFAULT] profile in {config}"),
                          ("databricks://lab", f"no [lab] profile in {config}): run `databricks configure "
                                               "--profile lab`")):
        result, modules = imported("-m", "tuner.run", "--space", "smoke", "--dry-run", "--mlflow-uri", uri,
                                   cwd=tmp_path, env=env)
        errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
        assert result.returncode == 2 and len(errors) == 1, errors
        assert f"tracking URI '{uri}' needs a Databricks workspace and none is configured" in errors[0], errors
        assert fragment in errors[0] and not modules & HEAVY
    config.write_text("[DEFAULT]\nhost = https://example.cloud.databricks.com\ntoken = x\n")
    result, _ = imported("-m", "tuner.run", "--space", "smoke", "--dry-run", "--mlflow-uri", "databricks",
                         cwd=tmp_path, env=env)
    assert result.returncode == 0 and "tracking: databricks" in result.stdout, result.stderr[-2000:]


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


@pytest.mark.parametrize(("body", "code"), [("pass", 0), ("sys.exit(2)", 2), ("raise ValueError", 1)])
def test_commands_leave_with_a_frozen_heap_and_their_own_exit_code(body: str, code: int) -> None:
    """run_then_exit_quickly (every CLI's __main__) skips the last garbage collection of a process that
    imported torch, Ray and MLflow (seconds) by freezing the heap however main ends; the exit code is main's."""
    script = ("import atexit, gc, sys\n"
              "from tuner.quick_exit import run_then_exit_quickly\n"
              "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, flush=True))\n"
              f"def main():\n    {body}\n"
              "run_then_exit_quickly(main)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr[-2000:]
    assert result.stdout.strip() == "frozen True", result.stdout
    for command in ("tuner.run", "tuner.promote", "tuner.report", "tuner.predict", "tuner.train"):
        module = ROOT / "tuner" / (command.split(".")[1] + ".py")
        assert "run_then_exit_quickly(main)" in module.read_text(), f"{command}'s __main__ does not use it"


def test_ctrl_c_outside_a_commands_own_handler_is_one_line_and_the_shells_code(capsys) -> None:
    from tuner.errors import exit_on_user_error

    @exit_on_user_error
    def command() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        command()
    assert exit_.value.code == 130 and capsys.readouterr().err == "interrupted\n"
