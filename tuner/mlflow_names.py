"""The MLflow store as the commands name it, importable without mlflow: the registered model and its alias,
the `--mlflow-uri` flag, where it resolves and whether tracking can work there.

`--help` of predict and promote shows the default model and the tracking flag, and `--dry-run` checks the
tracking URI; importing them from here, not from tuner.tracking (mlflow and torch, seconds to import), keeps
those instant. tuner.tracking writes to the store with the same names."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuner.errors import UserError, excerpt

DEFAULT_MODEL_NAME = "modified-resnet-cifar10"
CHAMPION_ALIAS = "champion"  # the version `tuner.predict` uses unless told otherwise
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"
TRACKING_HELP = "tracking server or store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"


PROGRESS_BAR_VARIABLE = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bars on stderr (unless the environment asks for them), as before afterwards:
    the CLIs that download a model or checkpoint (predict, promote) print one line of their own."""
    before = os.environ.get(PROGRESS_BAR_VARIABLE)
    os.environ.setdefault(PROGRESS_BAR_VARIABLE, "false")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR_VARIABLE, None)


def add_tracking_argument(parser: Any) -> None:
    """The `--mlflow-uri` flag every CLI that reads the store shares (resolved by tuner.mlflow_store.open_client)."""
    parser.add_argument("--mlflow-uri", help=TRACKING_HELP)


LOCAL_DB = "mlflow.db"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
LOCAL_ARTIFACTS = "mlartifacts"


def sqlite_header(path: Path) -> bytes:
    """The first bytes of `path`, as many as SQLITE_HEADER has (fewer for a shorter file, b"" for an empty
    one), to compare with it; OSError when the file cannot be read. The callers word their own errors."""
    with path.open("rb") as stream:
        return stream.read(len(SQLITE_HEADER))


def default_tracking_uri(workdir: Path | None = None) -> str:
    """`sqlite:///<abs workdir>/mlflow.db`: the embedded default, in the working directory."""
    return f"sqlite:///{(Path(workdir) if workdir else Path.cwd()).resolve() / LOCAL_DB}"


def resolve_tracking_uri(flag: str | None) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else the local sqlite store in the working directory."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if "://" not in uri and not uri.startswith(("sqlite:", "file:", "databricks")):
        path = Path(uri).expanduser().resolve()
        # a database file (mlflow.db): the sqlite store in it; any other bare path is MLflow's file store there
        is_database = path.suffix in SQLITE_SUFFIXES or path.is_file()
        uri = f"sqlite:///{path}" if is_database else path.as_uri()
    return uri.rstrip("/") if is_server(uri) else uri


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative paths resolved against the cwd), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().resolve()


def local_artifact_root(uri: str) -> Path | None:
    """Where artifacts of a local sqlite store go: `mlartifacts` beside the database file."""
    path = sqlite_path(uri)
    return path.parent / LOCAL_ARTIFACTS if path else None


TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "postgresql+psycopg2", "mysql",
                    "mysql+pymysql", "databricks")


def check_tracking_uri(uri: str) -> None:
    """One line for a tracking URI MLflow cannot use: an unknown scheme, or a server URI without a host."""
    from urllib.parse import urlparse

    try:
        parsed = urlparse(uri)
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise UserError(f"tracking URI {excerpt(uri)} cannot be parsed ({err}); fix --mlflow-uri / "
                        "MLFLOW_TRACKING_URI") from None
    scheme = "databricks" if uri.startswith("databricks") else parsed.scheme.lower()
    if scheme not in TRACKING_SCHEMES:
        raise UserError(f"tracking URI {excerpt(uri)}: scheme '{scheme[:30]}' is not one MLflow tracks to; use "
                        f"{', '.join(s + '://' for s in TRACKING_SCHEMES[:3])} (or {', '.join(TRACKING_SCHEMES[3:])}); "
                        "fix --mlflow-uri / MLFLOW_TRACKING_URI")
    if scheme in ("http", "https", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql"):
        try:
            host, port = parsed.hostname, parsed.port
        except ValueError:
            host, port = None, None
        if not host or (parsed.netloc.rpartition("@")[2].endswith(":") and port is None):
            raise UserError(f"tracking URI {excerpt(uri)} names no host (or a bad port): give e.g. "
                            f"{scheme}://mlflow.internal:5000; fix --mlflow-uri / MLFLOW_TRACKING_URI")
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise UserError(f"tracking URI {excerpt(uri)} is MLflow's file store, which MLflow 3 refuses to open; "
                        f"use a database file, e.g. --mlflow-uri sqlite:///{LOCAL_DB}, or a server http://host:port")
    check_sqlite_file(uri)


def check_sqlite_file(uri: str) -> None:
    """A sqlite:/// store's path must be a database file, or not exist yet (MLflow creates it): a folder or
    another kind of file would fail deep inside SQLAlchemy, after minutes of MLflow's retries."""
    path = sqlite_path(uri)
    if path is None or not path.exists():
        return
    if not path.is_file():
        raise UserError(f"tracking store {path} is a {'folder' if path.is_dir() else 'special file'}, not an SQLite "
                        f"database; give a file path, e.g. --mlflow-uri sqlite:///{path / LOCAL_DB}")
    try:
        header = sqlite_header(path)
    except OSError as err:
        raise UserError(f"tracking store {path} cannot be read ({err.strerror}); fix its permissions or pass "
                        "another --mlflow-uri") from None
    if header and header != SQLITE_HEADER:
        raise UserError(f"tracking store {path} is not an SQLite database (it starts with {excerpt(header[:8])}); "
                        "pass the MLflow database file, or a new path for a new store")


def health_problem(uri: str, timeout_s: float = 5.0) -> str | None:
    """None when the tracking server at `uri` answers its health check, else why not: the exception's name
    (no answer) or `HTTP <status>` (something else answers there)."""
    import requests

    try:
        response = requests.get(f"{uri}/health", timeout=timeout_s)
    except requests.RequestException as err:
        return type(err).__name__
    return None if response.status_code == 200 else f"HTTP {response.status_code}"


def check_tracking_server(uri: str, timeout_s: float = 10.0, create: bool = True) -> None:
    """Fail early and in one line when tracking cannot work: a bad URI, a server that does not answer; with
    `create`, make the folders of a local store (the dry run writes nothing)."""
    check_tracking_uri(uri)
    if is_server(uri):
        problem = health_problem(uri, timeout_s)
        if problem is not None and problem.startswith("HTTP "):
            raise UserError(f"{uri}/health answered {problem}: is {uri} an MLflow tracking server? Fix --mlflow-uri / "
                            "MLFLOW_TRACKING_URI")
        if problem is not None:
            raise UserError(
                f"MLflow tracking server {uri} is not reachable ({problem}): start it "
                f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`), fix --mlflow-uri / MLFLOW_TRACKING_URI, "
                f"or leave both unset to track to ./{LOCAL_DB}"
            )
        return
    if not create:
        return
    path = sqlite_path(uri)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            local_artifact_root(uri).mkdir(parents=True, exist_ok=True)
        elif uri.startswith("file:"):
            Path(uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):]).mkdir(
                parents=True, exist_ok=True
            )
    except OSError as err:
        raise UserError(f"cannot create the local tracking store for {uri} ({err.strerror}): "
                        f"pass --mlflow-uri with a writable place") from None
