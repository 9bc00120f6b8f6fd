"""One driver per sweep: a lease under `--storage` (`_driver/<sweep>/driver.json`) that a driver claims before it
writes anything and renews while it runs.

Two drivers of one sweep (a `--resume` typed while the first still runs, here or on another machine) would both
launch trials and both write the study and MLflow: trials run twice, outcomes and the budget counted twice. The
second is refused, in one line that names the first. A driver that died (SIGKILL, a lost machine) leaves its
lease behind: on the same host it is taken over at once when its process is gone; from another host once its
heartbeat is STALE_S old (the hosts' clocks are assumed to agree within a minute).

A damaged lease (not JSON, or not the record a driver writes: `{"pid": "abc"}`) names no driver, so none can be
asked whether it runs. Its file's age stands in for the heartbeat: a running driver rewrites the lease whole
every BEAT_S (a damaged one too, see `_renew`), so a damaged lease older than STALE_S has no live driver and
is taken over, as a stale one is; a younger one is refused in one line that names the file and what to do.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

import psutil

from tuner.config import is_int, is_number
from tuner.errors import UserError
from tuner.sweep_state import Shape, SweepState

LEASE_FILE = "driver.json"
BEAT_S = 15.0  # how often a running driver renews its lease
STALE_S = 120.0  # a lease not renewed for this long belongs to a dead driver (eight missed renewals)
CONFIRM_S = 0.3  # two drivers that claim at once both write; the one whose lease is still there after this wins


def _is_time(value: object) -> bool:
    # a Unix time: an infinite heartbeat would hold the sweep forever, a huge one breaks time.localtime
    return is_number(value) and 0 <= value < 1e11  # type: ignore[operator]  # is_number: int or float


def _lease_fits(value: dict) -> bool:
    return (isinstance(value.get("token"), str) and isinstance(value.get("host"), str) and is_int(value.get("pid"))
            and all(_is_time(value.get(k)) for k in ("pid_started", "since", "beat"))
            and isinstance(value.get("released"), bool))


LEASE = Shape(_lease_fits, "the driver lease", "")  # the fix depends on the file's age: read_lease words it


class DamagedLease(UserError):
    """A lease file that a running driver may have been about to rewrite (younger than STALE_S)."""


def read_lease(state: SweepState, sweep: str) -> dict[str, Any] | None:
    """The lease of `sweep` as its driver wrote it; None when there is none, or when it is damaged and older than
    STALE_S (no driver renewed it since: see the module doc). DamagedLease for a younger damaged one."""
    try:
        return state.read_json(LEASE_FILE, LEASE)
    except UserError as err:
        age = state.age(LEASE_FILE)
        if age is not None and age >= STALE_S:
            return None
        later = f", or resume again in {max(1, round(STALE_S - age))} s (it is taken over then)" \
            if age is not None else ""
        raise DamagedLease(f"{str(err).rstrip('; ')}: it names no driver, and a driver of sweep {sweep} that still "
                           f"runs rewrites it within {BEAT_S:.0f} s; if none runs, delete the file and resume{later}"
                           ) from None


def _process_started(pid: int) -> float | None:
    """When process `pid` of this host started; None when it is gone (a zombie counts as gone)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def holder_alive(lease: dict[str, Any], now: float) -> bool:
    """Whether the driver that wrote `lease` may still be running."""
    if lease.get("released"):
        return False
    if lease.get("host") == socket.gethostname():
        started = _process_started(int(lease.get("pid", -1)))
        return started is not None and abs(started - float(lease.get("pid_started", 0.0))) < 1.0
    return now - float(lease.get("beat", 0.0)) < STALE_S


class DriverLease:
    """This driver's claim on its sweep; renewed from a daemon thread until `release`."""

    def __init__(self, state: SweepState, sweep: str) -> None:
        self.state, self.sweep = state, sweep
        pid = os.getpid()
        self.record = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": pid,
                       "pid_started": _process_started(pid) or time.time(), "since": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self) -> DriverLease:
        """Take the lease, or raise UserError naming the driver that holds it."""
        held = read_lease(self.state, self.sweep)
        now = time.time()
        if held is not None and holder_alive(held, now):
            raise UserError(refusal(self.sweep, held, now))
        self._write()
        time.sleep(CONFIRM_S)
        held = read_lease(self.state, self.sweep) or {}
        if held.get("token") != self.record["token"]:
            raise UserError(refusal(self.sweep, held, time.time()))
        self._thread = threading.Thread(target=self._renew, name="driver-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and mark the lease released (a later driver need not wait for it to go stale)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if (self.state.read_json(LEASE_FILE, LEASE) or {}).get("token") == self.record["token"]:
                self._write(released=True)
        except (OSError, UserError):
            pass  # storage unreachable: the lease goes stale on its own

    def _write(self, released: bool = False) -> None:
        self.state.write_json(LEASE_FILE, {**self.record, "beat": time.time(), "released": released})

    def _renew(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                try:
                    held = self.state.read_json(LEASE_FILE, LEASE) or {}
                except UserError:  # damaged from outside while this driver holds it: write it whole again
                    held = {}
                if held.get("token") not in (None, self.record["token"]):
                    print(f"warning: another driver ({describe(held)}) took over sweep {self.sweep} after this one's "
                          "lease went stale; stop this driver", flush=True)
                    return
                self._write()
            except (OSError, UserError):
                continue  # storage away for a moment: the next renewal tries again


def running_driver(state: SweepState, sweep: str) -> str:
    """One line for the dry run of a --resume: whether a driver holds the sweep now."""
    try:
        held = read_lease(state, sweep)
    except DamagedLease as err:
        return f"driver: {err}"
    now = time.time()
    if held is None or not holder_alive(held, now):
        return "driver: none holds this sweep now; a --resume takes it over"
    return f"driver: {refusal(sweep, held, now)}"


def describe(lease: dict[str, Any]) -> str:
    return f"pid {lease.get('pid', '?')} on host {lease.get('host', '?')}"


def refusal(sweep: str, lease: dict[str, Any], now: float) -> str:
    """The one line a second driver of `sweep` gets."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(lease.get("since", now))))
    beat = max(0.0, now - float(lease.get("beat", now)))
    if lease.get("host") == socket.gethostname():
        how = f"stop it (kill {lease.get('pid', '?')}) and resume again"
    else:
        how = f"stop it, or if that machine is gone, resume again in {max(1, round(STALE_S - beat))} s"
    return (f"sweep {sweep} is being driven now by {describe(lease)} (since {since}, renewed {beat:.0f} s ago): "
            f"one driver per sweep; {how}")
