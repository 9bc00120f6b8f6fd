"""What the sweep's driver prints while it runs: one line per finished trial, and every ~15 s a compact view
of the sweep (Ray's own status table is off: `verbose=0` in tuner.run).

    [  2m05s] 1 running, 3 completed, 1 stopped, 0 failed | best t003 val_acc 0.4120 (lr=0.2 optimizer=sgd)
              | budget [##########..........]  50% (3/6 trials)
        t005 epoch 2/3  val_acc 0.3540  lr=0.031 optimizer=adamw
    [4/6] trial t004 stopped_by_asha_at_epoch_1: val_acc 0.2210 at epoch 1 | lr=0.12 optimizer=sgd momentum=0.85

Every trial is named by its label (`t004`, the sample number): the same label starts its MLflow run name,
its folder under --storage (`t004-<ray id>`), Ray's trial name, and the study trial's `trial_label`.
Only searched parameters are shown; the fixed ones are in the space file and on the MLflow parent run.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from tuner import outcomes
from tuner.config import TrainConfig
from tuner.tracking import TrialRuns
from tuner.trial_names import SpaceOutline, trial_label

PROGRESS_EVERY_S = 15.0
BAR_WIDTH = 20


def format_elapsed(seconds: float) -> str:
    """`  2m05s`, `1h02m`: fixed width, so the lines line up."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600:3d}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60:3d}m{seconds % 60:02d}s"


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def searched_text(values: Mapping[str, Any]) -> str:
    """`lr=0.031 optimizer=adamw widths=8-16-32`."""
    def shown(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "-".join(str(v) for v in value)
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return " ".join(f"{key}={shown(value)}" for key, value in values.items())


def trial_line(done: int, total: int, trial_id: str, outcome: str, result: Mapping[str, Any], metric: str,
               runs: TrialRuns, name: str | None = None) -> str:
    """The line printed as a trial ends: `[4/6] trial t004 completed: val_acc 0.4120 at epoch 3 | lr=...`.
    `name`: the run name it would have, for a trial that never started (its run was never made)."""
    name = name or runs.run_name(trial_id)
    label, _, searched = name.partition(" ")
    value = result.get(metric)
    line = f"[{done}/{total}] trial {label} {outcome}"
    if result.get("diverged") or result.get("error"):  # its metric is the worst value, a placeholder: not shown
        line += f" in epoch {result.get('epoch')}"
    elif isinstance(value, (int, float)):
        line += f": {metric} {value:.4f} at epoch {result.get('epoch')}"
    if searched:
        line += f" | {searched}"
    best = runs.best
    if best is not None and best[0] == trial_id:
        line += "  << best so far"
    return line


class ProgressView(tune.Callback):
    """Every PROGRESS_EVERY_S (and at the end): status counts, the best trial, the budget used, and one line
    per running trial with its epoch, the metric and its searched values. Plain values only: Tune pickles
    its callbacks into the experiment state."""

    def __init__(self, outline: SpaceOutline, max_epochs: int, trials: int, epochs: int | None = None,
                 gpu_hours: float | None = None, wall_time_s: float | None = None,
                 every_s: float = PROGRESS_EVERY_S) -> None:
        self.outline, self.max_epochs, self.every_s = outline, max_epochs, every_s
        self.limits = {"trials": trials, "epochs": epochs, "gpu_hours": gpu_hours, "wall_time_s": wall_time_s}
        self._started = time.monotonic()
        self._last = time.monotonic()
        self._names: dict[str, tuple[str, str]] = {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _started=time.monotonic(), _last=time.monotonic())

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(self.view(trials), flush=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        print(self.view(trials, running_lines=False), flush=True)

    def name(self, trial: Trial) -> tuple[str, str]:
        """(label, searched values) of a trial."""
        if trial.trial_id not in self._names:
            config = trial.config or {}
            label = trial_label(int(config["index"])) if "index" in config else trial.trial_id
            searched = ""
            if "train" in config:
                searched = searched_text(self.outline.searched_values(TrainConfig.from_dict(config["train"])))
            self._names[trial.trial_id] = (label, searched)
        return self._names[trial.trial_id]

    def best_value(self, trial: Trial) -> float | None:
        """The best value of the metric the trial reported (any epoch), or None."""
        metric = self.outline.metric
        analysis = getattr(trial, "metric_analysis", None) or {}
        value = analysis.get(metric, {}).get(self.outline.mode)
        if value is None:
            value = (trial.last_result or {}).get(metric)
        if (trial.last_result or {}).get("diverged") or (trial.last_result or {}).get("error"):
            return None
        return float(value) if isinstance(value, (int, float)) else None

    def view(self, trials: list[Trial], running_lines: bool = True) -> str:
        counts = {"running": 0, "completed": 0, "stopped": 0, "failed": 0}
        best: tuple[float, Trial] | None = None
        epochs = 0
        gpu_seconds = 0.0
        for trial in trials:
            result = trial.last_result or {}
            epochs += int(result.get("epoch", 0) or 0)
            gpu_seconds += float(result.get("gpu_seconds", 0.0) or 0.0)
            if trial.status == Trial.RUNNING:
                counts["running"] += 1
            elif trial.status in (Trial.TERMINATED, Trial.ERROR):
                group = outcomes.group(outcomes.of_result(result, trial.status == Trial.ERROR, self.max_epochs))
                counts[group if group in counts else "failed"] += 1
            value = self.best_value(trial)
            if value is not None and (best is None or self.outline.better(value, best[0])):
                best = (value, trial)
        metric = self.outline.metric
        parts = [f"[{format_elapsed(time.monotonic() - self._started)}] "
                 + ", ".join(f"{n} {what}" for what, n in counts.items())]
        if best is not None:
            label, searched = self.name(best[1])
            parts.append(f"best {label} {metric} {best[0]:.4f}" + (f" ({searched})" if searched else ""))
        parts.append(self.budget_text(counts["completed"] + counts["stopped"] + counts["failed"], epochs,
                                      gpu_seconds))
        lines = [" | ".join(parts)]
        if running_lines:
            for trial in trials:
                if trial.status != Trial.RUNNING:
                    continue
                result = trial.last_result or {}
                label, searched = self.name(trial)
                value = result.get(metric)
                shown = f"{metric} {value:.4f}" if isinstance(value, (int, float)) else f"{metric} -"
                lines.append(f"    {label} epoch {int(result.get('epoch', 0) or 0)}/{self.max_epochs}  {shown}  "
                             f"{searched}")
        return "\n".join(lines)

    def budget_text(self, finished: int, epochs: int, gpu_seconds: float) -> str:
        """The budget nearest to its end, as a bar and a percentage: `budget [####......] 40% of 6 trials`."""
        shares = [(finished / self.limits["trials"], f"{finished}/{self.limits['trials']} trials")]
        if self.limits["epochs"]:
            shares.append((epochs / self.limits["epochs"], f"{epochs}/{self.limits['epochs']} epochs"))
        if self.limits["gpu_hours"]:
            shares.append((gpu_seconds / 3600 / self.limits["gpu_hours"],
                           f"{gpu_seconds / 3600:.2f}/{self.limits['gpu_hours']:g} GPU-hours"))
        if self.limits["wall_time_s"]:
            elapsed, limit = time.monotonic() - self._started, self.limits["wall_time_s"]
            shares.append((elapsed / limit, f"{format_elapsed(elapsed).strip()} of {format_elapsed(limit).strip()}"))
        fraction, what = max(shares)
        return f"budget {bar(fraction)} {min(fraction, 1.0):4.0%} ({what})"
