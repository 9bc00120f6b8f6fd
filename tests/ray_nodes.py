"""Real Ray nodes for integration tests: `ray start --block` in a session of its own, ended by that session.

`ray start` daemonises its services (GCS, raylet, workers), and `ray stop` would end every Ray process
on the machine, other people's too. Each node here runs in a new process session, so teardown ends
exactly the processes this test started: every process whose session id is the node's.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(token: str) -> dict[str, str]:
    """Environment for head, workers and drivers: `ray start` enables token auth in Ray 2.60."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # fields after the name: state, ppid, pgrp, session
                pids.append(int(entry.name))
    return pids


class RayNode:
    """One `ray start` node; the first one started with head=True is the cluster's head."""

    def __init__(self, log: Path, token: str, head_address: str | None = None, cpus: int = 2, gpus: int = 0,
                 resources: str | None = None) -> None:
        self.token = token
        self.port = free_port() if head_address is None else None
        self.address = head_address or f"127.0.0.1:{self.port}"
        args = [RAY, "start", "--block", "--num-cpus", str(cpus), "--num-gpus", str(gpus),
                "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        if head_address is None:
            args += ["--head", "--port", str(self.port), "--include-dashboard", "false"]
        else:
            args += ["--address", head_address]
        if resources:
            args += ["--resources", resources]
        self.log = open(log, "w")
        self.process = subprocess.Popen(args, env=ray_env(token), stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}; see {self.log.name}")
            if "block forever" in Path(self.log.name).read_text():
                return
            time.sleep(0.5)
        raise TimeoutError(f"ray node not ready after {timeout_s} s; see {self.log.name}")

    def pids(self) -> set[int]:
        """This node's processes now: its raylet, object store, GCS (head) and the Ray workers it started."""
        return set(session_pids(self.process.pid))

    def stop(self) -> None:
        """End every process of this node's session: SIGTERM, then SIGKILL what is left."""
        sid = self.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in session_pids(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p) for p in session_pids(sid)):
                time.sleep(0.2)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def started_head(folder: Path, cpus: int = 2) -> Iterator[RayNode]:
    """A head node for a test module, ended after it: `yield from started_head(...)` in a module fixture."""
    node = RayNode(folder / "head.log", new_token(), cpus=cpus)
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


def new_token() -> str:
    return secrets.token_hex(32)


def trial_results(experiment_dir: Path) -> dict[str, list[dict]]:
    """What Ray recorded per trial, in order: `<storage>/<sweep>/*/result.json`, one JSON object per line
    (our metrics plus Ray's trial_id, pid, timestamp, time_this_iter_s, iterations_since_restore ...)."""
    trials: dict[str, list[dict]] = {}
    for path in sorted(Path(experiment_dir).glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            trials[rows[0]["trial_id"]] = rows
    return trials


def trial_failures(experiment_dir: Path) -> dict[str, int]:
    """Each trial's num_failures (crashes Ray restarted it from) in the newest experiment snapshot."""
    snapshot = max(Path(experiment_dir).glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    failures = {}
    for trial_json, runtime_json in json.loads(snapshot.read_text())["trial_data"]:
        failures[json.loads(trial_json)["trial_id"]] = json.loads(runtime_json)["num_failures"]
    return failures
