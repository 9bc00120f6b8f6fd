"""tuner.tracking against a real mlflow server (and the local sqlite default): run layout, resume,
early failure on a dead server, no lost metric across a server outage, and no epoch metric twice."""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from tests.conftest import free_port
from tuner import mlflow_store, outcomes, tracking, trial_names
from tuner.config import TrainConfig
from tuner.errors import UserError
from tuner.mlflow_names import resolve_tracking_uri
from tuner.model import count_macs, count_params
from tuner.tracking import SweepRun
from tuner.tracking_checks import check_tracking_server

pytestmark = pytest.mark.integration

CONFIG = TrainConfig(widths=(8, 16, 32), blocks=(1, 1, 1), lr=0.05, epochs=4)


def epoch_metrics(epoch: int, scale: float = 1.0) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "val_loss": 2.1 / epoch, "val_acc": 0.1 * epoch * scale,
            "lr": 0.05}


def start_sweep(uri: str, tmp_path: Path, name: str | None = None, resume: bool | None = None) -> SweepRun:
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  lr: {low: 0.01, high: 0.1, log: true}\n")
    return SweepRun.start(
        uri, name or f"sweep-{uuid.uuid4().hex[:8]}", space,
        {"num_samples": 4, "metric": "val_acc", "scheduler": {"type": "asha", "grace_period": 1}},
        {"tuner.git_commit": "abc123", "tuner.space_hash": "s1", "tuner.data_fingerprint": "d1",
         "tuner.ray_address": "local"},
        resume=resume,
    )


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def child_runs(client: MlflowClient, sweep: SweepRun) -> dict[str, object]:
    return {r.data.tags["tuner.trial_id"]: r for r in tracking.trial_runs(client, client.get_run(sweep.run_id))}


def assert_no_step_twice(client: MlflowClient, sweep: SweepRun) -> None:
    for trial_id, run in child_runs(client, sweep).items():
        for key in run.data.metrics:
            counts = Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert max(counts.values()) == 1, f"trial {trial_id}: {key} logged twice at {counts}"


def test_trial_runs_nest_under_their_sweep_with_config_as_params_and_epochs_as_steps(mlflow_server, tmp_path):
    sweep = start_sweep(mlflow_server.uri, tmp_path)
    runs = sweep.trial_runs()
    runs.start("t_00007", 7, CONFIG)
    for epoch in (1, 2, 3):
        runs.log_epoch("t_00007", epoch_metrics(epoch), epoch)
    runs.finish("t_00007", "completed", {"tuner.gpu_seconds": "12.5"})
    assert runs.flush(timeout_s=30)
    sweep.end()

    client = MlflowClient(mlflow_server.uri)
    parent = client.get_run(sweep.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tuner.sweep"] == sweep.sweep_name
    assert parent.data.tags["tuner.git_commit"] == "abc123"
    assert parent.data.params["num_samples"] == "4"
    assert [a.path for a in client.list_artifacts(sweep.run_id, "space")] == ["space/space.yaml"]

    child = child_runs(client, sweep)["t_00007"]
    assert child.info.run_name == "t007 w8-16-32 b1-1-1 lr0.05"  # no space outline: the architecture and lr
    assert child.data.tags["mlflow.parentRunId"] == sweep.run_id
    assert child.data.tags["tuner.sweep"] == sweep.sweep_name
    assert child.data.tags["tuner.outcome"] == "completed"
    assert child.data.tags["tuner.trial_label"] == "t007"
    assert child.data.metrics["params_count"] == count_params(CONFIG)  # numbers the UI can sort and chart
    assert child.data.metrics["macs"] == count_macs(CONFIG)
    assert child.data.tags["tuner.gpu_seconds"] == "12.5"
    assert child.data.params["widths"] == "8,16,32"
    assert TrainConfig.from_dict(child.data.params) == CONFIG
    assert not set(child.data.metrics) & set(CONFIG.field_names()) - {"lr"}
    for run in (parent, child):
        assert run.data.tags["mlflow.source.name"] == "tuner.run" and run.data.tags["mlflow.source.type"] == "LOCAL"
        assert len(run.data.tags.get("mlflow.source.git.commit", "0" * 40)) == 40
    assert "epoch" not in child.data.metrics
    assert steps(client, child.info.run_id, "val_acc") == [1, 2, 3]
    assert child.info.status == "FINISHED"


def test_a_new_driver_reuses_the_runs_and_never_logs_a_step_twice(mlflow_server, tmp_path):
    """A driver dies with epochs 1-2 written; the next one (its TrialRuns unpickled from Ray's state)
    resumes the trial, which re-runs epoch 2, and backfills epoch 1 from the result files."""
    sweep = start_sweep(mlflow_server.uri, tmp_path)
    first = sweep.trial_runs()
    first.start("t_1", 1, CONFIG)
    for epoch in (1, 2):
        first.log_epoch("t_1", epoch_metrics(epoch), epoch, timestamp_ms=1000 * epoch)
    first.finish("t_1", "errored")
    assert first.flush(timeout_s=30)

    again = start_sweep(mlflow_server.uri, tmp_path, name=sweep.sweep_name)
    assert again.run_id == sweep.run_id and again.resumed
    second = pickle.loads(pickle.dumps(first))  # addresses only: a new connection, nothing buffered
    assert second.pending == 0
    second.log_epoch("t_1", epoch_metrics(1), 1, timestamp_ms=1000)  # the backfill: already there
    second.start("t_1", 1, CONFIG)  # Ray runs the trial again from its epoch-1 checkpoint
    for epoch in (2, 3):
        second.log_epoch("t_1", epoch_metrics(epoch, scale=2.0), epoch)
    second.finish("t_1", "completed")
    assert second.flush(timeout_s=30)

    client = MlflowClient(mlflow_server.uri)
    runs = child_runs(client, sweep)
    assert list(runs) == ["t_1"]
    run_id = runs["t_1"].info.run_id
    assert steps(client, run_id, "val_acc") == [1, 2, 3]
    assert [m.value for m in client.get_metric_history(run_id, "val_acc") if m.step == 2] == [pytest.approx(0.2)]
    assert client.get_run(run_id).data.tags["tuner.outcome"] == "completed"
    assert_no_step_twice(client, sweep)


def test_runs_log_the_parameters_a_trial_used_and_name_it_by_its_searched_values(mlflow_server, tmp_path):
    """An adamw trial has no momentum or nesterov; a searched field whose `when` fails is not logged; the
    searched ones are listed in tuner.searched and make the run name; the parent's best_val_acc follows the
    trials as they finish, and tuner.best moves to the better child."""
    sweep = start_sweep(mlflow_server.uri, tmp_path)
    outline = trial_names.SpaceOutline("val_acc", "max", (("lr", ()), ("optimizer", ()),
                                                       ("momentum", (("optimizer", "sgd"),))))
    runs = sweep.trial_runs(outline)
    adamw = TrainConfig(widths=(8, 16, 32), blocks=(1, 1, 1), lr=0.0031, optimizer="adamw")
    sgd = TrainConfig(widths=(8, 16, 32), blocks=(1, 1, 1), lr=0.05, optimizer="sgd", momentum=0.85)
    for finished, (trial_id, index, config, scale) in enumerate(
            (("a", 4, adamw, 1.0), ("b", 5, sgd, 2.0), ("c", 6, sgd, 0.5)), start=1):
        runs.start(trial_id, index, config)
        runs.log_epoch(trial_id, epoch_metrics(2, scale), 2)
        runs.finish(trial_id, "completed")
        runs.count_finished(trial_id, finished)
    assert runs.best == ("b", pytest.approx(0.4))
    assert runs.flush(timeout_s=30) and sweep.end()

    client = MlflowClient(mlflow_server.uri)
    made = child_runs(client, sweep)
    assert made["a"].info.run_name == "t004 lr=0.0031 optimizer=adamw"
    assert made["b"].info.run_name == "t005 lr=0.05 optimizer=sgd momentum=0.85"
    assert made["a"].data.tags["tuner.searched"] == "lr,optimizer"
    assert made["b"].data.tags["tuner.searched"] == "lr,optimizer,momentum"
    assert not {"momentum", "nesterov", "plateau_patience"} & set(made["a"].data.params)
    assert made["b"].data.params["momentum"] == "0.85" and made["b"].data.params["nesterov"] == "True"
    assert {t: r.data.tags.get("tuner.best") for t, r in made.items()} == {"a": "false", "b": "true", "c": None}
    parent = client.get_run(sweep.run_id)
    assert parent.data.tags["tuner.best_trial"] == "b"
    history = sorted((m.step, m.value) for m in client.get_metric_history(sweep.run_id, "best_val_acc"))
    assert history == [(1, pytest.approx(0.2)), (2, pytest.approx(0.4)), (3, pytest.approx(0.4))]


def test_outcome_of_a_trial_that_never_logged_creates_its_run(mlflow_server, tmp_path):
    sweep = start_sweep(mlflow_server.uri, tmp_path)
    runs = sweep.trial_runs()
    infeasible = TrainConfig(widths=(512, 1024, 2048), blocks=(4, 4, 4))
    runs.start("t_9", 9, infeasible, reopen=False)
    runs.finish("t_9", "infeasible", {"tuner.reason": "too many params"})
    runs.finish("t_3", outcomes.stopped(2))
    runs.finish("t_5", outcomes.NOT_RUN, create=False)  # never started: no run
    assert runs.flush(timeout_s=30) and sweep.end()

    client = MlflowClient(mlflow_server.uri)
    made = child_runs(client, sweep)
    assert set(made) == {"t_9", "t_3"}
    assert made["t_9"].data.tags["tuner.outcome"] == "infeasible"
    assert made["t_9"].data.tags["tuner.reason"] == "too many params"
    assert made["t_9"].data.params["widths"] == "512,1024,2048"
    assert made["t_9"].info.run_name.startswith("t009 w512-1024-2048")
    assert made["t_3"].data.tags["tuner.outcome"] == "stopped_by_asha_at_epoch_2"


def test_unreachable_server_is_one_clear_error_within_seconds(dead_tracking_uri):
    dead = dead_tracking_uri
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        check_tracking_server(dead)
    assert time.monotonic() - started < 15
    message = str(err.value)
    assert "\n" not in message and dead in message and "--mlflow-uri" in message


def test_local_default_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(None)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("http://h:5000/") == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri(None) == "http://tracking:5000"
    assert resolve_tracking_uri("http://flag:1") == "http://flag:1"
    assert mlflow_store.ui_command("http://tracking:5000") == "open http://tracking:5000"
    assert mlflow_store.ui_command(uri).startswith(f"mlflow ui --backend-store-uri {uri}")

    sweep = start_sweep(uri, tmp_path)
    runs = sweep.trial_runs()
    runs.start("t_0", 0, CONFIG)
    runs.log_epoch("t_0", epoch_metrics(1), 1)
    runs.finish("t_0", "completed")
    assert runs.flush(timeout_s=30) and sweep.end()
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / "mlartifacts" / "tuner").is_dir()  # the space file, not ./mlruns
    assert not (tmp_path / "mlruns").exists()
    client = MlflowClient(uri)
    assert steps(client, child_runs(client, sweep)["t_0"].info.run_id, "val_acc") == [1]


def test_server_outage_mid_sweep_loses_no_epoch_metric(mlflow_server, tmp_path):
    """The server goes away for a few seconds (stop + restart on the same port and store) while two
    trials report. The design does not depend on the length (the 30 s sweep test: more retries)."""
    sweep = start_sweep(mlflow_server.uri, tmp_path)
    runs = sweep.trial_runs()
    for index, trial_id in enumerate(("t_a", "t_b")):
        runs.start(trial_id, index, CONFIG)
        runs.log_epoch(trial_id, epoch_metrics(1), 1)

    mlflow_server.stop()
    try:
        outage_started = time.monotonic()
        for epoch in (2, 3, 4):
            for trial_id in ("t_a", "t_b"):
                started = time.monotonic()
                runs.log_epoch(trial_id, epoch_metrics(epoch), epoch, timestamp_ms=1000 * epoch)
                assert time.monotonic() - started < 2
            time.sleep(1)
        runs.log_epoch("t_b", epoch_metrics(4, scale=2.0), 4)  # t_b re-runs epoch 4 (resumed from a checkpoint)
        started = time.monotonic()
        runs.finish("t_b", outcomes.stopped(4))
        runs.finish("t_a", "completed")
        sweep.log_metrics({"best_val_acc": 0.4}, step=4)
        assert time.monotonic() - started < 2
        assert not runs.flush(timeout_s=1)
        assert runs.pending == 2 * 3 * 4 + 4  # epochs 2..4 of both, four metrics each, and the re-run: kept
    finally:
        mlflow_server.start()
    outage_s = time.monotonic() - outage_started
    assert runs.flush(timeout_s=60)
    assert sweep.end(timeout_s=60)

    client = MlflowClient(mlflow_server.uri)
    made = child_runs(client, sweep)
    for run in made.values():
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            assert steps(client, run.info.run_id, key) == [1, 2, 3, 4], (run.info.run_name, key)
    assert_no_step_twice(client, sweep)
    assert {t: r.data.tags["tuner.outcome"] for t, r in made.items()} == {
        "t_a": "completed", "t_b": "stopped_by_asha_at_epoch_4"}
    assert steps(client, sweep.run_id, "best_val_acc") == [4]
    assert outage_s > 3


@pytest.mark.parametrize("module", ["tuner.tracking", "tuner.mlflow_store", "tuner.promote", "tuner.report"])
def test_no_usage_telemetry_leaves_the_machine_unless_asked(module):
    """MLflow 3 phones home from every process that imports it, Ray from a cluster it starts; tuner turns
    both off unless the user set the variables. The child runs without the CI/pytest variables under
    which MLflow stays quiet by itself, so this fails if tuner stops setting them."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED", "PYTEST_CURRENT_TEST", "CI",
                        "GITHUB_ACTIONS", "DO_NOT_TRACK"}}
    probe = (f"import {module}, os; from mlflow.telemetry import get_telemetry_client; "
             "print(get_telemetry_client() is None, os.environ['RAY_USAGE_STATS_ENABLED'])")
    shown = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert shown.stdout.split() == ["True", "0"], shown.stderr[-2000:]
    opted_in = subprocess.run([sys.executable, "-c", probe], env={**env, "RAY_USAGE_STATS_ENABLED": "1"},
                              capture_output=True, text=True, timeout=120)
    assert opted_in.stdout.split()[-1] == "1", opted_in.stderr[-2000:]


def test_store_opened_meanwhile_creates_the_schema_and_is_joined_however_the_body_ends(tmp_path):
    """The driver opens the store while Ray starts: by the end of the block the database has MLflow's tables
    and no opener thread is left (a failing start must not abandon a half-done migration); a store that cannot
    open raises nothing here (the client that needs it reports it)."""
    database = tmp_path / "mlflow.db"
    with pytest.raises(RuntimeError, match="ray did not start"):
        with mlflow_store.store_opened_meanwhile(f"sqlite:///{database}"):
            raise RuntimeError("ray did not start")
    assert not [t for t in threading.enumerate() if t.name == "tuner-store-open"]
    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"experiments", "runs", "registered_models"} <= tables, sorted(tables)
    with mlflow_store.store_opened_meanwhile(f"sqlite:///{tmp_path / 'missing' / 'folder' / 'mlflow.db'}"):
        pass


def test_a_reader_of_an_empty_store_file_is_refused_and_the_file_left_empty(tmp_path):
    from tuner.errors import UserError
    from tuner.mlflow_store import open_client

    empty = tmp_path / "mlflow.db"
    empty.touch()
    with pytest.raises(UserError, match="is empty: no sweep has logged there"):
        open_client(f"sqlite:///{empty}")
    assert empty.stat().st_size == 0  # MLflow would have written its tables into it


def test_a_server_gone_before_the_final_writes_is_one_line_with_the_resume_command(mlflow_server, tmp_path):
    """Nothing buffered (the trials' metrics all delivered), then the server goes away: the direct writes
    of the end (final fit run, registration) wait for it up to their timeout and then say how to resume,
    instead of a traceback after MLflow's own minutes of retries."""
    from tuner.errors import UserError

    sweep = start_sweep(mlflow_server.uri, tmp_path)
    mlflow_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(UserError, match=r"unreachable for 3s .*resume the sweep \(python -m tuner.run --resume"):
            sweep.register_best({}, "t_0", 0.5, timeout_s=3)
        assert time.monotonic() - started < 15
    finally:
        mlflow_server.start()


@pytest.mark.parametrize(("error", "outage", "shown"), [
    (MlflowException("API request to http://h/api/2.0/mlflow/runs/get failed with exception HTTPConnectionPool("
                     "host='h', port=5000): Max retries exceeded (Caused by NewConnectionError: Connection refused)"),
     True, "connection refused"),
    (MlflowException("API request to http://h/x failed with timeout exception Read timed out."), True, "timed out"),
    (MlflowException("API request to endpoint /x failed with error code 502 != 200. Response body: ''"), True,
     "HTTP 502"),
    (MlflowException("not now", error_code=TEMPORARILY_UNAVAILABLE), True, "not now"),
    (MlflowException("Run 'abc' not found", error_code=RESOURCE_DOES_NOT_EXIST), False, None),
    (MlflowException("Registered Model with name=x not found", error_code=RESOURCE_DOES_NOT_EXIST), False, None),
    (MlflowException("Could not find an 'MLmodel' configuration file"), False, None),
    (FileNotFoundError("checkpoint.pt"), False, None),
])
def test_an_outage_is_told_from_an_answer_about_the_data(error: Exception, outage: bool, shown: str | None) -> None:
    """Only a store that did not answer becomes 'stopped answering'; a missing run or model stays what it is."""
    assert mlflow_store.store_unavailable(error) is outage
    if outage:
        with pytest.raises(UserError, match=f"stopped answering while reading x \\({shown}\\); nothing was changed"):
            with mlflow_store.store_outage_is_user_error("http://h", "reading x"):
                raise error
    else:
        with pytest.raises(type(error)):
            with mlflow_store.store_outage_is_user_error("http://h", "reading x"):
                raise error


ROOT = Path(__file__).resolve().parents[1]


def mlflow_database(path: Path) -> str:
    """A real MLflow store (its tables, no runs) at `path`; its sqlite:/// URI."""
    uri = f"sqlite:///{path}"
    mlflow_store.client_for(uri).search_experiments(max_results=1)
    return uri


def command(*argv: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


def the_error_line(done: subprocess.CompletedProcess) -> str:
    """stderr of a command that failed as bad input should: exit 2, one `error:` line and nothing else."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (done.returncode, lines[-20:])
    return lines[0]


def test_a_database_file_that_is_no_usable_mlflow_store_is_one_line_and_left_as_it_was(tmp_path):
    """A damaged MLflow database (truncated, its header intact) and a sweep's Optuna study given as the store: one
    line before MLflow opens them (it would write its tables into the study, then fail in alembic)."""
    import optuna

    damaged = tmp_path / "damaged.db"
    mlflow_database(damaged)
    damaged.write_bytes(damaged.read_bytes()[:damaged.stat().st_size // 3])
    study = tmp_path / "optuna.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{study}", study_name="s").optimize(
        lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    study_bytes = study.read_bytes()
    for path, fragment in ((damaged, "is a damaged SQLite database (database disk image is malformed)"),
                           (study, "is an SQLite database but not an MLflow store (its tables: alembic_version, "
                                   "studies")):
        for check in (lambda uri: check_tracking_server(uri, create=False), mlflow_store.open_client):
            with pytest.raises(UserError, match=re.escape(fragment)) as err:
                check(f"sqlite:///{path}")
            assert "\n" not in str(err.value) and "--mlflow-uri" in str(err.value)
    assert study.read_bytes() == study_bytes
    line = the_error_line(command("-m", "tuner.report", "--sweep", "s", "--mlflow-only", "--mlflow-uri", str(study)))
    assert "an Optuna study" in line


def test_a_read_only_store_is_refused_by_the_commands_that_write_and_read_by_predict(tmp_path):
    """SQLite refuses only the first write (after promote's evaluation) and MLflow calls that temporarily
    unavailable: promote, report and the sweep refuse a read-only store up front; predict, which only reads, works."""
    store = tmp_path / "mlflow.db"
    uri = mlflow_database(store)
    store.chmod(0o444)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root writes anyway: drop the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a file read-only to this test")
        prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")
    probe = ("from tuner.errors import UserError; from tuner.mlflow_store import open_client\n"
             "try:\n"
             f"    open_client({uri!r})\n"  # promote's and report's
             "except UserError as err:\n"
             "    print(err)\n"
             f"client, _ = open_client({uri!r}, writes=False)\n"  # predict's
             "print(len(client.search_experiments()))\n")
    done = command("-c", probe, prefix=prefix)
    refused = f"tracking store {store} is read-only: make it writable (chmod u+w {store}) or pass --mlflow-uri with"
    assert done.stdout.splitlines() == [f"{refused} a writable copy", "1"], (done.stdout, done.stderr[-2000:])
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(("text", "shown"), [
    ("(sqlite3.OperationalError) attempt to write a readonly database\n[SQL: INSERT INTO model_version_tags]",
     "is read-only (attempt to write a readonly database): make it and its folder writable"),
    ("(sqlite3.DatabaseError) database disk image is malformed", "is damaged (database disk image is malformed)"),
])
def test_a_store_that_answers_about_its_file_is_no_outage(text: str, shown: str) -> None:
    """MLflow raises every OperationalError of its database as TEMPORARILY_UNAVAILABLE (the wording here is SQLite's):
    a store that refuses a write is not one that stopped answering, and running the command again won't help."""
    error = MlflowException(text, error_code=TEMPORARILY_UNAVAILABLE)
    assert not mlflow_store.store_unavailable(error)
    with pytest.raises(UserError, match=re.escape(f"the tracking store sqlite:///s.db {shown}")) as err:
        with mlflow_store.store_outage_is_user_error("sqlite:///s.db", "reading x"):
            raise error
    assert "stopped answering" not in str(err.value) and "\n" not in str(err.value)


def test_a_web_server_that_is_not_mlflow_is_refused_and_mlflow_passes(mlflow_server, tmp_path):
    """Any web server may answer /health (here a file of that name); only MLflow's answers /version."""
    import functools
    import http.server

    (tmp_path / "health").write_text("OK")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(UserError, match=re.escape(f"{uri} answers /health but is not an MLflow tracking server "
                                                      "(/version: HTTP 404)")):
            mlflow_store.open_client(uri)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    check_tracking_server(mlflow_server.uri)
    check_tracking_server(mlflow_server.uri.replace("http://", "HTTP://"))  # schemes ignore case
    assert resolve_tracking_uri("HTTP://Host:5000/") == "http://Host:5000"


def test_a_database_server_that_cannot_be_reached_or_opened_is_one_line_within_seconds(tmp_path):
    """Nothing listens on the port, or something that is no database does: one line in seconds (MLflow tries ten
    times, about 1m45s, then prints SQLAlchemy's traceback), the password not in it."""
    import socket

    pytest.importorskip("psycopg2")
    dead = f"postgresql+psycopg2://tuner:s3cret@127.0.0.1:{free_port()}/mlflow"
    started = time.monotonic()
    with pytest.raises(UserError, match=r"the database server of tracking URI .* is not reachable \(127\.0\.0\.1:\d+ "
                                        r"refused the connection\)") as err:
        check_tracking_server(dead, create=False)
    assert "s3cret" not in str(err.value) and "tuner:***@" in str(err.value)

    listener = socket.create_server(("127.0.0.1", 0))  # accepts, then hangs up: not a database
    stop = threading.Event()

    def hang_up() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                listener.accept()[0].close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(UserError, match=r"tracking store .* cannot be opened \(OperationalError: .*\); check the "
                                            r"user, password and database name") as err:
            mlflow_store.open_client(f"postgresql+psycopg2://tuner:s3cret@127.0.0.1:{listener.getsockname()[1]}/db")
        assert "s3cret" not in str(err.value) and "\n" not in str(err.value)
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()
    assert time.monotonic() - started < 15


def test_a_new_sweep_under_a_name_that_has_trials_is_refused_and_changes_nothing(tmp_path):
    """A sweep name is one sweep in a store. A new sweep (not --resume) under a name whose run has trials is
    refused: that sweep's state may live under another --storage, and the new trials would join its run. A run
    without trials (a launch that failed before its first trial) is reused; --resume reopens either."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    failed_launch = start_sweep(uri, tmp_path, name="failed-launch")
    assert start_sweep(uri, tmp_path, name="failed-launch", resume=False).run_id == failed_launch.run_id

    first = start_sweep(uri, tmp_path, name="taken")
    runs = first.trial_runs()
    runs.start("t_1", 1, CONFIG)
    runs.finish("t_1", "completed")
    assert runs.flush(timeout_s=30)
    first.end()
    with pytest.raises(UserError, match=r"^sweep 'taken' already exists in .*: continue it with --resume taken and "
                                        r"the --storage it ran with, or choose another --name$"):
        start_sweep(uri, tmp_path, name="taken", resume=False)
    client = MlflowClient(uri)
    assert client.get_run(first.run_id).info.status == "FINISHED"  # not reopened
    assert list(child_runs(client, first)) == ["t_1"]
    assert start_sweep(uri, tmp_path, name="taken").run_id == first.run_id  # --resume


def test_a_resume_reopens_the_sweeps_run_and_makes_none_where_it_is_missing(tmp_path):
    """--resume against a store without the sweep's parent run (another store, or its run deleted) raises
    SweepRunMissing and writes nothing there: a new parent run would leave the earlier trials in the other
    store and register the champion twice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(tracking.SweepRunMissing) as missing:
        start_sweep(uri, tmp_path, name="elsewhere", resume=True)
    assert missing.value.deleted is None
    client = MlflowClient(uri)
    assert client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT) is None  # not even the experiment made

    sweep = start_sweep(uri, tmp_path, name="here")
    sweep.end()
    with pytest.raises(tracking.SweepRunMissing) as missing:  # the experiment exists, the sweep's run does not
        start_sweep(uri, tmp_path, name="elsewhere", resume=True)
    assert missing.value.deleted is None
    client.delete_run(sweep.run_id)
    with pytest.raises(tracking.SweepRunMissing) as missing:
        start_sweep(uri, tmp_path, name="here", resume=True)
    assert missing.value.deleted == sweep.run_id
    assert client.get_run(sweep.run_id).info.lifecycle_stage == "deleted"  # left as it was
    client.restore_run(sweep.run_id)
    assert start_sweep(uri, tmp_path, name="here", resume=True).run_id == sweep.run_id
