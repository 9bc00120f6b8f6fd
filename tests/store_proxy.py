"""A plain HTTP proxy in front of the real mlflow server, for tests of a store that fails part-way: every
request passes through unchanged, except those `refused(method, path)` answers with a status of its own (a
full artifact store's 507, a 503 outage). Nothing of MLflow is replaced: the server behind it is real."""
from __future__ import annotations

import http.client
import http.server
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

Refusal = Callable[[str, str], "int | None"]  # (method, path) -> the status to answer instead, or None: pass on


class StoreProxy:
    """Forwards to `upstream`; `refused` decides per request (called once per request, under no lock).
    `refusals` counts the requests it answered itself."""

    SKIPPED_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}

    def __init__(self, upstream: str, refused: Refusal | None = None) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.refused: Refusal = refused or (lambda method, path: None)
        self.refusals = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self)

            do_PUT = do_POST = do_DELETE = do_PATCH = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> StoreProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def forward(self, request: http.server.BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        status = self.refused(request.command, request.path)
        if status is not None:
            with self.lock:
                self.refusals += 1
            self.before_refusal()
            self.answer(request, status, [("Content-Type", "text/plain")], f"refused by the test ({status})".encode())
            return
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in self.SKIPPED_HEADERS | {"host"}}
            upstream.request(request.command, request.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.answer(request, response.status,
                    [(k, v) for k, v in response.getheaders() if k.lower() not in self.SKIPPED_HEADERS], data)

    def before_refusal(self) -> None:
        """Called after a refusal is counted, before it is answered (a subclass interrupts the client here)."""

    @staticmethod
    def answer(request: http.server.BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]],
               data: bytes) -> None:
        try:
            request.send_response(status)
            for key, value in headers:
                request.send_header(key, value)
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)
        except OSError:  # the client hung up (interrupted)
            pass


def run_with_one_attempt(*argv: str) -> subprocess.CompletedProcess:
    """A CLI (`tuner.report ...`) in a process of its own, as a user runs it (its MLflow client resolves
    artifacts through the proxy, not through a store an earlier test of this process cached), with MLflow's
    retries off: the commands' own policy (tuner.mlflow_store.COMMAND_HTTP_ENV) rides out an outage for about
    10 s before it gives up with the same error; test_report times that policy once."""
    return subprocess.run([sys.executable, "-m", *argv], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
