"""`python -m tuner.train`: train one TrainConfig from flags or a YAML file, no Ray, no MLflow.

    python -m tuner.train --widths 32,64,128 --subset 10000 --epochs 10 --out runs/proxy.pt
    python -m tuner.train --config best.yaml --resume runs/proxy.pt

Flags override the file; the final checkpoint goes to `--out`, and the official test batch is scored
when it is in the data folder.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from tuner.errors import UserError, exit_on_user_error, yaml_error
from tuner.evaluate import evaluate_images
from tuner.train import EpochMetrics, TrainConfig, fit


def config_from_file(path: str | Path) -> dict[str, Any]:
    """TrainConfig fields from a YAML file (a mapping of field names to values)."""
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist: give a YAML file of TrainConfig fields") from None
    except yaml.YAMLError as err:
        raise yaml_error(path, err, "fix the syntax") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of TrainConfig fields, e.g. 'lr: 0.1'")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuner.train",
        description="Train one ModifiedResNet configuration on CIFAR-10 and save its final checkpoint.",
        epilog="example: python -m tuner.train --widths 32,64,128 --subset 10000 --epochs 10 --out runs/proxy.pt",
    )
    parser.add_argument("--config", help="YAML file of TrainConfig fields; flags override it")
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py (default: data)")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images carved from training")
    parser.add_argument("--subset", type=int, help="train on the first N training images only")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the stratified train/val split")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--out", default="runs/train/final.pt", help="where the final checkpoint goes")
    parser.add_argument("--resume", help="checkpoint to continue from")
    for f in dataclasses.fields(TrainConfig):
        default = f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=f"default: {default}")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from tuner.data import load_splits, load_test

    args = _parser().parse_args(argv)
    values = config_from_file(args.config) if args.config else {}
    values.update({k: getattr(args, k) for k in TrainConfig.field_names() if getattr(args, k) is not None})
    config = TrainConfig.from_dict(values, source=args.config or "flags")
    data = load_splits(args.data_dir, args.val_size, args.subset, args.split_seed)
    resume = load_checkpoint(args.resume) if args.resume else None
    print(f"train {len(data.train)} / val {len(data.val)} images; config {config.to_dict()}", flush=True)

    def show(m: EpochMetrics, _: Callable[[], dict[str, Any]]) -> None:
        print(f"epoch {m.epoch:3d}  train loss {m.train_loss:.4f} acc {m.train_acc:.4f}  "
              f"val loss {m.val_loss:.4f} acc {m.val_acc:.4f}  lr {m.lr:.4g}  "
              f"{m.epoch_seconds:.1f}s  {m.images_per_s:.0f} img/s", flush=True)

    result = fit(config, data, show, resume=resume, device=args.device)
    if result.status == "diverged":
        print(f"diverged in epoch {len(result.history) + 1}: the loss became NaN, inf or huge; "
              "lower lr or use warmup")
        raise SystemExit(1)
    print(f"saved {save_checkpoint(result.checkpoint, args.out)}  best val acc {result.best.val_acc:.4f}")
    test = load_test(args.data_dir)
    if test is None:
        print("no test_batch in the data folder: test accuracy not measured")
    else:
        model, _ = model_from_checkpoint(result.checkpoint)
        _, accuracy = evaluate_images(model, test, config.tta_flip, args.device)
        print(f"test acc {accuracy:.4f} ({len(test)} images, flip TTA {config.tta_flip})")


if __name__ == "__main__":
    main()
