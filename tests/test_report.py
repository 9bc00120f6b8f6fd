"""tuner.report: a sweep's trials to Parquet/CSV and PNG plots, logged back to the sweep's parent run."""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.store_proxy import StoreProxy
from tuner import report, report_plots
from tuner.config import TrainConfig
from tuner.outcomes import stopped as stopped_outcome
from tuner.tracking import TAG_BEST, SweepRun
from tuner.trial_names import SpaceOutline

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]

PLOTS = ["optimisation_history.png", "learning_curves.png", "parallel_coordinates.png", "pareto.png",
         "param_importances.png"]
TABLES = ["trials.parquet", "trials.csv", "epochs.parquet", "epochs.csv"]


# (widths, lr, epochs run, outcome, final val acc): metrics are made up, no training needed
TRIALS = [
    ((8, 16, 32), 0.02, 3, "completed", 0.50),
    ((16, 32, 64), 0.05, 3, "completed", 0.62),
    ((32, 64, 128), 0.1, 3, "completed", 0.70),
    ((16, 32, 64), 0.3, 1, stopped_outcome(1), 0.20),
    ((32, 64, 128), 0.4, 2, "diverged", 0.15),
]


def _start_sweep(uri: str, folder: Path, search_params: dict | None = None) -> SweepRun:
    space = folder / "space.yaml"
    space.write_text("parameters: {lr: {low: 0.01, high: 0.4, log: true}}\n")
    return SweepRun.start(uri, f"report-{uuid.uuid4().hex[:8]}", space, search_params or {"num_samples": 5}, {})


def _log_trials(sweep: SweepRun, trials: list[tuple], first: int = 0, outline: SpaceOutline | None = None) -> None:
    """`trials` as t_<first>, t_<first + 1>, ...: child runs with their epochs and outcomes. With an `outline`
    (the sweep's metric and mode) each trial is also counted finished, so the driver tags the best trial."""
    runs = sweep.trial_runs(outline)
    for index, (widths, lr, epochs, outcome, final) in enumerate(trials, start=first):
        trial_id = f"t_{index}"
        runs.start(trial_id, index, TrainConfig(widths=widths, blocks=(1, 1, 1), lr=lr, epochs=3))
        for epoch in range(1, epochs + 1):
            runs.log_epoch(trial_id, {"val_acc": final * epoch / epochs, "val_loss": 2.0 - epoch * 0.3, "lr": lr},
                           epoch)
        runs.finish(trial_id, outcome, {"tuner.gpu_seconds": str(3.0 * epochs)})
        if outline is not None:
            runs.count_finished(trial_id, index + 1)
    assert runs.flush(timeout_s=60)


@pytest.fixture(scope="module")
def sweep(mlflow_server, tmp_path_factory) -> SweepRun:
    """Five trials of different widths and learning rates: three complete 3 epochs, one is stopped by
    ASHA after 1, one diverges after 2."""
    sweep = _start_sweep(mlflow_server.uri, tmp_path_factory.mktemp("report"))
    _log_trials(sweep, TRIALS)
    sweep.end()
    return sweep


def test_report_writes_tables_and_plots_and_logs_them_to_the_sweep(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    report.main(["--sweep", sweep.sweep_name, "--out", str(out), "--mlflow-uri", sweep.uri, "--mlflow-only"])
    printed = capsys.readouterr().out
    assert "5 trials" in printed and "t002 w32-64-128" in printed  # the best trial
    assert "from MLflow alone" in printed and "importances from 5 trials (under 20)" in printed

    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 5 and len(pd.read_csv(out / "trials.csv")) == 5
    row = trials.set_index("trial_id").loc["t_3"]
    assert row["outcome"] == "stopped_by_asha_at_epoch_1" and row["epochs_run"] == 1
    best = trials.set_index("trial_id").loc["t_2"]
    assert best["best_val_acc"] == pytest.approx(0.70) and best["final_val_acc"] == pytest.approx(0.70)
    assert best["widths"] == "32,64,128" and best["lr"] == pytest.approx(0.1) and best["gpu_seconds"] == 9.0
    assert best["params_count"] > trials.set_index("trial_id").loc["t_0", "params_count"]

    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(epochs) == 3 + 3 + 3 + 1 + 2 and len(pd.read_csv(out / "epochs.csv")) == len(epochs)
    assert sorted(epochs[epochs["trial_id"] == "t_4"]["epoch"]) == [1, 2]

    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    folder, files = _logged_report(sweep)
    assert folder is not None and folder.startswith("report/") and f"{report.TAG_REPORT}={folder}" in printed
    assert {path for path, _ in files} == {f"{folder}/{name}" for name in PLOTS + TABLES}


def test_report_of_an_unknown_sweep_is_one_line_error(sweep, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--sweep", sweep.sweep_name + "x", "--mlflow-uri", sweep.uri])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"no sweep named '{sweep.sweep_name}x'" in error and sweep.sweep_name in error


def test_a_sweep_in_a_deleted_experiment_is_named_with_the_restore_command(tmp_path, capsys):
    """Deleting the experiment hides its runs; 'no sweep named ...; this store has no sweep yet' was untrue."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = _start_sweep(uri, tmp_path)
    sweep.end()
    client = MlflowClient(uri)
    client.delete_experiment(sweep.experiment_id)
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--sweep", sweep.sweep_name, "--mlflow-uri", uri, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"error: sweep '{sweep.sweep_name}' is in experiment 'tuner', which is deleted: restore it in "
                     f"the MLflow UI (or `mlflow experiments restore --experiment-id {sweep.experiment_id}`), then "
                     "report again"), error


def test_pareto_front_keeps_only_trials_no_smaller_model_beats():
    trials = pd.DataFrame({
        "run_name": list("abcde"),
        "params_count": [100, 200, 300, 400, 150],
        "best_val_acc": [0.5, 0.7, 0.6, 0.8, 0.4],
    })
    assert list(report_plots.pareto_front(trials)["run_name"]) == ["a", "b", "d"]


def test_unused_parameters_are_missing_and_axes_say_log():
    """A trial the study did not sample momentum for (adamw) has no momentum value; a log axis says so and
    has more than its two ends as ticks."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.create_study(direction="maximize")
    lr = FloatDistribution(0.01, 0.1, log=True)
    for trial_id, params in (("a", {"optimizer": "adamw", "lr": 0.02}),
                             ("b", {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9})):
        distributions = {"optimizer": CategoricalDistribution(["sgd", "adamw"]), "lr": lr,
                         "momentum": FloatDistribution(0.8, 0.95)}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, value=0.5,
            user_attrs={"ray_trial_id": trial_id}))
    trials = pd.DataFrame({"trial_id": ["a", "b"], "optimizer": ["adamw", "sgd"], "lr": [0.02, 0.05],
                           "momentum": [0.9, 0.9]})
    blanked = report.blank_unused(trials, study)
    assert pd.isna(blanked.loc[0, "momentum"]) and blanked.loc[1, "momentum"] == 0.9
    assert report.log_scaled(study) == {"lr"}
    _, ticks, log = report_plots._axis_values(blanked["lr"], log=True)
    assert log and len(ticks) == 5
    _, ticks, _ = report_plots._axis_values(blanked["momentum"])
    assert (report_plots.UNUSED_Y, "not used") in ticks


def test_asha_rungs_come_from_the_parent_params():
    params = {"scheduler.type": "asha", "scheduler.grace_period": "1", "scheduler.reduction_factor": "2",
              "scheduler.max_epochs": "9"}
    assert report_plots.asha_rungs(params) == [1, 2, 4, 8]
    assert report_plots.asha_rungs({**params, "scheduler.type": "fifo"}) == []


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_an_out_folder_that_cannot_be_written_is_one_line_error(sweep, tmp_path, capsys, where: str):
    (tmp_path / "a-file").write_text("taken")
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--sweep", sweep.sweep_name, "--mlflow-uri", sweep.uri, "--out", str(tmp_path / where)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"error: --out {tmp_path / where}: cannot write the report there")
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in error


# ---------------------------------------------------------------------------------------------
# what report reads and writes: damaged input is one line, and nothing recorded is changed


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        report.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("error: "), error
    return error


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _logged_report(sweep: SweepRun) -> tuple[str | None, set[tuple[str, int | None]]]:
    """The folder the run's tag names as its report, and every file under report/ (path, size)."""
    client = MlflowClient(sweep.uri)
    files, folders = set(), ["report"]
    while folders:
        for info in client.list_artifacts(sweep.run_id, folders.pop()):
            if info.is_dir:
                folders.append(info.path)
            else:
                files.add((info.path, info.file_size))
    return client.get_run(sweep.run_id).data.tags.get(report.TAG_REPORT), files


@pytest.fixture(scope="module")
def study_bytes(sweep, tmp_path_factory) -> dict[str, bytes]:
    """Optuna study files: "sweep" holds the sweep's study (its five trials, lr sampled on a log scale);
    "others" holds two studies of other names."""
    import optuna
    from optuna.distributions import FloatDistribution

    folder = tmp_path_factory.mktemp("studies")
    made = {}
    for kind, names in (("sweep", [sweep.sweep_name]), ("others", ["other-a", "other-b"])):
        url = f"sqlite:///{folder / kind}.db"
        for name in names:
            study = optuna.create_study(storage=url, study_name=name, direction="maximize")
            for index in range(5):
                study.add_trial(optuna.trial.create_trial(
                    params={"lr": 0.02 * (index + 1)}, distributions={"lr": FloatDistribution(0.01, 0.4, log=True)},
                    value=0.5, user_attrs={"ray_trial_id": f"t_{index}"}))
        made[kind] = (folder / f"{kind}.db").read_bytes()
    return made


def _storage_with_study(tmp_path: Path, sweep: SweepRun, data: bytes) -> tuple[Path, Path]:
    storage = tmp_path / "storage"
    study = storage / "_driver" / sweep.sweep_name / "optuna.db"
    study.parent.mkdir(parents=True)
    study.write_bytes(data)
    return storage, study


def test_report_reads_the_sweeps_study_without_writing_it(sweep, study_bytes, tmp_path, capsys):
    storage, study = _storage_with_study(tmp_path, sweep, study_bytes["sweep"])
    before = _digest(study)
    report.main(["--sweep", sweep.sweep_name, "--out", str(tmp_path / "out"), "--mlflow-uri", sweep.uri,
                 "--storage", str(storage)])
    printed = capsys.readouterr().out
    assert f"optuna-dashboard sqlite:///{study.resolve()}" in printed and "no Optuna study" not in printed
    assert _digest(study) == before and sorted(p.name for p in study.parent.iterdir()) == ["optuna.db"]


@pytest.mark.parametrize("damage", ["empty", "random", "truncated", "other-studies", "not-optuna", "folder"])
def test_a_damaged_study_is_one_line_error_and_is_left_as_it_was(sweep, study_bytes, tmp_path, capsys,
                                                                    damage: str):
    import sqlite3

    whole = study_bytes["sweep"]
    data = {"empty": b"", "random": random.Random(0).randbytes(8192), "truncated": whole[:len(whole) // 4],
            "other-studies": study_bytes["others"], "not-optuna": b"", "folder": b""}[damage]
    storage, study = _storage_with_study(tmp_path, sweep, data)
    if damage == "not-optuna":
        with sqlite3.connect(study) as db:
            db.execute("create table notes (text)")
    elif damage == "folder":
        study.unlink()
        study.mkdir()
    before = None if damage == "folder" else _digest(study)
    logged = _logged_report(sweep)
    error = _one_line_error(capsys, ["--sweep", sweep.sweep_name, "--out", str(tmp_path / "out"),
                                     "--mlflow-uri", sweep.uri, "--storage", str(storage)])
    assert f"Optuna study {study}" in error and "restore it from a backup" in error, error
    assert "--mlflow-only" in error
    if before is not None:
        assert _digest(study) == before  # reading never writes the sweep's record (Optuna's schema into it)
    assert sorted(p.name for p in study.parent.iterdir()) == ["optuna.db"]
    assert not (tmp_path / "out").exists() and _logged_report(sweep) == logged


@pytest.mark.parametrize("where", ["missing", "a-file", "another-storage"])
def test_a_storage_that_does_not_hold_the_sweep_is_one_line_error_and_logs_nothing(sweep, tmp_path, capsys,
                                                                                   where: str):
    """A wrong --storage would report without the study and replace the report logged to the sweep's run."""
    storage = tmp_path / where
    if where == "a-file":
        storage.write_text("not a folder")
    elif where == "another-storage":
        (storage / "_driver" / "some-other-sweep").mkdir(parents=True)
    logged = _logged_report(sweep)
    error = _one_line_error(capsys, ["--sweep", sweep.sweep_name, "--out", str(tmp_path / "out"),
                                     "--mlflow-uri", sweep.uri, "--storage", str(storage)])
    assert str(storage) in error and "--storage" in error, error
    if where == "another-storage":
        assert f"holds no sweep '{sweep.sweep_name}'" in error and "some-other-sweep" in error
    if where != "a-file":
        assert "--mlflow-only" in error
    assert not (tmp_path / "out").exists() and _logged_report(sweep) == logged


def test_a_report_that_cannot_be_finished_leaves_the_earlier_one_as_it_was(sweep, study_bytes, tmp_path, capsys):
    out = tmp_path / "out"
    storage, _ = _storage_with_study(tmp_path, sweep, study_bytes["sweep"])
    argv = ["--sweep", sweep.sweep_name, "--out", str(out), "--mlflow-uri", sweep.uri, "--storage", str(storage)]
    report.main(argv)
    (out / "trials.csv").unlink()
    (out / "trials.csv").mkdir()  # in the way of the new trials.csv
    earlier = {path.name: _digest(path) for path in out.iterdir() if path.is_file()}
    capsys.readouterr()
    logged = _logged_report(sweep)
    error = _one_line_error(capsys, argv)
    assert f"{out / 'trials.csv'}" in error and "folder" in error, error
    assert {path.name: _digest(path) for path in out.iterdir() if path.is_file()} == earlier
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == ["trials.csv"]  # no staging left
    assert _logged_report(sweep) == logged


def test_an_empty_out_is_one_line_error_and_writes_nothing(sweep, study_bytes, tmp_path, capsys, monkeypatch):
    storage, _ = _storage_with_study(tmp_path / "elsewhere", sweep, study_bytes["sweep"])
    monkeypatch.chdir(tmp_path)
    error = _one_line_error(capsys, ["--sweep", sweep.sweep_name, "--out", "", "--mlflow-uri", sweep.uri,
                                     "--storage", str(storage)])
    assert "--out" in error and "empty" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["elsewhere"]


# ---------------------------------------------------------------------------------------------
# logging to the run is all or nothing: a reader sees the earlier report or the whole new one


class FillingArtifactStore(StoreProxy):
    """The real mlflow server behind a proxy that answers every artifact upload after the first `uploads` with
    507 Insufficient Storage (an artifact store that fills up part-way through a report; MLflow does not retry
    a 507, so the failure comes at once). With `interrupt` set to a process id, the refused upload sends that
    process Ctrl-C (SIGINT) instead, while it waits for the answer."""

    def __init__(self, upstream: str, uploads: int) -> None:
        self.uploads_left = uploads
        self.interrupt: int | None = None
        super().__init__(upstream, self._full)

    def _full(self, method: str, path: str) -> int | None:
        if method != "PUT" or "/mlflow-artifacts/artifacts/" not in path:
            return None
        with self.lock:
            full = self.uploads_left <= 0
            self.uploads_left -= 1
        return 507 if full else None

    def before_refusal(self) -> None:
        if self.interrupt is not None:
            os.kill(self.interrupt, signal.SIGINT)
            time.sleep(3)  # the client is interrupted while it waits for this answer


def _shown_report(sweep: SweepRun, into: Path) -> tuple[str, dict[str, str]]:
    """What a reader takes as the run's report: the folder its tag names, and the digest of every file in it."""
    import mlflow

    folder = MlflowClient(sweep.uri).get_run(sweep.run_id).data.tags.get(report.TAG_REPORT)
    assert folder, "the run names no report"
    local = Path(mlflow.artifacts.download_artifacts(run_id=sweep.run_id, artifact_path=folder, dst_path=str(into),
                                                     tracking_uri=sweep.uri))
    return folder, {path.name: _digest(path) for path in local.iterdir()}


@pytest.mark.parametrize("failure", ["store-fills", "interrupted"])
def test_a_report_that_fails_while_logging_leaves_the_runs_report_whole(mlflow_server, tmp_path, capsys,
                                                                          failure: str):
    """The artifact store takes the first file of a new report and refuses the next (or the user presses
    Ctrl-C then): one line, and the run still shows its earlier report, every file of it, none of the new
    one's. The next report that succeeds replaces it whole and removes the earlier files, the older layout's
    flat report/ files included."""
    sweep = _start_sweep(mlflow_server.uri, tmp_path)
    try:
        _log_trials(sweep, TRIALS[:3])
        client = MlflowClient(sweep.uri)
        (tmp_path / "pareto.png").write_bytes(b"an older report's file")
        (tmp_path / "notes.txt").write_text("not a report file")
        for name in ("pareto.png", "notes.txt"):
            client.log_artifact(sweep.run_id, str(tmp_path / name), "report")
        argv = ["--sweep", sweep.sweep_name, "--mlflow-only"]
        report.main([*argv, "--out", str(tmp_path / "first"), "--mlflow-uri", sweep.uri])
        shown = _shown_report(sweep, tmp_path / "shown")
        folder = shown[0]
        logged = _logged_report(sweep)
        assert logged[1] == {(f"{folder}/{name}", (tmp_path / "first" / name).stat().st_size) for name in shown[1]} \
            | {("report/notes.txt", len("not a report file"))}
        _log_trials(sweep, TRIALS[3:4], first=3)  # every table of the next report differs
        capsys.readouterr()

        # a process of its own, as a user runs it: this one's MLflow client keeps the run's artifact store
        # (the real server's address) from the report above
        with FillingArtifactStore(sweep.uri, uploads=1) as store:
            # Ctrl-C must reach it as it reaches a user's command. A suite started in the background of a
            # non-interactive shell (`make test &`, a CI runner) ignores SIGINT, its children inherit that, and
            # a Python started so never raises KeyboardInterrupt; a signal with a handler is reset at exec.
            previous = signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                command = subprocess.Popen(
                    [sys.executable, "-m", "tuner.report", *argv, "--out", str(tmp_path / "second"),
                     "--mlflow-uri", store.uri], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            finally:
                signal.signal(signal.SIGINT, previous)
            if failure == "interrupted":
                store.interrupt = command.pid
            try:
                _, error = command.communicate(timeout=300)
            finally:
                command.kill()  # only if still running (it timed out); a no-op once it exited
        assert store.refusals == 1  # it failed part-way: one file of the new report was already uploaded
        error = error.strip()
        assert "\n" not in error, error
        if failure == "interrupted":
            assert command.returncode == 130 and error == "interrupted", error
        else:
            assert command.returncode == 2 and error.startswith(f"error: logging the report to run {sweep.run_id}")
            assert "507" in error and "keep their earlier report" in error, error
        assert _shown_report(sweep, tmp_path / "shown-after") == shown
        assert _logged_report(sweep) == logged  # the part uploaded is removed again
        assert not [path for path in (tmp_path / "second").rglob("*") if path.is_file()]

        report.main([*argv, "--out", str(tmp_path / "second"), "--mlflow-uri", sweep.uri])
        new_folder, files = _shown_report(sweep, tmp_path / "shown-new")
        assert new_folder != folder and files == {path.name: _digest(path) for path in (tmp_path / "second").iterdir()}
        assert len(pd.read_csv(tmp_path / "second" / "trials.csv")) == 4
        assert {path for path, _ in _logged_report(sweep)[1]} == \
            {f"{new_folder}/{name}" for name in files} | {"report/notes.txt"}
    finally:
        sweep.end()


def test_a_store_that_stops_answering_while_the_report_reads_is_one_line_and_logs_nothing(mlflow_server, tmp_path):
    """The server answers the sweep's runs, then 503 to the third metric history it is asked for: one line
    naming the store, the step and the outage (not a wrong sweep name), exit 2, nothing logged to the run.
    With the command's own retry policy, as a user runs it: it tries again, then gives up within seconds
    (MLflow's default policy waits about four minutes)."""
    sweep = _start_sweep(mlflow_server.uri, tmp_path)
    try:
        _log_trials(sweep, TRIALS[:3])
        histories = []

        def down_after_two_histories(method: str, path: str) -> int | None:
            if "/metrics/get-history" not in path:
                return None
            histories.append(path)
            return 503 if len(histories) > 2 else None

        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_HTTP_REQUEST_")}
        with StoreProxy(sweep.uri, down_after_two_histories) as store:
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "tuner.report", "--sweep", sweep.sweep_name,
                                   "--mlflow-only", "--out", str(tmp_path / "out"), "--mlflow-uri", store.uri],
                                  capture_output=True, text=True, timeout=300, env=env,
                                  cwd=Path(__file__).resolve().parents[1])
            seconds = time.monotonic() - started
        assert store.refusals >= 4  # the first request and its three retries
        assert seconds < 90, seconds  # MLflow's own default: about 240 s
        error = done.stderr.strip()
        assert done.returncode == 2 and "\n" not in error, error
        assert error.startswith(f"error: the tracking store {store.uri} stopped answering while reading sweep "
                                f"'{sweep.sweep_name}' (HTTP 503); nothing was changed"), error
        assert _logged_report(sweep) == (None, set())
        assert not (tmp_path / "out").exists()
    finally:
        sweep.end()


def _report(sweep: SweepRun, out: Path) -> None:
    report.main(["--sweep", sweep.sweep_name, "--out", str(out), "--mlflow-uri", sweep.uri, "--mlflow-only"])


def _report_of(mlflow_server, tmp_path: Path, trials: list[tuple]) -> tuple[SweepRun, Path]:
    """A finished sweep with these trials (as _log_trials takes them), reported into tmp_path/report."""
    sweep = _start_sweep(mlflow_server.uri, tmp_path)
    _log_trials(sweep, trials)
    sweep.end()
    out = tmp_path / "report"
    _report(sweep, out)
    return sweep, out


def test_a_sweep_where_no_trial_finished_an_epoch_reports_its_trials_without_plots(mlflow_server, tmp_path, capsys):
    """Cut short, or every trial diverged in its first epoch: the tables list the trials and their outcomes,
    and a note says why there are no plots (not a KeyError from a plot)."""
    sweep, out = _report_of(mlflow_server, tmp_path, [
        ((8, 16, 32), 0.02, 0, "diverged", 0.1), ((16, 32, 64), 0.3, 0, "diverged", 0.1),
        ((32, 64, 128), 0.1, 0, "errored", 0.1)])
    printed = capsys.readouterr().out
    assert "note: plots skipped: no trial finished an epoch (3 trials: 2 diverged, 1 errored)" in printed
    assert "no best trial" in printed and "best: " not in printed
    trials = pd.read_parquet(out / "trials.parquet")
    assert sorted(trials["outcome"]) == ["diverged", "diverged", "errored"]
    assert (trials["epochs_run"] == 0).all() and trials["best_val_acc"].isna().all()
    assert sorted(path.name for path in out.iterdir()) == sorted(TABLES)
    _, files = _logged_report(sweep)
    assert sorted(path.rsplit("/", 1)[-1] for path, _ in files) == sorted(TABLES)


def test_trials_that_all_scored_the_same_skip_the_importances_with_a_note(mlflow_server, tmp_path, capsys):
    """Three trials at chance (0.1): fANOVA has no variance to attribute; the rest of the report is made."""
    _, out = _report_of(mlflow_server, tmp_path, [
        ((8, 16, 32), 0.02, 1, "completed", 0.1), ((16, 32, 64), 0.05, 1, "completed", 0.1),
        ((32, 64, 128), 0.3, 1, "completed", 0.1)])
    printed = capsys.readouterr().out
    assert "note: parameter importances skipped: all 3 trials have the same best val accuracy (0.1000)" in printed
    assert sorted(path.name for path in out.iterdir()) == sorted(TABLES + [p for p in PLOTS
                                                                          if p != "param_importances.png"])


def test_a_failing_importance_estimate_loses_only_that_plot(sweep, tmp_path, capsys, monkeypatch):
    """Any failure of fANOVA on degenerate data (it raises its own errors) is a note, not a lost report."""
    def fails(trials: pd.DataFrame, params: list[str]) -> dict[str, float]:
        raise RuntimeError("Encountered zero total variance in all trees.")

    monkeypatch.setattr(report, "param_importances", fails)
    out = tmp_path / "report"
    _report(sweep, out)
    printed = capsys.readouterr().out
    assert "importances skipped: fANOVA could not estimate them from 5 trials (RuntimeError: Encountered zero" \
        in printed
    assert (out / "pareto.png").is_file() and not (out / "param_importances.png").exists()


def test_the_best_trial_is_by_the_sweeps_metric_and_mode_and_ties_go_to_the_driver_tagged_one(
        mlflow_server, tmp_path, capsys):
    """A val_loss (min) sweep: the best is the lowest val loss, not the highest val accuracy (t_2). t_0 and
    t_1 tie on it; t_1 reached it first (logged first), so the driver tagged t_1, and so does the report."""
    sweep = _start_sweep(mlflow_server.uri, tmp_path, {"metric": "val_loss", "mode": "min"})
    outline = SpaceOutline(metric="val_loss", mode="min")
    _log_trials(sweep, [((16, 32, 64), 0.05, 3, "completed", 0.6)], first=1, outline=outline)  # val loss 1.1
    _log_trials(sweep, [((8, 16, 32), 0.02, 3, "completed", 0.5)], first=0, outline=outline)  # 1.1, later
    _log_trials(sweep, [((32, 64, 128), 0.1, 1, "completed", 0.9)], first=2, outline=outline)  # 1.7
    sweep.end()
    client = MlflowClient(sweep.uri)
    tagged = {run.data.tags["tuner.trial_id"]: run.data.tags.get(TAG_BEST)
              for run in client.search_runs([sweep.experiment_id], f"tags.mlflow.parentRunId = '{sweep.run_id}'")}
    assert tagged["t_1"] == "true" and tagged["t_0"] != "true"  # the driver's pick, as the report should read it
    out = tmp_path / "report"
    _report(sweep, out)
    printed = capsys.readouterr().out
    assert "best: t001 " in printed and "val loss 1.1000" in printed
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    assert bool(trials.loc["t_1", "tagged_best"]) and not trials.loc[["t_0", "t_2"], "tagged_best"].any()
    # the same trial by the helper, whatever the row order
    epochs = pd.read_parquet(out / "epochs.parquet")
    shuffled = trials.reset_index().iloc[::-1]
    assert report.best_trial(shuffled, epochs, "val_loss", "min") == ("t_1", pytest.approx(1.1))
    assert report.best_trial(shuffled, epochs, "val_acc", "max") == ("t_2", pytest.approx(0.9))
