"""Errors every command meets the same way, at its boundary (tuner.errors.exit_on_user_error): a path the
operating system refuses, a symlink loop or an unknown `~user`, a standard output that is full or whose reader
left. One line and exit 2 (141 for a reader that left, as git), never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LONG = "a" * 300  # longer than any file system's name limit (255)


def command(*argv: str, cwd: Path, stdout: int | None = subprocess.PIPE,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(("argv", "words"), [
    (["tuner.run", "--space", f"{LONG}.yaml", "--dry-run"], "file name too long"),
    (["tuner.train", "--config", f"{LONG}/train.yaml"], "file name too long"),
    (["tuner.run", "--space", "smoke", "--dry-run", "--data-dir", "loop"], "symlink loop"),
    (["tuner.run", "--space", "smoke", "--dry-run", "--data-dir", "~no-such-user-of-tuner/data"], "home directory"),
    (["tuner.train", "--out=~no-such-user-of-tuner/final.pt"], "home directory"),  # a tilde after `=` stays
])
def test_a_path_the_system_refuses_is_one_line(tmp_path: Path, argv: list[str], words: str) -> None:
    (tmp_path / "loop").symlink_to("loop")
    line = one_error_line(command(*argv, cwd=tmp_path))
    assert words in line.lower() and "check" in line, line


def test_a_full_stdout_is_one_line(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        line = one_error_line(command("tuner.space_schema", cwd=tmp_path, stdout=full.fileno()))
    assert "no space left" in line, line


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """`python -m tuner.run --dry-run | head -1`, with head gone before the plan is written."""
    child = subprocess.Popen([sys.executable, "-m", "tuner.run", "--space", "smoke", "--dry-run"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read()
    assert child.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_an_empty_tracking_flag_is_refused_a_blank_variable_is_unset_and_spaces_around_a_uri_are_dropped(
        tmp_path: Path) -> None:
    empty = one_error_line(command("tuner.run", "--space", "smoke", "--dry-run", "--mlflow-uri", "", cwd=tmp_path))
    assert empty.startswith("error: --mlflow-uri is empty"), empty
    blank = command("tuner.run", "--space", "smoke", "--dry-run", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": "  "})
    assert blank.returncode == 0, blank.stderr[-2000:]
    assert f"tracking: sqlite:///{tmp_path.resolve()}/mlflow.db\n" in blank.stdout, blank.stdout
    spaced = command("tuner.run", "--space", "smoke", "--dry-run", "--mlflow-uri", "sqlite:///other.db ", cwd=tmp_path)
    assert spaced.returncode == 0, spaced.stderr[-2000:]
    assert "tracking: sqlite:///other.db\n" in spaced.stdout, spaced.stdout


@pytest.mark.parametrize("argv", [["tuner.run", "--space", "smoke", "--dry-run"], ["tuner.train"],
                                  ["tuner.promote", "--sweep", "s"]])
def test_an_empty_data_dir_is_refused_not_read_as_the_current_folder(tmp_path: Path, argv: list[str]) -> None:
    """`--data-dir "$DATA"` with DATA unset: the run would download CIFAR-10 into the current folder."""
    line = one_error_line(command(*argv, "--data-dir", " ", cwd=tmp_path))
    assert "--data-dir: is empty: give the folder that holds" in line, line
    assert not list(tmp_path.iterdir())  # nothing downloaded or made


def test_predict_names_a_storage_without_credentials_and_a_pipe_given_as_an_image(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    no_aws = {**{key: value for key, value in os.environ.items() if not key.startswith("AWS_")},
              "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
              "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "PYTHONPATH": str(REPO)}
    line = one_error_line(subprocess.run(
        [sys.executable, "-m", "tuner.predict", "a.png", "--model-uri", "s3://no-bucket/model"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120, env=no_aws))
    assert "its storage did not serve it (NoCredentialsError" in line and "credentials" in line, line
    from tuner.errors import UserError
    from tuner.predict import read_image

    with pytest.raises(UserError, match="pipe.png: not a regular file"):
        read_image(tmp_path / "pipe.png")


def test_a_tune_variable_tune_cannot_parse_is_one_line_before_anything_is_recorded(tmp_path: Path) -> None:
    """Tune parses its numeric TUNE_* variables inside fit (or in a worker), after the sweep is recorded, and
    ends with a ValueError traceback; tuner.run names the variable first. The table of them is pinned against
    Ray's own list, so a Ray upgrade that adds a numeric one fails here until it is listed."""
    from ray.tune.constants import TUNE_ENV_VARS

    from tuner.tune_env import NUMERIC_TUNE_VARIABLES, check_tune_environment

    string_valued = {"RAY_AIR_LOCAL_CACHE_DIR", "RAY_TUNE_CALLBACKS", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS",
                     "TUNE_DISABLE_AUTO_INIT", "TUNE_PLACEMENT_GROUP_PREFIX", "TUNE_PLACEMENT_GROUP_RECON_INTERVAL",
                     "TUNE_RESULT_DIR", "TUNE_RESULT_DELIM"}  # compared as strings, or unused, in Ray 2.60
    assert set(TUNE_ENV_VARS) - string_valued <= set(NUMERIC_TUNE_VARIABLES)
    for name, (kind, auto) in NUMERIC_TUNE_VARIABLES.items():
        check_tune_environment({name: "2"})
        if auto:
            check_tune_environment({name: "auto"})
        for bad in ("abc", "") + (("1.5",) if kind == "a whole number" else ()):
            with pytest.raises(Exception, match=rf"^environment variable {name}='{bad}' is not {kind} .*unset it$"):
                check_tune_environment({name: bad})

    line = one_error_line(command("tuner.run", "--space", "smoke", "--storage", "runs", cwd=tmp_path,
                                  env={"TUNE_MAX_PENDING_TRIALS_PG": "many"}))
    assert "TUNE_MAX_PENDING_TRIALS_PG='many' is not a whole number" in line and "'auto'" in line, line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()  # nothing recorded
