"""MLflow tracking for sweeps: a sweep is a parent run, each trial a nested child run, the best
checkpoint a new version of a registered model.

Where the data goes: with no flag, a local sqlite store (`./mlflow.db`) plus artifacts in
`./mlartifacts`; with `--mlflow-uri http://host:5000` (or MLFLOW_TRACKING_URI) a tracking server. A
server started with `--serve-artifacts` receives artifacts over HTTP too, so trials on other nodes need
no shared filesystem.

Outages: every call a trial makes (`TrialRun`) and every bookkeeping call of the driver (`SweepRun`)
is buffered in memory and sent with one HTTP attempt (MLflow's own retries switched off, 5 s timeout):
with the server down, `log_epoch` returns in milliseconds (connection refused) and at most one
timeout when the host black-holes packets, then waits 1, 2, 4 ... 30 s between attempts. Sending is
idempotent (runs are found by tag before one is created; metrics keep the timestamp of their epoch,
and the store drops exact duplicates), so a request whose answer was lost is simply sent again.
`SweepRun.end()` also fills in, from the results the driver saw, any epoch a worker could not deliver
before Ray stopped it. Measured: in tests/test_tracking.py a server stopped for ~10 s (then restarted on
the same port and store) while two trials log loses no epoch metric, and no call waits more than 2 s;
by hand, a 30 s outage with a trial logging every 2 s (and one starting mid-outage): worst log_epoch
5 ms, every epoch delivered once the server was back.

This module and the CLIs (`promote`, `predict`, `report`) are the only places that import mlflow.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from tuner.checkpoint import model_from_checkpoint, save_checkpoint
from tuner.errors import UserError
from tuner.evaluate import preprocess
from tuner.model import count_macs, count_params
from tuner.outcomes import run_status
from tuner.train import TrainConfig

DEFAULT_MODEL_NAME = "modified-resnet-cifar10"
DEFAULT_EXPERIMENT = "tuner"
CHAMPION_ALIAS = "champion"
LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
CHECKPOINT_ARTIFACT = "checkpoint/checkpoint.pt"
MODEL_ARTIFACT = "model"

TAG_SWEEP = "tuner.sweep"
TAG_TRIAL = "tuner.trial_id"
TAG_OUTCOME = "tuner.outcome"
TAG_PARAMS = "tuner.params"
TAG_MACS = "tuner.macs"
TAG_GPU_SECONDS = "tuner.gpu_seconds"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
PARENT_TAGS = ("tuner.git_commit", "tuner.space_hash", "tuner.data_fingerprint", "tuner.ray_address")


# One attempt per request, short timeout: a trial never sits in MLflow's retry loop (default: 7
# retries with exponential backoff, about 4 minutes) while the server is away; we retry ourselves.
QUICK_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0
MAX_BATCH_METRICS = 1000  # the REST API's limit per log_batch call
PERMANENT_ERRORS = ("INVALID_PARAMETER_VALUE",)  # bad data: sending it again cannot succeed


# ---------------------------------------------------------------------------------------------
# where tracking goes


def default_tracking_uri(workdir: Path | None = None) -> str:
    """`sqlite:///<abs workdir>/mlflow.db`: the embedded default, in the working directory."""
    return f"sqlite:///{(Path(workdir) if workdir else Path.cwd()).resolve() / LOCAL_DB}"


def resolve_tracking_uri(flag: str | None) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else the local sqlite store in the working directory."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if "://" not in uri and not uri.startswith(("sqlite:", "file:", "databricks")):
        uri = Path(uri).expanduser().resolve().as_uri()  # a bare folder: a file store there
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


def check_tracking_server(uri: str, timeout_s: float = 10.0) -> None:
    """Fail early and in one line when tracking cannot work; create the folders of a local store."""
    if is_server(uri):
        import requests

        try:
            response = requests.get(f"{uri}/health", timeout=timeout_s)
        except requests.RequestException as err:
            reason = type(err).__name__
            raise UserError(
                f"MLflow tracking server {uri} is not reachable ({reason}): start it "
                f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`), fix --mlflow-uri / MLFLOW_TRACKING_URI, "
                f"or leave both unset to track to ./{LOCAL_DB}"
            ) from None
        if response.status_code != 200:
            raise UserError(
                f"{uri}/health answered HTTP {response.status_code}: is {uri} an MLflow tracking server? "
                f"Fix --mlflow-uri / MLFLOW_TRACKING_URI"
            )
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


def ui_command(uri: str) -> str:
    """The exact command that opens the tracking UI for `uri`."""
    if is_server(uri):
        return f"open {uri}"
    root = local_artifact_root(uri)
    if root is not None:
        return f"mlflow ui --backend-store-uri {uri} --artifacts-destination {root} --port 5000"
    return f"mlflow ui --backend-store-uri {uri} --port 5000"


def add_tracking_argument(parser: Any) -> None:
    """The `--mlflow-uri` flag every CLI that reads the store shares (resolved by `open_client`)."""
    parser.add_argument("--mlflow-uri",
                        help="tracking server or store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")


def open_client(flag: str | None) -> tuple[MlflowClient, str]:
    """A client for the CLIs that read a store: resolved URI, store must exist, server must answer."""
    uri = resolve_tracking_uri(flag)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise UserError(
            f"no tracking store at {path}: run a sweep in this folder first, or pass --mlflow-uri "
            f"(or set MLFLOW_TRACKING_URI) to the server the sweep logged to"
        )
    check_tracking_server(uri)
    return client_for(uri), uri


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def trial_run_name(index: int, config: TrainConfig) -> str:
    """A readable child-run name: `t007 w64-128-256 b2-2-2 lr0.05`."""
    widths = "-".join(str(w) for w in config.widths)
    blocks = "-".join(str(b) for b in config.blocks)
    return f"t{index:03d} w{widths} b{blocks} lr{config.lr:g}"


def config_params(config: TrainConfig) -> dict[str, str]:
    """TrainConfig as MLflow params: lists as `64,128,256`, everything a string."""
    return {
        key: ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
        for key, value in config.to_dict().items()
    }


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment `name`, created if missing (local stores: artifacts under ./mlartifacts)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise UserError(f"experiment '{name}' is deleted in {uri}: restore it in the MLflow UI "
                            f"(or `mlflow experiments restore`) or choose another experiment name")
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


def _quote(value: str) -> str:
    """A value inside a single-quoted MLflow filter string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_sweep_run(client: MlflowClient, sweep_name: str, experiment_ids: list[str] | None = None) -> Run | None:
    """The parent run of a sweep (tag tuner.sweep, no parent), newest first; None when absent."""
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return None
    runs = client.search_runs(
        experiment_ids, f"tags.`{TAG_SWEEP}` = '{_quote(sweep_name)}'", order_by=["attributes.start_time DESC"]
    )
    parents = [run for run in runs if TAG_PARENT not in run.data.tags]
    return parents[0] if parents else None


def sweep_names(client: MlflowClient) -> list[str]:
    """Names of all sweeps in the store (for error messages)."""
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    runs = client.search_runs(experiment_ids, f"tags.`{TAG_SWEEP}` != ''", max_results=5000)
    return sorted({r.data.tags[TAG_SWEEP] for r in runs if TAG_PARENT not in r.data.tags})


def trial_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """Every child run of a sweep's parent run, oldest first (all pages)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id], f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'",
            max_results=1000, order_by=["attributes.start_time ASC"], page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str) -> Run | None:
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_PARENT}` = '{_quote(parent_run_id)}' and tags.`{TAG_TRIAL}` = '{_quote(trial_id)}'",
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


# ---------------------------------------------------------------------------------------------
# sending with our own retries

_quick_lock = threading.Lock()
_quick_depth = 0
_quick_saved: dict[str, str | None] = {}


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
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


class _Sender:
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
            with _quick_http():
                self.sync()
        except Exception as err:  # noqa: BLE001 - any failure to reach the store: keep the data, retry later
            self.failures += 1
            self.retry_at = time.monotonic() + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (self.failures - 1))
            self.last_error = _short(err)
            if self.failures == 1:
                _warn(f"{self.what}: tracking store unreachable ({self.last_error}); buffering and retrying")
            return False
        if self.failures:
            _warn(f"{self.what}: tracking store reachable again after {self.failures} failed attempts; caught up")
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


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "NewConnectionError" in text or "Connection refused" in text:
        return "connection refused"
    return text[:160]


def _warn(message: str) -> None:
    print(f"tuner.tracking: {message}", file=sys.stderr, flush=True)


def _permanent(err: Exception) -> bool:
    return isinstance(err, MlflowException) and err.error_code in PERMANENT_ERRORS


def _send_metrics(client: MlflowClient, run_id: str, pending: list[Metric], what: str) -> None:
    """Send and remove `pending` in REST-sized batches; a batch the server rejects as invalid is dropped."""
    while pending:
        batch = pending[:MAX_BATCH_METRICS]
        try:
            client.log_batch(run_id, metrics=batch)
        except MlflowException as err:
            if not _permanent(err):
                raise
            _warn(f"{what}: the store rejected {len(batch)} metrics ({_short(err)}); dropped them")
        del pending[: len(batch)]


def _epoch_metrics(metrics: Mapping[str, float], epoch: int, timestamp_ms: int) -> list[Metric]:
    return [
        Metric(key, float(value), timestamp_ms, int(epoch))
        for key, value in metrics.items()
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


def _log_params_once(client: MlflowClient, run: Run, params: Mapping[str, str], what: str) -> None:
    """Params are immutable in MLflow: log the missing ones, warn (never fail) about changed values."""
    existing = run.data.params
    changed = [k for k, v in params.items() if k in existing and existing[k] != v]
    if changed:
        _warn(f"{what}: params {', '.join(changed)} differ from the logged values; kept the logged ones")
    missing = [Param(k, v) for k, v in params.items() if k not in existing]
    for start in range(0, len(missing), 100):
        client.log_batch(run.info.run_id, params=missing[start : start + 100])


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# worker side: one trial


class TrialRun:
    """The child run of one trial, written from wherever the trial runs (a Ray worker on any node).

    Never raises and never waits long for the tracking store: everything is buffered and sent with
    one quick attempt per call, and again on later calls; `finish` insists until its timeout.
    """

    def __init__(
        self, uri: str, parent_run_id: str, trial_id: str, run_name: str, config: TrainConfig, tags: dict[str, str]
    ) -> None:
        self.uri = uri
        self.parent_run_id = parent_run_id
        self.trial_id = trial_id
        self.run_name = run_name
        self.config = config
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client = client_for(uri)
        self._tags = {
            TAG_TRIAL: trial_id,
            TAG_PARAMS: str(count_params(config)),
            TAG_MACS: str(count_macs(config)),
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        self._params = config_params(config)
        self._setup_done = False
        self._logged_steps: set[int] = set()
        self._metrics: list[Metric] = []
        self._final_tags: dict[str, str] = {}
        self._end_status: str | None = None
        self._sender = _Sender(f"trial {trial_id}", self._sync)
        self._sender.attempt()

    @property
    def pending(self) -> int:
        """Metrics logged but not yet in the store."""
        return len(self._metrics)

    def log_epoch(self, metrics: Mapping[str, float], epoch: int) -> None:
        """Record one epoch's metrics at step=epoch; sends now if the store answers, else later."""
        self._metrics.extend(_epoch_metrics(metrics, epoch, _now_ms()))
        self._sender.attempt()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._final_tags.update({k: str(v) for k, v in tags.items()})
        self._sender.attempt()

    def flush(self, timeout_s: float) -> bool:
        """Send everything pending, retrying until done (True) or `timeout_s` passed (False)."""
        return self._sender.drain(timeout_s)

    def finish(self, outcome: str, tags: dict[str, str] | None = None, timeout_s: float = 120.0) -> bool:
        """Set the outcome (and e.g. tuner.gpu_seconds), end the run, flush; False if data is left over."""
        self._final_tags.update({TAG_OUTCOME: outcome, **{k: str(v) for k, v in (tags or {}).items()}})
        self._end_status = run_status(outcome)
        done = self.flush(timeout_s)
        if not done:
            _warn(f"trial {self.trial_id}: {self.pending} metrics not delivered within {timeout_s:.0f}s "
                  f"({self._sender.last_error}); the sweep driver fills in what it saw at the end")
        return done

    def _sync(self) -> None:
        client = self._client
        if not self._setup_done:
            parent = client.get_run(self.parent_run_id)
            self.experiment_id = parent.info.experiment_id
            run = find_trial_run(client, self.experiment_id, self.parent_run_id, self.trial_id)
            if run is None:
                tags = {TAG_PARENT: self.parent_run_id, **self._tags}
                if TAG_SWEEP in parent.data.tags:
                    tags[TAG_SWEEP] = parent.data.tags[TAG_SWEEP]
                run = client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
            else:  # a resumed trial: same run, running again
                if run.info.status != "RUNNING":
                    client.update_run(run.info.run_id, status="RUNNING")
                if TAG_OUTCOME in run.data.tags:
                    client.delete_tag(run.info.run_id, TAG_OUTCOME)
                client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in self._tags.items()])
                # Epochs that reached the store before the trial was interrupted: a resumed trial may run
                # its last epoch again (Ray resumes from the last checkpoint it recorded), keep one value.
                self._logged_steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_acc")}
            self.run_id = run.info.run_id
            _log_params_once(client, run, self._params, f"trial {self.trial_id}")
            self._setup_done = True
        self._metrics[:] = [m for m in self._metrics if m.step not in self._logged_steps]
        _send_metrics(client, self.run_id, self._metrics, f"trial {self.trial_id}")
        if self._final_tags:
            client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._final_tags.items()])
            self._final_tags = {}
        if self._end_status:
            client.set_terminated(self.run_id, self._end_status)
            self._end_status = None


# ---------------------------------------------------------------------------------------------
# driver side: the sweep


class SweepRun:
    """The parent run of a sweep, written by the driver. Bookkeeping is buffered like TrialRun's."""

    def __init__(self, client: MlflowClient, uri: str, sweep_name: str, run_id: str, experiment_id: str) -> None:
        self._client = client
        self.uri = uri
        self.sweep_name = sweep_name
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.resumed = False
        self._children: dict[str, str] = {}  # trial id -> child run id
        self._outcomes: dict[str, tuple[str, dict[str, str], str | None, TrainConfig | None, bool]] = {}
        self._metrics: list[Metric] = []
        # what the driver saw of every trial, to fill in epochs a worker could not deliver
        self._seen: dict[str, dict[int, tuple[int, dict[str, float]]]] = {}
        self._seen_names: dict[str, str] = {}
        self._seen_configs: dict[str, TrainConfig] = {}
        self._sender = _Sender(f"sweep {sweep_name}", self._sync)

    @classmethod
    def start(
        cls,
        uri: str,
        sweep_name: str,
        space_file: Path,
        search_params: dict,
        tags: dict,
        experiment: str = DEFAULT_EXPERIMENT,
    ) -> SweepRun:
        """Create the parent run (or reopen the one of the same sweep name: resume) and log the setup."""
        check_tracking_server(uri)
        client = client_for(uri)
        experiment_id = ensure_experiment(client, uri, experiment)
        run = find_sweep_run(client, sweep_name, [experiment_id])
        resumed = run is not None
        if run is None:
            run = client.create_run(experiment_id, run_name=sweep_name, tags={TAG_SWEEP: sweep_name})
        elif run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        sweep = cls(client, uri, sweep_name, run.info.run_id, experiment_id)
        sweep.resumed = resumed
        params = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in search_params.items()}
        _log_params_once(client, run, {k: v[:6000] for k, v in params.items()}, f"sweep {sweep_name}")
        client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in {**tags, TAG_SWEEP: sweep_name}.items()])
        if space_file is not None and Path(space_file).is_file():
            client.log_artifact(run.info.run_id, str(space_file), "space")
        return sweep

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Sweep-level metrics (e.g. best val acc so far) on the parent run; buffered."""
        self._metrics.extend(
            Metric(k, float(v), _now_ms(), int(step or 0)) for k, v in metrics.items() if not isinstance(v, bool)
        )
        self._sender.attempt()

    def record_epoch(
        self, trial_id: str, metrics: Mapping[str, float], epoch: int,
        run_name: str | None = None, config: TrainConfig | None = None,
    ) -> None:
        """Remember a result the driver received (cheap, no I/O): `end()` fills in any epoch the
        trial's worker could not deliver (e.g. Ray stopped it while the store was down)."""
        self._seen.setdefault(trial_id, {})[int(epoch)] = (_now_ms(), dict(metrics))
        if run_name:
            self._seen_names[trial_id] = run_name
        if config is not None:
            self._seen_configs[trial_id] = config

    def set_trial_outcome(
        self, trial_id: str, outcome: str, tags: dict[str, str] | None = None,
        run_name: str | None = None, config: TrainConfig | None = None, create: bool = True,
    ) -> None:
        """Tag a trial's outcome on its child run, creating the run if the trial never logged
        (e.g. infeasible: give `run_name` and `config` so it shows with its params) unless `create` is
        False (a trial that may never have started)."""
        self._outcomes[trial_id] = (outcome, {k: str(v) for k, v in (tags or {}).items()}, run_name, config, create)
        self._sender.attempt()

    def flush(self, timeout_s: float) -> bool:
        return self._sender.drain(timeout_s)

    def child_run_id(self, trial_id: str, create: bool = False) -> str | None:
        """The child run of a trial (found by tag), created when asked and missing."""
        if trial_id in self._children:
            return self._children[trial_id]
        run = find_trial_run(self._client, self.experiment_id, self.run_id, trial_id)
        if run is None and create:
            config = self._seen_configs.get(trial_id)
            tags = {TAG_PARENT: self.run_id, TAG_TRIAL: trial_id, TAG_SWEEP: self.sweep_name}
            if config is not None:
                tags.update({TAG_PARAMS: str(count_params(config)), TAG_MACS: str(count_macs(config))})
            name = self._seen_names.get(trial_id) or f"trial {trial_id}"
            run = self._client.create_run(self.experiment_id, run_name=name, tags=tags)
            if config is not None:
                _log_params_once(self._client, run, config_params(config), f"trial {trial_id}")
        if run is None:
            return None
        self._children[trial_id] = run.info.run_id
        return run.info.run_id

    def _sync(self) -> None:
        client = self._client
        for trial_id in list(self._outcomes):
            outcome, tags, run_name, config, create = self._outcomes[trial_id]
            if run_name:
                self._seen_names.setdefault(trial_id, run_name)
            if config is not None:
                self._seen_configs.setdefault(trial_id, config)
            run_id = self.child_run_id(trial_id, create=create)
            if run_id is not None:
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in {**tags, TAG_OUTCOME: outcome}.items()])
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_terminated(run_id, run_status(outcome))
            del self._outcomes[trial_id]
        _send_metrics(client, self.run_id, self._metrics, f"sweep {self.sweep_name}")

    def reconcile(self) -> int:
        """Log every epoch metric the driver saw that is missing from its child run; returns how many."""
        client = self._client
        filled = 0
        for trial_id, epochs in self._seen.items():
            run_id = self.child_run_id(trial_id, create=True)
            keys = {k for _, metrics in epochs.values() for k in metrics if k != "epoch"}
            present = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in keys}
            missing = [
                metric
                for epoch, (timestamp, metrics) in sorted(epochs.items())
                for metric in _epoch_metrics(metrics, epoch, timestamp)
                if metric.step not in present[metric.key]
            ]
            filled += len(missing)
            _send_metrics(client, run_id, missing, f"trial {trial_id}")
        return filled

    def register_best(
        self, checkpoint: dict, trial_id: str, val_acc: float, model_name: str = DEFAULT_MODEL_NAME,
        timeout_s: float = 300.0,
    ) -> str:
        """Log the checkpoint as an MLflow PyTorch model (+ the raw checkpoint file) under the trial's
        run, register it as a new version of `model_name` with lineage tags; returns the version."""
        if not self._sender.drain(timeout_s):
            raise UserError(f"tracking store {self.uri} unreachable for {timeout_s:.0f}s "
                            f"({self._sender.last_error}): best trial {trial_id} not registered; "
                            f"bring the server back and run the sweep again with the same name to resume")
        model, config = model_from_checkpoint(checkpoint)
        run_id = self.child_run_id(trial_id) or self.run_id
        parent_tags = self._client.get_run(self.run_id).data.tags

        # The input example: two uint8 images normalised like the training data. Two, not one:
        # torch.export (MLflow's default pt2 format) fixes a size-1 batch dimension to 1, so a batch
        # of one would give a model that classifies one image per call.
        pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
        example = preprocess(pixels)
        with torch.no_grad():
            logits = model(example)
        from mlflow.models import infer_signature

        signature = infer_signature(example.numpy(), logits.numpy())
        lineage = {
            "sweep": self.sweep_name,
            "trial_id": trial_id,
            "run_id": run_id,
            "parent_run_id": self.run_id,
            "val_acc": f"{float(val_acc):.6f}",
            "epoch": str(checkpoint.get("epoch", "")),
            "params": str(count_params(config)),
            "macs": str(count_macs(config)),
            "config": json.dumps(config.to_dict(), sort_keys=True),
            "checkpoint_uri": f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}",
            **{key.split(".", 1)[1]: parent_tags[key] for key in PARENT_TAGS if key in parent_tags},
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = save_checkpoint(checkpoint, Path(tmp) / "checkpoint.pt")
            self._client.log_artifact(run_id, str(path), "checkpoint")
        # The pt2 program is exported on the CPU and cannot move. MLflow checks the input example by
        # loading the model on CUDA wherever CUDA is present (as on a GPU driver), which fails there.
        with mlflow_globals(self.uri, self.experiment_id), environment(MLFLOW_DEFAULT_PREDICTION_DEVICE="cpu"):
            info = mlflow.pytorch.log_model(
                model,
                name=MODEL_ARTIFACT,
                run_id=run_id,
                signature=signature,
                input_example=example.numpy(),
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
            # Still inside: a database registry looks the logged model up through the *global* tracking
            # URI, so with the local sqlite store it must point at our store here too.
            try:
                self._client.create_registered_model(
                    model_name, description="ModifiedResNet on CIFAR-10, registered by tuner sweeps")
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = self._client.create_model_version(
                model_name, source=info.model_uri, run_id=run_id, tags=lineage, model_id=info.model_id,
                description=(f"sweep {self.sweep_name}, trial {trial_id}: val acc {float(val_acc):.4f}, "
                             f"{count_params(config):,} params; widths {config.widths} blocks {config.blocks}"),
            )
        self._client.set_tag(self.run_id, "tuner.registered_version", f"{model_name}/{version.version}")
        return str(version.version)

    def end(self, status: str = "FINISHED", timeout_s: float = 120.0) -> bool:
        """Deliver pending bookkeeping, fill in epochs the workers could not deliver, end the parent
        run. False (with a warning) if the store stayed unreachable for `timeout_s`."""
        self._filled = 0
        self._end_status = status
        sender = _Sender(f"sweep {self.sweep_name}", self._sync_end)
        done = sender.drain(timeout_s)
        if self._filled:
            _warn(f"sweep {self.sweep_name}: filled in {self._filled} epoch metrics the workers could not deliver")
        if not done:
            _warn(f"sweep {self.sweep_name}: tracking store unreachable for {timeout_s:.0f}s "
                  f"({sender.last_error}); the parent run stays RUNNING and some trial data is missing")
        return done

    def _sync_end(self) -> None:
        self._sync()
        self._filled += self.reconcile()
        self._seen.clear()
        self._client.set_terminated(self.run_id, self._end_status)


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
