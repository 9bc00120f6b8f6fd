"""Whether tracking can work at a tracking URI, checked before anything runs, each failure one line with the
fix: the URI's form (scheme, host, an SQLite URL SQLAlchemy reads, not a database in memory), the database
driver it needs, a Databricks workspace, the store file (an MLflow SQLite database, not damaged, not another
tool's; writable where a command writes), and the server behind it (answers, is MLflow's, a database server
that accepts connections). Importable without mlflow: the dry run and `--help` stay instant."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from tuner.errors import UserError, excerpt
from tuner.mlflow_names import (
    DATABASE_ENGINES,
    DEFAULT_PORTS,
    LOCAL_DB,
    SQLITE_HEADER,
    database_engine,
    is_server,
    local_artifact_root,
    shown_uri,
    sqlite_header,
    sqlite_path,
)

TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")
# SQLAlchemy's drivers of each database: (the name in `engine+driver://`, the module it imports, its pip package);
# the first one installed is suggested in place of a driver that is not
DATABASE_DRIVERS = {
    "postgresql": (("psycopg2", "psycopg2", "psycopg2-binary"), ("psycopg", "psycopg", "'psycopg[binary]'"),
                   ("pg8000", "pg8000", "pg8000")),
    "mysql": (("pymysql", "pymysql", "PyMySQL"), ("mysqldb", "MySQLdb", "mysqlclient"),
              ("mysqlconnector", "mysql.connector", "mysql-connector-python")),
    "mssql": (("pyodbc", "pyodbc", "pyodbc"), ("pymssql", "pymssql", "pymssql")),
}
FIX_URI = "fix --mlflow-uri / MLFLOW_TRACKING_URI"
PROBE_TIMEOUT_S = 5.0  # a database server's port: a server that is up accepts at once


def check_tracking_uri(uri: str) -> None:
    """One line for a tracking URI MLflow cannot use: an unknown scheme, a server URI without a host, an SQLite URL
    SQLAlchemy cannot read or that names a database in memory, a database whose driver is not installed, Databricks
    with no workspace configured, a local file that is not an MLflow store. Imports SQLAlchemy only for a database
    on a server (postgresql, mysql, mssql) or an SQLite URL with a driver."""
    from urllib.parse import urlparse

    try:
        parsed = urlparse(uri)
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise UserError(f"tracking URI {shown_uri(uri)} cannot be parsed ({err}); {FIX_URI}") from None
    scheme = "databricks" if uri.lower() == "databricks" else parsed.scheme.lower()
    engine, plus, driver = scheme.partition("+")
    if scheme not in TRACKING_SCHEMES and not (plus and driver and engine in DATABASE_ENGINES):
        raise UserError(f"tracking URI {shown_uri(uri)}: scheme '{scheme[:30]}' is not one MLflow tracks to; use "
                        "http://, https://, sqlite:/// (or a database: postgresql+psycopg2://, mysql+pymysql://, "
                        f"mssql+pyodbc://; or databricks); {FIX_URI}")
    if scheme in ("http", "https") or engine in DEFAULT_PORTS:
        try:
            host, port = parsed.hostname, parsed.port
        except ValueError:
            host, port = None, None
        socket_given = engine in DEFAULT_PORTS and "host=" in parsed.query  # a database's unix socket
        if (not host and not socket_given) or (parsed.netloc.rpartition("@")[2].endswith(":") and port is None):
            example = "mlflow.internal:5000" if engine in ("http", "https") else "user:password@db.internal/mlflow"
            raise UserError(f"tracking URI {shown_uri(uri)} names no host (or a bad port): give e.g. "
                            f"{scheme}://{example}; {FIX_URI}")
    if scheme == "sqlite":
        check_sqlite_url(uri)
    elif engine in DATABASE_ENGINES:
        check_database_driver(uri, engine, driver)
    if scheme == "databricks":
        check_databricks_workspace(uri, parsed.netloc)
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise UserError(f"tracking URI {excerpt(uri)} is MLflow's file store, which MLflow 3 refuses to open; "
                        f"use a database file, e.g. --mlflow-uri sqlite:///{LOCAL_DB}, or a server http://host:port")
    check_sqlite_file(uri)


def check_sqlite_url(uri: str) -> None:
    """SQLAlchemy reads sqlite:///relative/path.db and sqlite:////absolute/path.db. Any other form fails when MLflow
    first opens the store ("Could not parse SQLAlchemy URL"), and sqlite://, sqlite:///:memory: are a database in
    memory: empty in every process, so a sweep fails on its missing tables and nothing reaches promote or report."""
    rest = uri[len("sqlite"):]
    if rest.startswith(":///"):
        path, _, query = rest[len(":///"):].partition("?")
        in_memory = path in ("", ":memory:") or "mode=memory" in query
    elif rest == "://":
        in_memory = True
    else:
        raise UserError(f"tracking URI {shown_uri(uri)} is not an SQLite URL SQLAlchemy can read: write "
                        f"sqlite:///{LOCAL_DB} (a path from the working directory) or sqlite:////abs/path/{LOCAL_DB} "
                        f"(four slashes: an absolute path); {FIX_URI}")
    if in_memory:
        raise UserError(f"tracking URI {shown_uri(uri)} is an SQLite database in memory, empty for every command that "
                        f"opens it: give a file, e.g. --mlflow-uri sqlite:///{LOCAL_DB}")


def check_database_driver(uri: str, engine: str, driver: str) -> None:
    """A database URL SQLAlchemy can parse, for a driver it knows and that is installed. SQLAlchemy imports the
    driver only when MLflow first opens the store (a sweep: after Ray started), and its default is not always the
    one installed: a bare postgresql:// means psycopg 3 to SQLAlchemy 2.1, not psycopg2."""
    # SQLAlchemy (about 0.2 s) only here: a dry run on the default sqlite store never imports it
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    name = f"{engine}+{driver}" if driver else engine
    try:
        dialect = make_url(uri).get_dialect()
    except NoSuchModuleError:
        raise UserError(f"tracking URI {shown_uri(uri)}: SQLAlchemy knows no driver '{driver[:30]}' for {engine}; "
                        f"{installed_drivers(engine, driver) or 'use ' + engine + '://'} instead") from None
    except (ArgumentError, ValueError) as err:
        raise UserError(f"tracking URI {shown_uri(uri)} is not a database URL SQLAlchemy can read "
                        f"({str(err).splitlines()[0][:100]}): write {name}://user:password@host:port/database; "
                        f"{FIX_URI}") from None
    except ImportError as err:  # a dialect module that imports its driver itself
        raise missing_driver(uri, engine, driver, err) from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        raise missing_driver(uri, engine, driver or dialect.driver, err) from None


def missing_driver(uri: str, engine: str, driver: str, err: ImportError) -> UserError:
    """The driver module SQLAlchemy imports for `uri` is not installed: which, and what to do instead."""
    module = err.name or driver
    package = next((pip for _, found, pip in DATABASE_DRIVERS.get(engine, ())
                    if module == found or module.startswith(found + ".")), None)
    other = installed_drivers(engine, driver)
    install = f"pip install {package}" if package else f"install the package that provides '{module}'"
    scheme = uri.partition(":")[0].lower()
    return UserError(f"tracking URI {shown_uri(uri)}: SQLAlchemy opens {scheme}:// with the Python module '{module}', "
                     f"which is not installed; {other + ', or ' if other else ''}{install}")


def installed_drivers(engine: str, missing: str) -> str:
    """'use postgresql+psycopg2:// (its driver is installed)' for the first installed driver of `engine`, else ''."""
    import importlib.util

    for name, module, _ in DATABASE_DRIVERS.get(engine, ()):
        if name == missing:
            continue
        try:
            if importlib.util.find_spec(module) is not None:  # found without importing it
                return f"use {engine}+{name}:// (its driver is installed)"
        except (ImportError, ValueError):  # the parent of a dotted module is missing
            continue
    return ""


def check_databricks_workspace(uri: str, profile: str) -> None:
    """`databricks` or `databricks://PROFILE` needs a workspace: DATABRICKS_HOST, or the profile in the Databricks
    configuration file (`databricks configure`). With neither, MLflow fails at the first request with a traceback
    about credentials. Only the absence of any is refused: the many ways to authenticate are the SDK's to judge."""
    import configparser

    if uri.lower() != "databricks" and not (uri.lower().startswith("databricks://") and profile):
        raise UserError(f"tracking URI {shown_uri(uri)} is not a Databricks URI: write databricks (its default "
                        f"profile) or databricks://PROFILE; {FIX_URI}")
    profile, _, secret_prefix = profile.partition(":")
    if secret_prefix or os.environ.get("DATABRICKS_RUNTIME_VERSION"):  # secret scopes: inside Databricks only
        return
    profile = profile or os.environ.get("DATABRICKS_CONFIG_PROFILE") or ""
    if not profile and os.environ.get("DATABRICKS_HOST"):
        return
    config_file = Path(os.environ.get("DATABRICKS_CONFIG_FILE") or "~/.databrickscfg").expanduser()
    config = configparser.ConfigParser()
    try:
        config.read(config_file)
    except (configparser.Error, OSError, UnicodeDecodeError):
        return  # a file there that this cannot read: MLflow's SDK reads it its own way
    section = profile or "DEFAULT"
    if config.has_section(section) or (section == "DEFAULT" and config.defaults()):
        return
    where = (f"no [{section}] profile in {config_file}" if profile else
             f"neither DATABRICKS_HOST nor a [DEFAULT] profile in {config_file}")
    configure = (f"run `databricks configure --profile {section}`" if profile else
                 "run `databricks configure` or set DATABRICKS_HOST and DATABRICKS_TOKEN")
    raise UserError(f"tracking URI {shown_uri(uri)} needs a Databricks workspace and none is configured ({where}): "
                    f"{configure}; or pass another --mlflow-uri")


def check_sqlite_file(uri: str) -> None:
    """A sqlite:/// store's path must be an MLflow database file, or not exist yet (MLflow creates it): a folder,
    another kind of file, a damaged database or another tool's (an Optuna study) would fail deep inside SQLAlchemy
    or alembic, after minutes of MLflow's retries, and MLflow writes its tables into another tool's database first."""
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
    if not header:
        return  # empty: MLflow makes its tables there (a reader refuses it: tuner.mlflow_store.open_client)
    tables = sqlite_tables(path)
    if tables and not {"experiments", "alembic_version"} <= set(tables):
        optuna = " (an Optuna study: open it with optuna-dashboard)" if {"studies", "trials"} <= set(tables) else ""
        shown = ", ".join(name[:30] for name in sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
        raise UserError(f"tracking store {path} is an SQLite database but not an MLflow store (its tables: "
                        f"{shown}){optuna}; pass --mlflow-uri the MLflow database file (a sweep's "
                        f"./{LOCAL_DB}), or a new path for a new store")


def sqlite_tables(path: Path) -> list[str] | None:
    """The tables of the SQLite database `path`, read without writing anything; a damaged file is a UserError. A
    database another process has locked gives no answer here (None): the store's client waits for it."""
    import sqlite3

    try:
        # mode=ro: a check never writes, not even a journal, and works on a read-only file
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2)) as db:
            return [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.OperationalError as err:
        if "locked" in str(err):
            return None
        problem = err
    except sqlite3.DatabaseError as err:  # "database disk image is malformed", "file is not a database"
        problem = err
    raise UserError(f"tracking store {path} is a damaged SQLite database ({problem}); restore it from a backup, or "
                    "pass another --mlflow-uri (a new path starts a new store)")


def check_store_writable(uri: str) -> None:
    """A local store that a command will write to must be writable, and so must its folder (SQLite writes its
    journal beside the database): SQLite refuses only at the first write (after promote's evaluation, after a
    sweep started) and MLflow reports that as a store that is temporarily unavailable."""
    path = sqlite_path(uri)
    if path is None:
        return
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"tracking store {path} is read-only: make it writable (chmod u+w {path}) or pass "
                        "--mlflow-uri with a writable copy")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the run makes the missing folders
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"tracking store {path}: its folder {folder} is read-only (SQLite writes its journal beside "
                        "the database); make the folder writable, or pass --mlflow-uri with a writable place")


def health_problem(uri: str, timeout_s: float = 5.0) -> str | None:
    """None when the tracking server at `uri` answers its health check, else why not: the exception's name
    (no answer) or `HTTP <status>` (something else answers there)."""
    import requests

    try:
        response = requests.get(f"{uri}/health", timeout=timeout_s)
    except requests.RequestException as err:
        return type(err).__name__
    return None if response.status_code == 200 else f"HTTP {response.status_code}"


def mlflow_server_problem(uri: str, timeout_s: float = 5.0) -> str | None:
    """None when `uri` answers `/version` as MLflow's tracking server does (its version number), else what came
    back. Any web server may answer /health; only MLflow's answers /version with a version. 401 and 403 pass: a
    server that wants credentials (MLflow's basic auth guards /version), which MLflow's client sends."""
    import requests

    try:
        response = requests.get(f"{uri}/version", timeout=timeout_s)
    except requests.RequestException as err:
        return type(err).__name__
    if response.status_code in (401, 403):
        return None
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    return None if re.fullmatch(r"\d+\.\d+\S*", response.text.strip()[:40]) else "no version number"


def database_problem(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the server of a database URI (postgresql, mysql, mssql) accepts a TCP connection on its port
    (or the URI names a unix socket), else why not. The driver would wait for an unreachable server, and MLflow
    tries ten times, about 1m45s, before its traceback."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    engine = database_engine(uri)
    if not parsed.hostname or engine not in DEFAULT_PORTS:
        return None
    port = parsed.port or DEFAULT_PORTS[engine]
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return None
    except socket.gaierror:
        return f"host {excerpt(parsed.hostname, 60)[1:-1]} not found"
    except TimeoutError:
        return f"{parsed.hostname}:{port} timed out after {timeout_s:.0f}s"
    except ConnectionRefusedError:
        return f"{parsed.hostname}:{port} refused the connection"
    except OSError as err:
        return f"{parsed.hostname}:{port}: {err.strerror or type(err).__name__}"


def check_tracking_server(uri: str, timeout_s: float = 10.0, create: bool = True, writes: bool = True) -> None:
    """Fail early and in one line when tracking cannot work: a bad URI, a server that does not answer or is not
    MLflow's, a database server that cannot be reached, with `writes` a local store that cannot be written; with
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
        problem = mlflow_server_problem(uri, timeout_s)
        if problem is not None:
            raise UserError(f"{uri} answers /health but is not an MLflow tracking server (/version: {problem}); give "
                            f"the address of `mlflow server` (e.g. http://127.0.0.1:5000); {FIX_URI}")
        return
    problem = database_problem(uri, min(timeout_s, PROBE_TIMEOUT_S))
    if problem is not None:
        raise UserError(f"the database server of tracking URI {shown_uri(uri)} is not reachable ({problem}): start it, "
                        f"{FIX_URI}, or leave both unset to track to ./{LOCAL_DB}")
    if writes:
        check_store_writable(uri)
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
