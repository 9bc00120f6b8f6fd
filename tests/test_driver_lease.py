"""One driver per sweep (tuner/driver_lease.py): the lease a driver claims under --storage, without Ray."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuner import driver_lease
from tuner.driver_lease import LEASE_FILE, DriverLease
from tuner.errors import UserError
from tuner.sweep_state import SweepState


@pytest.fixture
def state(tmp_path: Path) -> SweepState:
    return SweepState(str(tmp_path), "s")


def test_a_claimed_lease_is_renewed_and_released(state: SweepState, monkeypatch) -> None:
    monkeypatch.setattr(driver_lease, "BEAT_S", 0.05)
    lease = DriverLease(state, "s").claim()
    first = state.read_json(LEASE_FILE)
    assert first["token"] == lease.record["token"] and not first["released"]
    time.sleep(0.5)
    assert state.read_json(LEASE_FILE)["beat"] > first["beat"], "the running driver renews its lease"
    with pytest.raises(UserError):  # held by this very process: alive
        DriverLease(state, "s").claim()
    lease.release()
    assert state.read_json(LEASE_FILE)["released"]
    DriverLease(state, "s").claim().release()  # a released lease is free at once


def test_a_live_driver_on_this_host_is_named_and_not_displaced(state: SweepState) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = driver_lease._process_started(other.pid)
        record = {"token": "theirs", "host": driver_lease.socket.gethostname(), "pid": other.pid,
                  "pid_started": started, "since": time.time() - 600, "beat": time.time() - 5, "released": False}
        state.write_json(LEASE_FILE, record)
        with pytest.raises(UserError) as refused:
            DriverLease(state, "s").claim()
        assert str(refused.value).startswith(f"sweep s is being driven now by pid {other.pid} on host ")
        assert f"kill {other.pid}" in str(refused.value) and "\n" not in str(refused.value)
        assert state.read_json(LEASE_FILE)["token"] == "theirs"
        # the same pid number, but another process than the one that claimed: not that driver
        state.write_json(LEASE_FILE, {**record, "pid_started": started - 3600})
        DriverLease(state, "s").claim().release()
    finally:
        other.kill()
        other.wait()


def test_a_killed_driver_on_this_host_is_taken_over_at_once(state: SweepState) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state.write_json(LEASE_FILE, {"token": "dead", "host": driver_lease.socket.gethostname(), "pid": gone.pid,
                                  "pid_started": time.time() - 60, "since": time.time() - 60, "beat": time.time(),
                                  "released": False})
    lease = DriverLease(state, "s").claim()
    assert state.read_json(LEASE_FILE)["token"] == lease.record["token"]
    lease.release()


def test_a_driver_on_another_host_holds_until_its_lease_goes_stale(state: SweepState) -> None:
    record = {"token": "remote", "host": "gpu-head-7", "pid": 4242, "pid_started": 0.0, "since": time.time() - 60,
              "beat": time.time() - 10, "released": False}
    state.write_json(LEASE_FILE, record)
    with pytest.raises(UserError) as refused:
        DriverLease(state, "s").claim()
    assert "pid 4242 on host gpu-head-7" in str(refused.value)
    assert f"resume again in {round(driver_lease.STALE_S - 10)} s" in str(refused.value)
    state.write_json(LEASE_FILE, {**record, "beat": time.time() - driver_lease.STALE_S - 1})
    DriverLease(state, "s").claim().release()


def test_of_two_drivers_claiming_at_once_one_is_refused(state: SweepState, monkeypatch) -> None:
    """Both found the lease free; the one whose write is not the last to land sees the other's token."""
    rival = DriverLease(state, "s")
    monkeypatch.setattr(driver_lease.time, "sleep", lambda _s: rival._write())  # lands while `first` confirms
    first = DriverLease(state, "s")
    with pytest.raises(UserError) as refused:
        first.claim()
    assert "is being driven now by" in str(refused.value)
    assert state.read_json(LEASE_FILE)["token"] == rival.record["token"]


def test_the_dry_run_of_a_resume_says_whether_a_driver_holds_the_sweep(tmp_path: Path, monkeypatch, capsys) -> None:
    import optuna

    from tuner.run import main
    from tuner.space import SPACES_DIR
    from tuner.sweep_state import SPACE_COPY, STUDY_FILE

    monkeypatch.chdir(tmp_path)
    state = SweepState(str(tmp_path / "runs"), "s")
    state.write_bytes(SPACE_COPY, (SPACES_DIR / "smoke.yaml").read_bytes())
    # what the dry run of a --resume checks besides the lease: a study, and Ray's state that this sweep wrote
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'runs' / '_driver' / 's' / STUDY_FILE}", study_name="s")
    (tmp_path / "runs" / "s").mkdir()
    (tmp_path / "runs" / "s" / "experiment_state-2026-12-06_12-00-00.json").write_text('{"trial_data": []}')
    state.record_ray_file("experiment_state-2026-12-06_12-00-00.json")
    main(["--resume", "s", "--storage", str(tmp_path / "runs"), "--dry-run"])
    assert "driver: none holds this sweep now; a --resume takes it over" in capsys.readouterr().out
    lease = DriverLease(state, "s").claim()
    try:
        main(["--resume", "s", "--storage", str(tmp_path / "runs"), "--dry-run"])
        out = capsys.readouterr().out
        assert f"driver: sweep s is being driven now by pid {lease.record['pid']} on host " in out
        assert "dry run: no trial started" in out
    finally:
        lease.release()


DAMAGED_LEASES = ["{not json", "[]", '{"beat": "x"}', '{"pid": "abc", "host": "HOST", "beat": 1.0}',
                  '{"token": "t", "host": "h", "pid": 1, "pid_started": 0, "since": 0, "beat": 1e308, '
                  '"released": false}']


@pytest.mark.parametrize("content", DAMAGED_LEASES)
def test_a_damaged_lease_is_refused_while_a_driver_may_renew_it_and_taken_over_once_stale(
        state: SweepState, content: str) -> None:
    """A damaged lease names no driver to ask; a running one rewrites its lease every BEAT_S, so one not
    rewritten for STALE_S has none (the module doc)."""
    import os

    state.write_bytes(LEASE_FILE, content.replace("HOST", driver_lease.socket.gethostname()).encode())
    with pytest.raises(UserError) as refused:
        DriverLease(state, "s").claim()
    message = str(refused.value)
    assert "\n" not in message and f"{state.describe(LEASE_FILE)} is damaged" in message, message
    assert "delete the file and resume" in message
    assert driver_lease.running_driver(state, "s").startswith("driver: the driver lease ")  # the dry run says it
    old = time.time() - driver_lease.STALE_S - 1
    os.utime(state.where(LEASE_FILE), (old, old))
    assert driver_lease.running_driver(state, "s").startswith("driver: none holds this sweep")
    lease = DriverLease(state, "s").claim()
    assert state.read_json(LEASE_FILE)["token"] == lease.record["token"]
    lease.release()


def test_a_running_driver_rewrites_its_lease_when_it_was_damaged(state: SweepState, monkeypatch) -> None:
    monkeypatch.setattr(driver_lease, "BEAT_S", 0.05)
    lease = DriverLease(state, "s").claim()
    try:
        state.write_bytes(LEASE_FILE, b'{"pid": "abc"}')
        time.sleep(0.5)
        assert state.read_json(LEASE_FILE)["token"] == lease.record["token"]
    finally:
        lease.release()
