"""`python -m tuner.run --space widths.yaml`: a search-space file in, the best configuration and checkpoint out.

The sweep's story, as `main` tells it: parse the flags; plan the sweep (a new one, or --resume of one
whose driver died); check the tracking store before anything starts; load the data once; connect to
Ray (local by default; `--address`, or RAY_ADDRESS as a Ray job has it, for a cluster); build the Tuner
(`SpaceSearcher`, Optuna TPE, with ASHA) or restore it, and run it; with a `final:` section, train the best
trial's configuration once more on the final fit's images (tuner/final_fit.py); register that checkpoint (else
the best trial's best checkpoint) and print the summary.
Trials only train and report; this driver writes MLflow and the Optuna study (tuner/bookkeeping.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from tuner.data import data_status
from tuner.errors import OneLineParser, UserError, data_folder, excerpt, exit_on_user_error
from tuner.mlflow_names import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, resolve_tracking_uri, shown_uri, without_password
from tuner.ray_cluster import check_cluster_resources, connect_ray, parse_address, warn_if_storage_is_local
from tuner.space import MAX_NAME, NAME_PATTERN, SearchSpace, describe, load_space
from tuner.sweep_state import (
    REGISTRATION,
    SPACE_COPY,
    SPACE_OVERRIDES,
    STUDY_FILE,
    TRACKING_RECORD,
    TUNER_STATE,
    SweepState,
    ended_results,
    join,
    open_state,
    resolve_storage,
    resuming,
)
from tuner.tracking_checks import check_tracking_server
from tuner.tune_env import check_tune_environment

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
    parser.add_argument("--space", help="space file; a bare name (smoke, widths.yaml) is looked up in search_spaces/")
    parser.add_argument("--name", help="sweep name (default: <space>-<date>-<time>)")
    parser.add_argument("--resume", metavar="NAME", help="continue the sweep NAME (finished trials are kept)")
    parser.add_argument("--warm-start", metavar="SWEEP", help="seed the search with the trials of sweep SWEEP")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the plan, start nothing")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, which `ray job submit` "
                                           "sets for its entrypoint; else start a local Ray)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help="results location shared by all nodes: a path or s3://... (default: ./runs)")
    parser.add_argument("--mlflow-uri", help="tracking server (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--data-dir", default="data", type=data_folder,
                        help="folder holding cifar-10-batches-py (default: data)")
    parser.add_argument("--trials", type=int, help="override budget.trials")
    args = parser.parse_args(argv)
    # A driver run by `ray job submit` (or KubeRay's RayJob) is told its cluster only through RAY_ADDRESS
    args.address_named = "--address"
    if args.address is None and os.environ.get("RAY_ADDRESS", "").strip():
        args.address, args.address_named = os.environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS"
    if not args.space and not args.resume:
        parser.error("give --space FILE (or --resume NAME)")
    if args.resume:
        # A resumed sweep runs the space, name and budget it started with (stored under --storage): a flag
        # that would change them is refused rather than silently ignored.
        clashing = [flag for flag, value in (("--space", args.space), ("--name", args.name),
                                             ("--warm-start", args.warm_start), ("--trials", args.trials))
                    if value is not None]
        if clashing:
            parser.error(f"--resume continues sweep {args.resume} with the space and budget it started with; "
                         f"leave out {', '.join(clashing)} (or start a new sweep with --space and --name)")
    return args


@dataclass
class SweepPlan:
    space: SearchSpace
    name: str
    storage: str                # what Ray writes to (local absolute path or URI)
    state: SweepState           # tuner's state of the sweep under <storage>/_driver/<name>/ (sweep_state.py)
    resume: bool = False
    warm_start: str | None = None
    overrides: dict[str, Any] | None = None  # what the flags changed in the space (--trials), stored beside it

    @property
    def experiment(self) -> str:
        """Ray's folder for the sweep: experiment state, and a folder per trial."""
        return join(self.storage, self.name)


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
    storage = resolve_storage(args.storage)[0]
    if args.resume:
        state = open_state(storage, args.resume)
        resuming(state)  # the bookkeeping Ray unpickles names the storage it ran under: this is where it is now
        copy = state.read_bytes(SPACE_COPY)
        if copy is None:
            known = state.known_sweeps()
            raise UserError(f"no sweep '{args.resume}' in {storage} (no {state.describe(SPACE_COPY)}); sweeps there: "
                            f"{', '.join(known) or 'none'} (pass the same --storage as the first run)")
        space = stored_space(state, copy)
        return SweepPlan(space, args.resume, storage, state, resume=True)
    space = load_space(args.space)
    overrides = None
    if args.trials is not None:
        space, overrides = space.with_trials(args.trials), {"trials": args.trials}
    name = args.name or default_sweep_name(space.name)
    state = open_state(storage, name)
    # A space copy without Ray's snapshot: a launch that failed as Tune started (a Tune error, a lost
    # cluster), before any trial ran. Nothing can resume it, so the same command may run it again.
    if state.exists(SPACE_COPY) and state.ray_recorded():
        raise UserError(f"sweep '{name}' already exists in {args.storage}: use --resume {name} or another --name")
    warm = None
    if args.warm_start:
        check_warm_start(open_state(storage, args.warm_start), args.warm_start, space)
        warm = args.warm_start
    return SweepPlan(space, name, storage, state, warm_start=warm, overrides=overrides)


def check_warm_start(earlier: SweepState, name: str, space: SearchSpace) -> None:
    """The earlier sweep has a study, and optimised what this one does: its values seed this study's TPE."""
    if not earlier.download_study():  # also checks it opens whole: new_tuner reads it after MLflow has a run
        raise UserError(f"--warm-start {name}: no Optuna study at {earlier.describe(STUDY_FILE)}; give a finished "
                        "sweep name (and the --storage it ran with)")
    copy = earlier.read_bytes(SPACE_COPY)
    if copy is None:
        return  # a sweep from before space copies: its study's values are taken as they are
    before = stored_space(earlier, copy)
    if (before.metric, before.mode) != (space.metric, space.mode):
        raise UserError(f"--warm-start {name}: that sweep optimised {before.metric} ({before.mode}), this space "
                        f"optimises {space.metric} ({space.mode}); its values would mislead the search: "
                        "warm-start from a sweep with the same metric")


def default_sweep_name(space_name: str) -> str:
    """<space>-<date>-<time>, within the 64 characters of a sweep name (--resume checks them)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{space_name[:MAX_NAME - len(stamp) - 1].rstrip('._-') or 'space'}-{stamp}"


def stored_space(state: SweepState, copy: bytes) -> SearchSpace:
    """The space a sweep started with: its stored copy, and the budget --trials gave it (SPACE_OVERRIDES)."""
    local = state.workdir / SPACE_COPY
    local.write_bytes(copy)
    try:
        space = load_space(local)
    except UserError as err:  # name the stored copy, not the driver's temporary folder
        raise UserError(str(err).replace(str(local), state.describe(SPACE_COPY))
                        + " (the sweep's stored copy: restore it, or start a new sweep)") from None
    raw = state.read_bytes(SPACE_OVERRIDES)
    if raw is not None:
        try:
            trials = json.loads(raw)["trials"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{state.describe(SPACE_OVERRIDES)} is damaged; it holds the --trials the sweep "
                            'started with: write {"trials": N} there') from None
        space = space.with_trials(trials, source=state.describe(SPACE_OVERRIDES))
    return space


def prepare_resume(plan: SweepPlan) -> None:
    """Before Ray starts and anything is written: the study, the ledger and Ray's state files of the sweep
    are whole, and Ray's are the ones this sweep's drivers wrote (their digests, sweep_state.py)."""
    from tuner.bookkeeping import read_ledger

    if not plan.state.ray_recorded():
        raise UserError(f"sweep {plan.name} never started: its launch failed before Ray recorded it, so there is "
                        f"nothing to resume; run the command that launched it again (--space ... --name {plan.name})")
    if not plan.state.download_study():
        raise UserError(f"sweep {plan.name} has no Optuna study at {plan.state.describe(STUDY_FILE)}; it cannot be "
                        "resumed (restore the file from a backup, or start a new sweep)")
    read_ledger(plan.state)
    plan.state.verify_ray_state()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def new_tuner(plan: SweepPlan, trainable: Any, sweep: Any) -> Any:
    """The Tuner of a new sweep, with the driver's bookkeeping wired up (tuner/bookkeeping.py)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuner import bookkeeping
    from tuner.searcher import SpaceSearcher, create_study, warm_start

    space, sched, limits = plan.space, plan.space.scheduler, plan.space.budget
    study = create_study(space, plan.state.study_url, plan.name)  # the one study; the searcher hands it on
    if plan.warm_start:
        earlier = open_state(plan.storage, plan.warm_start)  # its study downloaded by check_warm_start
        copied, skipped = warm_start(study, create_study(space, earlier.study_url, plan.warm_start), space)
        print(f"warm start: {copied} trials copied from {plan.warm_start}"
              + (f" ({skipped} skipped: a value this space cannot take)" if skipped else ""), flush=True)
    from tuner.console import ProgressView
    from tuner.trial_names import SpaceOutline

    outline = SpaceOutline.of(space)
    runs = sweep.trial_runs(outline)
    searcher = SpaceSearcher(space, study, on_rejected=bookkeeping.RejectionRecorder(runs), state=plan.state)
    budget = bookkeeping.BudgetStopper(limits.gpu_hours, limits.epochs, limits.wall_time_s,
                                       ledger=plan.state)
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
            trial_name_creator=bookkeeping.trial_dirname,  # Ray's name for the trial: the folder's, t007-<id>
        ),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=plan.storage, stop=bookkeeping.BudgetStop(budget),
            # verbose=0: no Ray status table, per-trial config dump or TensorBoard hint; tuner.console prints
            # one compact view every 15 s instead
            callbacks=[bookkeeping.SweepCallback(recorder),
                       ProgressView(outline, sched.max_epochs, limits.trials, limits.epochs, limits.gpu_hours,
                                    limits.wall_time_s)],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=space.metric,
                                                    checkpoint_score_order=space.mode),
            # A crashed worker resumes from its last checkpoint; diverged/OOM trials return normally
            # and so are never retried.
            failure_config=tune.FailureConfig(max_failures=3),
        ),
    )


def ended_before(plan: SweepPlan, space: SearchSpace) -> dict[str, dict]:
    """The result each trial an earlier driver of this sweep ended on, for the workers (TrialSettings.ended):
    ended.json's, and those of trials only the study knows have ended (searcher.finished_results)."""
    import optuna

    from tuner.searcher import finished_results

    study = optuna.load_study(study_name=plan.name, storage=plan.state.study_url)  # prepare_resume fetched it
    return {**finished_results(study, space.metric), **ended_results(plan.state)}


def restored_tuner(plan: SweepPlan, trainable: Any) -> Any:
    """The Tuner of a sweep whose driver died: Ray restores it, bookkeeping included, from --storage."""
    from ray import tune

    if not tune.Tuner.can_restore(plan.experiment):
        raise UserError(f"sweep {plan.name} has no Ray experiment state at {plan.experiment}; it cannot be resumed")
    plan.state.verify_ray_state()  # again, just before Ray unpickles: nothing changed since prepare_resume
    for checkpoint in plan.state.stand_in_for_deleted_checkpoints():
        print(f"{checkpoint}, which Ray's last snapshot names, was deleted after it (Ray keeps 2 per trial): the "
              "trial continues from its newest checkpoint", flush=True)
    return tune.Tuner.restore(plan.experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)


class SweepInterrupted(Exception):
    """Ctrl-C: Tune stopped the trials and saved its state (or, after Tune's fit, the driver stopped at a safe
    point: the final fit cancelled, or its result or the registration stored); --resume continues the sweep."""


def stop_if_interrupted() -> None:
    """A safe point after Tune's fit: what came before is stored, what follows has not begun. A stop signal
    since then (interrupts.defer_interrupts) ends the driver here, as during the trials: exit 130 and the
    resume command; the resumed driver takes over what is stored (final_fit.json, registered.json)."""
    from tuner import interrupts

    if interrupts.interrupted():
        raise SweepInterrupted


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
    model_name: str = ""
    next_commands: tuple[str, ...] = ()
    checkpoint_kind: str | None = None  # what the registered version holds: final_fit or search
    champion: bool = False  # the registered version is @champion already (a --resume of a promoted sweep)
    final: dict[str, Any] | None = None  # the final fit's record (tuner/final_fit.py), failed ones too

    def metrics(self) -> dict[str, float]:
        values = {"trials": self.trials, "rejected_configs": self.rejected, "gpu_hours": self.gpu_seconds / 3600,
                  "epochs_total": self.epochs, "wall_seconds": self.wall_seconds}
        if self.final and self.final.get("status") == "completed":
            values["final_fit_seconds"] = float(self.final["seconds"])
        # best_<metric> is on the parent already, one step per finished trial (tracking.TrialRuns.count_finished)
        return values

    def text(self) -> str:
        from tuner.console import format_elapsed

        lines = [f"sweep {self.name}: {self.trials} trials ({self.epochs} epochs), {self.rejected} infeasible "
                 f"configs rejected before launch, {self.gpu_seconds / 3600:.3f} GPU-hours, "
                 f"{format_elapsed(self.wall_seconds).strip()} wall time"]
        if self.best is None:
            lines.append("no trial finished an epoch: nothing to register")
        else:
            b = self.best
            metric = b.get("metric", "val_acc")  # what the search optimised; val_acc beside it when another
            shown = f"val_acc {b['val_acc']:.4f}" if metric == "val_acc" else \
                f"{metric} {b['value']:.4f} (val_acc {b['val_acc']:.4f})"
            lines += [f"best trial {b['label']} ({b['trial_id']}): {shown} at epoch {b['epoch']} "
                      f"({b['epochs_run']} epochs run), {b['params']:,} params, "
                      f"{b['gpu_seconds'] / 3600:.3f} GPU-hours",
                      f"  MLflow run:  {b['run_name']}",
                      f"  searched:    {b['searched'] or '(nothing searched)'}",
                      f"  checkpoint:  {b['checkpoint']}"]
            final = self.final
            if final and final.get("status") == "completed":
                images = {"all": "train + validation", "train": "training split"}.get(final["train_on"], "")
                epochs = int(final["epochs"])
                lines.append(f"  final fit:   {epochs} epoch{'s' * (epochs != 1)} on {final['train_images']:,} images "
                             f"({images}) in {format_elapsed(final['seconds']).strip()}, MLflow run "
                             f"'final fit of {b['label']}'")
            elif final:
                lines.append(f"  final fit:   failed ({final['error']}); the search checkpoint was registered instead")
            if self.registered_version:
                held = {"final_fit": "the final fit's checkpoint", "search": "the search checkpoint"}.get(
                    self.checkpoint_kind or "search", "the search checkpoint")
                state = "@champion" if self.champion else "not yet @champion: promote it below"
                lines.append(f"  registered as model version {self.registered_version} of {self.model_name}: {held} "
                             f"({state})")
        if self.next_commands:
            lines += ["next:"] + [f"  {command}" for command in self.next_commands]
        return "\n".join(lines)


def registration_of(plan: SweepPlan, trial_id: str, checkpoint: str) -> dict[str, Any] | None:
    """The registration record of this sweep for this checkpoint (a finished sweep resumed), from --storage;
    None when it has registered none."""
    record = plan.state.read_json(REGISTRATION)
    if record and record.get("trial_id") == trial_id and record.get("checkpoint") == checkpoint:
        kind = record.get("checkpoint_kind", "search")
        print(f"sweep {plan.name} already registered trial {trial_id} as model version {record.get('version')} "
              f"({kind} checkpoint): not fitting or registering it again", flush=True)
        return record
    return None


def register_champion(plan: SweepPlan, sweep: Any, best: dict[str, Any], checkpoint: Any,
                      data: Any, data_ref: Any) -> tuple[str, str, dict[str, Any] | None]:
    """Register the champion: with a `final:` section its final fit (run here, or stored by an earlier driver),
    else, or when that fit failed, the best trial's search checkpoint. (version, checkpoint kind, final record)."""
    from tuner import final_fit
    from tuner.checkpoint import load_checkpoint
    from tuner.tracking import CHECKPOINT_FINAL, CHECKPOINT_SEARCH, FinalLineage
    from tuner.trainable import CHECKPOINT_FILE

    done = registration_of(plan, best["trial_id"], checkpoint.path)
    if done is not None:
        kind = done.get("checkpoint_kind", CHECKPOINT_SEARCH)
        record = final_fit.stored_record(plan.state, best["trial_id"]) if kind == CHECKPOINT_FINAL else None
        return str(done.get("version")), kind, record
    outcome = None
    if plan.space.final is not None:
        stop_if_interrupted()  # nothing of the fit exists yet
        outcome = final_fit.fit_champion(plan.state, sweep, plan.space, data, data_ref, best)
    # A fit that ended after the driver's last look for Ctrl-C is stored: the resumed driver registers it
    stop_if_interrupted()
    if outcome is not None and not outcome.failed:
        record = outcome.record
        lineage = FinalLineage(record["run_id"], int(record["epochs"]), int(record["train_images"]), record["train_on"])
        version = sweep.register_best(outcome.checkpoint, best["trial_id"], float(best["val_acc"]), final=lineage)
        kind = CHECKPOINT_FINAL
    else:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
        version = sweep.register_best(state, best["trial_id"], float(best["val_acc"]))
        kind = CHECKPOINT_SEARCH
    plan.state.write_json(REGISTRATION, {
        "trial_id": best["trial_id"], "checkpoint": checkpoint.path, "model": DEFAULT_MODEL_NAME, "version": version,
        "checkpoint_kind": kind, **({"final_run_id": outcome.record["run_id"]} if kind == CHECKPOINT_FINAL else {})})
    return version, kind, outcome.record if outcome is not None else None


def summarise(plan: SweepPlan, results: Any, sweep: Any, started: float, data: Any, data_ref: Any) -> SweepSummary:
    """Totals over all trials; the champion (the best checkpoint of any trial, by the space's metric) is
    registered, after its final fit when the space has a `final:` section (`data_ref`: `data` in Ray's object
    store, as the trials had it)."""
    space = plan.space
    sign = 1 if space.mode == "max" else -1
    candidates = [(ckpt, m, r) for r in results if r.metrics and not r.metrics.get("diverged")
                  for ckpt, m in r.best_checkpoints if space.metric in m]
    totals = [r.metrics or {} for r in results]
    best, version, kind, final = None, None, None, None
    if candidates:
        from tuner.config import TrainConfig
        from tuner.console import searched_text
        from tuner.trial_names import SpaceOutline, trial_label

        # Ties go to the earliest trial and epoch: Ray lists the results of a restored sweep in another order,
        # and a resumed driver must pick the champion its predecessor picked (registration, final fit).
        checkpoint, metrics, result = max(candidates, key=lambda c: (sign * c[1][space.metric],
                                                                     -int(c[2].config.get("index", 0)),
                                                                     -int(c[1].get("epoch", 0))))
        label = trial_label(int(result.config.get("index", 0)))
        searched = searched_text(SpaceOutline.of(space).searched_values(TrainConfig.from_dict(result.config["train"])))
        best = {"trial_id": metrics.get("trial_id", ""), "val_acc": metrics["val_acc"], "epoch": metrics["epoch"],
                "metric": space.metric, "value": float(metrics[space.metric]),
                "label": label, "searched": searched, "run_name": f"{label} {searched}".strip(),
                "epochs_run": result.metrics["epoch"], "params": int(metrics["params"]),
                "gpu_seconds": float(result.metrics.get("gpu_seconds", 0.0)),
                "config": result.config.get("train"), "checkpoint": checkpoint.path}
        version, kind, final = register_champion(plan, sweep, best, checkpoint, data, data_ref)
    # Each trial's config counts the infeasible samples drawn before it (the searcher's running count).
    rejected = max((int(r.config.get("rejected", 0)) for r in results if r.config), default=0)
    return SweepSummary(plan.name, best, len(results), rejected,
                        sum(float(m.get("gpu_seconds", 0.0)) for m in totals),
                        sum(int(m.get("epoch", 0)) for m in totals), time.monotonic() - started, version,
                        DEFAULT_MODEL_NAME, checkpoint_kind=kind, final=final,
                        champion=version is not None and sweep.version_with_alias(DEFAULT_MODEL_NAME, CHAMPION_ALIAS)
                        == str(version))


def next_commands(name: str, uri: str, mlflow_flag: str | None, storage_flag: str) -> tuple[str, ...]:
    """The exact commands that follow a sweep: the UI, the promotion gate, the report."""
    from tuner.mlflow_store import ui_command

    tracking = f" --mlflow-uri {mlflow_flag}" if mlflow_flag else ""
    storage = "" if storage_flag == DEFAULT_STORAGE else f" --storage {storage_flag}"
    return (f"{ui_command(uri)}   # compare the trials (children of run '{name}')",
            f"python -m tuner.promote --sweep {name}{tracking}   # test-split gate, then @champion",
            f"python -m tuner.report --sweep {name}{tracking}{storage}   # tables and plots")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_tune_environment()  # Tune parses them deep inside fit, after the sweep is recorded
    plan = plan_sweep(args)
    space = plan.space
    uri = resolve_tracking_uri(args.mlflow_uri)
    data_found = data_status(args.data_dir)  # a --data-dir that cannot hold the data fails before anything is written
    if args.dry_run:
        check_tracking_server(uri, create=False)
        if args.address:
            # its form; whether a cluster answers there is the real run's question
            parse_address(args.address, args.address_named)
        if plan.resume:
            prepare_resume(plan)  # the study, ledger and Ray state a --resume would take over are whole
        print(describe(space))
        print(data_found)
        print(f"tracking: {uri}")
        if plan.resume:
            from tuner.driver_lease import running_driver

            print(running_driver(plan.state, plan.name))
        print(f"dry run: no trial started (sweep would be named {plan.name})")
        return
    from tuner.driver_lease import DriverLease
    from tuner.estimate import require_feasible

    require_feasible(space)  # the dry run's refusal (describe), before MLflow or --storage is written
    check_tracking_server(uri)  # before anything launches
    try:  # the first write under --storage: a place that cannot be written fails here, before anything else
        lease = DriverLease(plan.state, plan.name).claim()  # before anything is written to storage or MLflow
    except OSError as err:
        raise UserError(f"--storage {excerpt(args.storage)}: cannot write {plan.state.describe()} "
                        f"({err.strerror or type(err).__name__}); give a folder or bucket this machine can write"
                        ) from None
    try:
        drive(args, plan, uri)
    finally:
        lease.release()


def drive(args: argparse.Namespace, plan: SweepPlan, uri: str) -> None:
    """The sweep, from loading the data to the summary, by the driver that holds its lease."""
    import ray
    from ray import tune

    from tuner import final_fit, interrupts, mlflow_store, tracking
    from tuner.data import load_splits
    from tuner.trainable import TrialSettings, train_trial

    space = plan.space
    if plan.resume:
        prepare_resume(plan)  # before anything is written anywhere
    with mlflow_store.store_opened_meanwhile(uri):  # its ~2 s overlap Ray's start
        data = load_splits(args.data_dir, space.data.val_size, space.data.subset, space.data.split_seed,
                           named=lambda key, value: f"{space.path}: data.{key}={value}")
        address = connect_ray(args.address, args.address_named)
    interrupts.sigterm_as_sigint()
    check_cluster_resources(space)
    warn_if_storage_is_local(plan.storage, address)
    try:
        sweep = tracking.SweepRun.start(
            uri, plan.name, space.path, space.summary(),
            {"tuner.git_commit": git_commit(), "tuner.space_hash": space.digest,
             "tuner.data_fingerprint": data.fingerprint(), "tuner.ray_address": address},
            resume=plan.resume,
        )
    except tracking.SweepRunMissing as err:
        raise missing_run_error(plan, uri, err.deleted) from None
    except tracking.ResumeMismatch as err:  # trials would continue, and the champion be fitted, on other images
        recorded, now = err.changed["tuner.data_fingerprint"]
        raise UserError(f"--data-dir {excerpt(args.data_dir)} holds other images than sweep {plan.name} ran on "
                        f"(data fingerprint {now}, recorded {recorded}): resume with the data folder it started "
                        "with") from None
    # The store that holds the sweep's run, for --resume's error when a later driver tracks elsewhere (a resume
    # through another address of the same store writes that one)
    plan.state.write_json(TRACKING_RECORD, {"uri": without_password(uri), "run_id": sweep.run_id})
    print(f"sweep {plan.name}: {len(data.train)} train / {len(data.val)} val images, tracking at {uri}", flush=True)

    settings = TrialSettings(gpus=space.resources.gpus, cpus=space.resources.cpus, metric=space.metric,
                             experiment=plan.experiment, ended=ended_before(plan, space) if plan.resume else {})
    # Put once: the trials get it from here, and so does the final fit (tune.with_parameters keeps a reference)
    data_ref = ray.put(data)
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data_ref, settings=settings),
                                    {"cpu": space.resources.cpus, "gpu": space.resources.gpus})
    started = time.monotonic()
    recorded = plan.resume  # --resume can continue the sweep from here on (its space copy is stored)
    try:
        if plan.resume:
            tuner = restored_tuner(plan, trainable)
        else:
            tuner = new_tuner(plan, trainable, sweep)
            plan.state.record_ray_file(TUNER_STATE)  # written by the Tuner just now, before any trial ran
            # The space copy marks the name as taken and --resume reads it, so it is written once the Tuner
            # exists: a launch that fails before this point can be run again, same name and all.
            if plan.overrides:
                plan.state.write_bytes(SPACE_OVERRIDES, json.dumps(plan.overrides).encode())
            plan.state.write_bytes(SPACE_COPY, space.text.encode())
            recorded = True
        results = tuner.fit()
        # Tune's handlers outlive its fit: from here a stop signal waits for the next stop_if_interrupted
        interrupts.defer_interrupts()
        plan.state.upload_study(force=True)
        stop_if_interrupted()
        try:
            summary = summarise(plan, results, sweep, started, data, data_ref)
        except final_fit.FinalFitInterrupted:
            raise SweepInterrupted from None
        stop_if_interrupted()  # the champion's registration is recorded: a --resume prints the summary
        summary.next_commands = next_commands(plan.name, uri, args.mlflow_uri, args.storage)
        print(summary.text(), flush=True)
        sweep.log_metrics(summary.metrics(), step=summary.trials)
        stop_if_interrupted()  # the last: once the parent run is FINISHED the sweep is done
        sweep.end("FINISHED")
    except (SweepInterrupted, KeyboardInterrupt) as err:
        # A KeyboardInterrupt is a second Ctrl-C (Tune's after its first, defer_interrupts' before the next safe
        # point): the driver stops as for the first, with what it leaves taken over by --resume as a killed
        # driver's is. Before the sweep is recorded there is nothing to resume: the launch can simply run again.
        if isinstance(err, KeyboardInterrupt) and not recorded:
            sweep.end("KILLED")
            raise
        exit_interrupted(plan, args, sweep)
    except BaseException:
        sweep.end("FAILED")
        raise


def missing_run_error(plan: SweepPlan, uri: str, deleted: str | None) -> UserError:
    """--resume against a tracking store without the sweep's parent run: which store it ran with, when known."""
    if deleted:
        return UserError(f"sweep {plan.name}'s run {deleted} is deleted in {shown_uri(uri)}: restore it (`mlflow runs "
                         f"restore --run-id {deleted}` with MLFLOW_TRACKING_URI={shown_uri(uri)}, or the MLflow UI) "
                         "and --resume again")
    try:
        record = plan.state.read_json(TRACKING_RECORD)
    except UserError:  # the record only names the store here: a damaged one names none
        record = None
    ran_with = record["uri"] if record else None
    if ran_with and ran_with != without_password(uri):
        return UserError(f"sweep {plan.name} has no run in the tracking store {shown_uri(uri)}; it ran with "
                         f"{excerpt(ran_with)}: resume with --mlflow-uri {excerpt(ran_with)} (or MLFLOW_TRACKING_URI)")
    return UserError(f"sweep {plan.name} has no run in the tracking store {shown_uri(uri)}"
                     f"{' (the store it last ran with)' if ran_with else ''}: resume with the store that holds its "
                     "trials (--mlflow-uri or MLFLOW_TRACKING_URI), or restore that store from a backup")


def exit_interrupted(plan: SweepPlan, args: argparse.Namespace, sweep: Any) -> NoReturn:
    """End the parent run KILLED and exit 130 with the resume command. A further Ctrl-C while the tracking store
    takes its time skips the parent run's end: --resume reopens the run anyway."""
    try:
        sweep.end("KILLED")
    except KeyboardInterrupt:
        pass
    print(f"sweep {plan.name} interrupted; continue it with: python -m tuner.run --resume {plan.name}"
          + ("" if args.storage == DEFAULT_STORAGE else f" --storage {args.storage}"), flush=True)
    sys.exit(130)  # the shell's code for Ctrl-C


if __name__ == "__main__":
    from tuner.quick_exit import run_then_exit_quickly

    run_then_exit_quickly(main)
