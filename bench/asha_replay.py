"""What ASHA alone can do for the search-efficiency goal: random proposals, replayed through Ray's rungs.

bench/search_efficiency.py compares TPE + ASHA with random search. This separates the scheduler's share
from the sampler's. It takes the random-search sweeps that bench left in OUT/runs (every trial ran every
epoch, so each one's whole learning curve is known) as a pool of configurations, and replays many
simulated seeds:

- random search: RANDOM_TRIALS curves drawn from the pool; its best is the target;
- ASHA over random proposals: independent draws from the pool, run WORKERS at a time, each epoch taking
  the time it took when measured, stopped by Ray's own `ASHAScheduler` (fed the measured results) at
  each grace/reduction setting asked for, with BRACKETS brackets (1, as the service runs it).

It prints, per setting, and for the same proposals with no early stopping, the share of simulated seeds
that reach random search's best within BUDGET_SHARE of the epoch budget, and the epoch at which the mean
best-so-far curve reaches the mean target: the two figures bench/search_efficiency.py reports for the
real search. What TPE adds is the difference between those and these. Results:
docs/benchmarks.md#search-efficiency.

    python bench/asha_replay.py runs/bench/recipe32a,runs/bench/recipe32b,runs/bench/recipe2
"""
from __future__ import annotations

import argparse
import heapq
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tuner.errors import UserError, exit_on_user_error


def curve_pool(outs: list[Path]) -> list[list[tuple[float, float]]]:
    """(validation accuracy, seconds) per epoch for every distinct random-search trial that ran every epoch."""
    pool, seen, lengths = [], set(), set()
    for out in outs:
        for result_file in sorted((out / "runs").glob("random-*/*/result.json")):
            rows = [json.loads(line) for line in result_file.read_text().splitlines()]
            rows = [r for r in rows if "val_acc" in r]
            if not rows or any(r.get("diverged") for r in rows):
                continue
            # a seeded CPU random search repeats itself, so a larger run of the same seed holds the
            # smaller one's trials again: count each configuration once
            key = json.dumps(rows[0]["config"], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            epochs = rows[0]["config"]["train"]["epochs"]
            lengths.add(epochs)
            if len(rows) == epochs:
                pool.append([(r["val_acc"], r["time_this_iter_s"]) for r in rows])
    if len(lengths) > 1:
        raise UserError(f"the sweeps under {', '.join(map(str, outs))} mix trial lengths {sorted(lengths)};"
                        " replay runs of one --max-epochs at a time")
    return pool


def asha_curve(proposals: list[list[tuple[float, float]]], grace: int | None, reduction: int, brackets: int,
               budget: int, workers: int) -> list[float]:
    """Best-so-far validation accuracy after each epoch spent, with Ray's ASHAScheduler stopping trials at its
    rungs (every trial runs every epoch when grace is None: random search itself)."""
    max_epochs = len(proposals[0])
    scheduler = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=max_epochs,
                              grace_period=grace, reduction_factor=reduction, brackets=brackets) if grace else None
    queue = iter(enumerate(proposals))
    running: list[tuple[float, int, int]] = []  # (when its next epoch ends, trial index, epochs done)

    def start(now: float) -> None:
        index, curve = next(queue)
        if scheduler is not None:
            scheduler.on_trial_add(None, SimpleNamespace(trial_id=index))  # picks its bracket
        heapq.heappush(running, (now + curve[0][1], index, 0))

    for _ in range(workers):
        start(0.0)
    best, curve_so_far = 0.0, []
    while len(curve_so_far) < budget:
        now, index, done = heapq.heappop(running)
        done += 1
        accuracy = proposals[index][done - 1][0]
        best = max(best, accuracy)
        curve_so_far.append(best)
        result = {"epoch": done, "val_acc": accuracy}
        if done >= max_epochs or (scheduler is not None and scheduler.on_trial_result(
                None, SimpleNamespace(trial_id=index), result) == TrialScheduler.STOP):
            start(now)
        else:
            heapq.heappush(running, (now + proposals[index][done][1], index, done))
    return curve_so_far


def replay_settings(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in item.split(":")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or p[0] < 1 or p[1] < 2 for p in pairs):
        raise UserError(f"--settings {text!r}: give grace:reduction pairs, grace >= 1 and reduction >= 2,"
                        " e.g. 1:3,2:3")
    return pairs


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", metavar="OUT,OUT", help="--out folders of bench/search_efficiency.py")
    parser.add_argument("--random-trials", type=int, default=10)
    parser.add_argument("--settings", default="1:3,2:3,2:4,1:2,2:2,3:3",
                        help="ASHA grace period:reduction factor pairs to replay")
    parser.add_argument("--brackets", type=int, default=1, help="ASHAScheduler's brackets (Hyperband-style when > 1)")
    parser.add_argument("--workers", type=int, default=2, help="trials at a time, as the bench ran them")
    parser.add_argument("--budget-share", type=float, default=0.4)
    parser.add_argument("--draws", type=int, default=2000, help="simulated seeds per setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = replay_settings(args.settings)
    if args.brackets < 1 or args.workers < 1 or args.draws < 1 or not 0 < args.budget_share <= 1:
        raise UserError("--brackets, --workers and --draws must be at least 1 and --budget-share in (0, 1]")
    outs = [Path(p) for p in args.outs.split(",")]
    pool = curve_pool(outs)
    if len(pool) < args.random_trials:
        raise UserError(f"{len(pool)} complete random-search trials under {args.outs}; need at least "
                        f"{args.random_trials}: run bench/search_efficiency.py with more seeds")
    epochs = len(pool[0])
    budget = args.random_trials * epochs
    mark = int(args.budget_share * budget)
    print(f"{len(pool)} distinct random-search configurations, {epochs} epochs each; budget {budget} epochs "
          f"({args.random_trials} random trials); {args.workers} trials at a time; ASHA brackets {args.brackets}; "
          f"{args.draws} simulated seeds")
    print(f"grace  reduction  seeds within {args.budget_share:.0%}  mean curve reaches the mean target at  "
          f"mean best at {mark}  mean final best  mean target")
    for grace, reduction in [(None, 0), *settings]:
        rng = random.Random(args.seed)  # the same simulated seeds for every setting
        np.random.seed(args.seed)  # ASHAScheduler draws each trial's bracket from numpy's global generator
        targets, curves = [], []
        for _ in range(args.draws):
            # drawn with replacement (a bootstrap of the measured configurations); a trial takes at least
            # one epoch, so budget proposals always suffice
            targets.append(max(acc for trial in rng.choices(pool, k=args.random_trials) for acc, _ in trial))
            curves.append(asha_curve(rng.choices(pool, k=budget), grace, reduction, args.brackets, budget,
                                     args.workers))
        within = sum(1 for t, c in zip(targets, curves) if c[mark - 1] >= t) / args.draws
        mean_curve, mean_target = np.mean(curves, axis=0), float(np.mean(targets))
        reached = next((i + 1 for i, v in enumerate(mean_curve) if v >= mean_target), None)
        reached_text = f"epoch {reached} ({reached / budget:.0%})" if reached else "not reached"
        scheduler = f"{grace:>5}  {reduction:>9}" if grace else "no early stopping"
        print(f"{scheduler}  {within:>17.0%}  {reached_text:>37}  {mean_curve[mark - 1]:>12.4f}  "
              f"{mean_curve[-1]:>15.4f}  {mean_target:.4f}")


if __name__ == "__main__":
    main()
