"""`python -m tuner.run --space widths.yaml`: a search-space file in, the best configuration and checkpoint out.

The sweep's story, as `main` tells it: parse the flags; plan the sweep (a new one, or --resume of one
whose driver died); check the tracking store before anything starts; load the data once; connect to
Ray (local by default, `--address` for a cluster); build the Tuner (`SpaceSearcher`, Optuna TPE, with
ASHA) or restore it, and run it; register the best trial's best checkpoint and print the summary.
Trials only train and report; this driver writes MLflow and the Optuna study (tuner/bookkeeping.py).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import OneLineParser, UserError, excerpt, exit_on_user_error
from tuner.space import NAME_PATTERN, SearchSpace, describe, load_space

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
    parser = OneLineParser(prog="python -m tuner.run", description=__doc__.split("\n")[0],
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
    local_dir: Path             # this driver's folder for the sweep: space copy, Optuna study, budget ledger
    resume: bool = False
    warm_start: str | None = None

    @property
    def experiment(self) -> str:
        """Ray's folder for the sweep: experiment state, and a folder per trial."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    def study_url(self, sweep: str | None = None) -> str:
        return f"sqlite:///{self.local_dir.parent / (sweep or self.name) / STUDY_FILE}"


def check_sweep_name(flag: str, name: str) -> str:
    """A sweep name becomes a folder under --storage: one plain path segment, never `..` or a path."""
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"{flag} {excerpt(name)} is not a sweep name: use 1-64 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit (no '/')")
    return name


def plan_sweep(args: argparse.Namespace) -> SweepPlan:
    for flag in ("name", "resume", "warm_start"):
        if getattr(args, flag) is not None:
            check_sweep_name(f"--{flag.replace('_', '-')}", getattr(args, flag))
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
        space = space.with_trials(args.trials)
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


def connect_ray(address: str | None) -> str:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Tune snapshots its experiment state (what --resume reads) every 10 s by default; a trial that ends
    # after the last snapshot is resumed from its last checkpoint. A 2 s period costs little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # With epochs of a second or two, num_to_keep=2 forces a snapshot about every epoch and Tune warns each
    # time. Those snapshots keep --resume consistent at a small share of the epoch time
    # (docs/benchmarks.md#sweep-overhead), so the warning is noise here.
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


def check_cluster_resources(space: SearchSpace) -> None:
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    per_node_cpus = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    per_node_gpus = max((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    want = space.resources
    if want.gpus > per_node_gpus:
        raise UserError(f"{space.path}: resources.gpus={want.gpus:g} per trial but the largest node has "
                        f"{per_node_gpus:g} GPU ({gpus:g} in the cluster); lower resources.gpus or add GPU nodes")
    if want.cpus > per_node_cpus:
        raise UserError(f"{space.path}: resources.cpus={want.cpus:g} per trial but the largest node has "
                        f"{per_node_cpus:g} CPUs ({cpus:g} in the cluster); lower resources.cpus")


def new_tuner(plan: SweepPlan, trainable: Any, sweep: Any) -> Any:
    """The Tuner of a new sweep, with the driver's bookkeeping wired up (tuner/bookkeeping.py)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuner import bookkeeping
    from tuner.searcher import SpaceSearcher, create_study, warm_start

    space, sched, limits = plan.space, plan.space.scheduler, plan.space.budget
    study = create_study(space, plan.study_url(), plan.name)  # the one study; the searcher hands it on
    if plan.warm_start:
        copied = warm_start(study, create_study(space, plan.study_url(plan.warm_start), plan.warm_start))
        print(f"warm start: {copied} trials copied from {plan.warm_start}", flush=True)
    runs = sweep.trial_runs()
    searcher = SpaceSearcher(space, study, on_rejected=bookkeeping.RejectionRecorder(runs))
    budget = bookkeeping.BudgetStopper(limits.gpu_hours, limits.epochs, limits.wall_time_s,
                                       ledger=plan.local_dir / BUDGET_LEDGER)
    recorder = bookkeeping.OutcomeRecorder(runs, searcher, budget, space.metric, sched.max_epochs, limits.trials)
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=sched.max_epochs, grace_period=sched.grace_period,
                               reduction_factor=sched.reduction_factor)
                 if sched.type == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, metric=space.metric, mode=space.mode,
            num_samples=limits.trials, max_concurrent_trials=space.search.max_concurrent,
            reuse_actors=True,  # a fresh worker per trial re-imports torch: seconds per trial
            trial_dirname_creator=bookkeeping.trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=plan.storage, stop=bookkeeping.BudgetStop(budget),
            callbacks=[bookkeeping.SweepCallback(recorder)], verbose=1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=space.metric,
                                                    checkpoint_score_order=space.mode),
            # A crashed worker resumes from its last checkpoint; diverged/OOM trials return normally
            # and so are never retried.
            failure_config=tune.FailureConfig(max_failures=3),
        ),
    )


def restored_tuner(plan: SweepPlan, trainable: Any) -> Any:
    """The Tuner of a sweep whose driver died: Ray restores it, bookkeeping included, from --storage."""
    from ray import tune

    if not tune.Tuner.can_restore(plan.experiment):
        raise UserError(f"sweep {plan.name} has no Ray experiment state at {plan.experiment}; it cannot be resumed")
    return tune.Tuner.restore(plan.experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)


class SweepInterrupted(Exception):
    """Ctrl-C: Tune stopped the trials and saved its state; --resume continues the sweep."""


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


def summarise(plan: SweepPlan, results: Any, sweep: Any, started: float) -> SweepSummary:
    """Totals over all trials; the best checkpoint of any trial (by the space's metric) is registered."""
    from tuner.checkpoint import load_checkpoint
    from tuner.trainable import CHECKPOINT_FILE

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
            state = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
        version = sweep.register_best(state, best["trial_id"], float(best["val_acc"]))
    # Each trial's config counts the infeasible samples drawn before it (the searcher's running count).
    rejected = max((int(r.config.get("rejected", 0)) for r in results if r.config), default=0)
    return SweepSummary(plan.name, best, len(results), rejected,
                        sum(float(m.get("gpu_seconds", 0.0)) for m in totals),
                        sum(int(m.get("epoch", 0)) for m in totals), time.monotonic() - started, version)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = plan_sweep(args)
    space = plan.space
    if args.dry_run:
        print(describe(space))
        print(f"dry run: no trial started (sweep would be named {plan.name})")
        return

    from ray import tune

    from tuner import interrupts, tracking
    from tuner.data import load_splits
    from tuner.trainable import TrialSettings, train_trial

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

    settings = TrialSettings(gpus=space.resources.gpus, cpus=space.resources.cpus, metric=space.metric)
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data, settings=settings),
                                    {"cpu": space.resources.cpus, "gpu": space.resources.gpus})
    started = time.monotonic()
    try:
        tuner = restored_tuner(plan, trainable) if plan.resume else new_tuner(plan, trainable, sweep)
        results = tuner.fit()
        if interrupts.interrupted():
            raise SweepInterrupted
        summary = summarise(plan, results, sweep, started)
    except SweepInterrupted:
        sweep.end("KILLED")
        print(f"sweep {plan.name} interrupted; continue it with: python -m tuner.run --resume {plan.name}"
              + ("" if args.storage == DEFAULT_STORAGE else f" --storage {args.storage}"), flush=True)
        sys.exit(130)  # the shell's code for Ctrl-C
    except BaseException as err:
        sweep.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    print(summary.text())
    sweep.log_metrics(summary.metrics())
    sweep.end("FINISHED")
    print(f"open the results: {tracking.ui_command(uri)}")


if __name__ == "__main__":
    main()
