"""Shared fixtures: a real `mlflow server` (sqlite backend, served artifacts) on a free loopback port.

The server is started once per session and stopped by its process id. Outage tests stop it and start
it again on the same port with the same backend store (`MlflowServer.stop()` / `.start()`), so every
test that uses it must leave it running.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

MLFLOW = Path(sys.executable).with_name("mlflow")
START_TIMEOUT_S = 90.0
# Tests never phone home (and the machines running them have no internet).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def free_port() -> int:
    """A TCP port nobody listens on right now (bound and released on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """One `mlflow server` process (its own process group, so its workers stop with it)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.backend_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.artifacts = root / "artifacts"
        self.log_path = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, "server already running"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        command = [
            str(MLFLOW), "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", self.backend_uri,
            "--serve-artifacts", "--artifacts-destination", str(self.artifacts),
            "--workers", "1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}; see {self.log_path}")
            if self.healthy():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health within {START_TIMEOUT_S:.0f}s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the server's process group (the group this fixture created), then reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(autouse=True)
def resumed_sweep_forgotten_after_each_test() -> Iterator[None]:
    """tuner.run.main(["--resume", ...]) in a test names the sweep it resumes for the rest of the process
    (tuner.sweep_state.resuming); the next test's sweep of the same name elsewhere is not that one."""
    yield
    from tuner.sweep_state import resumed_no_more

    resumed_no_more()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny networks gain nothing from threads, and on a shared 2-core machine threads fight."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A running mlflow server; `mlflow_server.uri` is its http URI. Stopped at the end of the session."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dead_tracking_uri() -> str:
    """An http URI on a loopback port where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
