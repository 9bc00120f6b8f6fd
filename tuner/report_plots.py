"""The report's plots, drawn from its trial and epoch tables (tuner/report.py builds them from MLflow): each
`plot_*` writes one PNG; `pareto_front`, `asha_rungs` and `param_importances` are the figures behind them.
Nothing here reads or writes a store."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuner import outcomes

OUTCOME_COLOURS = {"completed": "tab:blue", "stopped": "tab:orange", "failed": "tab:red", "other": "tab:gray"}
FEW_TRIALS = 20  # below this, fANOVA importances are mostly noise: said under the plot


def _category_order(label: str) -> tuple:
    """Sort '8,16,32' before '16,32,64' (numerically, element by element); other text alphabetically."""
    try:
        return (0, tuple(float(part) for part in label.split(",")), label)
    except ValueError:
        return (1, (), label)



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


def asha_rungs(params: dict[str, str]) -> list[int]:
    """The epochs at which ASHA compares trials, from the parent run's `scheduler.*` params ([] for FIFO)."""
    try:
        if params.get("scheduler.type", "asha") != "asha":
            return []
        epoch, factor, last = (int(float(params[f"scheduler.{k}"])) for k in ("grace_period", "reduction_factor",
                                                                               "max_epochs"))
    except (KeyError, ValueError):
        return []
    rungs = []
    while epoch < last and factor > 1:
        rungs.append(epoch)
        epoch *= factor
    return rungs


def _label(run_name: Any) -> str:
    return str(run_name).split(" ")[0]


def plot_learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, sweep: str, path: Path,
                         rungs: list[int] | None = None, champion: str | None = None) -> Path:
    """`champion`: the trial id drawn thick as the best (the report's pick, by the sweep's metric); without
    one, the trial of the highest val accuracy."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    outcome_of = dict(zip(trials["trial_id"], trials["outcome"]))
    champion = champion if champion is not None else _champion(trials)
    curves = epochs.dropna(subset=["val_acc"]) if "val_acc" in epochs else epochs.iloc[0:0]
    for rung in rungs or []:
        ax.axvline(rung, color="gray", linestyle="--", linewidth=0.8)
        ax.text(rung, 1.0, f" rung {rung}", transform=ax.get_xaxis_transform(), fontsize=7, color="gray",
                va="top")
    for trial_id, rows in curves.groupby("trial_id", sort=False):
        rows = rows.sort_values("epoch")
        group = outcomes.group(outcome_of.get(trial_id, ""))
        colour = OUTCOME_COLOURS[group]
        best = trial_id == champion
        ax.plot(rows["epoch"], rows["val_acc"], color="black" if best else colour, alpha=1.0 if best else 0.7,
                linewidth=2.6 if best else 1.2, zorder=3 if best else 2)
        if group == "stopped":
            ax.plot(rows["epoch"].iloc[-1], rows["val_acc"].iloc[-1], marker="x", color=colour, markersize=9,
                    markeredgewidth=2)
        ax.annotate(_label(rows["run_name"].iloc[-1]) + (" (champion)" if best else ""),
                    (rows["epoch"].iloc[-1], rows["val_acc"].iloc[-1]), fontsize=7, textcoords="offset points",
                    xytext=(4, 2), fontweight="bold" if best else "normal")
    handles = [Line2D([], [], color=OUTCOME_COLOURS["completed"], label="completed"),
               Line2D([], [], color=OUTCOME_COLOURS["stopped"], marker="x", markeredgewidth=2, label="stopped by ASHA"),
               Line2D([], [], color=OUTCOME_COLOURS["failed"], label="diverged / errored"),
               Line2D([], [], color="black", linewidth=2.6, label="best trial")]
    if rungs:
        handles.append(Line2D([], [], color="gray", linestyle="--", label="ASHA rung"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{sweep}: validation accuracy of {len(trials)} trials")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _champion(trials: pd.DataFrame) -> str | None:
    scored = trials.dropna(subset=["best_val_acc"])
    return None if scored.empty else str(scored.loc[scored["best_val_acc"].idxmax(), "trial_id"])


def trial_numbers(trials: pd.DataFrame) -> pd.Series:
    """Each trial's sample number (t007 -> 7), from its run name; else its order in the table."""
    numbers = trials["run_name"].astype(str).str.extract(r"^t(\d+)")[0]
    return pd.to_numeric(numbers, errors="coerce").fillna(pd.Series(range(1, len(trials) + 1), index=trials.index))


def plot_optimisation_history(trials: pd.DataFrame, sweep: str, path: Path) -> Path:
    """Best val accuracy of each trial by trial number, and the best so far (Optuna's optimisation history)."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(8.0, 4.5)
    data = trials.assign(number=trial_numbers(trials)).sort_values("number")
    scored = data.dropna(subset=["best_val_acc"])
    for group, colour in OUTCOME_COLOURS.items():
        rows = scored[scored["outcome"].map(outcomes.group) == group]
        if len(rows):
            ax.scatter(rows["number"], rows["best_val_acc"], color=colour, s=30, label=group, zorder=3)
    if len(scored):
        ax.step(scored["number"], scored["best_val_acc"].cummax(), where="post", color="black", linewidth=1.5,
                label="best so far")
        top = scored.loc[scored["best_val_acc"].idxmax()]
        ax.annotate(_label(top["run_name"]), (top["number"], top["best_val_acc"]), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number (sample order)")
    ax.set_ylabel("best validation accuracy")
    ax.set_title(f"{sweep}: optimisation history, {len(scored)} trials with a val accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


UNUSED_Y = -0.15  # where a trial that did not use a parameter crosses its axis


def _axis_values(column: pd.Series, log: bool = False) -> tuple[np.ndarray, list[tuple[float, str]], bool]:
    """A column mapped to [0, 1], (position, label) ticks and whether the axis is logarithmic: numbers
    scaled (log when they span more than 20x) with five ticks, anything else as evenly spaced categories.
    A missing value (a parameter the trial did not use) goes to UNUSED_Y, labelled so."""
    missing = column.isna().to_numpy()
    present = column.dropna()
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column) and len(present):
        values = column.astype(float).to_numpy()
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        log = low > 0 and (log or high / low > 20)
        lo, hi = (math.log10(low), math.log10(high)) if log else (low, high)
        span = (hi - lo) or 1.0
        scaled = ((np.log10(values) if log else values) - lo) / span
        ticks = [(q, f"{(10 ** (lo + q * span)) if log else (lo + q * span):.3g}") for q in np.linspace(0, 1, 5)]
        if high == low:
            ticks = [(0.0, f"{low:.3g}")]
    else:
        labels = sorted(present.astype(str).unique(), key=_category_order)
        positions = {label: (i / (len(labels) - 1) if len(labels) > 1 else 0.5) for i, label in enumerate(labels)}
        scaled = column.astype(str).map(positions).to_numpy(dtype=float)
        ticks, log = [(positions[k], k) for k in labels], False
    if missing.any():
        scaled = np.where(missing, UNUSED_Y, scaled)
        ticks.append((UNUSED_Y, "not used"))
    return scaled, ticks, log


def plot_parallel_coordinates(trials: pd.DataFrame, params: list[str], path: Path,
                              log_params: set[str] | None = None) -> Path:
    """`log_params`: sampled on a log scale (the study's distributions); also any range over 20x."""
    import matplotlib.pyplot as plt

    data = trials.dropna(subset=["best_val_acc"])
    axes_names = params + ["best_val_acc"]
    fig, ax = _figure(max(6.0, 1.8 * len(axes_names)), 5.0)
    columns, ticks, titles = [], [], []
    for name in axes_names:
        values, axis_ticks, log = _axis_values(data[name], name in (log_params or set()))
        columns.append(values)
        ticks.append(axis_ticks)
        titles.append(f"{name}\n(log scale)" if log else name)
    matrix = np.vstack(columns).T if columns else np.zeros((0, 0))
    accuracy = data["best_val_acc"].to_numpy(dtype=float)
    norm = plt.Normalize(np.nanmin(accuracy), np.nanmax(accuracy)) if len(accuracy) else plt.Normalize(0, 1)
    colours = plt.cm.viridis(norm(accuracy))
    for row, colour in zip(matrix, colours):
        ax.plot(range(len(axes_names)), row, color=colour, alpha=0.8, linewidth=1.3)
    for x, axis_ticks in enumerate(ticks):
        ax.axvline(x, color="black", linewidth=0.8, ymin=0.16)
        for y, label in axis_ticks:
            ax.text(x + 0.03, y, label, fontsize=7, va="center", style="italic" if y == UNUSED_Y else "normal")
    ax.axhline(UNUSED_Y, color="lightgray", linewidth=0.6, linestyle=":")
    ax.set_xticks(range(len(axes_names)), titles, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(UNUSED_Y - 0.06, 1.05)
    ax.set_title(f"parameters vs best validation accuracy ({len(data)} trials)")
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


def plot_importances(importances: dict[str, float], path: Path, trials: int, left_out: list[str]) -> Path:
    fig, ax = _figure(7.0, 0.5 * len(importances) + 2.2)
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance for best val accuracy (fANOVA)")
    ax.set_title(f"parameter importances from {trials} trials")
    notes = []
    if trials < FEW_TRIALS:
        notes.append(f"caveat: only {trials} trials (under {FEW_TRIALS}): importances are rough, read the ranking only")
    if left_out:
        notes.append(f"left out (not used by every trial): {', '.join(left_out)}")
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, color="dimgray", va="bottom")
        fig.tight_layout(rect=(0, 0.06 * len(notes), 1, 1))
        fig.savefig(path)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return path
    return _save(fig, path)
