"""MLflow tracking for sweeps: a sweep is a parent run, each trial a nested child run, the best
checkpoint a new version of a registered model (after a `final:` fit, that fit's checkpoint, from a child
run of its own: `SweepRun.final_fit_run`). The sweep's driver is the only writer.

Where the data goes: with no flag, a local sqlite store (`./mlflow.db`) plus artifacts in
`./mlartifacts`; with `--mlflow-uri http://host:5000` (or MLFLOW_TRACKING_URI) a tracking server. Only
the driver talks to it: trials report to the driver through Ray (`tune.report`), and the driver's
`TrialRuns` writes their child runs, so workers need neither MLflow nor a route to the server.

Outages: every write is buffered in memory and sent with one HTTP attempt (MLflow's own retries
switched off, 5 s timeout; tuner.mlflow_store), so with the server down a call returns in milliseconds (connection
refused), or after one timeout when the host black-holes packets, and is retried 1, 2, 4 ... 30 s
later; `flush` insists until a deadline. tests/test_tracking.py stops the server while trials log and
checks that every epoch arrives once it is back.

No metric step is written twice. Before its first write to a child run, a driver process reads which
steps the run already has (an earlier driver of the same sweep wrote them) and never sends those
again; what it sends joins that set. A trial that re-runs an epoch (resumed from a checkpoint older
than its last report) keeps the first value. A step whose answer was lost is sent again unchanged
(same value, same timestamp: the worker's report time), and the store keeps one copy.

This module, tuner.mlflow_store and the CLIs (`promote`, `predict`, `report`) are the only places that import
mlflow.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from tuner.architecture import count_macs, count_params
from tuner.checkpoint import model_from_checkpoint, save_checkpoint
from tuner.config import TrainConfig
from tuner.errors import UserError
from tuner.evaluate import preprocess
from tuner.metrics import EpochMetrics
from tuner.mlflow_names import DEFAULT_MODEL_NAME, is_server
from tuner.mlflow_store import (
    MAX_BATCH_METRICS,
    RetryingSender,
    client_for,
    ensure_experiment,
    environment,
    mlflow_globals,
    permanent_error,
    quick_http,
    short_error,
    warn,
)
from tuner.outcomes import run_status
from tuner.tracking_checks import check_tracking_server, health_problem
from tuner.trial_names import SpaceOutline, config_params, trial_label, trial_run_name, used_fields

# "Creating initial MLflow database tables..." on a store's first open: two INFO lines on stderr ahead of the
# sweep's own output (and ahead of an error line, which should be the only one there)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
# With a tracking server MLflow prints two "View run ... at" lines whenever a run ends (every trial), and reads
# the run back to do it; the sweep prints its own lines and the UI command at the end
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

DEFAULT_EXPERIMENT = "tuner"
HEALTH_RETRY_S = 2.0  # between probes of a tracking server that does not answer (SweepRun._reach_store)
CHECKPOINT_ARTIFACT = "checkpoint/checkpoint.pt"
MODEL_ARTIFACT = "model"
# What a trial's child run holds per epoch (step = epoch): the training loop's metrics.
EPOCH_METRICS = tuple(f.name for f in dataclasses.fields(EpochMetrics) if f.name != "epoch")

TAG_SWEEP = "tuner.sweep"
TAG_TRIAL = "tuner.trial_id"
TAG_INDEX = "tuner.index"
TAG_OUTCOME = "tuner.outcome"
TAG_LABEL = "tuner.trial_label"     # t007, as the run name, the trial's folder and the study's user attr
TAG_SEARCHED = "tuner.searched"     # the searched parameters this trial used, comma-separated
TAG_BEST = "tuner.best"             # "true" on the child run with the best value so far (moved as it changes)
TAG_BEST_TRIAL = "tuner.best_trial"  # on the parent: the trial id of that child
TAG_GPU_SECONDS = "tuner.gpu_seconds"  # read by the outcome checks; the metric gpu_seconds is what to chart
SYSTEM_PREFIX = "system/"           # the trial's sampled CPU/memory/GPU figures, as MLflow's own system metrics
TAG_PARENT = "mlflow.parentRunId"
PARENT_TAGS = ("tuner.git_commit", "tuner.space_hash", "tuner.data_fingerprint", "tuner.ray_address")
# Parent tags a resumed sweep must give again unchanged: its trials continue on the images they started on
RESUME_INVARIANT_TAGS = ("tuner.data_fingerprint",)


class ResumeMismatch(Exception):
    """A resumed sweep's RESUME_INVARIANT_TAGS differ from what its parent run recorded: {tag: (recorded, now)}."""

    def __init__(self, changed: dict[str, tuple[str, str]]) -> None:
        super().__init__(changed)
        self.changed = changed


class SweepRunMissing(Exception):
    """--resume found no parent run of the sweep in this store. `deleted`: the id of its deleted run, if any."""

    def __init__(self, deleted: str | None) -> None:
        super().__init__(deleted)
        self.deleted = deleted
# A final fit's child run (tuner/final_fit.py) carries no tuner.trial_id: it is not a trial of the search.
TAG_FINAL_OF = "tuner.final_of"          # the search trial whose configuration it trains again
TAG_SEARCH_RUN = "tuner.search_run_id"   # that trial's run
TAG_FINAL_STATUS = "tuner.final_status"  # completed, or failed (then also tuner.final_error)
# What a registered version holds (its tag checkpoint_kind): the final fit's checkpoint or the search's.
CHECKPOINT_FINAL, CHECKPOINT_SEARCH = "final_fit", "search"



def source_tags(entry_point: str = "tuner.run") -> dict[str, str]:
    """MLflow's own source tags: the commit of this checkout, the command, LOCAL."""
    import subprocess

    tags = {"mlflow.source.name": entry_point, "mlflow.source.type": "LOCAL"}
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0 and out.stdout.strip():
            tags["mlflow.source.git.commit"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def _quote(value: str) -> str:
    """A value inside a single-quoted MLflow filter string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_sweep_run(client: MlflowClient, sweep_name: str, experiment_ids: list[str] | None = None,
                   deleted_too: bool = False) -> Run | None:
    """The parent run of a sweep (tag tuner.sweep, no parent), newest first; None when absent. `deleted_too`:
    deleted runs count (a deleted experiment's runs are deleted with it)."""
    from mlflow.entities import ViewType

    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return None
    runs = client.search_runs(
        experiment_ids, f"tags.`{TAG_SWEEP}` = '{_quote(sweep_name)}'", order_by=["attributes.start_time DESC"],
        run_view_type=ViewType.ALL if deleted_too else ViewType.ACTIVE_ONLY,
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
    """Every trial's child run of a sweep's parent run, oldest first (all pages); not the final fit's run."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id], f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'",
            max_results=1000, order_by=["attributes.start_time ASC"], page_token=token,
        )
        runs.extend(run for run in page if TAG_FINAL_OF not in run.data.tags)
        token = page.token
        if not token:
            return runs


def has_trial_runs(client: MlflowClient, parent: Run) -> bool:
    """Whether a sweep's parent run has a child run (a trial's or the final fit's): a launch that failed before
    any trial started left none, and running it again may reuse the run."""
    return bool(client.search_runs([parent.info.experiment_id], f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'",
                                   max_results=1))


def find_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str,
                   tag: str = TAG_TRIAL) -> Run | None:
    """The oldest child run of `parent_run_id` whose `tag` is `trial_id` (the trial's own run; with
    tag=TAG_FINAL_OF, the run of its final fit)."""
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_PARENT}` = '{_quote(parent_run_id)}' and tags.`{tag}` = '{_quote(trial_id)}'",
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def _log_params_once(client: MlflowClient, run: Run, params: Mapping[str, str], what: str) -> None:
    """Params are immutable in MLflow: log the missing ones, warn (never fail) about changed values."""
    existing = run.data.params
    changed = [k for k, v in params.items() if k in existing and existing[k] != v]
    if changed:
        warn(f"{what}: params {', '.join(changed)} differ from the logged values; kept the logged ones")
    missing = [Param(k, v) for k, v in params.items() if k not in existing]
    for start in range(0, len(missing), 100):
        client.log_batch(run.info.run_id, params=missing[start : start + 100])


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# the trials: child runs


@dataclass
class _ChildRun:
    """What the driver still has to write to one trial's child run, and which steps the run holds."""

    trial_id: str
    run_name: str
    tags: dict[str, str]                 # set when the run is made (and again when it is found)
    params: dict[str, str]
    create: bool = True                  # False: tag the run if it exists, never make one
    reopen: bool = False                 # the trial runs again: status RUNNING, no outcome yet
    run_id: str | None = None            # None until found or made in this process
    had_outcome: bool = False            # the run had an outcome tag when this process found it
    steps: dict[str, set[int]] = field(default_factory=dict)  # per metric: steps the run has
    metrics: list[Metric] = field(default_factory=list)
    end_tags: dict[str, str] = field(default_factory=dict)
    keep_outcome: bool = False           # leave an outcome the run already has
    status: str | None = None            # set_terminated with this
    best: float | None = None            # the best value of the sweep's metric this driver received


class TrialRuns:
    """The child runs of one sweep's trials, written by the driver alone.

    `start` a trial (its run is made with its config as params), `log_epoch` its metrics, `finish` it
    with its outcome. Calls never raise and never wait long: everything is buffered and sent as
    described in the module docstring; `flush` insists until a deadline.

    Ray keeps this object in its experiment state for --resume, so it pickles as its addresses alone
    (tracking URI, experiment, parent run, sweep name): a driver that unpickles it connects anew, reads
    each run's steps before writing to it, and what an earlier driver had buffered comes back from the
    trials' result files (`tuner.bookkeeping.OutcomeRecorder.backfill`).
    """

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, sweep_name: str,
                 outline: SpaceOutline | None = None, source: Mapping[str, str] | None = None) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep_name = sweep_name
        self.outline = outline or SpaceOutline()
        self.source = dict(source or {})  # mlflow.source.* tags, as the parent's
        self._connect_later()

    def _connect_later(self) -> None:
        self._client: MlflowClient | None = None
        self._runs: dict[str, _ChildRun] = {}
        self._dirty: dict[str, None] = {}  # trials with something to send, in the order they came
        self._sender = RetryingSender(f"sweep {self.sweep_name}", self._sync)
        # The sweep's best trial so far (read from the parent run before the first change is sent), and what
        # the parent and the child runs still have to receive about it.
        self._best: tuple[str, float] | None = None
        self._best_read = False
        self._parent_metrics: list[Metric] = []
        self._best_moves: list[tuple[str | None, str]] = []  # (previous best trial, new best trial)

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id,
                "sweep_name": self.sweep_name, "outline": self.outline, "source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"outline": SpaceOutline(), "source": {}, **state})
        self._connect_later()

    @property
    def best(self) -> tuple[str, float] | None:
        """(trial id, value) of the best trial this driver has seen finish, or None."""
        return self._best

    def run_name(self, trial_id: str) -> str:
        """The trial's run name (`t004 lr=0.031 optimizer=adamw`), or its id before its start was seen."""
        run = self._runs.get(trial_id)
        return run.run_name if run is not None and run.params else trial_id

    @property
    def pending(self) -> int:
        """Epoch metrics received but not yet in the store."""
        return sum(len(run.metrics) for run in self._runs.values())

    def start(self, trial_id: str, index: int, config: TrainConfig, reopen: bool = True) -> None:
        """A trial starts (again, when `reopen`): its run, named by its label and searched values, tagged,
        with the config fields it uses as params and its size as metrics (step 0)."""
        run = self._run(trial_id)
        if not run.params:
            run.run_name, run.create = trial_run_name(index, config, self.outline), True
            run.params = config_params(config, used_fields(config, self.outline))
            run.tags.update({TAG_INDEX: str(index), TAG_LABEL: trial_label(index),
                             TAG_SEARCHED: ",".join(self.outline.searched_values(config)), **self.source})
            at = _now_ms()
            run.metrics.extend([Metric("params_count", float(count_params(config)), at, 0),
                                Metric("macs", float(count_macs(config)), at, 0)])
        run.reopen = run.reopen or reopen
        self._send(trial_id)

    def log_epoch(self, trial_id: str, metrics: Mapping[str, float], epoch: int,
                  timestamp_ms: int | None = None) -> None:
        """One epoch's metrics at step=epoch; `timestamp_ms` (default now) should be when the trial
        reported it, so that the same epoch sent again is the same metric."""
        at = _now_ms() if timestamp_ms is None else int(timestamp_ms)
        values = [Metric(key, float(value), at, int(epoch)) for key, value in metrics.items()
                  if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)]
        if values:
            run = self._run(trial_id)
            run.metrics.extend(values)
            value = metrics.get(self.outline.metric)
            if isinstance(value, (int, float)) and self.outline.better(float(value), run.best):
                run.best = float(value)
            self._send(trial_id)

    def finish(self, trial_id: str, outcome: str, tags: Mapping[str, str] | None = None, create: bool = True,
               keep_outcome: bool = False) -> None:
        """Tag the trial's outcome and end its run. `create=False`: only if the run exists (a trial that
        may never have started); `keep_outcome`: leave an outcome the run already has."""
        run = self._run(trial_id, create)
        run.end_tags.update({**{k: str(v) for k, v in (tags or {}).items()}, TAG_OUTCOME: outcome})
        run.status, run.keep_outcome, run.reopen = run_status(outcome), keep_outcome, False
        self._send(trial_id)

    def count_finished(self, trial_id: str, finished: int) -> None:
        """The `finished`-th trial of the sweep ended: the parent's `best_<metric>` at step `finished`, and the
        child with the best value so far tagged `tuner.best=true` (the tag moves when a better one finishes)."""
        self._read_best()
        run = self._runs.get(trial_id)
        if run is not None and run.best is not None and self.outline.better(
                run.best, self._best[1] if self._best else None):
            self._best_moves.append((self._best[0] if self._best else None, trial_id))
            self._best = (trial_id, run.best)
        if self._best is not None:
            self._parent_metrics.append(Metric(f"best_{self.outline.metric}", self._best[1], _now_ms(), finished))
        self._sender.attempt()

    def flush(self, timeout_s: float) -> bool:
        """Send everything buffered, retrying until done (True) or `timeout_s` passed (False)."""
        return self._sender.drain(timeout_s)

    def _run(self, trial_id: str, create: bool = True) -> _ChildRun:
        """The trial's entry; one made here (no start seen) names the run by the trial id alone."""
        if trial_id not in self._runs:
            tags = {TAG_PARENT: self.parent_run_id, TAG_SWEEP: self.sweep_name, TAG_TRIAL: trial_id}
            self._runs[trial_id] = _ChildRun(trial_id, f"trial {trial_id}", tags, {}, create=create)
        return self._runs[trial_id]

    def _send(self, trial_id: str) -> None:
        self._dirty[trial_id] = None
        self._sender.attempt()

    def _read_best(self) -> None:
        """An earlier driver's best trial, from the parent run's tag and metric (once; silently none when the
        store is away: the best then restarts from this driver's trials)."""
        if self._best_read:
            return
        self._best_read = True
        try:
            with quick_http():
                parent = client_for(self.uri).get_run(self.parent_run_id)
        except Exception:  # noqa: BLE001 - the store is away: start afresh
            return
        trial, value = parent.data.tags.get(TAG_BEST_TRIAL), parent.data.metrics.get(f"best_{self.outline.metric}")
        if trial and value is not None:
            self._best = (trial, float(value))

    def _sync(self) -> None:
        if self._client is None:
            self._client = client_for(self.uri)
        for trial_id in list(self._dirty):
            self._sync_run(self._client, self._runs[trial_id])
            del self._dirty[trial_id]
        while self._best_moves:
            previous, best = self._best_moves[0]
            if previous is not None:
                old = self._runs.get(previous)
                old_id = old.run_id if old else None
                if old_id is None:
                    found = find_trial_run(self._client, self.experiment_id, self.parent_run_id, previous)
                    old_id = found.info.run_id if found else None
                if old_id is not None:
                    self._client.set_tag(old_id, TAG_BEST, "false")
            new = self._runs.get(best)
            if new is not None and new.run_id is not None:
                self._client.set_tag(new.run_id, TAG_BEST, "true")
            self._client.set_tag(self.parent_run_id, TAG_BEST_TRIAL, best)
            self._best_moves.pop(0)
        while self._parent_metrics:
            batch = self._parent_metrics[:MAX_BATCH_METRICS]
            self._client.log_batch(self.parent_run_id, metrics=batch)
            del self._parent_metrics[: len(batch)]

    def _sync_run(self, client: MlflowClient, run: _ChildRun) -> None:
        found = None
        if run.run_id is None:
            found = self._open(client, run)
            if found is None:
                return
        if run.reopen:
            found = found or client.get_run(run.run_id)
            if found.info.status != "RUNNING":
                client.update_run(run.run_id, status="RUNNING")
            if TAG_OUTCOME in found.data.tags:
                client.delete_tag(run.run_id, TAG_OUTCOME)
            run.reopen = run.had_outcome = False
        # The first value of a step is kept: a step the run has is never sent again.
        sent = run.steps
        fresh, seen = [], set()
        for metric in run.metrics:
            if metric.step not in sent.get(metric.key, ()) and (metric.key, metric.step) not in seen:
                fresh.append(metric)
                seen.add((metric.key, metric.step))
        run.metrics = fresh
        while run.metrics:
            batch = run.metrics[:MAX_BATCH_METRICS]
            try:
                client.log_batch(run.run_id, metrics=batch)
            except MlflowException as err:
                if not permanent_error(err):
                    raise
                warn(f"trial {run.trial_id}: the store rejected {len(batch)} metrics ({short_error(err)}); "
                     "dropped them")
            for metric in batch:
                sent.setdefault(metric.key, set()).add(metric.step)
            del run.metrics[: len(batch)]
        if run.end_tags:
            if not (run.keep_outcome and run.had_outcome):
                client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in run.end_tags.items()])
                client.set_terminated(run.run_id, run.status)
                run.had_outcome = True
            run.end_tags, run.status = {}, None

    def _open(self, client: MlflowClient, run: _ChildRun) -> Run | None:
        """The trial's run: an earlier driver's (its steps read) or a new one; None when there is none to
        write to (`create=False`)."""
        found = find_trial_run(client, self.experiment_id, self.parent_run_id, run.trial_id)
        if found is None:
            if not run.create:
                self._runs.pop(run.trial_id)
                return None
            found = client.create_run(self.experiment_id, run_name=run.run_name, tags=run.tags)
        else:
            run.steps = {key: {m.step for m in client.get_metric_history(found.info.run_id, key)}
                         for key in found.data.metrics}
            run.had_outcome = TAG_OUTCOME in found.data.tags
            stale = {k: v for k, v in run.tags.items() if found.data.tags.get(k) != v}
            if stale:
                client.log_batch(found.info.run_id, tags=[RunTag(k, v) for k, v in stale.items()])
        _log_params_once(client, found, run.params, f"trial {run.trial_id}")
        run.run_id = found.info.run_id
        return found


# ---------------------------------------------------------------------------------------------
# the sweep: the parent run


@dataclass(frozen=True)
class FinalLineage:
    """What a registered version says of the final fit whose checkpoint it holds."""

    run_id: str  # the final fit's child run
    epochs: int
    train_images: int
    train_on: str  # all or train (a space's final.train_on)


class SweepRun:
    """The parent run of a sweep, written by the driver: setup, summary metrics, the registered model.
    Summary metrics are buffered like the trials' (`TrialRuns`)."""

    def __init__(self, client: MlflowClient, uri: str, sweep_name: str, run_id: str, experiment_id: str) -> None:
        self._client = client
        self.uri = uri
        self.sweep_name = sweep_name
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.resumed = False
        self._metrics: list[Metric] = []
        self._end_status: str | None = None
        self._sender = RetryingSender(f"sweep {sweep_name}", self._sync)

    @classmethod
    def start(
        cls,
        uri: str,
        sweep_name: str,
        space_file: Path,
        search_params: dict,
        tags: dict,
        experiment: str = DEFAULT_EXPERIMENT,
        resume: bool | None = None,
    ) -> SweepRun:
        """Create the parent run (or reopen the one of the same sweep name: resume) and log the setup.
        ResumeMismatch when a reopened run recorded other RESUME_INVARIANT_TAGS than `tags` gives. `resume`
        True (a --resume) reopens the run or raises SweepRunMissing: a new run in another store would leave the
        trials of the first driver elsewhere. False (a new sweep) refuses a name whose run has trials: its sweep
        state may live under another --storage (or be gone), and a second sweep under the name would add its
        trials to the first one's run. None: either (a library user's sweep)."""
        check_tracking_server(uri)
        client = client_for(uri)
        if resume and client.get_experiment_by_name(experiment) is None:  # before ensure_experiment makes one
            raise SweepRunMissing(None)
        experiment_id = ensure_experiment(client, uri, experiment)
        run = find_sweep_run(client, sweep_name, [experiment_id])
        if resume and run is None:
            deleted = find_sweep_run(client, sweep_name, [experiment_id], deleted_too=True)
            raise SweepRunMissing(deleted.info.run_id if deleted else None)
        if resume is False and run is not None and has_trial_runs(client, run):
            raise UserError(f"sweep '{sweep_name}' already exists in {uri} (run {run.info.run_id}, with trials): "
                            f"continue it with --resume {sweep_name} and the --storage it ran with, or choose "
                            "another --name")
        resumed = run is not None
        if resumed:  # before the run is reopened: a refused resume leaves it as it was
            changed = {key: (run.data.tags[key], str(tags[key])) for key in RESUME_INVARIANT_TAGS
                       if key in tags and run.data.tags.get(key, str(tags[key])) != str(tags[key])}
            if changed:
                raise ResumeMismatch(changed)
        if run is None:
            run = client.create_run(experiment_id, run_name=sweep_name, tags={TAG_SWEEP: sweep_name, **source_tags()})
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

    def trial_runs(self, outline: SpaceOutline | None = None) -> TrialRuns:
        """The writer of this sweep's child runs (named and logged by the space's `outline` when given)."""
        return TrialRuns(self.uri, self.experiment_id, self.run_id, self.sweep_name, outline, source_tags())

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Sweep-level metrics (e.g. best val acc so far) on the parent run; buffered."""
        self._metrics.extend(
            Metric(k, float(v), _now_ms(), int(step or 0)) for k, v in metrics.items() if not isinstance(v, bool)
        )
        self._sender.attempt()

    def _sync(self) -> None:
        while self._metrics:
            batch = self._metrics[:MAX_BATCH_METRICS]
            self._client.log_batch(self.run_id, metrics=batch)
            del self._metrics[: len(batch)]
        if self._end_status:
            self._client.set_terminated(self.run_id, self._end_status)
            self._end_status = None

    def _reach_store(self, timeout_s: float, what: str) -> None:
        """Deliver what is buffered first (the direct writes below must not overtake it); a UserError saying
        how to resume when the store stays away for `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        reason = None if self._sender.drain(timeout_s) else self._sender.last_error
        # An empty buffer drains at once: a server that went away since is met by the direct calls that
        # follow, each in MLflow's own retry loop (minutes) and then as a traceback. Ask it first.
        if reason is None and is_server(self.uri):
            while (reason := health_problem(self.uri)) is not None and time.monotonic() < deadline:
                time.sleep(min(HEALTH_RETRY_S, max(0.0, deadline - time.monotonic())))
        if reason is not None:
            raise UserError(f"tracking store {self.uri} unreachable for {timeout_s:.0f}s "
                            f"({reason}): {what}; bring the server back and resume the sweep "
                            f"(python -m tuner.run --resume {self.sweep_name})")

    def final_fit_run(self, trial_id: str, label: str, config: TrainConfig, params: Mapping[str, str],
                      timeout_s: float = 300.0) -> str:
        """The child run of the final fit of trial `trial_id` (`final fit of t007`), tagged with the trial's
        run; the one an earlier driver made when it was killed during the fit, else a new one. Params: the
        config's fields it uses, and `params` (the final fit's own: train_on, train_images)."""
        self._reach_store(timeout_s, f"the final fit of {label} not started")
        run = find_trial_run(self._client, self.experiment_id, self.run_id, trial_id, tag=TAG_FINAL_OF)
        if run is None:
            search = find_trial_run(self._client, self.experiment_id, self.run_id, trial_id)
            tags = {TAG_PARENT: self.run_id, TAG_SWEEP: self.sweep_name, TAG_FINAL_OF: trial_id,
                    TAG_SEARCH_RUN: search.info.run_id if search else "",
                    **source_tags()}
            run = self._client.create_run(self.experiment_id, run_name=f"final fit of {label}", tags=tags)
        elif run.info.status != "RUNNING":
            self._client.update_run(run.info.run_id, status="RUNNING")
        _log_params_once(self._client, run, {**config_params(config, used_fields(config)), **params},
                         f"final fit of {label}")
        return run.info.run_id

    def end_final_fit_run(self, run_id: str, history: list[Mapping[str, float]], status: str,
                          tags: Mapping[str, str] | None = None, timeout_s: float = 300.0) -> None:
        """The final fit's per-epoch metrics (step = epoch, at the time the worker measured it; not sent
        again to a run that has them: a resumed driver), its tags, and the end of its run: FINISHED when
        `status` is completed, else FAILED."""
        self._reach_store(timeout_s, f"final fit run {run_id} not updated")
        logged = self._client.get_run(run_id).data.metrics
        metrics = [Metric(key, float(value), int(1000 * float(row.get("reported_at", time.time()))), int(row["epoch"]))
                   for row in history for key, value in row.items()
                   if key not in ("epoch", "reported_at") and key not in logged]
        for start in range(0, len(metrics), MAX_BATCH_METRICS):
            self._client.log_batch(run_id, metrics=metrics[start : start + MAX_BATCH_METRICS])
        values = {**(tags or {}), TAG_FINAL_STATUS: status}
        self._client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])
        self._client.set_terminated(run_id, "FINISHED" if status == "completed" else "FAILED")

    def register_best(
        self, checkpoint: dict, trial_id: str, val_acc: float, model_name: str = DEFAULT_MODEL_NAME,
        timeout_s: float = 300.0, final: FinalLineage | None = None,
    ) -> str:
        """Log the checkpoint as an MLflow PyTorch model (+ the raw checkpoint file) under the run that
        trained it, register it as a new version of `model_name` with lineage tags; returns the version.

        `final` given: `checkpoint` is the final fit of trial `trial_id` (tuner/final_fit.py), logged under
        the final fit's run; else it is the trial's search checkpoint, logged under the trial's run. Either
        way `val_acc` is the search checkpoint's validation accuracy: a final fit on all images has none of
        its own, so that figure stays the one `promote --allow-val` compares (tags val_acc, search_val_acc)."""
        self._reach_store(timeout_s, f"best trial {trial_id} not registered")
        kind = CHECKPOINT_FINAL if final else CHECKPOINT_SEARCH
        earlier = self.registered_version(model_name, trial_id, kind)
        if earlier is not None:  # a driver killed after creating the version, before the sweep recorded it
            print(f"version {earlier} of {model_name} already holds this {kind.replace('_', ' ')} checkpoint of "
                  f"trial {trial_id} (registered by an earlier driver of sweep {self.sweep_name})", flush=True)
            self._client.set_tag(self.run_id, "tuner.registered_version", f"{model_name}/{earlier}")
            self._client.set_tag(self.run_id, "tuner.registered_checkpoint", kind)
            return earlier
        model, config = model_from_checkpoint(checkpoint)
        child = find_trial_run(self._client, self.experiment_id, self.run_id, trial_id)
        search_run_id = child.info.run_id if child else self.run_id
        run_id = final.run_id if final else search_run_id  # the run whose checkpoint the version holds
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
            # lineage of the search and, for a final fit, of the retraining
            "checkpoint_kind": kind,
            "search_run_id": search_run_id,
            "search_trial_id": trial_id,
            "search_val_acc": f"{float(val_acc):.6f}",
        }
        if final:
            lineage.update({"final_run_id": final.run_id, "final_epochs": str(final.epochs),
                            "train_images": str(final.train_images), "final_train_on": final.train_on})
            described = (f"final fit of sweep {self.sweep_name}'s best trial {trial_id}: its configuration trained "
                         f"again for {final.epochs} epochs on {final.train_images:,} images (train_on "
                         f"{final.train_on}), run {final.run_id}; the search checkpoint (run {search_run_id}) "
                         f"scored val acc {float(val_acc):.4f}"
                         + (", a figure of the search: this model also trained on those validation images"
                            if final.train_on == "all" else ""))
        else:
            described = f"sweep {self.sweep_name}, trial {trial_id}: search checkpoint, val acc {float(val_acc):.4f}"
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
                description=(f"{described}; {count_params(config):,} params; widths {config.widths} "
                             f"blocks {config.blocks}"),
            )
        self._client.set_tag(self.run_id, "tuner.registered_version", f"{model_name}/{version.version}")
        self._client.set_tag(self.run_id, "tuner.registered_checkpoint", kind)
        return str(version.version)

    def registered_version(self, model_name: str, trial_id: str, kind: str) -> str | None:
        """The version of `model_name` this sweep already registered for trial `trial_id`'s `kind` checkpoint
        (the lineage tags register_best writes), else None. Sweep names are plain folder names: safe to quote."""
        try:
            found = self._client.search_model_versions(
                f"name = '{model_name}' and tags.sweep = '{self.sweep_name}' and tags.search_trial_id = "
                f"'{trial_id}' and tags.checkpoint_kind = '{kind}'")
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        ready = sorted((v for v in found if v.status == "READY"), key=lambda v: int(v.version))
        return str(ready[0].version) if ready else None

    def version_with_alias(self, model_name: str, alias: str) -> str | None:
        """The version of `model_name` that `alias` points at, None when none does (or the store cannot say: the
        summary line it serves is not worth failing a finished sweep)."""
        try:
            return str(self._client.get_model_version_by_alias(model_name, alias).version)
        except Exception:  # noqa: BLE001 - no such alias or model, or the store away: "not known" either way
            return None

    def end(self, status: str = "FINISHED", timeout_s: float = 120.0) -> bool:
        """Deliver the summary metrics and end the parent run; False (with a warning) if the store stayed
        unreachable for `timeout_s`."""
        self._end_status = status
        done = self._sender.drain(timeout_s)
        if not done:
            warn(f"sweep {self.sweep_name}: tracking store unreachable for {timeout_s:.0f}s "
                  f"({self._sender.last_error}); the parent run stays RUNNING")
        return done


