"""Per-trial overhead of the sweep machinery at the smoke scale (issue #3 targets).

Runs the smoke sweep through the real service (`python -m tuner.run`, local Ray, a local MLflow store),
then reads every trial's per-epoch results from the Ray storage folder:
- trial overhead = the trial's wall time inside its worker (Ray's `time_total_s`) minus the time spent
  training and evaluating (`epoch_seconds`): taking the data from the object store, building the model,
  opening the MLflow run, and every report + checkpoint. Goal: median <= 2 s.
- report + checkpoint = for every epoch after the first, the time between two reports minus the epoch's
  own training and evaluation time: `tune.report` with a checkpoint folder, MLflow logging. Goal:
  <= 5% of the epoch time.
Start-up of a Ray worker process is not inside `time_total_s`; with reuse_actors it is paid once per
concurrent slot, and the bench prints the sweep's wall time next to the sum of trial times for context.
Results: docs/benchmarks.md#sweep-overhead.

    python bench/sweep_overhead.py --space smoke.yaml --data-dir data
    python bench/sweep_overhead.py --sweep-dir runs/smoke-20261125-204054     # analyse an earlier sweep
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def analyse(sweep_dir: Path) -> dict[str, float]:
    trial_overheads, report_seconds, report_shares = [], [], []
    for result_file in sorted(sweep_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in result_file.read_text().splitlines()]
        rows = [r for r in rows if "epoch_seconds" in r]
        if not rows:
            continue
        trial_overheads.append(rows[-1]["time_total_s"] - sum(r["epoch_seconds"] for r in rows))
        for row in rows[1:]:
            gap = row["time_this_iter_s"] - row["epoch_seconds"]
            report_seconds.append(gap)
            report_shares.append(gap / row["epoch_seconds"])
    return {
        "trials": len(trial_overheads),
        "median_trial_overhead_s": statistics.median(trial_overheads),
        "max_trial_overhead_s": max(trial_overheads),
        "median_report_checkpoint_s": statistics.median(report_seconds) if report_seconds else float("nan"),
        "median_report_checkpoint_share": statistics.median(report_shares) if report_shares else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="smoke.yaml")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="runs/bench/overhead")
    parser.add_argument("--sweep-dir", help="analyse this finished sweep instead of running one")
    args = parser.parse_args()
    wall = None
    if args.sweep_dir:
        sweep_dir = Path(args.sweep_dir)
    else:
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        name = f"overhead-{time.strftime('%Y%m%d-%H%M%S')}"
        started = time.monotonic()
        with open(out / f"{name}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "tuner.run", "--space", args.space, "--name", name,
                            "--storage", str(out / "runs"), "--mlflow-uri", f"sqlite:///{out / 'mlflow.db'}",
                            "--data-dir", args.data_dir], check=True, stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.monotonic() - started
        sweep_dir = out / "runs" / name
    figures = analyse(sweep_dir)
    print(f"sweep {sweep_dir.name}: {figures['trials']} trials" + (f", driver wall time {wall:.0f} s" if wall else ""))
    print(f"median per-trial overhead   {figures['median_trial_overhead_s']:.2f} s   (max "
          f"{figures['max_trial_overhead_s']:.2f} s; goal <= 2 s: "
          f"{'met' if figures['median_trial_overhead_s'] <= 2 else 'NOT met'})")
    print(f"median report + checkpoint  {figures['median_report_checkpoint_s']:.3f} s per epoch = "
          f"{figures['median_report_checkpoint_share'] * 100:.1f}% of the epoch time (goal <= 5%: "
          f"{'met' if figures['median_report_checkpoint_share'] <= 0.05 else 'NOT met'})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
