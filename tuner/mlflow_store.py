"""Reaching an MLflow store that may be away: clients for the CLIs, telling an outage from an answer, one
quick HTTP attempt instead of MLflow's four-minute retry loop, and a sender that keeps what it could not send
and tries again 1, 2, 4 ... 30 s later. tuner.tracking writes the sweep's runs through these; the CLIs that
read a store (report, promote, predict) open it here and turn an outage into one line and exit 2."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tuner.errors import UserError
from tuner.mlflow_names import (
    DEFAULT_PORTS,
    database_engine,
    is_server,
    local_artifact_root,
    resolve_tracking_uri,
    shown_uri,
    sqlite_path,
    without_password,
)
from tuner.tracking_checks import check_tracking_server, sqlite_tables

# One attempt per request, short timeout: the driver never sits in MLflow's retry loop (default: 7
# retries with exponential backoff, about 4 minutes) while the server is away; we retry ourselves.
QUICK_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0
MAX_BATCH_METRICS = 1000  # the REST API's limit per log_batch call
PERMANENT_ERRORS = ("INVALID_PARAMETER_VALUE",)  # bad data: sending it again cannot succeed


def ui_command(uri: str) -> str:
    """The exact command that opens the tracking UI for `uri`."""
    if is_server(uri):
        return f"open {uri}"
    root = local_artifact_root(uri)
    if root is not None:
        return f"mlflow ui --backend-store-uri {uri} --artifacts-destination {root} --port 5000"
    return f"mlflow ui --backend-store-uri {uri} --port 5000"


# What the commands that read a store (report, promote, predict) allow a server that stops answering: three more
# attempts 1, 2 and 4 s apart (a restart or a blip passes) and 30 s of silence per attempt, then one line and
# exit 2; MLflow's defaults (7 retries 2 s to 2 min apart, 120 s timeouts) sit about four minutes in silence
# first. Variables the user set win.
COMMAND_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def open_client(flag: str | None, writes: bool = True) -> tuple[MlflowClient, str]:
    """A client for the CLIs that read a store: resolved URI, store must exist, server must answer, a database
    must open as an MLflow store; with `writes` (promote, report: not predict) a local store must be writable.
    This process's MLflow requests give up after COMMAND_HTTP_ENV's retries."""
    for key, value in COMMAND_HTTP_ENV.items():
        os.environ.setdefault(key, value)
    uri = resolve_tracking_uri(flag)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise UserError(
            f"no tracking store at {path}: run a sweep in this folder first, or pass --mlflow-uri "
            f"(or set MLFLOW_TRACKING_URI) to the server the sweep logged to"
        )
    check_tracking_server(uri, create=writes, writes=writes)
    # MLflow would write its tables into an empty database: readers don't
    if path is not None and (path.stat().st_size == 0 or sqlite_tables(path) == []):
        raise UserError(f"tracking store {path} is empty: no sweep has logged there; pass --mlflow-uri (or set "
                        "MLFLOW_TRACKING_URI) to the store the sweep logged to")
    quiet_database_tracebacks()
    if database_engine(uri) in DEFAULT_PORTS:
        check_database_opens(uri)
    client = client_for(uri)
    if database_engine(uri) is not None:
        open_database_store(client, uri)
    return client, uri


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_database_opens(uri: str) -> None:
    """One connection to a database server (postgresql, mysql, mssql), refused in one line when it fails: a wrong
    password, a missing database, a port where no database answers. MLflow tries ten times (about 1m45s) and then
    prints SQLAlchemy's traceback."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as err:
        detail = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
        raise UserError(f"tracking store {shown_uri(uri)} cannot be opened ({type(err).__name__}: {detail}); check the "
                        "user, password and database name, or fix --mlflow-uri / MLFLOW_TRACKING_URI") from None
    finally:
        engine.dispose()


def open_database_store(client: MlflowClient, uri: str) -> None:
    """Open a database store now (MLflow opens it at the first request and checks its schema there), so a database
    that is no MLflow store of this MLflow's is one line: another tool's tables (alembic: "Can't locate
    revision"), a newer MLflow's schema, an older one that needs `mlflow db upgrade`, a damaged file."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        client.search_experiments(max_results=1)
    except CommandError as err:
        raise UserError(f"tracking store {shown_uri(uri)} is a database whose schema MLflow {mlflow.__version__} does "
                        f"not know ({str(err).splitlines()[0][:100]}): another tool's database, or a newer MLflow's "
                        "store; pass the MLflow database the sweep logged to, or upgrade mlflow") from None
    except (MlflowException, SQLAlchemyError) as err:
        problem = store_problem(err)
        if problem is None and isinstance(err, MlflowException) and not store_unavailable(err):
            problem = " ".join(str(err).split())[:200]
        if problem is None:
            raise
        raise UserError(f"tracking store {shown_uri(uri)} cannot be opened as an MLflow store ({problem}); fix it, "
                        "or pass another --mlflow-uri") from None


class _DatabaseTracebackFilter(logging.Filter):
    """MLflow logs a database error's whole traceback (about 85 lines) before it raises it as an MlflowException;
    the commands turn that exception into one line (or let it through), so the log is only noise on stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


def quiet_database_tracebacks() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _DatabaseTracebackFilter) for f in logger.filters):
        logger.addFilter(_DatabaseTracebackFilter())


# What a database store's own error says about its file: an answer about the store, not an outage (MLflow raises
# any sqlalchemy OperationalError as TEMPORARILY_UNAVAILABLE). Each with the fix.
STORE_PROBLEMS = (
    ("attempt to write a readonly database", "is read-only", "make it and its folder writable, or pass --mlflow-uri "
                                                             "with a writable copy"),
    ("database disk image is malformed", "is damaged", "restore it from a backup, or pass another --mlflow-uri"),
    ("file is not a database", "is damaged", "restore it from a backup, or pass another --mlflow-uri"),
    ("database or disk is full", "cannot grow: its disk is full", "free some space"),
    ("unable to open database file", "cannot be opened", "check that its folder exists and is writable"),
)


def store_problem(err: BaseException) -> str | None:
    """'is read-only (attempt to write a readonly database): make it ...' for an error of a database store that
    says what is wrong with its file, else None."""
    text = str(err)
    for words, problem, fix in STORE_PROBLEMS:
        if words in text:
            return f"{problem} ({words}): {fix}"
    return None


# MLflow's codes for a server that answered "not now" (503, 429), and its wording for a request that got no
# usable answer: refused, timed out, or 5xx after its retries ("API request to ... failed with exception").
UNAVAILABLE_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
NO_ANSWER_WORDS = ("failed with exception", "failed with timeout exception", "failed with error code 5")


def store_unavailable(err: BaseException) -> bool:
    """The tracking store did not answer (connection refused, timeout, 5xx): an outage, not an answer about the
    data. A missing run or model, a bad name, a damaged file are answers and stay what they are."""
    if store_problem(err) is not None:
        return False
    if isinstance(err, MlflowException):
        text = str(err)
        return err.error_code in UNAVAILABLE_CODES or (
            text.startswith("API request to") and any(words in text for words in NO_ANSWER_WORDS))
    import requests

    return isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))


def unavailable_error(uri: str, doing: str, err: BaseException, kept: str) -> UserError:
    return UserError(f"the tracking store {without_password(uri)} stopped answering while {doing} "
                     f"({short_error(err)}); {kept}: run the command again once it answers")


@contextlib.contextmanager
def store_outage_is_user_error(uri: str, doing: str, kept: str = "nothing was changed") -> Iterator[None]:
    """A store that stops answering while a command (report, promote, predict) works with it: one line and
    exit 2, never a traceback. `kept` says what stands, so that running the command again is safe."""
    try:
        yield
    except Exception as err:
        problem = store_problem(err)
        if problem is not None:
            raise UserError(f"the tracking store {without_password(uri)} {problem}; met while {doing}, {kept}"
                            ) from None
        if not store_unavailable(err):
            raise
        raise unavailable_error(uri, doing, err, kept) from None


@contextlib.contextmanager
def store_opened_meanwhile(uri: str) -> Iterator[None]:
    """Open the tracking store in a background thread while the body runs (the driver starts Ray meanwhile).

    A database store's first open imports SQLAlchemy and alembic, connects and checks or migrates its schema:
    about 2 s on machine A, paid again later by the first client unless done here; the engine it leaves
    behind is shared by every later client of the URI (docs/notes/benchmark-journal.md). Nothing is recorded.
    An error is dropped: the client that needs the store meets it again and reports it. The thread is
    joined on the way out, however the body ends, so a failing start never abandons a half-done migration."""

    def open_store() -> None:
        with contextlib.suppress(Exception):
            client_for(uri)

    opener = threading.Thread(target=open_store, name="tuner-store-open", daemon=True)
    opener.start()
    try:
        yield
    finally:
        opener.join()



def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment `name`, created if missing (local stores: artifacts under ./mlartifacts)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise UserError(f"experiment '{name}' is deleted in {uri}: restore it in the MLflow UI (or `mlflow "
                            f"experiments restore --experiment-id {experiment.experiment_id}`), or track to another "
                            "store (--mlflow-uri)")
        return experiment.experiment_id
    root = local_artifact_root(uri)
    location = (root / safe_name(name)).as_uri() if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as err:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise err
        return experiment.experiment_id


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "experiment"





_quick_lock = threading.Lock()
_quick_depth = 0
_quick_saved: dict[str, str | None] = {}


@contextlib.contextmanager
def quick_http() -> Iterator[None]:
    """MLflow HTTP calls inside make one attempt with a 5 s timeout (process-wide while inside)."""
    global _quick_depth
    with _quick_lock:
        if _quick_depth == 0:
            _quick_saved.clear()
            for key, value in QUICK_HTTP_ENV.items():
                _quick_saved[key] = os.environ.get(key)
                os.environ[key] = value
        _quick_depth += 1
    try:
        yield
    finally:
        with _quick_lock:
            _quick_depth -= 1
            if _quick_depth == 0:
                for key, value in _quick_saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value


class RetryingSender:
    """Runs `sync` (which raises while the server is away) now or later: one warning per outage,
    1, 2, 4 ... 30 s between attempts, `drain` to insist until a deadline."""

    def __init__(self, what: str, sync: Callable[[], None]) -> None:
        self.what = what
        self.sync = sync
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""

    def attempt(self, force: bool = False) -> bool:
        if not force and time.monotonic() < self.retry_at:
            return False
        try:
            with quick_http():
                self.sync()
        except Exception as err:  # noqa: BLE001 - any failure to reach the store: keep the data, retry later
            self.failures += 1
            self.retry_at = time.monotonic() + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (self.failures - 1))
            self.last_error = short_error(err)
            if self.failures == 1:
                warn(f"{self.what}: tracking store unreachable ({self.last_error}); buffering and retrying")
            return False
        if self.failures:
            warn(f"{self.what}: tracking store reachable again after {self.failures} failed attempts; caught up")
        self.failures, self.retry_at = 0, 0.0
        return True

    def drain(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.attempt(force=True):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(RETRY_MIN_S, left))


def short_error(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "NewConnectionError" in text or "Connection refused" in text:
        return "connection refused"
    if "timeout" in text.lower() or "timed out" in text:
        return "timed out"
    status = re.search(r"too many (\d{3}) error responses|failed with error code (\d{3})", text)
    if status:
        return f"HTTP {status.group(1) or status.group(2)}"
    return text[:160]


def warn(message: str) -> None:
    print(f"tuner.tracking: {message}", file=sys.stderr, flush=True)


def permanent_error(err: Exception) -> bool:
    return isinstance(err, MlflowException) and err.error_code in PERMANENT_ERRORS



@contextlib.contextmanager
def mlflow_globals(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """Point MLflow's global tracking (and registry) URI, and experiment if given, at ours for the
    fluent calls inside (log_model, load_model take no client), then restore what was there."""
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    # MLFLOW_TRACKING_URI is listed to be restored: set_tracking_uri may write it
    with environment(MLFLOW_TRACKING_URI=None, MLFLOW_REGISTRY_URI=uri, MLFLOW_EXPERIMENT_ID=experiment_id):
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set the given environment variables (None leaves one as it is) inside, restore them after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: value for key, value in values.items() if value is not None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
