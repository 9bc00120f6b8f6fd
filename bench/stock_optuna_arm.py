"""The stock arm of bench/search_efficiency.py: Ray Tune's `OptunaSearch` + `ASHAScheduler` as Ray's
documentation shows them, on a tuner space file, with tuner's trainer.

What a Ray user writes instead of tuner's searcher: the space file's parameters translated to a
`param_space` of `tune.choice` / `tune.uniform` / `tune.loguniform` (a `when:` condition is dropped, so
momentum and nesterov are always sampled, as a stock user would; no constraints),
`OptunaSearch(metric, mode, seed)` with its default TPE and independent random start-up draws, told
ASHA-stopped trials as COMPLETE with their last score, and `ASHAScheduler` with the space's max_t,
grace period and reduction factor on the `epoch` attribute. Everything else is the space's: the fixed
values, `tuner.train.fit`, 1 trial per `resources.cpus`, `search.max_concurrent` trials at once, the
data split (`tuner.data.load_splits` with its subset, val_size and split_seed) and the stop at
`budget.epochs` epochs over all trials. Trials report `val_acc`, `epoch` and `reported_at` each epoch
like tuner/trainable.py, so each trial folder's `result.json` reads like a tuner sweep's.

    python bench/stock_optuna_arm.py --space runs/bench/search/stock-s0-120000.yaml --name stock-s0-120000 \
        --storage runs/bench/search/runs --data-dir data
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import UserError, exit_on_user_error

METRIC, MODE = "val_acc", "max"


def param_space(parameters: dict[str, Any]) -> dict[str, Any]:
    """The space file's parameters as Ray Tune search-space domains; `when:` is dropped."""
    from ray import tune

    space = {}
    for name, spec in parameters.items():
        if isinstance(spec, list):
            spec = {"choices": spec}
        if not isinstance(spec, dict):
            raise UserError(f"parameter {name}: {spec!r} is neither a list of choices nor a mapping")
        if "per_stage" in spec:
            raise UserError(f"parameter {name}: per_stage has no stock Ray Tune form; list whole tuples as choices")
        if "choices" in spec:
            space[name] = tune.choice(list(spec["choices"]))
            continue
        kind, low, high = spec.get("type"), spec.get("low"), spec.get("high")
        log, step = bool(spec.get("log", False)), spec.get("step")
        if kind == "float":
            space[name] = (tune.loguniform(low, high) if log else tune.quniform(low, high, step) if step
                           else tune.uniform(low, high))
        elif kind == "int":
            space[name] = (tune.lograndint(low, high + 1) if log else tune.qrandint(low, high, step) if step
                           else tune.randint(low, high + 1))
        else:
            raise UserError(f"parameter {name}: type {kind!r} is not float or int, and no choices are given")
    return space


def train_trial(config: dict[str, Any], data: Any, fixed: dict[str, Any]) -> None:
    """tuner.train.fit on the fixed values + the sampled ones, reporting every epoch (no checkpoints)."""
    from ray import tune

    from tuner.config import TrainConfig
    from tuner.train import fit

    last_epoch = 0

    def on_epoch(metrics: Any, make_checkpoint: Any) -> None:
        nonlocal last_epoch
        last_epoch = metrics.epoch
        tune.report({**metrics.as_dict(), "diverged": False, "reported_at": time.time()})

    result = fit(TrainConfig.from_dict({**fixed, **config}, source="stock trial"), data, on_epoch)
    if result.status == "diverged":
        # As tuner/trainable.py reports it: the diverged epoch counts against the budget.
        tune.report({"epoch": last_epoch + 1, METRIC: 0.0, "diverged": True, "reported_at": time.time()})


def epoch_budget_stopper(budget: int) -> Any:
    """Stops the whole experiment once the trials' epochs together reach `budget`, as tuner's budget.epochs."""
    from ray import tune

    class EpochBudget(tune.Stopper):
        def __init__(self) -> None:
            self.epochs: dict[str, int] = {}

        def __call__(self, trial_id: str, result: dict) -> bool:
            self.epochs[trial_id] = int(result.get("epoch", 0))
            return False

        def stop_all(self) -> bool:
            return sum(self.epochs.values()) >= budget

    return EpochBudget()


def read_space(path: Path) -> dict[str, Any]:
    try:
        space = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"--space {path}: cannot read it ({err})") from None
    needed = {"parameters": (), "scheduler": ("max_epochs", "grace_period", "reduction_factor"),
              "budget": ("epochs",), "search": ("seed", "max_concurrent"), "data": ("val_size", "split_seed")}
    for section, keys in needed.items():
        if not isinstance(space, dict) or not isinstance(space.get(section), dict):
            raise UserError(f"--space {path}: no `{section}:` section; the stock arm needs {section}")
        for key in keys:
            if key not in space[section]:
                raise UserError(f"--space {path}: `{section}.{key}` is missing; the stock arm needs it")
    return space


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", type=Path, required=True, help="a tuner space file with an epoch budget")
    parser.add_argument("--name", required=True, help="the experiment's folder under --storage")
    parser.add_argument("--storage", type=Path, required=True)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args(argv)
    space = read_space(args.space)
    sched, data_settings = space["scheduler"], space["data"]
    search_space = param_space(space["parameters"])
    fixed = {**space.get("fixed", {}), "epochs": sched["max_epochs"]}

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tuner.data import load_splits

    data = load_splits(args.data_dir, data_settings["val_size"], data_settings.get("subset"),
                       data_settings["split_seed"], download=False)
    resources = space.get("resources", {})
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(train_trial, data=data, fixed=fixed),
                                {"cpu": resources.get("cpus", 1), "gpu": resources.get("gpus", 0)}),
            param_space=search_space,
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(metric=METRIC, mode=MODE, seed=space["search"]["seed"]),
                scheduler=ASHAScheduler(time_attr="epoch", metric=METRIC, mode=MODE, max_t=sched["max_epochs"],
                                        grace_period=sched["grace_period"],
                                        reduction_factor=sched["reduction_factor"]),
                num_samples=space["budget"].get("trials", 1000),
                max_concurrent_trials=space["search"]["max_concurrent"]),
            run_config=tune.RunConfig(name=args.name, storage_path=str(args.storage.resolve()),
                                      stop=epoch_budget_stopper(int(space["budget"]["epochs"])), verbose=1),
        )
        results = tuner.fit()
        best = results.get_best_result(metric=METRIC, mode=MODE, scope="all")
        print(f"stock {args.name}: {len(results)} trials, best {METRIC} {best.metrics_dataframe[METRIC].max():.4f}",
              flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
