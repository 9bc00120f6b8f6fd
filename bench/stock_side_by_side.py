"""tuner.run against the stock Ray Tune tutorial pattern, side by side on one machine (issue #19 item 0).

The stock arm is what a user writes from Ray's and PyTorch's "hyperparameter tuning with Ray Tune"
tutorial: a function trainable with `torch.set_num_threads(1)`, a torch `Dataset` with torchvision PIL
transforms and a `DataLoader`, fp32, `tune.report(metrics, checkpoint)` each epoch, Ray's
`OptunaSearch` and `ASHAScheduler`. The tuner arm runs `python -m tuner.run` on the same space (same
network, same choices and ranges), the same images, the same trial budget, ASHA settings and number of
trials at once. Both arms train ModifiedResNet (`tuner.model.build_model`) on the same stratified split.

Reported per arm and seed: wall time (the whole command, start-up included), epochs spent, the best
validation accuracy, and the held-out accuracy of the best checkpoint on training images neither arm saw
(the split's training images after `--subset`), so that a faster arm cannot win by training less well.
Each seed seeds both searchers; which networks a search picks moves the wall time more than anything else,
so one seed says little: the summary is the ratio of the arms' total wall times over all seeds.

    python bench/stock_side_by_side.py --data-dir data --out runs/bench/side --seeds 0,1,2
    python bench/stock_side_by_side.py --data-dir data --arms stock --trials 2 --max-epochs 1 --subset 500  # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuner.data import ImageSet, load_train, split_train_val
from tuner.errors import UserError, exit_on_user_error

WIDTHS = [[16, 32, 64], [32, 64, 128]]
LR_RANGE = (0.005, 0.2)
BATCH_SIZES = [64, 128]
BLOCKS = [1, 1, 1]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def space_yaml(args: argparse.Namespace, seed: int) -> str:
    """The shared space as a tuner space file: stock SGD (momentum 0.9), no extras the stock arm lacks."""
    return f"""name: side
metric: val_acc
mode: max
fixed:
  blocks: {BLOCKS}
  optimizer: sgd
  momentum: 0.9
  nesterov: false
  weight_decay: 0.0005
parameters:
  widths: {{choices: {WIDTHS}}}
  lr: {{type: float, low: {LR_RANGE[0]}, high: {LR_RANGE[1]}, log: true}}
  batch_size: {BATCH_SIZES}
search: {{algorithm: tpe, seed: {seed}, startup_trials: 3, max_concurrent: {args.concurrent}}}
scheduler: {{type: asha, max_epochs: {args.max_epochs}, grace_period: 1, reduction_factor: 2}}
resources: {{cpus: 1, gpus: 0}}
budget: {{trials: {args.trials}}}
data: {{val_size: {args.val_size}, subset: {args.subset}, split_seed: 0}}
"""


def held_out(args: argparse.Namespace) -> ImageSet:
    """Training images after the subset: in neither arm's training or validation data."""
    train, _ = split_train_val(load_train(args.data_dir, download=False), args.val_size, 0)
    end = min(len(train), args.subset + args.held_out)
    if end <= args.subset:
        raise UserError(f"--subset {args.subset} leaves no held-out images; lower it")
    return train.take(np.arange(args.subset, end))


def held_out_accuracy(checkpoint: Path, images: ImageSet) -> float:
    """Plain evaluation (no TTA) of a checkpoint written by either arm: {'config', 'model'} inside."""
    from tuner.checkpoint import load_checkpoint, model_from_checkpoint

    model, _ = model_from_checkpoint(load_checkpoint(checkpoint))
    x = torch.from_numpy(images.images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return float((predicted.numpy() == images.labels).mean())


# ---------------------------------------------------------------------------------------------
# the stock arm


def stock_trainable(config: dict[str, Any], data_dir: str, subset: int, val_size: int) -> None:
    """The tutorial's train_cifar, with ModifiedResNet and the shared split in place of its Net and split."""
    import torchvision.transforms as T
    from PIL import Image
    from ray import tune
    from torch.utils.data import DataLoader, Dataset

    from tuner.config import TrainConfig
    from tuner.model import build_model

    torch.set_num_threads(1)

    class Images(Dataset):
        def __init__(self, images: ImageSet, transform: Any) -> None:
            self.images, self.transform = images, transform

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return self.transform(Image.fromarray(self.images.images[i])), int(self.images.labels[i])

    train, val = split_train_val(load_train(data_dir, download=False), val_size, 0)
    train = train.take(np.arange(min(subset, len(train))))
    normalise = T.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_loader = DataLoader(Images(train, T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                                                       T.ToTensor(), normalise])),
                              batch_size=int(config["batch_size"]), shuffle=True, num_workers=0)
    val_loader = DataLoader(Images(val, T.Compose([T.ToTensor(), normalise])), batch_size=500, num_workers=0)
    train_config = TrainConfig(widths=tuple(config["widths"]), blocks=tuple(BLOCKS))
    net = build_model(train_config)
    optimizer = torch.optim.SGD(net.parameters(), lr=config["lr"], momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "checkpoint.pt", weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    for epoch in range(start + 1, 1000):
        net.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            criterion(net(x), y).backward()
            optimizer.step()
        net.eval()
        loss, correct = 0.0, 0
        with torch.no_grad():
            for x, y in val_loader:
                logits = net(x)
                loss += float(criterion(logits, y)) * len(y)
                correct += int((logits.argmax(1) == y).sum())
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                        "config": train_config.to_dict()}, Path(folder) / "checkpoint.pt")
            tune.report({"val_loss": loss / len(val), "val_acc": correct / len(val), "epoch": epoch},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def run_stock(args: argparse.Namespace, out: Path, seed: int) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    started = time.monotonic()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", num_cpus=args.concurrent)
    try:
        space = {"widths": tune.choice(WIDTHS), "lr": tune.loguniform(*LR_RANGE),
                 "batch_size": tune.choice(BATCH_SIZES)}
        trainable = tune.with_resources(
            tune.with_parameters(stock_trainable, data_dir=str(args.data_dir.resolve()), subset=args.subset,
                                 val_size=args.val_size), {"cpu": 1})
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(seed=seed), metric="val_acc", mode="max", num_samples=args.trials,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=args.max_epochs, grace_period=1,
                                        reduction_factor=2),
                max_concurrent_trials=args.concurrent),
            run_config=tune.RunConfig(name="stock", storage_path=str((out / "stock").resolve()), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        results = tuner.fit()
        best = results.get_best_result(metric="val_acc", mode="max", scope="all")
        epochs = sum(int(r.metrics.get("epoch", 0)) for r in results if r.metrics)
        with best.checkpoint.as_directory() as folder:
            checkpoint = out / "stock-best.pt"
            checkpoint.write_bytes((Path(folder) / "checkpoint.pt").read_bytes())
        best_val = max(float(df["val_acc"].max()) for df in results_frames(results))
    finally:
        ray.shutdown()
    return {"wall_s": time.monotonic() - started, "epochs": epochs, "best_val_acc": best_val,
            "checkpoint": str(checkpoint)}


def results_frames(results: Any) -> list[Any]:
    return [r.metrics_dataframe for r in results if r.metrics_dataframe is not None and len(r.metrics_dataframe)]


# ---------------------------------------------------------------------------------------------
# the tuner arm


def run_tuner(args: argparse.Namespace, out: Path, seed: int) -> dict[str, Any]:
    space = out / "side.yaml"
    space.write_text(space_yaml(args, seed))
    command = [sys.executable, "-m", "tuner.run", "--space", str(space), "--name", f"side-{int(time.time())}",
               "--data-dir", str(args.data_dir), "--storage", str(out / "tuner"),
               "--mlflow-uri", f"sqlite:///{(out / 'mlflow.db').resolve()}"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.monotonic() - started
    (out / "tuner.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise UserError(f"tuner.run failed (exit {done.returncode}); see {out / 'tuner.log'}")
    best = re.search(r"best trial .*?val_acc ([0-9.]+) at epoch", done.stdout)
    epochs = re.search(r"\((\d+) epochs\)", done.stdout)
    checkpoint = re.search(r"checkpoint:\s+(\S+)", done.stdout)
    if not (best and epochs and checkpoint):
        raise UserError(f"tuner.run printed no summary; see {out / 'tuner.log'}")
    return {"wall_s": wall, "epochs": int(epochs.group(1)), "best_val_acc": float(best.group(1)),
            "checkpoint": str(Path(checkpoint.group(1)) / "checkpoint.pt")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n")[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/side"))
    parser.add_argument("--arms", default="stock,tuner", help="comma-separated: stock, tuner (default both)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--subset", type=int, default=5000, help="training images (default 5000)")
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--held-out", type=int, default=5000, help="held-out images scored (default 5000)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once, 1 CPU each (default 2)")
    parser.add_argument("--seeds", default="0", help="comma-separated searcher seeds, each run by both arms")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: give integers, comma-separated (e.g. 0,1,2)") from None
    if not args.seeds:
        raise UserError("--seeds is empty: give at least one integer")
    arms = [a for a in args.arms.split(",") if a]
    if not arms or set(arms) - {"stock", "tuner"}:
        raise UserError(f"--arms {args.arms!r}: give stock, tuner or both, comma-separated")
    for name in ("trials", "max_epochs", "subset", "val_size", "held_out", "concurrent"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    args.arms = arms
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    test = held_out(args)
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in args.seeds:
        out = args.out / f"seed-{seed}"
        out.mkdir(parents=True, exist_ok=True)
        rows[seed] = {}
        for arm in args.arms:
            rows[seed][arm] = (run_stock if arm == "stock" else run_tuner)(args, out, seed)
            rows[seed][arm]["held_out_acc"] = held_out_accuracy(Path(rows[seed][arm]["checkpoint"]), test)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{cpu}, {os.cpu_count()} CPUs; {args.trials} trials, ASHA to {args.max_epochs} epochs, "
          f"{args.subset} training images, {len(test)} held-out images")
    print(f"{'seed':>4s} {'arm':8s} {'wall s':>8s} {'epochs':>7s} {'best val':>9s} {'held-out':>9s}")
    for seed, arms in rows.items():
        for arm, row in arms.items():
            print(f"{seed:4d} {arm:8s} {row['wall_s']:8.1f} {row['epochs']:7d} {row['best_val_acc']:9.4f} "
                  f"{row['held_out_acc']:9.4f}")
    if {"stock", "tuner"} <= set(args.arms):
        def total(arm: str, key: str) -> float:
            return sum(arms[arm][key] for arms in rows.values())

        ahead = sum(arms["tuner"]["held_out_acc"] > arms["stock"]["held_out_acc"] for arms in rows.values())
        ratio = total("tuner", "wall_s") / total("stock", "wall_s")
        per_seed = ", ".join(f"{arms['tuner']['wall_s'] / arms['stock']['wall_s']:.2f}x" for arms in rows.values())
        lead = 100 * (total("tuner", "held_out_acc") - total("stock", "held_out_acc")) / len(rows)
        print(f"tuner / stock wall time over {len(rows)} seeds: {ratio:.2f}x (per seed {per_seed}); held-out "
              f"accuracy {lead:+.1f} points on average, tuner ahead in {ahead} of {len(rows)} seeds")
    (args.out / "side_by_side.json").write_text(json.dumps({"cpu": cpu, "args": {k: str(v) for k, v in
                                                            vars(args).items()}, "seeds": rows}, indent=1))


if __name__ == "__main__":
    main()
