"""The sweep's state under --storage (tuner/sweep_state.py) and the driver's input checks, without Ray."""
from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import optuna
import pytest
import torch

from tests.conftest import free_port
from tuner.errors import UserError
from tuner.sweep_state import (
    BUDGET_LEDGER,
    DIGESTS,
    FINAL_RECORD,
    REGISTRATION,
    STAND_IN_NOTE,
    STUDY_FILE,
    SweepState,
    close_states,
    join,
    open_state,
    resolve_storage,
    resuming,
)


class Planted:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path(self.marker).write_text, ("ran",))


def ray_folder(tmp_path: Path, name: str = "s") -> Path:
    """Ray's experiment folder of a sweep with one trial, and the digests its driver recorded."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    trial = json.dumps({"trial_id": "abc"})
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": [[trial, "{}"]]}))
    (folder / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps({}))
    SweepState(str(tmp_path), name).record_digests(folder)
    return folder


@pytest.mark.parametrize(("base", "joined"), [
    ("/runs/sweeps", "/runs/sweeps/s/t_1/f.pkl"),
    ("s3://bucket", "s3://bucket/s/t_1/f.pkl"),
    ("s3://bucket/sweeps/?region=x", "s3://bucket/sweeps/s/t_1/f.pkl?region=x"),
    ("s3://bucket/sweeps?endpoint_override=127.0.0.1%3A9000&scheme=http",
     "s3://bucket/sweeps/s/t_1/f.pkl?endpoint_override=127.0.0.1%3A9000&scheme=http"),
])
def test_paths_under_storage_keep_the_uri_query_at_the_end(base: str, joined: str) -> None:
    assert join(base, "s", "t_1/", "f.pkl") == joined


def test_state_files_are_written_whole_and_read_back(tmp_path: Path) -> None:
    state = SweepState(str(tmp_path), "s")
    state.write_json(BUDGET_LEDGER, {"epochs": {"a": 1}})
    assert state.read_json(BUDGET_LEDGER) == {"epochs": {"a": 1}}
    assert sorted(p.name for p in (tmp_path / "_driver" / "s").iterdir()) == [BUDGET_LEDGER]  # no .partial left
    assert state.read_json("missing.json") is None


def test_a_state_object_pickles_as_the_sweep_it_names(tmp_path: Path) -> None:
    """What Ray unpickles in a resumed driver is that process's working copy, not the dead driver's path."""
    state = open_state(str(tmp_path), "s")
    assert pickle.loads(pickle.dumps(state)) is state


def test_the_study_goes_up_and_comes_back_down(tmp_path: Path) -> None:
    state = SweepState(str(tmp_path), "s")
    study = optuna.create_study(study_name="s", storage=state.study_url)
    study.enqueue_trial({"x": 1.0})
    state.upload_study()
    other = SweepState(str(tmp_path), "s")  # another machine: another working copy
    assert other.download_study()
    assert len(optuna.load_study(study_name="s", storage=other.study_url).trials) == 1


def test_storage_that_fails_during_the_sweep_delays_the_study_and_the_ledger_but_stops_nothing(
        tmp_path: Path, capsys) -> None:
    """Storage failing a write (here `_driver/s` turned into a file: a real OSError from the real filesystem) is
    said once; the study and the ledger are stored at their next write once it works again."""
    import shutil

    from tuner.bookkeeping import BudgetStopper

    state = SweepState(str(tmp_path), "s")
    study = optuna.create_study(study_name="s", storage=state.study_url)
    study.enqueue_trial({"x": 1.0})
    state.upload_study()
    budget = BudgetStopper(epochs=100, ledger=state)
    folder = Path(state.prefix)
    shutil.rmtree(folder)
    folder.write_text("storage away")
    study.enqueue_trial({"x": 2.0})
    state.upload_study()
    budget.record("t1", {"epoch": 1, "gpu_seconds": 1.0})
    budget.record("t1", {"epoch": 2, "gpu_seconds": 2.0})
    out = capsys.readouterr().out
    assert out.count("warning: could not store") == 1 and "the Optuna study" in out and "goes on" in out
    folder.unlink()
    state.upload_study()  # the study has not changed since the failed upload: stored now all the same
    assert "works again after" in capsys.readouterr().out
    other = SweepState(str(tmp_path), "s")
    assert other.download_study()
    assert len(optuna.load_study(study_name="s", storage=other.study_url).trials) == 2
    budget.record("t1", {"epoch": 3, "gpu_seconds": 3.0})
    assert state.read_json(BUDGET_LEDGER)["epochs"] == {"t1": 3}


@pytest.mark.parametrize("content", [b"", b"SQLite format 3\x00garbage" * 10, b"not a database at all" * 100])
def test_a_corrupt_study_is_one_line(tmp_path: Path, content: bytes) -> None:
    state = SweepState(str(tmp_path), "s")
    state.write_bytes(STUDY_FILE, content)
    with pytest.raises(UserError, match="optuna.db") as err:
        SweepState(str(tmp_path), "s").download_study()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"SQLite", b"GIF89a, an image" * 4])
def test_a_study_and_a_tracking_store_that_are_not_sqlite_are_one_line_each_in_their_words(tmp_path: Path,
                                                                                             content: bytes) -> None:
    """Both read the same header; a study must be a database, while an empty tracking store file is one
    MLflow has yet to fill (its readers refuse it elsewhere, in their own words)."""
    from tuner.sweep_state import check_sqlite
    from tuner.tracking_checks import check_sqlite_file

    path = tmp_path / "file.db"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"the Optuna study {path} is ") as err:
        check_sqlite(path, str(path))
    assert "\n" not in str(err.value) and ("empty (0 bytes)" in str(err.value)) == (not content)
    if not content:
        check_sqlite_file(f"sqlite:///{path}")
        return
    with pytest.raises(UserError, match=f"tracking store {path} is not an SQLite database") as err:
        check_sqlite_file(f"sqlite:///{path}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"gpu_seconds": {}, "epochs": {"a": "x"}, "wall_seconds": 0}',
                                     '{"gpu_seconds": {}, "epochs": {}, "wall_seconds": true, "spent": null}'])
def test_a_corrupt_budget_ledger_is_one_line(tmp_path: Path, content: str) -> None:
    from tuner.bookkeeping import read_ledger

    state = SweepState(str(tmp_path), "s")
    state.write_bytes(BUDGET_LEDGER, content.encode())
    with pytest.raises(UserError, match="budget.json") as err:
        read_ledger(state)
    assert "\n" not in str(err.value)


def test_storage_naming_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        resolve_storage(str(tmp_path / "f"))
    with pytest.raises(UserError, match="'nosuchscheme://' is not a storage a sweep can be resumed from"):
        resolve_storage("nosuchscheme://bucket/x")


@pytest.mark.parametrize(("flag", "words"), [
    ("", "--storage is empty"), ("  ", "--storage is empty"),
    ("mock://x", "'mock://' is not a storage a sweep can be resumed from"),  # pyarrow's memory filesystem
])
def test_storage_that_cannot_hold_a_sweep_is_refused(flag: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        resolve_storage(flag)


@pytest.mark.parametrize("credentials", ["none", "a missing file"])
def test_gcs_storage_this_machine_cannot_reach_is_one_line_within_the_retry_limit(
        monkeypatch, tmp_path, credentials: str) -> None:
    """No credentials here: pyarrow's default policy retries for 15 minutes before it says so; a credentials
    file that is not there is a permanent error of another type (ArrowException, not OSError)."""
    from tuner import sweep_state

    monkeypatch.setattr(sweep_state, "GCS_RETRY_S", 1.0)
    if credentials == "none":
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    else:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^--storage 'gs://no-bucket-of-tuner/x' cannot be opened \("):
        resolve_storage("gs://no-bucket-of-tuner/x")
    assert time.monotonic() - started < 60


def test_resume_verifies_ray_state_files_against_the_recorded_digests(tmp_path: Path) -> None:
    ray_folder(tmp_path)
    state = SweepState(str(tmp_path), "s")
    state.verify_ray_state()
    assert state.expected_trials == {"abc"}
    assert state.restored_checkpoints == {} and state.stand_in_for_deleted_checkpoints() == []


def test_the_checkpoints_ray_restores_from_are_read_from_its_snapshot_and_a_deleted_one_is_stood_in_for(
        tmp_path: Path) -> None:
    """What the snapshot names for each unfinished trial (its last result's checkpoint_dir_name); a finished trial
    is not restored, so not listed. The end to end case (Ray restoring from the stand-in) is in test_sweep.py."""
    folder = tmp_path / "s"
    folder.mkdir()

    def trial(trial_id: str, status: str, checkpoint: object) -> list[str]:
        return [json.dumps({"trial_id": trial_id, "status": status}),
                json.dumps({"last_result": {"epoch": 2, "checkpoint_dir_name": checkpoint}})]

    trials = [trial("run1", "RUNNING", "checkpoint_000001"), trial("err1", "ERROR", "checkpoint_000004"),
              trial("pend1", "PENDING", "checkpoint_000000"), trial("done1", "TERMINATED", "checkpoint_000002"),
              trial("odd1", "RUNNING", "../../elsewhere"), trial("none1", "RUNNING", None)]
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trials}))
    SweepState(str(tmp_path), "s").record_digests(folder)
    for name in ("t001-run1/checkpoint_000002", "t002-err1/checkpoint_000004", "t004-done1"):
        (folder / name).mkdir(parents=True)
    state = SweepState(str(tmp_path), "s")
    state.verify_ray_state()
    assert state.restored_checkpoints == {"run1": "checkpoint_000001", "err1": "checkpoint_000004",
                                          "pend1": "checkpoint_000000"}
    # run1's was deleted (err1's is there; pend1 has no folder: it never started)
    assert state.stand_in_for_deleted_checkpoints() == ["t001-run1/checkpoint_000001"]
    assert [p.name for p in (folder / "t001-run1" / "checkpoint_000001").iterdir()] == [STAND_IN_NOTE]
    assert state.stand_in_for_deleted_checkpoints() == []


def test_a_planted_tuner_pkl_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    folder = ray_folder(tmp_path)
    marker = tmp_path / "ran"
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Planted(str(marker))))
    with pytest.raises(UserError, match="tuner.pkl was not written by this sweep's driver"):
        SweepState(str(tmp_path), "s").verify_ray_state()
    assert not marker.exists()


def test_a_state_file_nobody_recorded_is_refused(tmp_path: Path) -> None:
    folder = ray_folder(tmp_path)
    (folder / "searcher-state-2027-01-01_00-00-00.pkl").write_bytes(pickle.dumps({}))
    with pytest.raises(UserError, match="searcher-state-2027"):
        SweepState(str(tmp_path), "s").verify_ray_state()


def test_no_digests_no_resume(tmp_path: Path) -> None:
    ray_folder(tmp_path)
    (tmp_path / "_driver" / "s" / DIGESTS).unlink()
    with pytest.raises(UserError, match="digests.json is missing"):
        SweepState(str(tmp_path), "s").verify_ray_state()


def test_a_truncated_experiment_state_is_named_with_what_to_do(tmp_path: Path) -> None:
    folder = ray_folder(tmp_path)
    path = folder / "experiment_state-2026-01-01_00-00-00.json"
    path.write_text(path.read_text()[:20])
    SweepState(str(tmp_path), "s").record_digests(folder)  # written by the driver, then cut short
    with pytest.raises(UserError, match=r"experiment_state-2026-01-01_00-00-00.json is damaged .*Delete that file"):
        SweepState(str(tmp_path), "s").verify_ray_state()


def test_the_driver_stops_when_ray_restored_fewer_trials_than_its_state_lists(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tuner.bookkeeping import BudgetStopper, OutcomeRecorder, RestoreFailed

    state = SweepState(str(tmp_path), "s")
    state.expected_trials = {"a", "b"}
    recorder = OutcomeRecorder(None, None, BudgetStopper(ledger=state), "val_acc", 2, 2)  # type: ignore[arg-type]
    with pytest.raises(RestoreFailed, match="did not restore 1 of the 2 trials"):
        recorder.verify_restored([SimpleNamespace(trial_id="a")])  # type: ignore[list-item]
    recorder.verify_restored([SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")])  # type: ignore[list-item]


def test_an_unreadable_newest_checkpoint_falls_back_to_the_last_readable_one(tmp_path: Path, capsys) -> None:
    import pyarrow.fs
    from ray import tune

    from tuner.trainable import CHECKPOINT_FILE, readable_checkpoint

    for index, content in ((1, "good"), (2, "good"), (3, "bad")):
        folder = tmp_path / f"checkpoint_{index:06d}"
        folder.mkdir()
        if content == "good":
            torch.save({"model": {}, "config": {}, "epoch": index}, folder / CHECKPOINT_FILE)
        else:
            (folder / CHECKPOINT_FILE).write_bytes(b"\x00truncated")
    newest = tune.Checkpoint(str(tmp_path / "checkpoint_000003"), filesystem=pyarrow.fs.LocalFileSystem())
    assert readable_checkpoint(newest)["epoch"] == 2
    out = capsys.readouterr().out
    assert "checkpoint_000003" in out and "unreadable" in out and "older checkpoint" in out
    for folder in tmp_path.iterdir():
        (folder / CHECKPOINT_FILE).write_bytes(b"junk")
    assert readable_checkpoint(newest) is None
    assert "starts again from epoch 0" in capsys.readouterr().out


@pytest.mark.parametrize("uri", ["foo://bar", "http://", "https://:5000", "http://host:port", "s3://bucket/mlruns"])
def test_a_tracking_uri_mlflow_cannot_use_is_one_line(uri: str) -> None:
    from tuner.tracking_checks import check_tracking_server

    with pytest.raises(UserError) as err:
        check_tracking_server(uri)
    assert "\n" not in str(err.value) and "--mlflow-uri" in str(err.value)


@pytest.mark.parametrize("address", ["garbage", "host:", ":6379", "host:99999", "a b:1", "h:6379/x", "ray://h"])
def test_a_garbage_address_is_one_line(address: str) -> None:
    from tuner.ray_cluster import parse_address

    with pytest.raises(UserError, match="is not a Ray address"):
        parse_address(address)


def test_ray_address_is_the_default_address_and_a_dashboard_url_there_is_one_line(monkeypatch, capsys) -> None:
    """A driver that `ray job submit` (or a RayJob) runs learns its cluster only from RAY_ADDRESS; a user who
    exported the dashboard's URL for `ray job submit` is told so, and how to run locally instead."""
    from tuner.ray_cluster import parse_address
    from tuner.run import main, parse_args

    monkeypatch.setenv("RAY_ADDRESS", " 10.0.0.5:6379 ")
    args = parse_args(["--space", "smoke"])
    assert (args.address, args.address_named) == ("10.0.0.5:6379", "RAY_ADDRESS")
    args = parse_args(["--space", "smoke", "--address", "auto"])
    assert (args.address, args.address_named) == ("auto", "--address")
    monkeypatch.setenv("RAY_ADDRESS", "  ")
    assert parse_args(["--space", "smoke"]).address is None  # blank: a local Ray
    for named in ("--address", "RAY_ADDRESS"):
        with pytest.raises(UserError, match=rf"^{named} 'http://127.0.0.1:8265' is a dashboard address .*auto"):
            parse_address("http://127.0.0.1:8265", named)
    monkeypatch.setenv("RAY_ADDRESS", "HTTP://127.0.0.1:8265")
    with pytest.raises(SystemExit) as exit_:
        main(["--space", "smoke", "--dry-run"])
    assert exit_.value.code == 2
    assert "RAY_ADDRESS 'HTTP://127.0.0.1:8265' is a dashboard address" in capsys.readouterr().err


def test_a_cluster_is_taken_to_grow_only_when_its_autoscaler_has_node_types_or_launches() -> None:
    """`ray status`'s report (v1): a head of `ray start` nodes (as test_sweep's, which refuses a GPU trial at
    once) names its node types after the nodes; a `ray up` cluster after its config. Only the shape of the
    report is checked here: no autoscaler that launches nodes runs on this machine."""
    from tuner.ray_cluster import autoscaler_adds_nodes

    fixed = {"autoscaler_report": {"active_nodes": {"node_e1e8": 1}, "pending_nodes": [], "pending_launches": {},
                                   "node_type_mapping": {"e1e8": "node_e1e8", "9f0a": "node_9f0a"}}}
    assert not autoscaler_adds_nodes(fixed)
    configured = {"autoscaler_report": {**fixed["autoscaler_report"], "node_type_mapping": {"e1e8": "head"}}}
    assert autoscaler_adds_nodes(configured)
    launching = {"autoscaler_report": {**fixed["autoscaler_report"], "pending_launches": {"gpu_worker": 1}}}
    assert autoscaler_adds_nodes(launching)
    for odd in ({}, {"autoscaler_report": None}, {"autoscaler_report": {"node_type_mapping": []}}, []):
        assert not autoscaler_adds_nodes(odd)


def test_a_local_storage_on_a_cluster_of_several_machines_is_warned_of() -> None:
    from tuner.ray_cluster import local_storage_warning

    assert local_storage_warning("/home/u/runs", 1, False) is None  # one machine: local is fine
    assert local_storage_warning("s3://bucket/runs", 3, True) is None
    assert "3 machines" in local_storage_warning("/home/u/runs", 3, False)
    assert "machines its autoscaler adds" in local_storage_warning("/home/u/runs", 1, True)
    assert "s3://bucket/prefix" in local_storage_warning("/home/u/runs", 2, False)


def test_a_dead_address_gives_up_by_the_deadline() -> None:
    from tuner.ray_cluster import probe_address

    started = time.monotonic()
    with pytest.raises(UserError, match="cannot reach the Ray cluster"):
        probe_address(f"127.0.0.1:{free_port()}", time.monotonic() + 2)
    assert time.monotonic() - started < 5


def test_a_bad_tracking_uri_fails_before_anything_is_written(tmp_path: Path, capsys) -> None:
    from tuner.run import main

    (tmp_path / "space.yaml").write_text("name: t\nparameters:\n  lr: {type: float, low: 0.01, high: 0.1}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--space", str(tmp_path / "space.yaml"), "--storage", str(tmp_path / "runs"), "--mlflow-uri", "foo://bar"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("error:") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


def test_resume_of_an_unknown_sweep_lists_the_known_ones(tmp_path: Path) -> None:
    from tuner.run import main

    SweepState(str(tmp_path), "known").write_bytes("space.yaml", b"name: x\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--resume", "other", "--storage", str(tmp_path), "--dry-run"])
    assert exit_.value.code == 2


def test_a_restarted_trial_continues_from_its_newest_stored_checkpoint_not_an_older_one_ray_restored(
        tmp_path: Path, capsys) -> None:
    """A driver killed between two of Ray's snapshots: Ray restores the trial at checkpoint_000000, but the
    worker had stored checkpoint_000002 itself. The trial continues from that one (and without any checkpoint
    Ray knows of, too); other trials' folders and a trial with no folder are left alone."""
    import pyarrow.fs
    from ray import tune

    from tuner.trainable import newest_checkpoint

    experiment = tmp_path / "sweep"
    for trial, epochs in (("abc", 3), ("xyz", 5)):
        for index in range(epochs):
            (experiment / f"t001-{trial}" / f"checkpoint_{index:06d}").mkdir(parents=True)
    local = pyarrow.fs.LocalFileSystem()
    restored = tune.Checkpoint(str(experiment / "t001-abc" / "checkpoint_000000"), filesystem=local)
    assert newest_checkpoint(restored, str(experiment), "abc").path.endswith("t001-abc/checkpoint_000002")
    assert "newer than the checkpoint Ray restored (checkpoint_000000)" in capsys.readouterr().out
    assert newest_checkpoint(None, str(experiment), "abc").path.endswith("t001-abc/checkpoint_000002")
    current = tune.Checkpoint(str(experiment / "t001-abc" / "checkpoint_000002"), filesystem=local)
    assert newest_checkpoint(current, str(experiment), "abc") is current
    assert newest_checkpoint(None, str(experiment), "new") is None
    assert newest_checkpoint(restored, "", "abc") is restored  # no storage known: Ray's choice


def test_a_resumed_sweep_keeps_the_trial_budget_its_first_driver_was_given(tmp_path: Path) -> None:
    """--trials is stored beside the space copy (SPACE_OVERRIDES): a --resume runs the budget the sweep started
    with, not the file's; a damaged record is one line naming it."""
    from tuner.run import stored_space
    from tuner.space import SPACES_DIR
    from tuner.sweep_state import SPACE_OVERRIDES

    state = SweepState(str(tmp_path), "s")
    copy = (SPACES_DIR / "smoke.yaml").read_bytes()
    assert stored_space(state, copy).budget.trials == 6  # the file's budget
    state.write_bytes(SPACE_OVERRIDES, json.dumps({"trials": 2}).encode())
    assert stored_space(state, copy).budget.trials == 2
    state.write_bytes(SPACE_OVERRIDES, b"{not json")
    with pytest.raises(UserError, match=f"{SPACE_OVERRIDES} is damaged"):
        stored_space(state, copy)


def test_a_damaged_stored_space_copy_is_named_where_it_is_stored(tmp_path: Path) -> None:
    from tuner.run import stored_space

    state = SweepState(str(tmp_path), "s")
    with pytest.raises(UserError) as refused:
        stored_space(state, b"parameters:\n  lr: {type: float, low: 0.1\n")
    assert str(tmp_path / "_driver" / "s" / "space.yaml") in str(refused.value)
    assert str(state.workdir) not in str(refused.value) and "stored copy" in str(refused.value)


def test_warm_start_from_a_sweep_of_another_metric_is_refused_before_anything_is_written(tmp_path: Path,
                                                                                        capsys) -> None:
    from tuner.run import main
    from tuner.space import SPACES_DIR

    earlier = SweepState(str(tmp_path / "runs"), "acc")
    earlier.write_bytes("space.yaml", (SPACES_DIR / "smoke.yaml").read_bytes())
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'runs' / '_driver' / 'acc' / 'optuna.db'}", study_name="acc")
    loss = tmp_path / "loss.yaml"
    loss.write_text((SPACES_DIR / "smoke.yaml").read_text().replace("metric: val_acc", "metric: val_loss")
                    .replace("mode: max", "mode: min"))
    with pytest.raises(SystemExit) as exit_:
        main(["--space", str(loss), "--warm-start", "acc", "--storage", str(tmp_path / "runs"), "--dry-run"])
    assert exit_.value.code == 2
    assert "that sweep optimised val_acc (max), this space optimises val_loss (min)" in capsys.readouterr().err


def test_a_default_sweep_name_fits_the_names_resume_accepts() -> None:
    from tuner.run import check_sweep_name, default_sweep_name

    name = default_sweep_name("a" * 64)
    assert len(name) <= 64 and check_sweep_name("--resume", name) == name


def test_warm_start_from_a_damaged_study_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    from tuner.run import main
    from tuner.space import SPACES_DIR

    earlier = SweepState(str(tmp_path / "runs"), "acc")
    earlier.write_bytes("space.yaml", (SPACES_DIR / "smoke.yaml").read_bytes())
    earlier.write_bytes("optuna.db", b"SQLite format 3\x00" + bytes(range(256)) * 8)
    with pytest.raises(SystemExit) as exit_:
        main(["--space", "smoke", "--warm-start", "acc", "--storage", str(tmp_path / "runs"), "--dry-run"])
    assert exit_.value.code == 2
    assert "the Optuna study" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs" / "_driver").iterdir()) == ["acc"]


def test_a_resumed_driver_reads_which_trials_an_earlier_driver_ended(tmp_path: Path) -> None:
    """ended.json: what a resumed driver hands to the trials Ray restarts, so that they end at once; an entry
    without its epoch, or a damaged file, is nothing ended (the trial runs as Ray restored it)."""
    from tuner.sweep_state import ENDED_TRIALS, ended_results

    state = SweepState(str(tmp_path), "s")
    assert ended_results(state) == {}  # no file yet
    state.write_json(ENDED_TRIALS, {"a": {"epoch": 2, "val_acc": 0.4, "gpu_seconds": 0.0}, "b": {"val_acc": 1}})
    assert ended_results(state) == {"a": {"epoch": 2, "val_acc": 0.4, "gpu_seconds": 0.0}}
    state.write_bytes(ENDED_TRIALS, b"{torn")
    assert ended_results(state) == {}


# A state file that is JSON of another shape than a driver writes: one line naming it, whichever reader finds it
WRONG_SHAPES = [
    (DIGESTS, '{"sha256": 5}'), (DIGESTS, '{"sha256": {"tuner.pkl": 5}}'), (DIGESTS, '{"sha256": {"tuner.pkl": [5]}}'),
    (DIGESTS, "[]"), (REGISTRATION, '{"trial_id": 5}'),
    (REGISTRATION, '{"trial_id": "a", "checkpoint": "c", "version": "1", "checkpoint_kind": ["x"]}'),
    (FINAL_RECORD, '{"trial_id": "a"}'),
    (FINAL_RECORD, '{"trial_id": "a", "run_id": "r", "epochs": 2, "train_images": 9, "train_on": "all", '
                   '"seconds": 1.0, "history": [{"epoch": "one"}]}'),
]


@pytest.mark.parametrize(("file", "content"), WRONG_SHAPES, ids=[f"{f}={c}" for f, c in WRONG_SHAPES])
def test_a_state_file_of_the_wrong_shape_is_one_line_before_resuming(tmp_path: Path, file: str,
                                                                    content: str) -> None:
    ray_folder(tmp_path)
    state = SweepState(str(tmp_path), "s")
    state.write_bytes(file, content.encode())
    for read in (lambda: state.read_json(file), state.verify_ray_state):  # any reader, and the resume's check
        with pytest.raises(UserError) as err:
            read()
        message = str(err.value)
        assert "\n" not in message and f"{state.describe(file)} is damaged" in message, message
        assert "restore it from a backup" in message


def test_state_files_as_a_driver_writes_them_pass_their_shape_check(tmp_path: Path) -> None:
    ray_folder(tmp_path)
    state = SweepState(str(tmp_path), "s")
    state.write_json(REGISTRATION, {"trial_id": "a", "checkpoint": "/c", "model": "m", "version": "3",
                                    "checkpoint_kind": "final_fit", "final_run_id": "r"})
    state.write_json(FINAL_RECORD, {"trial_id": "a", "search_checkpoint": "/c", "epochs": 2, "train_on": "all",
                                    "label": "t001", "run_id": "r", "status": "completed", "train_images": 9,
                                    "seconds": 1.5, "train_seconds": 1.0, "device": "cpu", "node_id": "n",
                                    "history": [{"epoch": 1, "train_loss": 2.0, "val_acc": float("nan"),
                                                 "reported_at": 1.0}]})
    state.verify_ray_state()
    assert state.read_json(FINAL_RECORD)["epochs"] == 2


def test_a_resumed_sweep_whose_folder_moved_is_one_line_and_a_link_at_the_old_place_resumes(tmp_path: Path) -> None:
    """Ray's snapshot unpickles the sweep's state with the storage it ran under (and its trials' too): a moved
    folder would be read and written where it was. Refused in one line; through a link at the old place, the
    driver's state is the one unpickled."""
    moved = tmp_path / "new"
    moved.mkdir()
    state = open_state(str(moved), "s")
    resuming(state)
    try:
        ran_under = SweepState(str(tmp_path / "old"), "s")
        with pytest.raises(UserError, match=r"^sweep s ran under '.*old'.*put the folder back there, or make"):
            pickle.loads(pickle.dumps(ran_under))  # what Tuner.restore does with the bookkeeping
        (tmp_path / "old").symlink_to(moved)
        assert pickle.loads(pickle.dumps(ran_under)) is state
        assert open_state(str(tmp_path / "other"), "t") is not state  # another sweep (a warm start's) is its own
    finally:
        close_states()


def test_a_launch_that_failed_before_ray_recorded_it_runs_again_under_its_name(tmp_path: Path, capsys) -> None:
    """The space copy is written once the Tuner exists; a fit that fails at once (Tune failing as it starts) leaves
    no snapshot of Ray's. Such a name is free for the same command again, and --resume says so; with a
    snapshot, the name is taken."""
    from tuner.run import main
    from tuner.space import SPACES_DIR

    state = SweepState(str(tmp_path), "s")
    state.write_bytes("space.yaml", (SPACES_DIR / "smoke.yaml").read_bytes())
    argv = ["--space", "smoke", "--name", "s", "--storage", str(tmp_path), "--dry-run",
            "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    main(argv)  # the dry run of the same command: accepted
    with pytest.raises(SystemExit) as exit_:
        main(["--resume", "s", "--storage", str(tmp_path), "--dry-run"])
    assert exit_.value.code == 2
    assert "sweep s never started" in capsys.readouterr().err
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "experiment_state-2026-12-07_00-00-00.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "sweep 's' already exists" in capsys.readouterr().err
