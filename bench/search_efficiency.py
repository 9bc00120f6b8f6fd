"""Search efficiency: Optuna TPE + ASHA vs random search without early stopping, same total epoch budget.

Both run through the real service (`python -m tuner.run`, local Ray, a local MLflow store) on the real
training images (validation split, CPU-sized networks), once per seed. Random search runs
`--random-trials` trials of `--max-epochs` epochs each; TPE + ASHA gets the same total number of epochs
(`budget.epochs`). From every trial's per-epoch results (ordered by when they were reported) we draw
best-so-far validation accuracy against epochs spent, and report the share of the budget at which
TPE + ASHA first reaches random search's final best, per seed and for the mean curve over seeds.
Results, and the goals they answer to: docs/benchmarks.md#search-efficiency.

    python bench/search_efficiency.py --data-dir data --seeds 0,1,2 --out runs/bench/search
    python bench/search_efficiency.py --summarize runs/bench/a,runs/bench/b   # pool two runs' seeds
    python bench/search_efficiency.py ... --reduction-factor 4 --random-from runs/bench/a   # a TPE + ASHA variant
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
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


def run_sweep(out: Path, name: str, space_text: str, data_dir: str, seed: int) -> float:
    space = out / f"{name}.yaml"
    space.write_text(textwrap.dedent(space_text))
    started = time.monotonic()
    # One MLflow store per seed: seeds may run at once (--jobs), and two drivers creating one sqlite store
    # at the same moment race in its schema migration.
    command = [sys.executable, "-m", "tuner.run", "--space", str(space), "--name", name, "--storage",
               str(out / "runs"), "--mlflow-uri", f"sqlite:///{out / f'mlflow-s{seed}.db'}", "--data-dir", data_dir]
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.monotonic() - started


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


def compare_seed(seed: int, args: argparse.Namespace, out: Path) -> tuple[dict, list[float], list[float]]:
    """Random search, then TPE + ASHA under the same epoch budget, for one seed."""
    budget = args.random_trials * args.max_epochs
    common = dict(max_epochs=args.max_epochs, grace_period=args.grace_period, val_size=args.val_size,
                  subset=args.subset, startup_trials=args.startup_trials, gpus=args.gpus,
                  ema_epochs=args.ema_epochs, reduction_factor=args.reduction_factor)
    stamp = time.strftime("%H%M%S")
    random_name, asha_name = f"random-s{seed}-{stamp}", f"tpe-asha-s{seed}-{stamp}"
    space = SPACES[args.space] + SEARCH_SETTINGS
    random_space = space.format(name=random_name, algorithm="random", scheduler="fifo", seed=seed,
                                trials=args.random_trials, epoch_budget="", **common)
    if args.random_from:
        random_sweep = earlier_random_sweep(args.random_from, seed, random_space)
    else:
        random_s = run_sweep(out, random_name, random_space, args.data_dir, seed)
        random_sweep = out / "runs" / random_name
    # Another sampler seed: TPE's startup trials are random draws, and with the same seed they would be
    # the random search's first trials, so both searches would share their best early configs.
    asha_s = run_sweep(out, asha_name, space.format(
        name=asha_name, algorithm="tpe", scheduler="asha", seed=seed + 1000, trials=1000,
        epoch_budget=f", epochs: {budget}", **common), args.data_dir, seed)
    row, random_curve, asha_curve = measure_seed(seed, random_sweep, out / "runs" / asha_name, budget)
    row["asha_wall_s"] = round(asha_s)
    if args.random_from:
        row["random_sweep"] = str(random_sweep)  # outside this run's folder, so --summarize is told where
    else:
        row["random_wall_s"] = round(random_s)
    print(json.dumps(row), flush=True)
    return row, random_curve, asha_curve


# Settings a random search without early stopping ignores: it may be reused across runs that differ only here.
IGNORED_BY_RANDOM_SEARCH = {"search": ("startup_trials",), "scheduler": ("grace_period", "reduction_factor")}


def random_settings(space_text: str) -> dict:
    space = yaml.safe_load(textwrap.dedent(space_text))
    space.pop("name")
    for section, keys in IGNORED_BY_RANDOM_SEARCH.items():
        for key in keys:
            space[section].pop(key)
    return space


def earlier_random_sweep(outs: str, seed: int, space_text: str) -> Path:
    """The random search of an earlier run (--random-from) for this seed, checked to have this run's settings.

    On the CPU a seeded random search is deterministic (the same trials, the same accuracies, epoch for
    epoch; checked in docs/notes/benchmark-journal.md, "A larger budget, and a stricter rung"), so rerunning
    it would only repeat it.
    """
    found = [path for out in outs.split(",") for path in sorted(Path(out).resolve().glob(f"random-s{seed}-*.yaml"))]
    if len(found) != 1:
        raise UserError(f"--random-from {outs}: expected one random search for seed {seed}, found {len(found)}")
    if random_settings(found[0].read_text()) != random_settings(space_text):
        raise UserError(f"--random-from: {found[0]} was run with other settings than this run's random search; "
                        "rerun it or pass matching --space/--random-trials/--max-epochs/--subset/--val-size/"
                        "--ema-epochs")
    return found[0].parent / "runs" / found[0].stem


def measure_seed(seed: int, random_sweep: Path, asha_sweep: Path,
                 budget: int) -> tuple[dict, list[float], list[float]]:
    """One seed's figures and best-so-far curves, from the two sweeps' recorded results."""
    random_curve = best_so_far(epoch_results(random_sweep))
    asha_rows = epoch_results(asha_sweep)
    asha_curve = best_so_far(asha_rows)
    target = random_curve[-1]
    reached = first_reaching(asha_curve, target)
    row = {"seed": seed, "budget_epochs": budget, "random_epochs": len(random_curve),
           "asha_epochs": len(asha_curve), "asha_trials": len({r["trial"] for r in asha_rows}),
           "random_final_best": target, "asha_final_best": asha_curve[-1],
           "asha_epochs_to_random_best": reached,
           "share_of_budget": (reached / budget) if reached else None}
    return row, random_curve, asha_curve


def measured_runs(outs: list[Path]) -> list[tuple[dict, list[float], list[float]]]:
    """Every seed of earlier bench runs (each an --out folder), recomputed from their sweeps."""
    results = []
    for out in outs:
        for row in json.loads((out / "summary.json").read_text()):
            seed = row["seed"]
            found = {"random": ([Path(row["random_sweep"])] if "random_sweep" in row  # reused: --random-from
                                else sorted((out / "runs").glob(f"random-s{seed}-*"))),
                     "tpe-asha": sorted((out / "runs").glob(f"tpe-asha-s{seed}-*"))}
            if any(len(sweeps) != 1 for sweeps in found.values()):
                raise UserError(f"{out}: expected one random and one tpe-asha sweep for seed {seed}, found {found}")
            results.append(measure_seed(seed, found["random"][0], found["tpe-asha"][0], row["budget_epochs"]))
    return results


def first_reaching(curve: list[float], target: float) -> int | None:
    """Epochs spent (1-based) when the curve first reaches target; None if it never does."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def mean_curve(curves: list[list[float]], length: int) -> list[float]:
    """Mean over seeds of best-so-far curves, each held at its last value up to length epochs."""
    padded = [curve + [curve[-1]] * (length - len(curve)) for curve in curves]
    return [sum(values) / len(values) for values in zip(*padded, strict=True)]


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--space", choices=sorted(SPACES), default="widths-optimizer",
                        help="the parameters searched (both on CPU-sized networks)")
    parser.add_argument("--random-trials", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--subset", type=int, default=3000)
    parser.add_argument("--val-size", type=int, default=1000)
    # Epoch 1 ends the warm-up; its rank predicts the final rank poorly
    # (docs/benchmarks.md#weight-average-at-the-rungs).
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--startup-trials", type=int, default=8)  # the service's default (SearchSettings)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--ema-epochs", type=float, default=0.0,
                        help="evaluate a moving average of the weights over this many epochs (TrainConfig.ema_epochs)")
    parser.add_argument("--gpus", type=float, default=0.0,
                        help="GPUs per trial (0.5 runs a sweep's two trials side by side on one GPU)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds compared at once, each in its own local Ray (for machines with cores to spare)")
    parser.add_argument("--random-from", metavar="OUT,OUT",
                        help="reuse these earlier runs' random searches (same seeds and settings) instead of rerunning")
    parser.add_argument("--out", default="runs/bench/search")
    parser.add_argument("--plot", help="where the plot goes (default: OUT/search_efficiency.png, OUT from --out)")
    parser.add_argument("--summarize", metavar="OUT,OUT",
                        help="run nothing: pool the seeds of earlier runs (their --out folders) into one summary")
    args = parser.parse_args()
    plot_path = Path(args.plot) if args.plot else Path(args.out).resolve() / "search_efficiency.png"
    if args.summarize:
        results = measured_runs([Path(p).resolve() for p in args.summarize.split(",")])
        budgets = {row["budget_epochs"] for row, _, _ in results}
        if len(budgets) != 1:
            raise UserError(f"the runs have different budgets {sorted(budgets)}: pool only runs of one setting")
        print(f"\npooled from {args.summarize}")
        report(results, budgets.pop(), plot_path)
        return
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = args.random_trials * args.max_epochs
    seeds = [int(s) for s in args.seeds.split(",")]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda seed: compare_seed(seed, args, out), seeds))
    (out / "summary.json").write_text(json.dumps([row for row, _, _ in results], indent=2))
    print(f"\nspace {args.space}; budget {budget} epochs per search "
          f"({args.random_trials} random trials x {args.max_epochs} epochs); "
          f"data: first {args.subset} training images, {args.val_size} validation images; "
          f"ASHA grace {args.grace_period}, reduction {args.reduction_factor}; "
          f"TPE start-up trials {args.startup_trials}; "
          f"weight average {args.ema_epochs:g} epochs; GPUs per trial {args.gpus:g}")
    report(results, budget, plot_path)


def report(results: list[tuple[dict, list[float], list[float]]], budget: int, plot_path: Path) -> None:
    """The per-seed table, the goal count, the mean-over-seeds line and the plot."""
    summary = [row for row, _, _ in results]
    curves = {row["seed"]: (random_curve, asha_curve) for row, random_curve, asha_curve in results}
    print("seed  random best  tpe+asha best  tpe+asha trials  epochs to reach random's best  share of budget")
    for r in summary:
        share = f"{r['share_of_budget'] * 100:.0f}%" if r["share_of_budget"] else "not reached"
        reached = r["asha_epochs_to_random_best"] or "-"
        print(f"{r['seed']:>4}  {r['random_final_best']:.4f}       {r['asha_final_best']:.4f}         "
              f"{r['asha_trials']:>3}              {reached:>3}                          {share}")
    shares = [r["share_of_budget"] for r in summary]
    met = sum(1 for s in shares if s is not None and s <= 0.4)
    print(f"reached random's best within 40% of the budget in {met} of {len(shares)} seeds")
    # A seed's share swings with which of two concurrent trials finishes first; the mean curve is steadier.
    random_mean = mean_curve([c[0] for c in curves.values()], budget)
    asha_mean = mean_curve([c[1] for c in curves.values()], budget)
    at_goal = max(1, int(0.4 * budget))
    reached = first_reaching(asha_mean, random_mean[-1])
    print(f"mean over seeds: random final best {random_mean[-1]:.4f}; tpe+asha best at 40% of the budget "
          f"{asha_mean[at_goal - 1]:.4f}, final {asha_mean[-1]:.4f}; tpe+asha's mean curve reaches random's "
          f"mean final best " + (f"at epoch {reached} of {budget} ({reached / budget:.0%})" if reached
                                 else "never"))
    ahead = sum(1 for r in summary if r["asha_final_best"] > r["random_final_best"])
    print(f"tpe+asha ends above random search in {ahead} of {len(summary)} seeds")
    plot(curves, budget, plot_path)


def plot(curves: dict[int, tuple[list[float], list[float]]], budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for seed, (random_curve, asha_curve) in curves.items():
        ax.plot(range(1, len(random_curve) + 1), random_curve, color="tab:gray", alpha=0.8,
                label="random, no early stopping" if seed == min(curves) else None)
        ax.plot(range(1, len(asha_curve) + 1), asha_curve, color="tab:blue",
                label="Optuna TPE + ASHA" if seed == min(curves) else None)
    ax.axvline(0.4 * budget, color="tab:red", linestyle="--", label="40% of budget")
    ax.set_xlabel("epochs spent (all trials)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Search efficiency, one line per seed")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
