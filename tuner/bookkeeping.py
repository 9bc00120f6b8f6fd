"""The sweep driver's bookkeeping: the budget, every trial's child run and outcome, the rejected configs,
and the two adapters through which Ray Tune calls them (`SweepCallback`, `BudgetStop`).

All of it runs in the driver, the only writer of MLflow and of the Optuna study. Tune pickles these
objects into the experiment state that --resume reads, so each is a module-level class that holds plain
values or objects that reconnect by themselves (`tracking.TrialRuns`, the study inside the searcher),
and gets what it uses through its constructor (tuner.run.new_tuner wires them):

    SweepCallback -> OutcomeRecorder -> TrialRuns      (the child runs)
                                     -> SpaceSearcher  (its study: which trials are finished)
                                     -> BudgetStopper  <- BudgetStop (Tune's stopper)
    SpaceSearcher -> RejectionRecorder -> TrialRuns    (the same object)

Tune pickles the callback and the searcher together, when the Tuner is made, so a resumed driver gets
them back still sharing one TrialRuns and one searcher, hence one study; the searcher's own snapshots
leave `on_rejected` out to keep it so. Tune snapshots its stopper on its own (see `BudgetStopper`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune
from ray.tune.experiment import Trial

from tuner import interrupts, outcomes
from tuner.config import TrainConfig
from tuner.console import trial_line
from tuner.errors import UserError
from tuner.searcher import SpaceSearcher, fail_trials, own_trials, tell_stopped
from tuner.sweep_state import BUDGET_LEDGER, ENDED_TRIALS, SweepState, ended_results
from tuner.tracking import EPOCH_METRICS, SYSTEM_PREFIX, TrialRuns
from tuner.trial_names import trial_label, trial_run_name

RESULT_FILE = "result.json"  # Ray's per-trial record of every reported result, one JSON object a line
FLUSH_TIMEOUT_S = 120.0


class BudgetStopper:
    """Stops the whole sweep once the trials' GPU-seconds (GPU share x wall time) reach budget.gpu_hours,
    their epochs together reach budget.epochs, or the sweep has run budget.wall_time_s.

    What has been spent is written to a ledger file (`budget.json` of the sweep's state under --storage,
    tuner/sweep_state.py) after every result, for the
    next driver of the sweep: Tune restores its stopper for --resume from its own periodic snapshot, which
    can be older than the last results, and the recorder of a resumed driver holds a copy of its own
    (from the Tuner's pickle). So a BudgetStopper that comes out of a pickle reads the ledger once, at its
    first use; one made in this process is the one both the stopper and the recorder hold. The wall-time
    clock runs only while a driver runs, and adds up over resumes.
    """

    def __init__(self, gpu_hours: float | None = None, epochs: int | None = None,
                 wall_time_s: float | None = None, ledger: SweepState | None = None) -> None:
        self.limit_s = gpu_hours * 3600 if gpu_hours else None
        self.limit_epochs = epochs
        self.limit_wall_s = wall_time_s
        self.ledger = ledger
        self.spent: dict[str, float] = {}  # GPU-seconds per trial
        self.epochs: dict[str, int] = {}
        self.wall_s = 0.0
        self.reason: str | None = None  # which budget ran out
        self._last_check: float | None = None
        self._read_ledger = ledger is None or not ledger.exists(BUDGET_LEDGER)  # a new sweep: nothing to read

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _last_check=None, _read_ledger=False)

    def record(self, trial_id: str, result: dict) -> None:
        """A trial's latest result: both figures are cumulative per trial."""
        self._catch_up()
        self.spent[trial_id] = float(result.get("gpu_seconds", 0.0))
        self.epochs[trial_id] = int(result.get("epoch", 0))
        self._write()

    def spent_reason(self) -> str | None:
        """Which budget ran out (gpu_hours, epochs, wall_time), or None; advances the wall-time clock."""
        self._catch_up()
        now = time.monotonic()
        if self._last_check is not None:
            self.wall_s += now - self._last_check
        self._last_check = now
        if self.reason is None:
            if self.limit_s is not None and sum(self.spent.values()) >= self.limit_s:
                self.reason = "gpu_hours"
            elif self.limit_epochs is not None and sum(self.epochs.values()) >= self.limit_epochs:
                self.reason = "epochs"
            elif self.limit_wall_s is not None and self.wall_s >= self.limit_wall_s:
                self.reason = "wall_time"
            if self.reason is not None:
                self._write()
        return self.reason

    def _catch_up(self) -> None:
        if self._read_ledger:
            return
        self._read_ledger = True
        state = read_ledger(self.ledger) if self.ledger is not None else None
        if state is not None:
            # Both figures only grow per trial, and a pickled copy may be older than the ledger or newer.
            for mine, theirs in ((self.spent, state["gpu_seconds"]), (self.epochs, state["epochs"])):
                mine.update({trial: max(value, mine.get(trial, value)) for trial, value in theirs.items()})
            self.wall_s = max(self.wall_s, state["wall_seconds"])
            self.reason = self.reason or state["spent"]

    def _write(self) -> None:
        if self.ledger is not None:  # written as budget.json.partial, then moved: never half a ledger
            ledger = {"gpu_seconds": self.spent, "epochs": self.epochs, "wall_seconds": self.wall_s,
                      "spent": self.reason}
            self.ledger.best_effort("the budget ledger", lambda: self.ledger.write_json(BUDGET_LEDGER, ledger))


def read_ledger(state: SweepState) -> dict | None:
    """The budget ledger of a sweep (None when it has none yet); one line when it is not one."""
    ledger = state.read_json(BUDGET_LEDGER)
    if ledger is None:
        return None

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    ok = (isinstance(ledger.get("gpu_seconds"), dict) and isinstance(ledger.get("epochs"), dict)
          and all(number(v) for part in ("gpu_seconds", "epochs") for v in ledger[part].values())
          and number(ledger.get("wall_seconds")) and ledger.get("spent") in (None, "gpu_hours", "epochs", "wall_time"))
    if not ok:
        raise UserError(f"the budget ledger {state.describe(BUDGET_LEDGER)} is damaged (not the ledger tuner "
                        "writes); restore it from a backup, or delete it to count the budget from zero")
    return ledger


class BudgetStop(tune.Stopper):
    """The budget as Tune's Stopper: every result is counted, and Tune asks before each step."""

    def __init__(self, budget: BudgetStopper) -> None:
        self.budget = budget

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.budget.record(trial_id, result)
        return False

    def stop_all(self) -> bool:
        return self.budget.spent_reason() is not None


class RejectionRecorder:
    """Records a configuration rejected by the constraints as an `infeasible` child run."""

    def __init__(self, runs: TrialRuns) -> None:
        self.runs = runs

    def __call__(self, index: int, config: TrainConfig, reason: str) -> None:
        trial_id = f"rejected-{index:04d}"
        self.runs.start(trial_id, index, config, reopen=False)
        self.runs.finish(trial_id, outcomes.INFEASIBLE, {"tuner.infeasible_reason": reason})


class OutcomeRecorder:
    """Every trial's child run, from its start to its outcome, and one progress line per trial.

    Outcomes are decided here because a trial stopped by ASHA is ended by Ray and cannot say so itself.
    The searcher's study says which trials are finished across drivers; the budget says whether it ran out.
    """

    def __init__(self, runs: TrialRuns, searcher: SpaceSearcher, budget: BudgetStopper, metric: str,
                 max_epochs: int, trials: int) -> None:
        self.runs, self.searcher, self.budget = runs, searcher, budget
        self.metric, self.max_epochs, self.trials = metric, max_epochs, trials
        self.done = 0
        self._ended: set[str] = set()  # trials this driver gave an outcome
        self._backfilled = False
        self._stored_last: dict[str, dict] = {}  # each trial's last result-file row, as backfill read it
        self._ended_results: dict[str, dict] = {}  # sweep_state.ENDED_TRIALS: read once, then this driver's adds
        self._ended_read = False
        self._finished_before: set[str] = set()  # trials the study held finished when this driver started

    def __setstate__(self, state: dict) -> None:
        # Unpickled by a resumed driver: ENDED_TRIALS may hold more than this snapshot (read it again). The
        # defaults serve a recorder pickled before these attributes existed.
        self.__dict__.update({"_ended_results": {}, "_finished_before": set(), **state, "_ended_read": False})

    @property
    def state(self) -> SweepState | None:
        """The sweep's state under --storage (the same object the budget writes its ledger to)."""
        return self.budget.ledger

    def verify_restored(self, trials: list[Trial]) -> None:
        """At a resumed driver's first step, before anything is sampled or written: Ray restored every trial
        its newest experiment state lists (it starts afresh, with a log line only, when it cannot)."""
        expected = self.state.expected_trials if self.state is not None else None
        if not expected:
            return
        missing = expected - {trial.trial_id for trial in trials}
        if missing:
            raise RestoreFailed(f"Ray did not restore {len(missing)} of the {len(expected)} trials in the experiment "
                                f"state of sweep {self.state.name} (e.g. {sorted(missing)[0]}): its state files "
                                f"under {self.state.storage_uri} are damaged or unreadable; nothing was written. "
                                "Delete the newest experiment_state-*.json to resume from the snapshot before it")
        self.state.expected_trials = None

    def record_digests(self) -> None:
        """The digests of the state files Ray has just written to this driver's staging folder (before it
        uploads them), so that a later --resume can tell them from planted ones."""
        if self.state is not None:
            # Not stored during an outage: Ray's own upload of those files fails then too, and the next snapshot
            # records the folder again; a file uploaded with no digest is refused by --resume, never unpickled.
            self.state.best_effort("the digests of Ray's state files",
                                   lambda: self.state.record_digests(ray_staging_folder(self.state.name)))

    def count_finished(self) -> None:
        """Start the progress count at the trials already finished (a resumed sweep's earlier drivers); not
        those a warm start copied from another sweep (`own_trials`), which this sweep never ran."""
        finished = {t.user_attrs["ray_trial_id"] for t in own_trials(self.searcher.study)
                    if "ray_trial_id" in t.user_attrs and t.state.is_finished()
                    and not t.user_attrs.get(outcomes.ABANDONED)}
        self.done, self._finished_before = len(finished), finished

    def backfill(self, trials: list[Trial]) -> None:
        """Log every epoch in the trials' own result files under --storage: what an earlier driver of this
        sweep received but had not written when it died. Done once, at this driver's first step, where
        only a resumed sweep has trials yet. Steps the runs already have are skipped (`TrialRuns` never
        sends a step twice)."""
        if self._backfilled:
            return
        self._backfilled = True
        if not trials:
            return
        try:
            found = read_results(trials[0].storage.storage_filesystem, trials[0].remote_experiment_path)
        except OSError as err:
            print(f"cannot read the trials' result files ({err}); epochs an earlier driver did not write stay "
                  "missing", flush=True)
            return
        self._stored_last = {trial_id: rows[-1] for trial_id, rows in found}
        for trial_id, rows in found:
            config = rows[0].get("config") or {}
            if "train" in config:
                self.runs.start(trial_id, int(config.get("index", 0)), TrainConfig.from_dict(config["train"]),
                                reopen=False)
            for row in rows:
                self._log_epoch(trial_id, row)

    def started(self, trial: Trial) -> None:
        if self.ended_earlier(trial.trial_id):
            return  # its run has its outcome: reopening it would undo that
        self.runs.start(trial.trial_id, int(trial.config.get("index", 0)), TrainConfig.from_dict(trial.config["train"]))

    def ended_earlier(self, trial_id: str) -> bool:
        """Whether an earlier driver of the sweep gave this trial its outcome (the study has it finished) and
        Ray, restored from a snapshot older than that, started it again: it then reports once, with
        outcomes.ENDED_EARLIER, and ends; nothing about it is recorded again."""
        return trial_id not in self._ended and self.searcher.finished_in_study(trial_id)

    def record_ended(self, trial_id: str, result: dict) -> None:
        """Note the outcome's result under --storage (sweep_state.ENDED_TRIALS) for a trial Ray may restart."""
        if self.state is None:
            return
        last = {k: v for k, v in result.items() if k in ("epoch", self.metric, "gpu_seconds", "trial_seconds")
                and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "epoch" in last and self.metric in last:
            self._ended_results[trial_id] = {**last, "epoch": int(last["epoch"])}
            self.state.best_effort("the record of ended trials", self._write_ended)

    def _write_ended(self) -> None:
        if not self._ended_read:  # earlier drivers' entries, once: after that this driver holds them all
            self._ended_results = {**ended_results(self.state), **self._ended_results}
            self._ended_read = True
        self.state.write_json(ENDED_TRIALS, self._ended_results)

    def result(self, trial: Trial, result: dict) -> None:
        if result.get(outcomes.ENDED_EARLIER):
            return
        self._log_epoch(trial.trial_id, result)

    def _log_epoch(self, trial_id: str, result: dict) -> None:
        for row in result.get(outcomes.RESUMED_EPOCHS) or []:  # what its checkpoint held (outcomes.py)
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                self._log_epoch(trial_id, row)
        if "epoch" not in result or result.get("diverged") or result.get("error"):
            return  # a failed epoch has no metrics to keep
        # The worker's report time: the same epoch sent again (a backfill, a retry) is the same metric.
        timestamp_ms = int(float(result["reported_at"]) * 1000) if "reported_at" in result else None
        # gpu_seconds as a metric the UI can chart and sort; system/* only on the epochs with a fresh sample
        logged = {k: result[k] for k in (*EPOCH_METRICS, "gpu_seconds") if k in result}
        logged.update({k: v for k, v in result.items() if k.startswith(SYSTEM_PREFIX)})
        self.runs.log_epoch(trial_id, logged, int(result["epoch"]), timestamp_ms)

    def complete(self, trial_id: str, result: dict, errored: bool, outcome: str | None = None,
                 create_run: bool = True, name: str | None = None) -> None:
        if result.get(outcomes.ENDED_EARLIER) or (trial_id in self._finished_before and trial_id not in self._ended):
            # Counted, logged and given its outcome by the driver that ended it. Without ENDED_EARLIER: a driver
            # killed after the study had its outcome but before ended.json did; Ray restarted it and it trained on.
            return
        self._log_epoch(trial_id, result)  # Tune may end a trial on a result it did not pass on first
        outcome = outcome or outcomes.of_result(result, errored, self.max_epochs)
        self.done += 1
        self.runs.finish(trial_id, outcome, _outcome_tags(result), create=create_run)
        self.runs.count_finished(trial_id, self.done)
        print(trial_line(self.done, self.trials, trial_id, outcome, result, self.metric, self.runs, name),
              flush=True)
        self._ended.add(trial_id)
        self.record_ended(trial_id, result)
        if self.state is not None:
            self.state.upload_study()

    def experiment_end(self, trials: list[Trial]) -> None:
        """Finish the trials Tune ended without saying so, then deliver everything buffered.

        - Trials a killed driver started after its last snapshot: the resumed driver does not know them
          and samples others instead. Outcome `abandoned`, FAIL in the study.
        - Trials the budget stopped: outcome `stopped_by_budget_at_epoch_N`, PRUNED in the study (FAIL with
          `not_run` for a trial stopped before its first epoch). After an interrupted driver (Ctrl-C) no
          budget is spent and they stay unfinished, for --resume.
        - Trials an earlier driver finished: their outcome, where that driver could not write it.
        """
        try:
            self.backfill(trials)
            self._finish_unended(trials)
        finally:
            if self.state is not None:
                self.state.upload_study()
            if not self.runs.flush(FLUSH_TIMEOUT_S):
                print(f"tracking store unreachable for {FLUSH_TIMEOUT_S:.0f} s: {self.runs.pending} epoch metrics "
                      "not written; --resume writes them from the trials' result files", flush=True)

    def _finish_unended(self, trials: list[Trial]) -> None:
        import optuna

        study = self.searcher.study
        # The study knows which trials nobody has finished, across resumes too (Tune's trials do not).
        unfinished = {t.user_attrs["ray_trial_id"]: t for t in study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if "ray_trial_id" in t.user_attrs}
        results = {trial.trial_id: trial.last_result or {} for trial in trials}
        configs = {trial.trial_id: trial.config for trial in trials}
        for trial in trials:
            ended_earlier = (trial.last_result or {}).get(outcomes.ENDED_EARLIER)
            if (trial.status in (Trial.TERMINATED, Trial.ERROR) and trial.trial_id not in unfinished
                    and trial.trial_id not in self._ended and not ended_earlier):
                result = trial.last_result or {}
                self.runs.finish(trial.trial_id, outcomes.of_result(result, trial.status == Trial.ERROR,
                                                                    self.max_epochs),
                                 _outcome_tags(result), create=False, keep_outcome=True)
        abandoned = [t for trial_id, t in unfinished.items() if trial_id not in results]
        if abandoned and self.state is not None:  # a trial with a checkpoint trained: never abandoned
            lost = [t for t in abandoned if self.state.trial_has_checkpoint(t.user_attrs["ray_trial_id"])]
            self._end_lost(study, lost)
            abandoned = [t for t in abandoned if t not in lost]
        for frozen in abandoned:
            epochs = max(frozen.intermediate_values, default=0)
            print(f"trial {frozen.user_attrs['ray_trial_id']} abandoned: its driver died after {epochs} epochs, "
                  "before saving it", flush=True)
            self.runs.finish(frozen.user_attrs["ray_trial_id"], outcomes.ABANDONED, {"tuner.epochs_run": str(epochs)})
        fail_trials(study, abandoned, outcomes.ABANDONED)

        reason = self.budget.spent_reason()
        if reason is None:
            return
        print(f"budget.{reason} is spent: the sweep stops here", flush=True)
        stopped, not_run = [], []
        for trial_id, frozen in unfinished.items():
            result = results.get(trial_id)
            if result is None:
                continue  # abandoned
            if "epoch" not in result and frozen.intermediate_values:
                # It ran under a driver that was killed before its snapshot held any result; the budget ran
                # out before the resumed driver started it again. The study has what it reported.
                result = self._heard(frozen, trial_id)
            by_budget = outcomes.of_result(result, errored=False, max_epochs=self.max_epochs, stopped_by="budget")
            if "epoch" in result:
                stopped.append((frozen, result))
                self.complete(trial_id, result, errored=False, outcome=by_budget)
            else:  # started without finishing an epoch, or never started: no MLflow run is made for it
                not_run.append(frozen)
                self.complete(trial_id, {"epoch": 0}, errored=False, create_run=False,
                              outcome=outcomes.stopped(0, "budget"), name=self._would_be_named(configs[trial_id]))
        tell_stopped(study, stopped, self.metric, self.max_epochs)
        fail_trials(study, not_run, outcomes.NOT_RUN)

    def errored(self, trial_id: str, result: dict) -> None:
        """A trial Ray gave up on (its retries spent). After a driver kill its last result can be older than its
        checkpoints: a resumed trial that failed before it reported again ends at its newest checkpoint's epoch,
        with the epochs that checkpoint holds, as a lost trial does (_end_lost)."""
        saved = [] if result.get(outcomes.ENDED_EARLIER) else self._checkpointed_epochs(trial_id)
        if saved and saved[-1]["epoch"] > int(result.get("epoch", 0)):
            result = {**result, **saved[-1], outcomes.RESUMED_EPOCHS: saved}
        self.complete(trial_id, result, errored=True)

    def _would_be_named(self, config: dict) -> str | None:
        """The run name of a trial from its Ray config, for one whose run was never made (None without one)."""
        if "train" not in config:
            return None
        return trial_run_name(int(config.get("index", 0)), TrainConfig.from_dict(config["train"]), self.runs.outline)

    def _heard(self, frozen: Any, trial_id: str) -> dict:
        """The last result the study holds of a trial (its last intermediate value), as a result; {} if none."""
        if not frozen.intermediate_values:
            return {}
        epoch = max(frozen.intermediate_values)
        return {"epoch": epoch, self.metric: frozen.intermediate_values[epoch],
                "gpu_seconds": self.budget.spent.get(trial_id, 0.0)}

    def _end_lost(self, study: Any, lost: list[Any]) -> None:
        """Trials a killed driver started, and that checkpointed, after its last snapshot of Ray's state: Ray
        does not list them, so no driver can continue them. They end as stopped at their last epoch (outcome
        `stopped_by_driver_kill_at_epoch_N`, PRUNED in the study, so TPE learns from what they measured and
        does not hold them as running forever); their checkpoints stay under --storage."""
        stopped, not_run = [], []  # (trial, its last result); trials that never finished an epoch
        for frozen in lost:
            trial_id = frozen.user_attrs["ray_trial_id"]
            # Its last epoch: from its result file (read by the backfill) or from the study, whichever is later
            # (the killed driver may have told the study of an epoch its result file never got, or not heard of one)
            # getattr: a recorder pickled with a sweep before this attribute existed lacks it
            result = getattr(self, "_stored_last", {}).get(trial_id) or {}
            heard = self._heard(frozen, trial_id)
            if heard.get("epoch", 0) > int(result.get("epoch", 0)):
                result = heard
            # Its newest checkpoint, which the worker wrote to --storage itself: the killed driver may have
            # logged epochs that neither the result file (synced by the driver) nor the stored study holds. They
            # reach MLflow (here) and the study (tell_stopped) the way a restarted trial's first result brings them.
            saved = self._checkpointed_epochs(trial_id)
            if saved:
                if saved[-1]["epoch"] > int(result.get("epoch", 0)):
                    result = {**result, **saved[-1]}
                result = {**result, outcomes.RESUMED_EPOCHS: saved}
                self._log_epoch(trial_id, result)
            epoch = int(result.get("epoch", 0))
            print(f"trial {trial_id} was started after its killed driver's last snapshot: Ray cannot continue it; "
                  f"it ends stopped after {epoch} epochs (its checkpoints stay under --storage)", flush=True)
            outcome = outcomes.of_result(result, errored=False, max_epochs=self.max_epochs, stopped_by="driver_kill")
            self.runs.finish(trial_id, outcome, _outcome_tags(result))
            if epoch and self.metric in result:
                stopped.append((frozen, result))
            else:
                not_run.append(frozen)
        tell_stopped(study, stopped, self.metric, self.max_epochs)
        fail_trials(study, not_run, outcomes.NOT_RUN)

    def _checkpointed_epochs(self, trial_id: str) -> list[dict]:
        """The per-epoch metrics kept in the trial's newest readable checkpoint under --storage (a worker killed
        while writing its newest leaves an older one whole); [] when none can be read (weights_only: nothing in
        it runs)."""
        from tuner.checkpoint import checkpoint_from_bytes
        from tuner.trainable import CHECKPOINT_FILE

        for folder, data in self.state.checkpoint_files(trial_id, CHECKPOINT_FILE) if self.state is not None else ():
            try:
                history = checkpoint_from_bytes(data, f"of trial {trial_id}").get("history")
            except UserError as err:
                print(f"{err} ({folder}); trying an older checkpoint", flush=True)
                continue
            if isinstance(history, list):
                return [row for row in history if isinstance(row, dict) and isinstance(row.get("epoch"), int)]
        return []


def _outcome_tags(result: dict) -> dict[str, str]:
    # a diverged or out-of-memory trial reports the epoch it failed in, which did not finish
    failed_epoch = 1 if result.get("diverged") or result.get("error") else 0
    return {"tuner.gpu_seconds": f"{float(result.get('gpu_seconds', 0.0)):.1f}",
            "tuner.epochs_run": str(int(result.get("epoch", 0)) - failed_epoch)}


class SweepCallback(tune.Callback):
    """Tune's calls into the recorder; all of them run in the driver."""

    def __init__(self, recorder: OutcomeRecorder) -> None:
        self.recorder = recorder

    def setup(self, **info: Any) -> None:
        interrupts.watch_stop_signals()
        self.recorder.count_finished()

    def get_state(self) -> dict | None:
        """Tune asks while it saves its experiment state, after writing the state files to the driver's
        staging folder and before uploading them: their digests are recorded then. Nothing to save."""
        self.recorder.record_digests()
        return None

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self.recorder.verify_restored(trials)
        self.recorder.backfill(trials)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.recorder.started(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        self.recorder.result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.recorder.complete(trial.trial_id, trial.last_result or {}, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.recorder.errored(trial.trial_id, trial.last_result or {})

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.recorder.experiment_end(trials)


class RestoreFailed(UserError):
    """Ray did not restore the trials its experiment state lists."""


def ray_staging_folder(name: str) -> Path | None:
    """The local folder where this process's Tune writes the experiment state of sweep `name` before it
    uploads it (`StorageContext.experiment_driver_staging_path`; one per Tune run in a process)."""
    from ray.train.constants import _get_ray_train_session_dir

    try:
        found = list(Path(_get_ray_train_session_dir()).glob(f"*/{name}/driver_artifacts"))
    except Exception:  # noqa: BLE001 - Ray not initialised: nothing staged
        return None
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def trial_dirname(trial: Trial) -> str:
    """`t007-1a2b3c4d`: Ray's default folder name spells out the whole config (hundreds of characters)."""
    return f"{trial_label(int(trial.config.get('index', 0)))}-{trial.trial_id}"


def read_results(fs: pyarrow.fs.FileSystem, experiment: str) -> list[tuple[str, list[dict]]]:
    """(trial id, its results in order) for every trial folder of the experiment at `experiment` on `fs`
    (local or s3:// alike). A line cut short by a driver that died mid-write is skipped."""
    found = []
    for folder in fs.get_file_info(pyarrow.fs.FileSelector(experiment, allow_not_found=True)):
        if folder.type != pyarrow.fs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{folder.path}/{RESULT_FILE}") as stream:
                lines = stream.read().decode().splitlines()
        except (FileNotFoundError, OSError):
            continue
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if rows and "trial_id" in rows[0]:
            found.append((rows[0]["trial_id"], rows))
    return found
