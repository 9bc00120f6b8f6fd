"""The MLflow store as the commands name it, importable without mlflow: the registered model and its alias,
the `--mlflow-uri` flag and where it resolves (whether tracking can work there: tuner.tracking_checks).

`--help` of predict and promote shows the default model and the tracking flag, and `--dry-run` checks the
tracking URI; importing them from here, not from tuner.tracking (mlflow and torch, seconds to import), keeps
those instant. tuner.tracking writes to the store with the same names."""
from __future__ import annotations

import contextlib
import os
import re
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
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else the local sqlite store in the working directory. A URI's
    scheme is written in lower case (`HTTP://h` is `http://h`: schemes ignore case, the code that follows
    compares them as written). Spaces around a value are dropped (`sqlite:///mlflow.db ` would be another
    file); an empty --mlflow-uri is refused, an empty MLFLOW_TRACKING_URI counts as unset."""
    if flag is not None and not flag.strip():  # `--mlflow-uri "$UNSET"`: not a choice of the default
        raise UserError("--mlflow-uri is empty: give a tracking server or store, or leave the flag out to use "
                        f"MLFLOW_TRACKING_URI, else ./{LOCAL_DB}")
    uri = (flag or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip() or default_tracking_uri()
    scheme = URI_SCHEME.match(uri)
    if scheme:
        uri = scheme.group(0).lower() + uri[scheme.end():]
    if "://" not in uri and not uri.lower().startswith(("sqlite:", "file:", "databricks")):
        path = Path(uri).expanduser().resolve()
        # a database file (mlflow.db): the sqlite store in it; any other bare path is MLflow's file store there
        is_database = path.suffix in SQLITE_SUFFIXES or path.is_file()
        uri = f"sqlite:///{path}" if is_database else path.as_uri()
    return uri.rstrip("/") if is_server(uri) else uri


URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*(?=://)")


def is_server(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative paths resolved against the cwd), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().resolve()


def local_artifact_root(uri: str) -> Path | None:
    """Where artifacts of a local sqlite store go: `mlartifacts` beside the database file."""
    path = sqlite_path(uri)
    return path.parent / LOCAL_ARTIFACTS if path else None


# MLflow's database stores (mlflow.store.db.db_types.DATABASE_ENGINES), each as `engine://` or `engine+driver://`
DATABASE_ENGINES = ("sqlite", "postgresql", "mysql", "mssql")
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # the database servers' own defaults


def shown_uri(uri: str) -> str:
    """`uri` as an error quotes it: cut short, without its password."""
    return excerpt(without_password(uri))


def without_password(uri: str) -> str:
    """`uri` with the password of a database URI's `user:password@` as ***: errors never show it."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", uri)


def database_engine(uri: str) -> str | None:
    """'postgresql' for postgresql+psycopg2://..., 'sqlite' for sqlite:///...: a database store; None otherwise."""
    engine = uri.partition(":")[0].partition("+")[0].lower()
    return engine if ":" in uri and engine in DATABASE_ENGINES else None

