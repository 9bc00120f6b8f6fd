"""tuner.tracking against a real mlflow server (and the local sqlite default): run layout, resume,
early failure on a dead server, and no lost metric across a server outage."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tuner import outcomes, tracking
from tuner.errors import UserError
from tuner.model import count_macs, count_params
from tuner.tracking import SweepRun, TrialRun, check_tracking_server, trial_run_name
from tuner.train import TrainConfig

pytestmark = pytest.mark.integration

CONFIG = TrainConfig(widths=(8, 16, 32), blocks=(1, 1, 1), lr=0.05, epochs=4)


def epoch_metrics(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "val_loss": 2.1 / epoch, "val_acc": 0.1 * epoch, "lr": 0.05}


def start_sweep(uri: str, tmp_path: Path, name: str | None = None) -> SweepRun:
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  lr: {low: 0.01, high: 0.1, log: true}\n")
    return SweepRun.start(
        uri, name or f"sweep-{uuid.uuid4().hex[:8]}", space,
        {"num_samples": 4, "metric": "val_acc", "scheduler": {"type": "asha", "grace_period": 1}},
        {"tuner.git_commit": "abc123", "tuner.space_hash": "s1", "tuner.data_fingerprint": "d1",
         "tuner.ray_address": "local"},
    )


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_trial_runs_nest_under_their_sweep_with_config_as_params_and_epochs_as_steps(mlflow_server, tmp_path):
    sweep = start_sweep(mlflow_server.uri, tmp_path)
    trial = TrialRun(sweep.uri, sweep.run_id, "t_00007", trial_run_name(7, CONFIG), CONFIG, {"node": "n1"})
    for epoch in (1, 2, 3):
        trial.log_epoch(epoch_metrics(epoch), epoch)
    assert trial.finish("completed", {"tuner.gpu_seconds": "12.5"})
    sweep.end()

    client = MlflowClient(mlflow_server.uri)
    parent = client.get_run(sweep.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tuner.sweep"] == sweep.sweep_name
    assert parent.data.tags["tuner.git_commit"] == "abc123"
    assert parent.data.params["num_samples"] == "4"
    assert [a.path for a in client.list_artifacts(sweep.run_id, "space")] == ["space/space.yaml"]

    child = client.get_run(trial.run_id)
    assert child.info.run_name == "t007 w8-16-32 b1-1-1 lr0.05"
    assert child.data.tags["mlflow.parentRunId"] == sweep.run_id
    assert child.data.tags["tuner.trial_id"] == "t_00007"
    assert child.data.tags["tuner.outcome"] == "completed"
    assert child.data.tags["tuner.params"] == str(count_params(CONFIG))
    assert child.data.tags["tuner.macs"] == str(count_macs(CONFIG))
    assert child.data.tags["tuner.gpu_seconds"] == "12.5"
    assert child.data.params["widths"] == "8,16,32"
    assert TrainConfig.from_dict(child.data.params) == CONFIG
    assert not set(child.data.metrics) & set(CONFIG.field_names()) - {"lr"}
    assert "epoch" not in child.data.metrics
    assert steps(client, trial.run_id, "val_acc") == [1, 2, 3]
    assert child.info.status == "FINISHED"


def test_resumed_trial_and_sweep_reuse_their_runs(mlflow_server, tmp_path):
    sweep = start_sweep(mlflow_server.uri, tmp_path)
    first = TrialRun(sweep.uri, sweep.run_id, "t_1", "t001", CONFIG, {})
    first.log_epoch(epoch_metrics(1), 1)
    first.finish("errored")
    again = start_sweep(mlflow_server.uri, tmp_path, name=sweep.sweep_name)
    assert again.run_id == sweep.run_id and again.resumed
    second = TrialRun(again.uri, again.run_id, "t_1", "t001", CONFIG, {})
    second.log_epoch(epoch_metrics(2), 2)
    assert second.finish("completed")

    client = MlflowClient(mlflow_server.uri)
    assert second.run_id == first.run_id
    assert len(tracking.trial_runs(client, client.get_run(sweep.run_id))) == 1
    assert steps(client, second.run_id, "val_acc") == [1, 2]
    assert client.get_run(second.run_id).data.tags["tuner.outcome"] == "completed"


def test_outcome_of_a_trial_that_never_logged_creates_its_run(mlflow_server, tmp_path):
    sweep = start_sweep(mlflow_server.uri, tmp_path)
    infeasible = TrainConfig(widths=(512, 1024, 2048), blocks=(4, 4, 4))
    sweep.set_trial_outcome("t_9", "infeasible", {"tuner.reason": "too many params"},
                            run_name=trial_run_name(9, infeasible), config=infeasible)
    sweep.set_trial_outcome("t_3", outcomes.stopped(2))
    assert sweep.end()

    client = MlflowClient(mlflow_server.uri)
    runs = {r.data.tags["tuner.trial_id"]: r for r in tracking.trial_runs(client, client.get_run(sweep.run_id))}
    assert runs["t_9"].data.tags["tuner.outcome"] == "infeasible"
    assert runs["t_9"].data.tags["tuner.reason"] == "too many params"
    assert runs["t_9"].data.params["widths"] == "512,1024,2048"
    assert runs["t_9"].info.run_name.startswith("t009 w512-1024-2048")
    assert runs["t_3"].data.tags["tuner.outcome"] == "stopped_by_asha_at_epoch_2"


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
    uri = tracking.resolve_tracking_uri(None)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.resolve_tracking_uri("http://h:5000/") == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking.resolve_tracking_uri(None) == "http://tracking:5000"
    assert tracking.resolve_tracking_uri("http://flag:1") == "http://flag:1"
    assert tracking.ui_command("http://tracking:5000") == "open http://tracking:5000"
    assert tracking.ui_command(uri).startswith(f"mlflow ui --backend-store-uri {uri}")

    sweep = start_sweep(uri, tmp_path)
    trial = TrialRun(uri, sweep.run_id, "t_0", "t000", CONFIG, {})
    trial.log_epoch(epoch_metrics(1), 1)
    assert trial.finish("completed")
    assert sweep.end()
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / "mlartifacts" / "tuner").is_dir()  # the space file, not ./mlruns
    assert not (tmp_path / "mlruns").exists()
    assert steps(MlflowClient(uri), trial.run_id, "val_acc") == [1]


def test_server_outage_mid_sweep_loses_no_epoch_metric(mlflow_server, tmp_path):
    """The server goes away for a few seconds (stop + restart on the same port and store) while two
    trials log. The design does not depend on the length (30 s works the same: more retries)."""
    sweep = start_sweep(mlflow_server.uri, tmp_path)
    steady = TrialRun(sweep.uri, sweep.run_id, "t_a", "t000", CONFIG, {})
    # a trial whose worker is stopped by Ray during the outage, before it can deliver: only the driver
    # saw its results (record_epoch), and the sweep's end fills them in
    stopped = TrialRun(sweep.uri, sweep.run_id, "t_b", "t001", CONFIG, {})
    for trial in (steady, stopped):
        trial.log_epoch(epoch_metrics(1), 1)
        sweep.record_epoch(trial.trial_id, epoch_metrics(1), 1)

    mlflow_server.stop()
    try:
        outage_started = time.monotonic()
        for epoch in (2, 3, 4):
            for trial in (steady, stopped):
                started = time.monotonic()
                trial.log_epoch(epoch_metrics(epoch), epoch)
                assert time.monotonic() - started < 2
                sweep.record_epoch(trial.trial_id, epoch_metrics(epoch), epoch)
            time.sleep(1)
        started = time.monotonic()
        sweep.set_trial_outcome("t_b", outcomes.stopped(4))
        sweep.log_metrics({"best_val_acc": 0.4}, step=4)
        assert time.monotonic() - started < 2
        assert not steady.flush(timeout_s=1)
        assert steady.pending == 3 * 4  # epochs 2..4, four metrics each: kept, not dropped
    finally:
        mlflow_server.start()
    outage_s = time.monotonic() - outage_started
    assert steady.finish("completed", timeout_s=60)
    del stopped  # never finished
    assert sweep.end(timeout_s=60)

    client = MlflowClient(mlflow_server.uri)
    for run in tracking.trial_runs(client, client.get_run(sweep.run_id)):
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            assert steps(client, run.info.run_id, key) == [1, 2, 3, 4], (run.info.run_name, key)
    outcome_tags = {r.data.tags["tuner.trial_id"]: r.data.tags["tuner.outcome"]
                for r in tracking.trial_runs(client, client.get_run(sweep.run_id))}
    assert outcome_tags == {"t_a": "completed", "t_b": "stopped_by_asha_at_epoch_4"}
    assert steps(client, sweep.run_id, "best_val_acc") == [4]
    assert outage_s > 3
