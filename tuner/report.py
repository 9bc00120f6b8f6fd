"""Report of one sweep: every trial to Parquet/CSV and four plots, logged to the sweep's parent run.

    python -m tuner.report --sweep widths-0412 --mlflow-uri http://127.0.0.1:5000

Writes into --out (default runs/reports/<sweep>) and logs the same files to a new artifact folder
`report/<UTC time>-<random>` of the parent run, whose tag `tuner.report` names the folder of its report:
- trials.parquet / trials.csv: one row per trial: its TrainConfig params, outcome, epochs run, final and
  best val accuracy, whether the driver tagged it the sweep's best (`tagged_best`), params count, MACs,
  GPU-seconds;
- epochs.parquet / epochs.csv: one row per trial and epoch, every metric the trial logged;
- optimisation_history.png: each trial's best val accuracy by trial number, and the best so far;
- learning_curves.png: val accuracy per epoch of every trial (integer epochs, ASHA's rungs as dashed lines,
  each curve labelled t007, the champion drawn thick); trials stopped by ASHA end in an x;
- parallel_coordinates.png: the parameters that varied against best val accuracy (colour); a parameter a
  trial did not use (momentum of an adamw trial) is missing on that axis, not drawn at a default;
- pareto.png: best val accuracy against parameter count, with the Pareto front (no smaller model
  is as accurate);
- param_importances.png: Optuna's fANOVA importances of the parameters every trial used, for best val
  accuracy (skipped, with a note, below 3 trials or 2 such parameters, when every trial scored the same, or
  when fANOVA cannot estimate them; a caveat below 20 trials).
When no trial finished an epoch (a sweep cut short, every trial diverged), the report is its tables alone,
with a note: there is nothing to plot.

The best trial it names is the driver's: by the sweep's metric and mode (the parent run's params `metric`
and `mode`), a tie going to the trial whose run is tagged `tuner.best`.

The sweep's Optuna study (`_driver/<sweep>/optuna.db`, or `<sweep>/optuna.db` in the older layout, under
--storage) says which parameters each trial was sampled with; the same file opens in optuna-dashboard. It is
read from a private copy, so a report never writes the sweep's record. A --storage that does not hold the
sweep is an error, not a silently weaker report logged over the better one: --mlflow-only asks for that.

All or nothing, in --out and on the run: the files are written to a hidden folder inside --out, uploaded to
the run's new folder and checked there (names and sizes), then moved into place in --out; the tag switches
to the new folder last, in one write, and the folder it named before is then removed (with the older
layout's files directly under `report/`). A report that fails or is interrupted before the switch leaves
the earlier one whole in both places (its partial upload is removed when the store still answers; what
is left is named by no tag). A reader that is downloading the earlier report as it is replaced can find
it gone: read the tag again.
"""
from __future__ import annotations

# ruff: noqa: E402 - `python -m tuner.report` parses its flags before pandas, matplotlib and mlflow load (below)
import argparse
from pathlib import Path

from tuner.errors import OneLineParser
from tuner.mlflow_names import add_tracking_argument


def out_folder(text: str) -> Path:
    """--out as a path; an empty one is refused (it would mean the current folder, written by accident)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give the report's folder, e.g. --out runs/reports/<sweep>")
    return Path(text).expanduser()  # `--out=~/r`: the shell leaves a tilde after `=` as it is


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m tuner.report",
        description="Tables (Parquet, CSV) and plots of every trial of a sweep, logged to its parent run.",
        epilog="example: python -m tuner.report --sweep widths-0412 --mlflow-uri http://127.0.0.1:5000",
    )
    parser.add_argument("--sweep", required=True, help="the sweep's name (tag tuner.sweep of its parent run)")
    parser.add_argument("--out", type=out_folder, help="output folder (default: runs/reports/<sweep>)")
    parser.add_argument("--storage", default="runs",
                        help="the sweep's --storage, where its Optuna study is (default: ./runs)")
    parser.add_argument("--mlflow-only", action="store_true",
                        help="report from MLflow alone, without the sweep's Optuna study (when its --storage is "
                             "gone); parameters a trial did not use then show their default")
    add_tracking_argument(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer here, before the imports below take seconds
    _parser().parse_args()

import math
import os
import re
import secrets
import shutil
import tempfile
import time
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from tuner.config import TrainConfig
from tuner.errors import UserError, excerpt, exit_on_user_error, suggest
from tuner.mlflow_store import open_client, quick_http, safe_name, store_outage_is_user_error
from tuner.report_plots import (
    FEW_TRIALS,
    asha_rungs,
    param_importances,
    plot_importances,
    plot_learning_curves,
    plot_optimisation_history,
    plot_parallel_coordinates,
    plot_pareto,
)
from tuner.tracking import (
    TAG_BEST,
    TAG_GPU_SECONDS,
    TAG_OUTCOME,
    TAG_TRIAL,
    find_sweep_run,
    sweep_names,
    trial_runs,
)

SUMMARY_COLUMNS = [
    "trial_id", "run_name", "outcome", "status", "epochs_run", "final_val_acc", "best_val_acc", "best_epoch",
    "tagged_best", "params_count", "macs", "gpu_seconds", "run_id",
]
TABLES = ("trials", "epochs")
PLOTS = ("optimisation_history.png", "learning_curves.png", "parallel_coordinates.png", "pareto.png",
         "param_importances.png")
REPORT_FILES = tuple(f"{name}.{kind}" for name in TABLES for kind in ("parquet", "csv")) + PLOTS
STAGING_PREFIX = ".report-partial-"  # the hidden folder inside --out the files are written to first
TAG_REPORT = "tuner.report"  # on the parent run: the artifact folder of its report, switched last
REPORT_ARTIFACTS = "report"  # each report's folder is report/<UTC time>-<random>
REPORT_FOLDER = re.compile(rf"{REPORT_ARTIFACTS}/[^/]+")  # what a superseded tag may name to be removed
STUDY_FIX = "restore it from a backup, or pass --mlflow-only to report from MLflow alone"


# ---------------------------------------------------------------------------------------------
# tables


def metric_rows(client: MlflowClient, run: Run) -> dict[int, dict[str, float]]:
    """{epoch: {metric: value}} of a run; of repeated steps (a resumed trial) the latest value wins."""
    by_epoch: dict[int, dict[str, tuple[int, float]]] = {}
    for key in run.data.metrics:
        for metric in client.get_metric_history(run.info.run_id, key):
            slot = by_epoch.setdefault(metric.step, {})
            if key not in slot or metric.timestamp >= slot[key][0]:
                slot[key] = (metric.timestamp, metric.value)
    return {epoch: {k: v for k, (_, v) in values.items()} for epoch, values in sorted(by_epoch.items())}


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _typed(column: pd.Series) -> pd.Series:
    """MLflow params are strings: numbers back to numbers, True/False to bool, the rest stays text."""
    values = column.dropna()
    if len(values) and values.isin(["True", "False"]).all():
        return column.map({"True": True, "False": False})
    numeric = pd.to_numeric(column, errors="coerce")
    if len(values) and numeric[column.notna()].notna().all():
        return numeric
    return column


def collect(client: MlflowClient, parent: Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) tables of a sweep from its child runs."""
    param_names = TrainConfig.field_names()
    trials, epochs = [], []
    for run in trial_runs(client, parent):
        tags, params = run.data.tags, run.data.params
        trial_id = tags.get(TAG_TRIAL, run.info.run_id)
        history = {epoch: m for epoch, m in metric_rows(client, run).items() if epoch > 0}  # 0: size metrics
        val = {epoch: m["val_acc"] for epoch, m in history.items() if "val_acc" in m}
        best_epoch = max(val, key=val.get) if val else None
        trials.append({
            "trial_id": trial_id,
            "run_name": run.info.run_name,
            "outcome": tags.get(TAG_OUTCOME, "running" if run.info.status == "RUNNING" else "unknown"),
            "status": run.info.status,
            "epochs_run": max(history) if history else 0,
            "final_val_acc": val[max(val)] if val else math.nan,
            "best_val_acc": val[best_epoch] if val else math.nan,
            "best_epoch": best_epoch if best_epoch is not None else math.nan,
            "tagged_best": tags.get(TAG_BEST) == "true",
            "params_count": run.data.metrics.get("params_count", _number(tags.get("tuner.params"))),
            "macs": run.data.metrics.get("macs", _number(tags.get("tuner.macs"))),
            "gpu_seconds": run.data.metrics.get("gpu_seconds", _number(tags.get(TAG_GPU_SECONDS))),
            "run_id": run.info.run_id,
            **{name: params.get(name) for name in param_names},
        })
        for epoch, metrics in history.items():
            epochs.append({"trial_id": trial_id, "run_name": run.info.run_name, "epoch": epoch, **metrics})
    trial_table = pd.DataFrame(trials, columns=SUMMARY_COLUMNS + param_names)
    for name in param_names:
        trial_table[name] = _typed(trial_table[name])
    # Only parameters no trial has are dropped: the summary columns stay even when empty (no trial finished
    # an epoch), as the plots and the best-trial pick read them.
    trial_table = trial_table.drop(columns=[name for name in param_names if trial_table[name].isna().all()])
    epoch_table = pd.DataFrame(epochs, columns=["trial_id", "run_name", "epoch"] + sorted(
        {k for row in epochs for k in row} - {"trial_id", "run_name", "epoch"}))
    return trial_table, epoch_table


def find_study(sweep: str, storage: str) -> tuple[bytes | None, str]:
    """The bytes of the sweep's stored study and its path or URI; (None, "") where the sweep's folders under
    `storage` hold none. One line when `storage` does not hold the sweep at all (a wrong --storage), or the
    study cannot be read. Only reads: the bytes are the caller's to open (`open_study`)."""
    import pyarrow.fs

    from tuner.sweep_state import DRIVER_PREFIX, STUDY_FILE, join, resolve_storage

    uri, fs, root = resolve_storage(storage)  # one line for a file or a storage this machine cannot open
    hint = "pass the --storage the sweep ran with, or --mlflow-only to report from MLflow alone"
    folders = [(f"{root}/{DRIVER_PREFIX}/{sweep}", join(uri, DRIVER_PREFIX, sweep)),  # tuner's state
               (f"{root}/{sweep}", join(uri, sweep))]  # Ray's folder: where the older layout kept the study
    try:
        if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
            raise UserError(f"--storage {excerpt(storage)}: {uri} does not exist, so it holds no sweep "
                            f"'{sweep}'; {hint}")
        if all(fs.get_file_info(path).type != pyarrow.fs.FileType.Directory for path, _ in folders):
            others = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{DRIVER_PREFIX}", allow_not_found=True))
            names = sorted(info.base_name for info in others if info.type == pyarrow.fs.FileType.Directory)
            there = f"sweeps there: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if names \
                else "no sweep at all there"
            raise UserError(f"--storage {excerpt(storage)} holds no sweep '{sweep}' (no {folders[0][1]} or "
                            f"{folders[1][1]}; {there}); {hint}")
        for path, shown in ((f"{path}/{STUDY_FILE}", join(shown, STUDY_FILE)) for path, shown in folders):
            kind = fs.get_file_info(path).type
            if kind == pyarrow.fs.FileType.File:
                with fs.open_input_stream(path) as stream:
                    return stream.read(), shown
            if kind != pyarrow.fs.FileType.NotFound:
                raise UserError(f"the Optuna study {shown} is not a file (a folder?); {STUDY_FIX}")
    except OSError as err:  # storage that stopped answering, a file it cannot read
        raise UserError(f"the Optuna study of sweep '{sweep}' under {uri} cannot be read "
                        f"({excerpt(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)}); "
                        "check that this machine can read --storage, or pass --mlflow-only to report from MLflow "
                        "alone") from None
    return None, ""


def open_study(data: bytes, where: str, sweep: str, scratch: Path) -> Any:
    """The Optuna study in `data` (the stored file's bytes, `where`), opened from a copy in `scratch`: Optuna
    writes its schema into a database it opens (an empty one included), which must never be the sweep's
    record. The study named after the sweep, else the file's only study. One line when it cannot be read."""
    import optuna

    from tuner.sweep_state import check_sqlite

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    copy = scratch / "optuna.db"
    copy.write_bytes(data)
    names = check_sqlite(copy, where, STUDY_FIX)
    if sweep not in names and len(names) != 1:  # one study of another name: the older layout's, take it
        held = f"the studies {', '.join(map(repr, names[:5]))}{', ...' if len(names) > 5 else ''}" if names \
            else "no study"
        raise UserError(f"the Optuna study {where} holds {held}, none named '{sweep}'; {STUDY_FIX}")
    try:
        study = optuna.load_study(study_name=sweep if sweep in names else names[0], storage=f"sqlite:///{copy}")
        study.get_trials(deepcopy=False)  # what the report reads of it, read now: a bad row fails here
    except Exception as err:  # noqa: BLE001 - any failure to read a private copy is a damaged (or too new) study
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"the Optuna study {where} cannot be read by Optuna {optuna.__version__} "
                        f"({excerpt(reason, 120)}); {STUDY_FIX}") from None
    return study


def log_scaled(study: Any) -> set[str]:
    """The parameters the study samples on a log scale (none without a study)."""
    if study is None:
        return set()
    return {name for t in study.get_trials(deepcopy=False) for name, d in t.distributions.items()
            if getattr(d, "log", False)}


def blank_unused(trials: pd.DataFrame, study: Any) -> pd.DataFrame:
    """Searched parameters a trial was not sampled with set missing: an older sweep's study drew a conditional
    parameter only where its condition held. Later studies hold every parameter in every trial (tuner.space,
    SearchSpace.sample), and the trial runs leave out in MLflow what a trial did not use."""
    sampled = {t.user_attrs["ray_trial_id"]: {name.rsplit("_", 1)[0] if name[-1].isdigit() else name
                                              for name in t.params}
               for t in study.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs}
    searched = set().union(*sampled.values()) if sampled else set()
    trials = trials.copy()
    for index, row in trials.iterrows():
        used = sampled.get(row["trial_id"])
        if used is None:
            continue
        for name in searched - used:
            if name in trials:
                trials.loc[index, name] = None
    return trials


def sweep_objective(parent: Run) -> tuple[str, str]:
    """The metric the sweep optimised and its mode, from the parent run's params (the space's summary);
    val_acc/max, as the driver's default, for a parent run without them."""
    metric = parent.data.params.get("metric") or "val_acc"
    mode = parent.data.params.get("mode")
    return metric, mode if mode in ("max", "min") else ("min" if metric == "val_loss" else "max")


def best_trial(trials: pd.DataFrame, epochs: pd.DataFrame, metric: str, mode: str) -> tuple[str, float] | None:
    """(trial id, value) of the sweep's best trial as the driver chose it: each trial's best epoch of `metric`
    in the direction `mode`; of trials tied on the value, the one the driver tagged best (it keeps the first to
    reach a value), else the earliest sampled. None when no trial logged the metric."""
    from tuner.report_plots import trial_numbers

    if metric not in epochs:
        return None
    values = epochs.dropna(subset=[metric]).groupby("trial_id")[metric]
    per_trial = values.max() if mode == "max" else values.min()
    if per_trial.empty:
        return None
    top = per_trial.max() if mode == "max" else per_trial.min()
    tied = trials[trials["trial_id"].isin(per_trial.index[per_trial == top])]
    tied = tied.assign(number=trial_numbers(tied)).sort_values(["tagged_best", "number"], ascending=[False, True])
    return str(tied["trial_id"].iloc[0]), float(top)


def varied_params(trials: pd.DataFrame) -> list[str]:
    """TrainConfig fields that take more than one value across the trials."""
    return [name for name in TrainConfig.field_names()
            if name in trials and trials[name].dropna().astype(str).nunique() > 1]


# ---------------------------------------------------------------------------------------------
# the command


def check_out(out: Path) -> None:
    """--out must be a folder or a path where one can be made: one line naming the file in the way."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(f"--out {out}: cannot write the report there ({path} is a file, not a folder); "
                                "give a folder (it is made if missing)")
            return


def staging_folder(out: Path) -> Path:
    """A new hidden folder inside `out` (made if missing) to write the report to: on the same filesystem, so
    each file then moves into place with one rename (`install`)."""
    check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as err:
        raise UserError(f"--out {out}: cannot write the report there ({err.strerror}); give a folder you can "
                        "write to") from None


def check_replaceable(staging: Path, out: Path) -> list[str]:
    """The names of the files in `staging`, each checked to be able to replace its namesake in `out`: one that
    cannot (a folder) would fail halfway through `install` and leave the earlier report half-replaced."""
    names = sorted(path.name for path in staging.iterdir())
    blocked = [out / name for name in names if (out / name).is_dir() and not (out / name).is_symlink()]
    if blocked:
        raise UserError(f"--out {out}: cannot replace {', '.join(map(str, blocked))} (a folder, not a report file); "
                        "move it aside or give another --out (the earlier report there is unchanged)")
    return names


def install(staging: Path, out: Path) -> list[Path]:
    """Move every file of `staging` over its namesake in `out` (`check_replaceable` first)."""
    names = check_replaceable(staging, out)
    for done, name in enumerate(names):
        try:
            os.replace(staging / name, out / name)
        except OSError as err:  # a rename in one folder failing after the others worked: rare, and said so
            raise UserError(f"--out {out}: cannot replace {out / name} ({err.strerror}) after {done} of "
                            f"{len(names)} report files were replaced; fix it and run the report again") from None
    return [out / name for name in names]


def deleted_experiment_of(client: MlflowClient, sweep: str) -> Any:
    """The deleted experiment that holds sweep `sweep`'s parent run, else None: its runs are hidden, not gone."""
    from mlflow.entities import ViewType

    by_id = {e.experiment_id: e for e in client.search_experiments(view_type=ViewType.DELETED_ONLY)}
    parent = find_sweep_run(client, sweep, list(by_id), deleted_too=True) if by_id else None
    return by_id[parent.info.experiment_id] if parent is not None else None


def report(sweep: str, out: Path | None, mlflow_uri: str | None, storage: str = "runs",
           mlflow_only: bool = False) -> Path:
    out = Path(out) if out else Path("runs") / "reports" / safe_name(sweep)
    check_out(out)  # before seconds of reading: the cheap mistakes first
    client, uri = open_client(mlflow_uri)
    with store_outage_is_user_error(uri, f"reading sweep '{sweep}'"):
        parent = find_sweep_run(client, sweep)
        if parent is None:
            deleted = deleted_experiment_of(client, sweep)
            if deleted is not None:
                raise UserError(f"sweep '{sweep}' is in experiment '{deleted.name}', which is deleted: restore it in "
                                f"the MLflow UI (or `mlflow experiments restore --experiment-id "
                                f"{deleted.experiment_id}`), then report again")
            names = sweep_names(client)
            known = f"sweeps in this store: {', '.join(names)}" if names else "this store has no sweep yet"
            raise UserError(f"no sweep named '{sweep}'{suggest(sweep, names)}; {known} (or pass --mlflow-uri)")
        trials, epochs = collect(client, parent)
    if trials.empty:
        raise UserError(f"sweep '{sweep}' has no trial runs yet: nothing to report")
    with tempfile.TemporaryDirectory(prefix="tuner-report-") as scratch:
        study, study_file = None, ""
        if mlflow_only:
            print(f"note: --mlflow-only: parameters of '{sweep}' come from MLflow alone (a parameter a trial did "
                  "not use shows its default)")
        else:
            data, study_file = find_study(sweep, parent.data.tags.get("tuner.storage", storage))
            if data is None:
                print(f"note: no Optuna study of '{sweep}' under {storage}: parameters come from MLflow alone")
            else:
                study = open_study(data, study_file, sweep, Path(scratch))
                trials = blank_unused(trials, study)
        metric, mode = sweep_objective(parent)
        best = best_trial(trials, epochs, metric, mode)
        written, folder = write_report(sweep, trials, epochs, parent, study, out, client, uri,
                                       best[0] if best else None)
    print(f"{len(trials)} trials, {len(epochs)} trial-epochs of sweep '{sweep}' -> {out}")
    if best is not None:
        name = trials.loc[trials["trial_id"] == best[0], "run_name"].iloc[0]
        print(f"best: {name}  {metric.replace('_', ' ')} {best[1]:.4f} (the sweep's metric, mode {mode})")
    else:
        print(f"note: no best trial: no trial logged {metric} (none finished an epoch)")
    print(f"logged {len(written)} files under {folder} of run {parent.info.run_id} ({TAG_REPORT}={folder})")
    if study is not None:
        local = "://" not in study_file
        print(f"the study, interactively: optuna-dashboard sqlite:///{Path(study_file).resolve()}" if local else
              f"the study, interactively: copy {study_file} here, then optuna-dashboard sqlite:///optuna.db")
    return out


def write_report(sweep: str, trials: pd.DataFrame, epochs: pd.DataFrame, parent: Run, study: Any, out: Path,
                 client: MlflowClient, uri: str, champion: str | None = None) -> tuple[list[Path], str]:
    """The tables and plots, in `out` and as the parent run's report: written to a staging folder in `out`,
    uploaded to a new artifact folder (`upload_report`), moved into place in `out`, then shown on the run
    (`show_report`); `champion`, the best trial's id, is drawn as such. The paths in `out` and the artifact
    folder. One line, and the earlier report unchanged
    in `out` and on the run, when a step before the last fails; the partial upload is then removed."""
    staging = staging_folder(out)
    try:
        try:
            write_files(sweep, trials, epochs, parent, study, staging, champion)
        except OSError as err:  # a full disk, a quota: nothing of the earlier report was touched yet
            raise UserError(f"--out {out}: cannot write the report there ({err.strerror or err}); free space or "
                            "give another --out (the earlier report there is unchanged)") from None
        check_replaceable(staging, out)  # before the upload: a blocked --out costs no upload
        folder = f"{REPORT_ARTIFACTS}/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        try:
            upload_report(client, parent, staging, folder, out)
            written = install(staging, out)
            previous = show_report(client, parent, folder, out)
        except BaseException:  # Ctrl-C included: what was uploaded is named by no tag, and is removed
            discard_report(client, uri, parent, folder)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_superseded(client, uri, parent, previous, folder)
    earlier = [name for name in REPORT_FILES if (out / name).is_file() and out / name not in written]
    if earlier:
        print(f"note: {', '.join(earlier)} in {out} are from an earlier report (not made this time)")
    return written, folder


def _logging_error(parent: Run, err: Exception, kept: str) -> UserError:
    reason = re.sub(r" for url: \S+", "", " ".join(str(err).split()))  # requests' HTTPError: the URL is a line long
    reason = (reason[:157] + "...") if len(reason) > 160 else reason or "no detail"
    return UserError(f"logging the report to run {parent.info.run_id} failed ({type(err).__name__}: {reason}); "
                     f"{kept}; check the tracking server and its artifact store, then run the report again")


def upload_report(client: MlflowClient, parent: Run, staging: Path, folder: str, out: Path) -> None:
    """Every file of `staging` to the artifact folder `folder` of the parent run, then checked there by name
    and size: a file the store lost fails here, before any tag names the folder. Until `show_report`, no
    reader follows the folder, so a failure leaves the run's report as it was."""
    files = sorted(staging.iterdir())
    try:
        for path in files:
            client.log_artifact(parent.info.run_id, str(path), folder)
        stored = {info.path.rsplit("/", 1)[-1]: info.file_size
                  for info in client.list_artifacts(parent.info.run_id, folder)}
        lost = [path.name for path in files
                if path.name not in stored or stored[path.name] not in (None, path.stat().st_size)]
        if lost:
            raise OSError(f"{', '.join(lost)} missing or incomplete in {folder} after the upload")
    except Exception as err:  # noqa: BLE001 - every artifact store has its own errors (HTTP, OSError, boto)
        raise _logging_error(parent, err, f"the run and {out} keep their earlier report") from None


def show_report(client: MlflowClient, parent: Run, folder: str, out: Path) -> str | None:
    """Point the run's tag `tuner.report` at `folder`: one write, the only change a reader of the run sees.
    The folder it named before (read just before the write, so a concurrent report is not missed)."""
    try:
        previous = client.get_run(parent.info.run_id).data.tags.get(TAG_REPORT)
        client.set_tag(parent.info.run_id, TAG_REPORT, folder)
    except Exception as err:  # noqa: BLE001 - as upload_report
        raise _logging_error(parent, err, f"the run keeps its earlier report ({out} has the new one)") from None
    return previous


def _artifacts(uri: str, parent: Run) -> Any:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(parent.info.artifact_uri, tracking_uri=uri)


def discard_report(client: MlflowClient, uri: str, parent: Run, folder: str) -> None:
    """Remove the upload of a report that failed: one quick attempt, silent, since the error that brought us
    here is what the user needs. Not when the tag names it after all (a tag write whose answer was lost)."""
    try:
        with quick_http():
            if client.get_run(parent.info.run_id).data.tags.get(TAG_REPORT) != folder:
                _artifacts(uri, parent).delete_artifacts(folder)
    except Exception:  # noqa: BLE001 - unreachable store: the upload stays, named by no tag
        pass


def remove_superseded(client: MlflowClient, uri: str, parent: Run, previous: str | None, folder: str) -> None:
    """After the switch: remove the folder the tag named before, and report files of the older layout directly
    under report/. Only names a report could have: the tag is free text anyone can edit. A failure is a note:
    the new report is shown either way."""
    try:
        with quick_http():
            paths = [info.path for info in client.list_artifacts(parent.info.run_id, REPORT_ARTIFACTS)
                     if not info.is_dir and info.path.rsplit("/", 1)[-1] in REPORT_FILES]
            if previous and previous != folder and REPORT_FOLDER.fullmatch(previous):
                paths.append(previous)
            for path in paths:
                _artifacts(uri, parent).delete_artifacts(path)
    except Exception as err:  # noqa: BLE001 - as upload_report
        print(f"note: the earlier report's files under {REPORT_ARTIFACTS}/ of run {parent.info.run_id} could not "
              f"be removed ({type(err).__name__}); the run shows the new one ({TAG_REPORT}={folder})")


def write_files(sweep: str, trials: pd.DataFrame, epochs: pd.DataFrame, parent: Run, study: Any,
                folder: Path, champion: str | None = None) -> None:
    """Every table and plot of the report into `folder`; `champion` (a trial id) is drawn as the best trial.
    Only the tables when no trial finished an epoch: every plot reads val accuracies."""
    for name, table in zip(TABLES, (trials, epochs)):
        table.to_parquet(folder / f"{name}.parquet", engine="pyarrow", index=False)
        table.to_csv(folder / f"{name}.csv", index=False)
    scored_trials = trials.dropna(subset=["best_val_acc"])
    if scored_trials.empty:
        counts = trials["outcome"].value_counts()
        print(f"note: plots skipped: no trial finished an epoch ({len(trials)} trials: "
              f"{', '.join(f'{n} {outcome}' for outcome, n in counts.items())}); the trials table lists each "
              "trial and its outcome")
        return
    params = varied_params(trials)
    plot_optimisation_history(trials, sweep, folder / "optimisation_history.png")
    plot_learning_curves(trials, epochs, sweep, folder / "learning_curves.png", asha_rungs(parent.data.params),
                         champion)
    if params:
        plot_parallel_coordinates(trials, params, folder / "parallel_coordinates.png", log_scaled(study))
    else:
        print("note: parallel coordinates skipped: no parameter varies across the trials")
    plot_pareto(trials, folder / "pareto.png")
    everywhere = [name for name in params if scored_trials[name].notna().all()]  # conditional ones left out
    scored = len(scored_trials)
    if len(everywhere) < 2 or scored < 3:
        print(f"note: parameter importances skipped: need >= 2 parameters every trial used and >= 3 trials with "
              f"a val accuracy (have {len(everywhere)} and {scored})")
        return
    if scored_trials["best_val_acc"].nunique() < 2:  # fANOVA has no variance to attribute (and raises)
        print(f"note: parameter importances skipped: all {scored} trials have the same best val accuracy "
              f"({scored_trials['best_val_acc'].iloc[0]:.4f}), so no parameter explains a difference")
        return
    try:
        importances = param_importances(trials, everywhere)
    except Exception as err:  # noqa: BLE001 - fANOVA fails in its own ways on degenerate data: lose the plot only
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        print(f"note: parameter importances skipped: fANOVA could not estimate them from {scored} trials "
              f"({type(err).__name__}: {reason[:160]})")
        return
    plot_importances(importances, folder / "param_importances.png", scored,
                     [name for name in params if name not in everywhere])
    if scored < FEW_TRIALS:
        print(f"note: importances from {scored} trials (under {FEW_TRIALS}): a rough ranking, not a measurement")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    report(args.sweep, args.out, args.mlflow_uri, args.storage, args.mlflow_only)


if __name__ == "__main__":
    from tuner.quick_exit import run_then_exit_quickly

    run_then_exit_quickly(main)
