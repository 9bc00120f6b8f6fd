"""Search efficiency: tuner's searcher against what a user would run instead, at equal epoch budgets.

Three arms, each its own search per seed, each with another sampler seed (no shared start-up draws):
- **tuner**: `python -m tuner.run` with its TPE (Optuna's, told ASHA's stops as PRUNED) + ASHA;
- **random + ASHA**: `python -m tuner.run` with `search.algorithm: random` and the same ASHA;
- **stock**: Ray Tune's `OptunaSearch` + `ASHAScheduler` as Ray's documentation shows them
  (bench/stock_optuna_arm.py: the same space as a `param_space`, the same trainer, data split, ASHA
  settings, trials at once and epoch budget; no constraints, conditions dropped).
All run on the real training images (validation split, CPU-sized networks) with a local Ray. Each search
gets `--random-trials` x `--max-epochs` epochs in all (`budget.epochs`). From every trial's per-epoch
results (ordered by when they were reported) we draw best-so-far validation accuracy against epochs
spent, and report per seed each arm's final best, the seeds in which tuner ends above each alternative,
the mean best-so-far curves, and the share of the budget at which tuner's mean curve reaches each
alternative's mean final best. `--arms` can add `random`: random search without early stopping (FIFO),
the baseline of earlier runs. Results and goals: docs/benchmarks.md#search-efficiency.

    python bench/search_efficiency.py --space recipe --data-dir data --seeds 0,1,2 --out runs/bench/search
    python bench/search_efficiency.py --summarize runs/bench/a,runs/bench/b   # pool two runs' seeds
    python bench/search_efficiency.py --seeds 0 --random-trials 2 --max-epochs 2 --subset 500 --val-size 200 \
        --out /tmp/search-smoke   # smoke: every arm, a minute or two
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from tuner.errors import UserError, exit_on_user_error

# Five parameters: three widths, the optimizer and its learning rate, weight decay, label smoothing.
WIDTHS_AND_OPTIMIZER = """
name: {name}
fixed: {{batch_size: 128, blocks: [1, 1, 1], warmup_epochs: 1, tta_flip: false, ema_epochs: {ema_epochs}}}
parameters:
  widths: {{choices: [[8, 16, 32], [16, 32, 64], [24, 48, 96]]}}
  optimizer: [sgd, adamw]
  lr: {{type: float, low: 0.0003, high: 1.0, log: true}}
  weight_decay: {{type: float, low: 0.00001, high: 0.01, log: true}}
  label_smoothing: {{type: float, low: 0.0, high: 0.2}}
"""


def recipe_space() -> str:
    """search_spaces/recipe.yaml's parameters and ranges (eleven, two of them only for sgd), read from the
    shipped file so the bench follows it, on one CPU-sized network; a template like the one above."""
    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "search_spaces" / "recipe.yaml").read_text())
    parameters = yaml.safe_dump({"parameters": shipped["parameters"]}, default_flow_style=None, sort_keys=False)
    return ("\nname: {name}\n"
            "fixed: {{widths: [16, 32, 64], blocks: [1, 1, 1], tta_flip: false, ema_epochs: {ema_epochs}}}\n"
            + parameters.replace("{", "{{").replace("}", "}}"))


SPACES = {"widths-optimizer": WIDTHS_AND_OPTIMIZER, "recipe": recipe_space()}
SEARCH_SETTINGS = """
search: {{algorithm: {algorithm}, seed: {seed}, startup_trials: {startup_trials}, max_concurrent: 2}}
scheduler: {{type: {scheduler}, max_epochs: {max_epochs}, grace_period: {grace_period},
            reduction_factor: {reduction_factor}}}
resources: {{cpus: 1, gpus: {gpus}}}
budget: {{trials: {trials}{epoch_budget}}}
data: {{val_size: {val_size}, subset: {subset}, split_seed: 0}}
"""

# Each arm's sweeps are named `{arm}-s{seed}-{time}`. Random + ASHA is `asha-random`, not `random-asha`:
# bench/asha_replay.py and bench/rung_correlation.py read every `random-*` sweep as one without early stopping.
TUNER = "tpe-asha"
ARMS = {TUNER: "tuner: TPE + ASHA", "asha-random": "random + ASHA", "stock": "stock OptunaSearch + ASHA",
        "random": "random, no early stopping"}
# Sampler seed = seed + offset, so that no two arms share their start-up draws (and the old arms keep theirs).
SEED_OFFSET = {"random": 0, TUNER: 1000, "asha-random": 2000, "stock": 3000}
# (the alternative, the share of the budget within which tuner's mean curve should reach its mean final best,
#  the seeds out of 12 in which tuner should end above it): issue #17's goals
GOALS = {"asha-random": (0.5, 10), "stock": (0.6, 9)}
STOCK_ARM = Path(__file__).resolve().with_name("stock_optuna_arm.py")


def arm_space(arm: str, seed: int, name: str, args: argparse.Namespace) -> str:
    """The arm's space file: the same parameters, ASHA settings and data for every arm."""
    budget = args.random_trials * args.max_epochs
    fifo = arm == "random"
    return textwrap.dedent((SPACES[args.space] + SEARCH_SETTINGS).format(
        name=name, algorithm="tpe" if arm == TUNER else "random", scheduler="fifo" if fifo else "asha",
        seed=seed + SEED_OFFSET[arm], trials=args.random_trials if fifo else 1000,
        epoch_budget="" if fifo else f", epochs: {budget}", max_epochs=args.max_epochs,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor, val_size=args.val_size,
        subset=args.subset, startup_trials=args.startup_trials, gpus=args.gpus, ema_epochs=args.ema_epochs))


def run_arm(arm: str, seed: int, stamp: str, args: argparse.Namespace, out: Path) -> tuple[str, float]:
    """One arm's search for one seed; its sweep's name and its wall time."""
    name = f"{arm}-s{seed}-{stamp}"
    space = out / f"{name}.yaml"
    space.write_text(arm_space(arm, seed, name, args))
    if arm == "stock":
        command = [sys.executable, str(STOCK_ARM), "--space", str(space), "--name", name,
                   "--storage", str(out / "runs"), "--data-dir", args.data_dir]
    else:
        # One MLflow store per seed: seeds may run at once (--jobs), and two drivers creating one sqlite store
        # at the same moment race in its schema migration.
        command = [sys.executable, "-m", "tuner.run", "--space", str(space), "--name", name, "--storage",
                   str(out / "runs"), "--mlflow-uri", f"sqlite:///{out / f'mlflow-s{seed}.db'}",
                   "--data-dir", args.data_dir]
    started = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise UserError(f"the {arm} search for seed {seed} failed (exit {done.returncode}); see {out / name}.log")
    return name, time.monotonic() - started


def epoch_results(sweep_dir: Path) -> list[dict]:
    """Every reported epoch of every trial, in the order they were reported."""
    rows = []
    for result_file in sweep_dir.glob("*/result.json"):
        for line in result_file.read_text().splitlines():
            row = json.loads(line)
            if "val_acc" in row and not row.get("diverged"):
                # reported_at is sub-second; older results have only Ray's whole-second timestamp
                rows.append({"t": row.get("reported_at", row["timestamp"]), "val_acc": row["val_acc"],
                             "trial": row["trial_id"], "epoch": row["epoch"]})
    return sorted(rows, key=lambda r: (r["t"], r["epoch"]))


def best_so_far(rows: list[dict]) -> list[float]:
    curve, best = [], 0.0
    for row in rows:
        best = max(best, row["val_acc"])
        curve.append(best)
    return curve


def compare_seed(seed: int, args: argparse.Namespace, out: Path) -> tuple[dict, dict[str, list[float]]]:
    """Every arm's search for one seed, one after the other, then its figures."""
    stamp = time.strftime("%H%M%S")
    sweeps, wall = {}, {}
    for arm in args.arms:
        sweeps[arm], wall[arm] = run_arm(arm, seed, stamp, args, out)
    row, curves = measure_seed(seed, {arm: out / "runs" / name for arm, name in sweeps.items()},
                               args.random_trials * args.max_epochs)
    for arm in args.arms:
        row["arms"][arm]["wall_s"] = round(wall[arm])
    print(json.dumps(row), flush=True)
    return row, curves


def measure_seed(seed: int, sweeps: dict[str, Path], budget: int) -> tuple[dict, dict[str, list[float]]]:
    """One seed's figures and best-so-far curves, from the arms' recorded results. A curve stops at the budget:
    trials still running when it is spent may report one more epoch."""
    arms, curves = {}, {}
    for arm, sweep in sweeps.items():
        rows = epoch_results(sweep)
        if not rows:
            raise UserError(f"{sweep}: no trial reported an epoch; see the sweep's log next to its folder")
        curves[arm] = best_so_far(rows)[:budget]
        arms[arm] = {"sweep": sweep.name, "final_best": curves[arm][-1], "epochs": len(curves[arm]),
                     "trials": len({r["trial"] for r in rows[:budget]})}
    for arm in arms:
        if arm != TUNER:
            arms[arm]["tuner_epochs_to_reach"] = first_reaching(curves[TUNER], arms[arm]["final_best"])
    return {"seed": seed, "budget_epochs": budget, "arms": arms}, curves


def measured_runs(outs: list[Path]) -> list[tuple[dict, dict[str, list[float]]]]:
    """Every seed of earlier bench runs (each an --out folder), recomputed from their sweeps."""
    results = []
    for out in outs:
        if not (out / "summary.json").is_file():
            raise UserError(f"--summarize: {out} has no summary.json; give --out folders of finished runs")
        for row in json.loads((out / "summary.json").read_text()):
            seed = row["seed"]
            if "arms" in row:
                sweeps = {arm: [out / "runs" / info["sweep"]] for arm, info in row["arms"].items()}
            else:  # a run from before the stock arm: TPE + ASHA against FIFO random search
                sweeps = {arm: sorted((out / "runs").glob(f"{arm}-s{seed}-*")) for arm in (TUNER, "random")}
                if "random_sweep" in row:  # reused from an earlier run (--random-from, since removed)
                    sweeps["random"] = [Path(row["random_sweep"])]
            if any(len(found) != 1 or not found[0].is_dir() for found in sweeps.values()):
                raise UserError(f"{out}: expected one sweep folder per arm for seed {seed}, found {sweeps}")
            results.append(measure_seed(seed, {arm: found[0] for arm, found in sweeps.items()}, row["budget_epochs"]))
    return results


def first_reaching(curve: list[float], target: float) -> int | None:
    """Epochs spent (1-based) when the curve first reaches target; None if it never does."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def mean_curve(curves: list[list[float]], length: int) -> list[float]:
    """Mean over seeds of best-so-far curves, each held at its last value up to length epochs."""
    padded = [curve[:length] + [curve[-1]] * (length - len(curve)) for curve in curves]
    return [sum(values) / len(values) for values in zip(*padded, strict=True)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated integers")
    parser.add_argument("--space", choices=sorted(SPACES), default="widths-optimizer",
                        help="the parameters searched (both on CPU-sized networks)")
    parser.add_argument("--arms", default=f"{TUNER},asha-random,stock",
                        help=f"comma-separated, {TUNER} first: " + "; ".join(f"{k} ({v})" for k, v in ARMS.items()))
    parser.add_argument("--random-trials", type=int, default=10,
                        help="the budget is random-trials x max-epochs epochs per search")
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--subset", type=int, default=3000)
    parser.add_argument("--val-size", type=int, default=1000)
    # Epoch 1 ends the warm-up; its rank predicts the final rank poorly
    # (docs/benchmarks.md#weight-average-at-the-rungs).
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--startup-trials", type=int, default=10,
                        help="tuner's TPE start-up trials (the service's default); the stock arm keeps Optuna's")
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--ema-epochs", type=float, default=0.0,
                        help="evaluate a moving average of the weights over this many epochs (TrainConfig.ema_epochs)")
    parser.add_argument("--gpus", type=float, default=0.0,
                        help="GPUs per trial (0.5 runs a search's two trials side by side on one GPU)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds compared at once, each arm in its own local Ray (for machines with cores to spare)")
    parser.add_argument("--out", default="runs/bench/search")
    parser.add_argument("--plot", help="where the plot goes (default: OUT/search_efficiency.png, OUT from --out)")
    parser.add_argument("--summarize", metavar="OUT,OUT",
                        help="run nothing: pool the seeds of earlier runs (their --out folders) into one summary")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    args.arms = [a for a in args.arms.split(",") if a]
    if not args.arms or args.arms[0] != TUNER or set(args.arms) - ARMS.keys() or len(set(args.arms)) < len(args.arms):
        raise UserError(f"--arms {','.join(args.arms)!r}: give {TUNER} first, then any of "
                        f"{', '.join(a for a in ARMS if a != TUNER)}, each once")
    for name in ("random_trials", "max_epochs", "subset", "val_size", "grace_period", "reduction_factor", "jobs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    if args.grace_period > args.max_epochs:
        raise UserError(f"--grace-period {args.grace_period} must not exceed --max-epochs {args.max_epochs}")
    if args.gpus < 0 or args.ema_epochs < 0:
        raise UserError("--gpus and --ema-epochs must be >= 0")
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plot_path = Path(args.plot) if args.plot else Path(args.out).resolve() / "search_efficiency.png"
    if args.summarize:
        results = measured_runs([Path(p).resolve() for p in args.summarize.split(",") if p])
        budgets = {row["budget_epochs"] for row, _ in results}
        if len(budgets) != 1:
            raise UserError(f"the runs have different budgets {sorted(budgets)}: pool only runs of one setting")
        print(f"\npooled from {args.summarize}")
        report(results, budgets.pop(), plot_path)
        return
    if not Path(args.data_dir).is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a folder; give the one holding cifar-10-batches-py")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = args.random_trials * args.max_epochs
    done, lock = [], threading.Lock()

    def compare_and_record(seed: int) -> tuple[dict, dict[str, list[float]]]:
        # summary.json is rewritten as each seed finishes: a run stopped at a time limit (a device lease)
        # keeps the seeds it finished for --summarize.
        result = compare_seed(seed, args, out)
        with lock:
            done.append(result[0])
            (out / "summary.json").write_text(json.dumps(sorted(done, key=lambda r: r["seed"]), indent=2))
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(compare_and_record, args.seeds))
    print(f"\nspace {args.space}; budget {budget} epochs per search "
          f"({args.random_trials} x {args.max_epochs}-epoch trials); "
          f"data: first {args.subset} training images, {args.val_size} validation images; "
          f"ASHA grace {args.grace_period}, reduction {args.reduction_factor}; "
          f"tuner's TPE start-up trials {args.startup_trials}; "
          f"weight average {args.ema_epochs:g} epochs; GPUs per trial {args.gpus:g}")
    report(results, budget, plot_path)


def report(results: list[tuple[dict, dict[str, list[float]]]], budget: int, plot_path: Path) -> None:
    """The per-seed table, the counts against the goals, the mean curves and the plot."""
    arms = [arm for arm in ARMS if all(arm in row["arms"] for row, _ in results)]
    others = [arm for arm in arms if arm != TUNER]
    print("per seed: final best (trials run); for each alternative, the epoch at which tuner reached its best")
    print("seed  " + "  ".join(f"{arm:>19}" for arm in arms) + "  "
          + "  ".join(f"{'tuner to ' + arm:>20}" for arm in others))
    for row, _ in results:
        cells = [f"{row['arms'][arm]['final_best']:.4f} ({row['arms'][arm]['trials']:>2} trials)" for arm in arms]
        reached = [row["arms"][arm]["tuner_epochs_to_reach"] for arm in others]
        print(f"{row['seed']:>4}  " + "  ".join(f"{c:>19}" for c in cells) + "  "
              + "  ".join(f"{(f'{r} ({r / budget:.0%})' if r else 'not reached'):>20}" for r in reached))
    seeds = len(results)
    means = {arm: mean_curve([curves[arm] for _, curves in results], budget) for arm in arms}
    print("mean final best: " + ", ".join(f"{arm} {means[arm][-1]:.4f}" for arm in arms))
    for arm in others:
        ahead = sum(1 for row, _ in results if row["arms"][TUNER]["final_best"] > row["arms"][arm]["final_best"])
        tied = sum(1 for row, _ in results if row["arms"][TUNER]["final_best"] == row["arms"][arm]["final_best"])
        reached = first_reaching(means[TUNER], means[arm][-1])
        share = f"at epoch {reached} of {budget} ({reached / budget:.0%})" if reached else "never"
        share_goal, seeds_goal = GOALS.get(arm, (None, None))
        print(f"tuner ends above {ARMS[arm]} in {ahead} of {seeds} seeds ({tied} tied)"
              + (f" [goal >= {seeds_goal} of 12]" if seeds_goal else "")
              + f"; its mean curve reaches {arm}'s mean final best {share}"
              + (f" [goal <= {share_goal:.0%}]" if share_goal else ""))
    plot(results, means, budget, plot_path)


COLOURS = {TUNER: "tab:blue", "asha-random": "tab:gray", "stock": "tab:orange", "random": "tab:green"}


def plot(results: list[tuple[dict, dict[str, list[float]]]], means: dict[str, list[float]], budget: int,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    epochs = range(1, budget + 1)
    for arm, mean in means.items():
        for _, curves in results:
            ax.plot(range(1, len(curves[arm]) + 1), curves[arm], color=COLOURS[arm], alpha=0.12, linewidth=0.8)
        ax.plot(epochs, mean, color=COLOURS[arm], linewidth=2.2, label=f"{ARMS[arm]} (mean)")
    for arm, (share, _) in GOALS.items():
        if arm in means:
            ax.axvline(share * budget, color=COLOURS[arm], linestyle=":", linewidth=1)
            ax.axhline(means[arm][-1], color=COLOURS[arm], linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"epochs spent (all trials; budget {budget})")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(f"Search efficiency, mean of {len(results)} seeds (faint: each seed)\n"
                 "dashed: each alternative's mean final best; dotted: its goal share of the budget", fontsize=9)
    low = min(min(mean) for mean in means.values())
    ax.set_ylim(bottom=max(0.0, low - 0.05))
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
