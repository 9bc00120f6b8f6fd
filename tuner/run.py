"""`python -m tuner.run --space widths.yaml`: a search-space file in, the best configuration and checkpoint out.

The driver validates the space (nothing starts on a bad file), checks the tracking server, loads the
data once, connects to Ray (local by default, `--address` for a cluster), and runs
`tune.Tuner(SpaceSearcher (Optuna TPE) + ASHA)`. Every trial logs to MLflow from where it runs; at the
end the best trial's best checkpoint is registered in the MLflow model registry.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tuner.errors import UserError, exit_on_user_error
from tuner.space import Budget, SearchSpace, describe, load_space
from tuner.train import TrainConfig

SPACE_COPY = "space.yaml"
STUDY_FILE = "optuna.db"
BUDGET_LEDGER = "budget.json"
DEFAULT_STORAGE = "runs"

EXAMPLES = """examples:
  python -m tuner.run --space smoke.yaml                         # local Ray, local MLflow store
  python -m tuner.run --space widths.yaml --dry-run              # validate and estimate, start nothing
  python -m tuner.run --space widths.yaml --address auto --storage s3://bucket/tuner \\
      --mlflow-uri http://mlflow.internal:5000                   # on a Ray cluster
  python -m tuner.run --resume widths-20261125-101500            # continue a sweep whose driver died
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tuner.run", description=__doc__.split("\n")[0],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", help="space file; a bare name is looked up in search_spaces/")
    parser.add_argument("--name", help="sweep name (default: <space>-<date>-<time>)")
    parser.add_argument("--resume", metavar="NAME", help="continue the sweep NAME (finished trials are kept)")
    parser.add_argument("--warm-start", metavar="SWEEP", help="seed the search with the trials of sweep SWEEP")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the plan, start nothing")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help="results location shared by all nodes: a path or s3://... (default: ./runs)")
    parser.add_argument("--mlflow-uri", help="tracking server (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py (default: data)")
    parser.add_argument("--trials", type=int, help="override budget.trials")
    args = parser.parse_args(argv)
    if not args.space and not args.resume:
        parser.error("give --space FILE (or --resume NAME)")
    return args


@dataclass
class SweepPlan:
    space: SearchSpace
    name: str
    storage: str                # what Ray writes to (local absolute path or URI)
    local_dir: Path             # this driver's folder for the sweep: space copy, Optuna study
    resume: bool = False
    warm_start: str | None = None


def plan_sweep(args: argparse.Namespace) -> SweepPlan:
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    local_root = Path(args.storage).resolve() if "://" not in args.storage else Path(DEFAULT_STORAGE).resolve()
    if args.resume:
        local_dir = local_root / args.resume
        if not (local_dir / SPACE_COPY).is_file():
            known = sorted(p.name for p in local_root.glob("*/") if (p / SPACE_COPY).is_file())
            raise UserError(f"no sweep '{args.resume}' under {local_root}; sweeps there: {', '.join(known) or 'none'}"
                            " (pass the same --storage as the first run)")
        space = load_space(local_dir / SPACE_COPY)
        return SweepPlan(space, args.resume, storage, local_dir, resume=True)
    space = load_space(args.space)
    if args.trials is not None:
        if args.trials < 1:
            raise UserError(f"--trials {args.trials} must be at least 1")
        space = replace(space, budget=replace(space.budget, trials=args.trials))
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local_dir = local_root / name
    if (local_dir / SPACE_COPY).exists():
        raise UserError(f"sweep '{name}' already exists in {local_root}: use --resume {name} or another --name")
    warm = None
    if args.warm_start:
        warm_db = local_root / args.warm_start / STUDY_FILE
        if not warm_db.is_file():
            raise UserError(f"--warm-start {args.warm_start}: no Optuna study at {warm_db}; give a finished sweep name")
        warm = args.warm_start
    return SweepPlan(space, name, storage, local_dir, warm_start=warm)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_cluster_resources(space: SearchSpace) -> None:
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    per_node_cpus = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    per_node_gpus = max((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    want = space.resources
    if want.gpus > per_node_gpus:
        raise UserError(f"{space.path}: resources.gpus={want.gpus} per trial but the largest node has "
                        f"{per_node_gpus:g} GPU ({gpus:g} in the cluster); lower resources.gpus or add GPU nodes")
    if want.cpus > per_node_cpus:
        raise UserError(f"{space.path}: resources.cpus={want.cpus} per trial but the largest node has "
                        f"{per_node_cpus:g} CPUs ({cpus:g} in the cluster); lower resources.cpus")


def connect_ray(address: str | None) -> str:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Tune snapshots its experiment state (what --resume reads) every 10 s by default; a trial that ends
    # after the last snapshot is resumed from its last checkpoint. A 2 s period costs little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # With GPU epochs of 1-2 s, num_to_keep=2 forces a snapshot about every epoch and Tune warns each time.
    # Those snapshots keep --resume consistent, and report + checkpoint stayed at 1.8% of the epoch time in
    # the widths.yaml sweep on an H200 (docs/benchmarks.md), so the warning is noise there.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        else:
            ray.init(address="local", include_dashboard=False, logging_level="WARNING")  # never a stale cluster
    except ConnectionError as err:
        raise UserError(f"cannot reach the Ray cluster at {address} ({err}); start it with `ray start --head` "
                        "or fix --address (with token auth, export RAY_AUTH_MODE=token)") from None
    return address or "local"


class BudgetStopper:
    """Stops the whole sweep once the trials' GPU-seconds (GPU share x wall time) reach budget.gpu_hours,
    their epochs together reach budget.epochs, or the sweep has run budget.wall_time_s.

    Tune restores its stopper for --resume from the pickle it took when the sweep started, before any
    result; so what has been spent is also kept in a ledger file in the sweep's folder, read back on
    first use. The wall-time clock runs only while a driver runs, and adds up over resumes.
    """

    def __init__(self, gpu_hours: float | None = None, epochs: int | None = None,
                 wall_time_s: float | None = None, ledger: Path | None = None) -> None:
        self.limit_s = gpu_hours * 3600 if gpu_hours else None
        self.limit_epochs = epochs
        self.limit_wall_s = wall_time_s
        self.ledger = ledger
        self.spent: dict[str, float] = {}
        self.epochs: dict[str, int] = {}
        self.wall_s = 0.0
        self.reason: str | None = None  # which budget ran out
        self._last_check: float | None = None
        self._read_ledger = False

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _last_check=None, _read_ledger=False)  # a new driver: read the ledger

    def _catch_up(self) -> None:
        if self._read_ledger:
            return
        self._read_ledger = True
        if self.ledger is not None and self.ledger.is_file():
            state = json.loads(self.ledger.read_text())
            self.spent = {**state["gpu_seconds"], **self.spent}
            self.epochs = {**state["epochs"], **self.epochs}
            self.wall_s = max(self.wall_s, state["wall_seconds"])
            self.reason = self.reason or state["spent"]

    def _write(self) -> None:
        if self.ledger is not None:
            partial = self.ledger.with_suffix(".partial")
            partial.write_text(json.dumps({"gpu_seconds": self.spent, "epochs": self.epochs,
                                           "wall_seconds": self.wall_s, "spent": self.reason}))
            partial.replace(self.ledger)  # a driver killed mid-write leaves the previous ledger whole

    def __call__(self, trial_id: str, result: dict) -> bool:
        self._catch_up()
        self.spent[trial_id] = float(result.get("gpu_seconds", 0.0))  # both are cumulative per trial
        self.epochs[trial_id] = int(result.get("epoch", 0))
        self._write()
        return False

    def stop_all(self) -> bool:
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
        return self.reason is not None

    @classmethod
    def read(cls, ledger: Path) -> BudgetStopper:
        """What the ledger holds: per-trial spending, and `reason`, the budget that ran out (or None)."""
        stopper = cls(ledger=ledger)
        stopper._catch_up()
        return stopper


class SweepInterrupted(Exception):
    """Ctrl-C: Tune stopped the trials and saved its state; --resume continues the sweep."""


# The driver's SweepRun by parent run id. Tune pickles callbacks and the searcher into its experiment
# state (for --resume), so they hold the run id and find the live tracking object here, in the driver.
_LIVE_SWEEPS: dict[str, Any] = {}
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_s")


class OutcomeRecorder:
    """Driver-side bookkeeping of every trial: outcome tags in MLflow and one progress line each.

    Outcomes are decided here because a trial stopped by ASHA is ended by Ray and cannot say so itself.
    Every result is also remembered by the SweepRun, which fills in at the end any epoch metric that a
    worker could not deliver (a tracking outage while Ray stopped the trial).
    """

    def __init__(self, parent_run_id: str, metric: str, max_epochs: int, trials: int, study_url: str,
                 study_name: str, ledger: Path) -> None:
        self.parent_run_id, self.metric = parent_run_id, metric
        self.max_epochs, self.trials, self.done = max_epochs, trials, 0
        # Tune ends the trials still running when the budget is spent without telling callbacks or the
        # searcher why; the stopper's ledger says whether it was spent.
        self.ledger = ledger
        self.study_url, self.study_name = study_url, study_name

    def outcome(self, result: dict, errored: bool, stopped_by: str = "asha") -> str:
        from tuner import outcomes

        return outcomes.of_result(result, errored, self.max_epochs, stopped_by)

    def result(self, trial: Any, result: dict) -> None:
        from tuner import tracking

        if "epoch" not in result or result.get("diverged") or result.get("error"):
            return
        config = TrainConfig.from_dict(trial.config["train"])
        _LIVE_SWEEPS[self.parent_run_id].record_epoch(
            trial.trial_id, {k: result[k] for k in EPOCH_METRICS if k in result}, int(result["epoch"]),
            run_name=tracking.trial_run_name(int(trial.config.get("index", 0)), config), config=config)

    def count_finished(self) -> None:
        """Start the progress count at the trials already finished (a resumed sweep's earlier drivers)."""
        import optuna

        from tuner.outcomes import ABANDONED

        study = optuna.load_study(study_name=self.study_name, storage=self.study_url)
        self.done = sum(1 for t in study.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs
                        and t.state.is_finished() and not t.user_attrs.get(ABANDONED))

    def complete(self, trial_id: str, result: dict, errored: bool, outcome: str | None = None,
                 create_run: bool = True) -> None:
        outcome = outcome or self.outcome(result, errored)
        self.done += 1
        value = result.get(self.metric)
        print(f"[{self.done}/{self.trials}] trial {trial_id} {outcome}"
              + (f", {self.metric} {value:.4f} at epoch {result.get('epoch')}" if value is not None else ""),
              flush=True)
        tags = {"tuner.gpu_seconds": f"{float(result.get('gpu_seconds', 0.0)):.1f}",
                # a diverged or out-of-memory trial reports the epoch it failed in, which did not finish
                "tuner.epochs_run": str(int(result.get("epoch", 0)) - (1 if result.get("diverged") or
                                                                       result.get("error") else 0))}
        _LIVE_SWEEPS[self.parent_run_id].set_trial_outcome(trial_id, outcome, tags, create=create_run)

    def experiment_end(self, trials: list) -> None:
        """Finish the trials Tune ended without saying so.

        - Trials a killed driver started after its last snapshot: the resumed driver does not know them
          and samples others instead. Outcome `abandoned`, FAIL in the study.
        - Trials the budget stopped: outcome `stopped_by_budget_at_epoch_N`, PRUNED in the study (FAIL with
          `not_run` for a trial stopped before its first epoch). After an interrupted driver (Ctrl-C) no
          budget is spent and they stay unfinished, for --resume.
        """
        import optuna

        from tuner.outcomes import ABANDONED
        from tuner.searcher import fail_trials, tell_stopped

        study = optuna.load_study(study_name=self.study_name, storage=self.study_url)
        # The study knows which trials nobody has finished, across resumes too (this recorder does not).
        unfinished = {t.user_attrs["ray_trial_id"]: t for t in study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if "ray_trial_id" in t.user_attrs}
        results = {trial.trial_id: trial.last_result or {} for trial in trials}
        abandoned = [t for trial_id, t in unfinished.items() if trial_id not in results]
        for frozen in abandoned:
            epochs = max(frozen.intermediate_values, default=0)
            print(f"trial {frozen.user_attrs['ray_trial_id']} abandoned: its driver died after {epochs} epochs, "
                  "before saving it", flush=True)
            _LIVE_SWEEPS[self.parent_run_id].set_trial_outcome(
                frozen.user_attrs["ray_trial_id"], ABANDONED, {"tuner.epochs_run": str(epochs)})
        fail_trials(study, abandoned, ABANDONED)

        ledger = BudgetStopper.read(self.ledger)
        if ledger.reason is None:
            return
        print(f"budget.{ledger.reason} is spent: the sweep stops here", flush=True)
        stopped, not_run = [], []
        for trial_id, frozen in unfinished.items():
            result = results.get(trial_id)
            if result is None:
                continue  # abandoned
            if "epoch" not in result and frozen.intermediate_values:
                # It ran under a driver that was killed before its snapshot held any result; the budget ran
                # out before the resumed driver started it again. The study has what it reported.
                epoch = max(frozen.intermediate_values)
                result = {"epoch": epoch, self.metric: frozen.intermediate_values[epoch],
                          "gpu_seconds": ledger.spent.get(trial_id, 0.0)}
            if "epoch" in result:
                stopped.append((frozen, result))
                self.complete(trial_id, result, errored=False,
                              outcome=self.outcome(result, errored=False, stopped_by="budget"))
            else:  # started without finishing an epoch, or never started: no MLflow run is made for it
                not_run.append(frozen)
                self.complete(trial_id, {"epoch": 0}, errored=False, create_run=False,
                              outcome=self.outcome({"epoch": 0}, errored=False, stopped_by="budget"))
        tell_stopped(study, stopped, self.metric, self.max_epochs)
        fail_trials(study, not_run, "not_run")


def _tune_callback(recorder: OutcomeRecorder) -> Any:
    from ray import tune

    class _Callback(tune.Callback):
        def __init__(self, recorder: OutcomeRecorder) -> None:
            self.recorder = recorder

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.recorder.result(trial, result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.recorder.complete(trial.trial_id, trial.last_result or {}, errored=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.recorder.complete(trial.trial_id, trial.last_result or {}, errored=True)

        def setup(self, **info: Any) -> None:
            from tuner import interrupts

            interrupts.watch_sigint()
            self.recorder.count_finished()

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.recorder.experiment_end(trials)

    return _Callback(recorder)


class RejectionRecorder:
    """Records a configuration rejected by the constraints as an `infeasible` child run."""

    def __init__(self, parent_run_id: str) -> None:
        self.parent_run_id = parent_run_id

    def __call__(self, index: int, config: TrainConfig, reason: str) -> None:
        from tuner import tracking

        _LIVE_SWEEPS[self.parent_run_id].set_trial_outcome(
            f"rejected-{index:04d}", "infeasible", {"tuner.infeasible_reason": reason},
            run_name=tracking.trial_run_name(index, config), config=config)


@dataclass
class SweepSummary:
    name: str
    best: dict[str, Any] | None
    trials: int
    rejected: int
    gpu_seconds: float
    epochs: int
    wall_seconds: float
    registered_version: str | None

    def metrics(self) -> dict[str, float]:
        values = {"trials": self.trials, "rejected_configs": self.rejected, "gpu_hours": self.gpu_seconds / 3600,
                  "epochs_total": self.epochs, "wall_seconds": self.wall_seconds}
        if self.best:
            values["best_val_acc"] = self.best["val_acc"]
        return values

    def text(self) -> str:
        lines = [f"sweep {self.name}: {self.trials} trials ({self.epochs} epochs), {self.rejected} infeasible "
                 f"configs rejected before launch, {self.gpu_seconds / 3600:.3f} GPU-hours, "
                 f"{self.wall_seconds:.0f} s"]
        if self.best is None:
            lines.append("no trial finished an epoch: nothing to register")
            return "\n".join(lines)
        b = self.best
        lines += [f"best trial {b['trial_id']}: val_acc {b['val_acc']:.4f} at epoch {b['epoch']} "
                  f"({b['epochs_run']} epochs run), {b['params']:,} params, {b['gpu_seconds'] / 3600:.3f} GPU-hours",
                  f"  config: {b['config']}",
                  f"  checkpoint: {b['checkpoint']}"]
        if self.registered_version:
            lines.append(f"  registered as model version {self.registered_version}")
        return "\n".join(lines)


def run_sweep(plan: SweepPlan, data: Any, sweep: Any) -> SweepSummary:
    """Build and run the Tuner (or restore it for --resume); register the best checkpoint."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuner import interrupts
    from tuner.checkpoint import load_checkpoint
    from tuner.searcher import SpaceSearcher, create_study, warm_start
    from tuner.trainable import CHECKPOINT_FILE, TrialSettings, train_trial

    space, started = plan.space, time.monotonic()
    _LIVE_SWEEPS[sweep.run_id] = sweep
    settings = TrialSettings(gpus=space.resources.gpus, metric=space.metric, tracking_uri=sweep.uri,
                             parent_run_id=sweep.run_id)
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data, settings=settings),
                                    {"cpu": space.resources.cpus, "gpu": space.resources.gpus})
    experiment = f"{plan.storage.rstrip('/')}/{plan.name}"
    if plan.resume:
        if not tune.Tuner.can_restore(experiment):
            raise UserError(f"sweep {plan.name} has no Ray experiment state at {experiment}; it cannot be resumed")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        study_url = f"sqlite:///{plan.local_dir / STUDY_FILE}"
        study = create_study(space, study_url, plan.name)
        if plan.warm_start:
            previous = create_study(space, f"sqlite:///{plan.local_dir.parent / plan.warm_start / STUDY_FILE}",
                                    plan.warm_start)
            print(f"warm start: {warm_start(study, previous)} trials copied from {plan.warm_start}", flush=True)
        searcher = SpaceSearcher(space, study, on_rejected=RejectionRecorder(sweep.run_id))
        sched = space.scheduler
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=sched.max_epochs, grace_period=sched.grace_period,
                                   reduction_factor=sched.reduction_factor)
                     if sched.type == "asha" else FIFOScheduler())
        ledger = plan.local_dir / BUDGET_LEDGER
        recorder = OutcomeRecorder(sweep.run_id, space.metric, sched.max_epochs, space.budget.trials, study_url,
                                   plan.name, ledger)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, metric=space.metric, mode=space.mode,
                num_samples=space.budget.trials, max_concurrent_trials=space.search.max_concurrent,
                reuse_actors=True,  # a fresh worker per trial re-imports torch and MLflow: seconds per trial
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=plan.name, storage_path=plan.storage, stop=_stopper(space.budget, ledger),
                callbacks=[_tune_callback(recorder)], verbose=1,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=space.metric,
                                                        checkpoint_score_order=space.mode),
                # A crashed worker resumes from its last checkpoint; diverged/OOM trials return normally
                # and so are never retried.
                failure_config=tune.FailureConfig(max_failures=3),
            ),
        )
    results = tuner.fit()
    if interrupts.interrupted():
        raise SweepInterrupted
    return summarise(plan, results, sweep, started, CHECKPOINT_FILE, load_checkpoint)


def trial_dirname(trial: Any) -> str:
    """`t007-1a2b3c4d`: Ray's default folder name spells out the whole config (hundreds of characters)."""
    return f"t{int(trial.config.get('index', 0)):03d}-{trial.trial_id}"


def _stopper(budget: Budget, ledger: Path) -> Any:
    from ray import tune

    class _Budget(tune.Stopper):
        def __init__(self) -> None:
            self.budget = BudgetStopper(budget.gpu_hours, budget.epochs, budget.wall_time_s, ledger)

        def __call__(self, trial_id: str, result: dict) -> bool:
            return self.budget(trial_id, result)

        def stop_all(self) -> bool:
            return self.budget.stop_all()

    return _Budget()


def summarise(plan: SweepPlan, results: Any, sweep: Any, started: float, checkpoint_file: str,
              load_checkpoint: Any) -> SweepSummary:
    """Totals over all trials; the best checkpoint of any trial (by the space's metric) is registered."""
    space = plan.space
    sign = 1 if space.mode == "max" else -1
    candidates = [(ckpt, m, r) for r in results if r.metrics and not r.metrics.get("diverged")
                  for ckpt, m in r.best_checkpoints if space.metric in m]
    totals = [r.metrics or {} for r in results]
    best, version = None, None
    if candidates:
        checkpoint, metrics, result = max(candidates, key=lambda c: sign * c[1][space.metric])
        best = {"trial_id": metrics.get("trial_id", ""), "val_acc": metrics["val_acc"], "epoch": metrics["epoch"],
                "epochs_run": result.metrics["epoch"], "params": int(metrics["params"]),
                "gpu_seconds": float(result.metrics.get("gpu_seconds", 0.0)),
                "config": result.config.get("train"), "checkpoint": checkpoint.path}
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(Path(folder) / checkpoint_file)
        version = sweep.register_best(state, best["trial_id"], float(best["val_acc"]))
    return SweepSummary(plan.name, best, len(results), _rejected_count(plan),
                        sum(float(m.get("gpu_seconds", 0.0)) for m in totals),
                        sum(int(m.get("epoch", 0)) for m in totals), time.monotonic() - started, version)


def _rejected_count(plan: SweepPlan) -> int:
    import optuna

    study = optuna.load_study(study_name=plan.name, storage=f"sqlite:///{plan.local_dir / STUDY_FILE}")
    return sum(1 for t in study.get_trials(deepcopy=False) if "infeasible" in t.user_attrs)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = plan_sweep(args)
    space = plan.space
    if args.dry_run:
        print(describe(space))
        print(f"dry run: no trial started (sweep would be named {plan.name})")
        return

    from tuner import tracking
    from tuner.data import load_splits

    uri = tracking.resolve_tracking_uri(args.mlflow_uri)
    tracking.check_tracking_server(uri)  # before anything launches
    data = load_splits(args.data_dir, space.data.val_size, space.data.subset, space.data.split_seed)
    address = connect_ray(args.address)
    check_cluster_resources(space)
    plan.local_dir.mkdir(parents=True, exist_ok=True)
    if not plan.resume:
        (plan.local_dir / SPACE_COPY).write_text(space.text)

    sweep = tracking.SweepRun.start(
        uri, plan.name, space.path, space.summary(),
        {"tuner.git_commit": git_commit(), "tuner.space_hash": space.digest,
         "tuner.data_fingerprint": data.fingerprint(), "tuner.ray_address": address},
    )
    print(f"sweep {plan.name}: {len(data.train)} train / {len(data.val)} val images, tracking at {uri}", flush=True)
    try:
        summary = run_sweep(plan, data, sweep)
    except SweepInterrupted:
        sweep.end("KILLED")
        print(f"sweep {plan.name} interrupted; continue it with: python -m tuner.run --resume {plan.name}"
              + ("" if args.storage == DEFAULT_STORAGE else f" --storage {args.storage}"), flush=True)
        sys.exit(130)  # the shell's code for Ctrl-C
    except BaseException:
        sweep.end("FAILED" if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else "KILLED")
        raise
    print(summary.text())
    sweep.log_metrics(summary.metrics())
    sweep.end("FINISHED")
    print(f"open the results: {tracking.ui_command(uri)}")


if __name__ == "__main__":
    main()
