"""Report of one sweep: every trial to Parquet/CSV and four plots, logged to the sweep's parent run.

    python -m tuner.report --sweep widths-0412 --mlflow-uri http://127.0.0.1:5000

Writes into --out (default runs/reports/<sweep>) and logs the same files under `report/` of the parent
run:
- trials.parquet / trials.csv: one row per trial: its TrainConfig params, outcome, epochs run, final and
  best val accuracy, params count, MACs, GPU-seconds;
- epochs.parquet / epochs.csv: one row per trial and epoch, every metric the trial logged;
- learning_curves.png: val accuracy per epoch of every trial; trials stopped by ASHA end in an x;
- parallel_coordinates.png: the parameters that varied against best val accuracy (colour);
- pareto.png: best val accuracy against parameter count, with the Pareto front (no smaller model
  is as accurate);
- param_importances.png: Optuna's fANOVA importances of the varied parameters for best val accuracy
  (skipped, with a note, below 3 trials or 2 varied parameters).
"""
from __future__ import annotations

# ruff: noqa: E402 - `python -m tuner.report` parses its flags before pandas, matplotlib and mlflow load (below)
import argparse
from pathlib import Path

from tuner.errors import OneLineParser
from tuner.mlflow_names import add_tracking_argument


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m tuner.report",
        description="Tables (Parquet, CSV) and plots of every trial of a sweep, logged to its parent run.",
        epilog="example: python -m tuner.report --sweep widths-0412 --mlflow-uri http://127.0.0.1:5000",
    )
    parser.add_argument("--sweep", required=True, help="the sweep's name (tag tuner.sweep of its parent run)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/reports/<sweep>)")
    add_tracking_argument(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer here, before the imports below take seconds
    _parser().parse_args()

import math

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from tuner import outcomes
from tuner.config import TrainConfig
from tuner.errors import UserError, exit_on_user_error, suggest
from tuner.tracking import (
    TAG_GPU_SECONDS,
    TAG_MACS,
    TAG_OUTCOME,
    TAG_PARAMS,
    TAG_TRIAL,
    find_sweep_run,
    open_client,
    safe_name,
    sweep_names,
    trial_runs,
)

SUMMARY_COLUMNS = [
    "trial_id", "run_name", "outcome", "status", "epochs_run", "final_val_acc", "best_val_acc", "best_epoch",
    "params_count", "macs", "gpu_seconds", "run_id",
]
OUTCOME_COLOURS = {"completed": "tab:blue", "stopped": "tab:orange", "failed": "tab:red", "other": "tab:gray"}


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
        history = metric_rows(client, run)
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
            "params_count": _number(tags.get(TAG_PARAMS)),
            "macs": _number(tags.get(TAG_MACS)),
            "gpu_seconds": _number(tags.get(TAG_GPU_SECONDS)),
            "run_id": run.info.run_id,
            **{name: params.get(name) for name in param_names},
        })
        for epoch, metrics in history.items():
            epochs.append({"trial_id": trial_id, "run_name": run.info.run_name, "epoch": epoch, **metrics})
    trial_table = pd.DataFrame(trials, columns=SUMMARY_COLUMNS + param_names)
    for name in param_names:
        trial_table[name] = _typed(trial_table[name])
    trial_table = trial_table.dropna(axis=1, how="all")
    epoch_table = pd.DataFrame(epochs, columns=["trial_id", "run_name", "epoch"] + sorted(
        {k for row in epochs for k in row} - {"trial_id", "run_name", "epoch"}))
    return trial_table, epoch_table


def varied_params(trials: pd.DataFrame) -> list[str]:
    """TrainConfig fields that take more than one value across the trials."""
    return [name for name in TrainConfig.field_names()
            if name in trials and trials[name].dropna().astype(str).nunique() > 1]


def _category_order(label: str) -> tuple:
    """Sort '8,16,32' before '16,32,64' (numerically, element by element); other text alphabetically."""
    try:
        return (0, tuple(float(part) for part in label.split(",")), label)
    except ValueError:
        return (1, (), label)


# ---------------------------------------------------------------------------------------------
# plots


def _figure(width: float = 8.0, height: float = 5.0):  # noqa: ANN202 - matplotlib types
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=110)


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, sweep: str, path: Path) -> Path:
    from matplotlib.lines import Line2D

    fig, ax = _figure()
    outcome_of = dict(zip(trials["trial_id"], trials["outcome"]))
    curves = epochs.dropna(subset=["val_acc"]) if "val_acc" in epochs else epochs.iloc[0:0]
    for trial_id, rows in curves.groupby("trial_id", sort=False):
        rows = rows.sort_values("epoch")
        group = outcomes.group(outcome_of.get(trial_id, ""))
        colour = OUTCOME_COLOURS[group]
        ax.plot(rows["epoch"], rows["val_acc"], color=colour, alpha=0.75, linewidth=1.2)
        if group == "stopped":
            ax.plot(rows["epoch"].iloc[-1], rows["val_acc"].iloc[-1], marker="x", color=colour, markersize=9,
                    markeredgewidth=2)
    handles = [Line2D([], [], color=OUTCOME_COLOURS["completed"], label="completed"),
               Line2D([], [], color=OUTCOME_COLOURS["stopped"], marker="x", markeredgewidth=2, label="stopped by ASHA"),
               Line2D([], [], color=OUTCOME_COLOURS["failed"], label="diverged / errored")]
    ax.legend(handles=handles, loc="lower right")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{sweep}: validation accuracy of {len(trials)} trials")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _axis_values(column: pd.Series) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """A column mapped to [0, 1] plus (position, label) ticks: numbers scaled (log when they span
    more than 20x), anything else as evenly spaced categories."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.astype(float).to_numpy()
        low, high = np.nanmin(values), np.nanmax(values)
        log = low > 0 and high / low > 20
        scaled = np.log10(values) if log else values
        lo, hi = (math.log10(low), math.log10(high)) if log else (low, high)
        span = (hi - lo) or 1.0
        return (scaled - lo) / span, [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
    labels = sorted(column.dropna().astype(str).unique(), key=_category_order)
    positions = {label: (i / (len(labels) - 1) if len(labels) > 1 else 0.5) for i, label in enumerate(labels)}
    return column.astype(str).map(positions).to_numpy(dtype=float), [(positions[k], k) for k in labels]


def plot_parallel_coordinates(trials: pd.DataFrame, params: list[str], path: Path) -> Path:
    import matplotlib.pyplot as plt

    data = trials.dropna(subset=["best_val_acc"])
    axes_names = params + ["best_val_acc"]
    fig, ax = _figure(max(6.0, 1.6 * len(axes_names)), 5.0)
    columns, ticks = [], []
    for name in axes_names:
        values, axis_ticks = _axis_values(data[name])
        columns.append(values)
        ticks.append(axis_ticks)
    matrix = np.vstack(columns).T if columns else np.zeros((0, 0))
    accuracy = data["best_val_acc"].to_numpy(dtype=float)
    norm = plt.Normalize(np.nanmin(accuracy), np.nanmax(accuracy)) if len(accuracy) else plt.Normalize(0, 1)
    colours = plt.cm.viridis(norm(accuracy))
    for row, colour in zip(matrix, colours):
        ax.plot(range(len(axes_names)), row, color=colour, alpha=0.8, linewidth=1.3)
    for x, axis_ticks in enumerate(ticks):
        ax.axvline(x, color="black", linewidth=0.8)
        for y, label in axis_ticks:
            ax.text(x + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(range(len(axes_names)), axes_names, rotation=20)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("parameters vs best validation accuracy")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="best val acc")
    return _save(fig, path)


def pareto_front(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials no smaller-or-equal model beats: sorted by params count, each more accurate than all before."""
    data = trials.dropna(subset=["params_count", "best_val_acc"]).sort_values(
        ["params_count", "best_val_acc"], ascending=[True, False])
    front, best = [], -math.inf
    for index, row in data.iterrows():
        if row["best_val_acc"] > best:
            front.append(index)
            best = row["best_val_acc"]
    return data.loc[front]


def plot_pareto(trials: pd.DataFrame, path: Path) -> Path:
    fig, ax = _figure()
    data = trials.dropna(subset=["params_count", "best_val_acc"])
    for group, colour in OUTCOME_COLOURS.items():
        rows = data[data["outcome"].map(outcomes.group) == group]
        if len(rows):
            ax.scatter(rows["params_count"], rows["best_val_acc"], color=colour, label=group, s=28, alpha=0.8)
    front = pareto_front(trials)
    if len(front):
        ax.step(front["params_count"], front["best_val_acc"], where="post", color="black", linewidth=1.2,
                label="Pareto front")
        for _, row in front.iterrows():
            ax.annotate(str(row["run_name"]).split(" ")[0], (row["params_count"], row["best_val_acc"]),
                        fontsize=7, textcoords="offset points", xytext=(4, -10))
    if len(data) and data["params_count"].min() > 0:
        ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("best validation accuracy")
    ax.set_title("accuracy vs model size")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


def param_importances(trials: pd.DataFrame, params: list[str]) -> dict[str, float]:
    """Optuna fANOVA importances of `params` for best val accuracy, from an in-memory study."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = trials.dropna(subset=["best_val_acc", *params])
    distributions = {}
    for name in params:
        column = data[name]
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            distributions[name] = CategoricalDistribution(sorted(column.astype(str).unique(), key=_category_order))
        elif pd.api.types.is_integer_dtype(column):
            distributions[name] = IntDistribution(int(column.min()), int(column.max()))
        else:
            low, high = float(column.min()), float(column.max())
            distributions[name] = FloatDistribution(low, high, log=low > 0 and high / low > 20)
    study = optuna.create_study(direction="maximize")
    for _, row in data.iterrows():
        values = {}
        for name, distribution in distributions.items():
            value = row[name]
            if isinstance(distribution, CategoricalDistribution):
                values[name] = str(value)
            elif isinstance(distribution, IntDistribution):
                values[name] = int(value)
            else:
                values[name] = float(value)
        study.add_trial(optuna.trial.create_trial(params=values, distributions=distributions,
                                                  value=float(row["best_val_acc"])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def plot_importances(importances: dict[str, float], path: Path) -> Path:
    fig, ax = _figure(7.0, 0.5 * len(importances) + 1.8)
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance for best val accuracy (fANOVA)")
    ax.set_title("parameter importances")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# the command


def report(sweep: str, out: Path | None, mlflow_uri: str | None) -> Path:
    client, _ = open_client(mlflow_uri)
    parent = find_sweep_run(client, sweep)
    if parent is None:
        names = sweep_names(client)
        known = f"sweeps in this store: {', '.join(names)}" if names else "this store has no sweep yet"
        raise UserError(f"no sweep named '{sweep}'{suggest(sweep, names)}; {known} (or pass --mlflow-uri)")
    trials, epochs = collect(client, parent)
    if trials.empty:
        raise UserError(f"sweep '{sweep}' has no trial runs yet: nothing to report")
    out = Path(out) if out else Path("runs") / "reports" / safe_name(sweep)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in (("trials", trials), ("epochs", epochs)):
        table.to_parquet(out / f"{name}.parquet", engine="pyarrow", index=False)
        table.to_csv(out / f"{name}.csv", index=False)
        written += [out / f"{name}.parquet", out / f"{name}.csv"]
    params = varied_params(trials)
    written.append(plot_learning_curves(trials, epochs, sweep, out / "learning_curves.png"))
    if params:
        written.append(plot_parallel_coordinates(trials, params, out / "parallel_coordinates.png"))
    else:
        print("note: parallel coordinates skipped: no parameter varies across the trials")
    written.append(plot_pareto(trials, out / "pareto.png"))
    scored = len(trials.dropna(subset=["best_val_acc", *params]))
    if len(params) < 2 or scored < 3:
        print(f"note: parameter importances skipped: need >= 2 varied parameters and >= 3 trials with a val "
              f"accuracy (have {len(params)} and {scored})")
    else:
        importances = param_importances(trials, params)
        written.append(plot_importances(importances, out / "param_importances.png"))
    for path in written:
        client.log_artifact(parent.info.run_id, str(path), "report")
    best = trials.sort_values("best_val_acc", ascending=False).head(1)
    print(f"{len(trials)} trials, {len(epochs)} trial-epochs of sweep '{sweep}' -> {out}")
    if len(best) and pd.notna(best["best_val_acc"].iloc[0]):
        print(f"best: {best['run_name'].iloc[0]}  val acc {best['best_val_acc'].iloc[0]:.4f}")
    print(f"logged {len(written)} files under report/ of run {parent.info.run_id}")
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    report(args.sweep, args.out, args.mlflow_uri)


if __name__ == "__main__":
    main()
