"""`python -m tuner.train`: train one TrainConfig from flags or a YAML file, no Ray, no MLflow.

    python -m tuner.train --widths 32,64,128 --subset 10000 --epochs 10 --out runs/proxy.pt
    python -m tuner.train --config best.yaml --resume runs/proxy.pt --epochs 20

Flags override the file; `--resume` continues a checkpoint with its own config (flags may extend
`--epochs` or change how it runs, not what it trains). The final checkpoint goes to `--out`, and the
official test batch is scored when it is in the data folder.

Everything a user gave is checked before torch is imported and before any training: flags, the config
file (every problem, each with its line), `--device`, and that `--out` can be written. So `--help` and
mistakes answer in a fraction of a second, and a finished run is never lost to a bad output path.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tuner.config import DEVICES, OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig, check_device_name
from tuner.errors import OneLineParser, UserError, excerpt, exit_on_user_error
from tuner.yamlfile import load_yaml

CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS}
CONFIG_HELP = "give a YAML file of TrainConfig fields, e.g. 'lr: 0.1' (python -m tuner.train --help lists them)"
# What a resumed run may change: how long it trains and how it runs, not what it trains.
RESUMABLE_CHANGES = ("epochs", "precision", "channels_last", "compile", "deterministic")


def config_from_file(path: str | Path) -> dict[str, Any]:
    """TrainConfig fields from a YAML file (a mapping of field names to values; keys remember their line)."""
    values = load_yaml(path, "config file", CONFIG_HELP)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of TrainConfig fields, e.g. 'lr: 0.1', "
                        f"not {excerpt(values, 40)}")
    return values


def build_config(file_values: Mapping[str, Any], flag_values: Mapping[str, Any], config_path: str | None,
                 resumed: Mapping[str, Any] | None = None) -> TrainConfig:
    """The config of the run: `resumed` (a checkpoint's config), then the file, then the flags. Every
    problem is reported, each naming where its value came from (`file:line` or `flags`)."""
    values = {**(resumed or {}), **file_values, **flag_values}
    config, problems = TrainConfig.check(values)

    def where(key: str) -> str:
        if key in flag_values:
            return "flags"
        if key in file_values and config_path:
            line = getattr(file_values, "lines", {}).get(key)
            return f"{config_path}:{line}" if line else str(config_path)
        return "the checkpoint's config" if resumed and key in resumed else "config"

    if problems:
        lines = getattr(file_values, "lines", {})
        problems.sort(key=lambda problem: 0 if problem[0] in flag_values else lines.get(problem[0], 0))
        raise UserError.of(f"{where(key)}: {message}" for key, message in problems)
    assert config is not None
    if resumed is not None:
        trained = TrainConfig.from_dict(resumed, source="the checkpoint's config")
        changed = [name for name in TrainConfig.field_names()
                   if getattr(config, name) != getattr(trained, name) and name not in RESUMABLE_CHANGES]
        if changed:
            name = changed[0]
            mine, theirs = (config.to_dict()[name], trained.to_dict()[name])
            raise UserError(f"{where(name)}: {name}={excerpt(mine)} contradicts the checkpoint, "
                            f"trained with {name}={excerpt(theirs)}"
                            + (f" (and {len(changed) - 1} more: {', '.join(changed[1:])})" if len(changed) > 1 else "")
                            + f"; a resumed run may change only {', '.join(RESUMABLE_CHANGES)}: drop the other "
                              "values or start a new run without --resume")
    return config


def check_output(path: str | Path) -> Path:
    """`--out` as a file this process can write, checked before training so a finished run is never lost."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file path, e.g. {path / 'final.pt'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"--out {path}: {folder} is a file, so the folder cannot be made; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"--out {path}: no permission to write in {folder}; choose a writable path")
    try:  # permissions are not the whole story (a read-only mount, /proc, a full quota): write a file there
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"--out {path}: cannot write in {folder} ({err.strerror or type(err).__name__}); "
                        "choose a writable path") from None
    return path


def check_data_flags(args: argparse.Namespace) -> None:
    """--val-size, --subset and --split-seed by the rules of a space file's `data:` section, before any data is
    read (a bad split seed would otherwise fail inside numpy)."""
    from tuner.space import DataSettings, declared_settings

    problems = []
    for field_name, key, setting in declared_settings(DataSettings):
        value = getattr(args, field_name)
        flag = f"--{key.replace('_', '-')}"
        try:
            setting.read(value, unset=f"leave out {flag}")
        except ValueError as err:
            problems.append(f"{flag} {excerpt(value)} {err}")
    if problems:
        raise UserError.of(problems)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m tuner.train",
        description="Train one ModifiedResNet configuration on CIFAR-10 and save its final checkpoint.",
        epilog="example: python -m tuner.train --widths 32,64,128 --subset 10000 --epochs 10 --out runs/proxy.pt",
    )
    parser.add_argument("--config", help="YAML file of TrainConfig fields; flags override it")
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py (default: data)")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images carved from training")
    parser.add_argument("--subset", type=int, help="train on the first N training images only")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the stratified train/val split")
    parser.add_argument("--device", metavar="{cpu,cuda,cuda:N,mps}",
                        help=f"{DEVICES} (default: cuda when present, else cpu)")
    parser.add_argument("--out", default="runs/train/final.pt", help="where the final checkpoint goes")
    parser.add_argument("--resume", help="checkpoint to continue from (its config, unless flags extend --epochs)")
    for f in dataclasses.fields(TrainConfig):
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default: {str(default).lower()}")
        elif f.name in CHOICES:
            parser.add_argument(flag, dest=f.name, default=None, choices=CHOICES[f.name], help=f"default: {default}")
        else:
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=f"default: {shown}")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.device is not None:
        check_device_name(args.device)
    file_values = config_from_file(args.config) if args.config else {}
    flag_values = {k: getattr(args, k) for k in TrainConfig.field_names() if getattr(args, k) is not None}
    if not args.resume:
        config = build_config(file_values, flag_values, args.config)
    check_data_flags(args)
    out = check_output(args.out)

    # Everything the user gave is checked; training needs torch from here on.
    from tuner.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from tuner.data import load_splits, load_test
    from tuner.device import require_device
    from tuner.evaluate import evaluate_images
    from tuner.train import EpochMetrics, fit

    resume = load_checkpoint(args.resume) if args.resume else None
    if resume is not None:
        config = build_config(file_values, flag_values, args.config, resumed=resume["config"])
    device = require_device(args.device) if args.device else None
    data = load_splits(args.data_dir, args.val_size, args.subset, args.split_seed)
    print(f"train {len(data.train)} / val {len(data.val)} images; config {config.to_dict()}", flush=True)

    def show(m: EpochMetrics, _: Callable[[], dict[str, Any]]) -> None:
        print(f"epoch {m.epoch:3d}  train loss {m.train_loss:.4f} acc {m.train_acc:.4f}  "
              f"val loss {m.val_loss:.4f} acc {m.val_acc:.4f}  lr {m.lr:.4g}  "
              f"{m.epoch_seconds:.1f}s  {m.images_per_s:.0f} img/s", flush=True)

    result = fit(config, data, show, resume=resume, device=device)
    if result.status == "diverged":
        print(f"diverged in epoch {len(result.history) + 1}: the loss became NaN, inf or huge; "
              "lower lr or use warmup")
        raise SystemExit(1)
    print(f"saved {save_checkpoint(result.checkpoint, out)}  best val acc {result.best.val_acc:.4f}")
    test = load_test(args.data_dir)
    if test is None:
        print("no test_batch in the data folder: test accuracy not measured")
    else:
        model, _ = model_from_checkpoint(result.checkpoint)
        _, accuracy = evaluate_images(model, test, config.tta_flip, device)
        print(f"test acc {accuracy:.4f} ({len(test)} images, flip TTA {config.tta_flip})")


if __name__ == "__main__":
    from tuner.quick_exit import run_then_exit_quickly

    run_then_exit_quickly(main)
