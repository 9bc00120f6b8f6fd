"""`python -m tuner.train`: train one TrainConfig from flags or a YAML file, no Ray, no MLflow.

    python -m tuner.train --widths 32,64,128 --subset 10000 --epochs 10 --out runs/proxy.pt
    python -m tuner.train --config best.yaml --resume runs/proxy.pt --epochs 20

Flags override the file; `--resume` continues a checkpoint with its own config (flags may extend
`--epochs` or change how it runs, not what it trains) and on the data split it records: this command's,
a sweep trial's, or a `train_on: train` final fit's (one on all images has nothing held out and is refused).
The final checkpoint goes to `--out` with its split recorded, and the official test batch is scored when
it is in the data folder. A flag typed where it has no effect (`--momentum` with adam) is refused, naming both.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.config import DEVICES, OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig, check_device_name
from tuner.errors import OneLineParser, UserError, data_folder, excerpt, exit_on_user_error
from tuner.yamlfile import load_yaml

CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS}
CONFIG_HELP = "give a YAML file of TrainConfig fields, e.g. 'lr: 0.1' (python -m tuner.train --help lists them)"
# What a resumed run may change: how long it trains and how it runs, not what it trains.
RESUMABLE_CHANGES = ("epochs", "precision", "channels_last", "compile", "deterministic")
# The split flags and their values when neither the flag nor a resumed checkpoint gives one. How a checkpoint
# records its split (these names, the fingerprint, train_on) is tuner.data's SPLIT_RECORD, which a sweep's
# checkpoints share; it is imported with torch, after the flags are checked, as numpy comes with it.
SPLIT_DEFAULTS: dict[str, int | None] = {"val_size": 5000, "split_seed": 0, "subset": None}


def flag_name(field: str) -> str:
    """The command-line flag of a TrainConfig field or split setting: `val_size` -> `--val-size`."""
    return "--" + field.replace("_", "-")


def flag_named(field: str, value: object) -> str:
    """A setting as the user types it, for messages: `--val-size 5000`, `--widths 8,16`, `--no-flip`."""
    if isinstance(value, bool):
        return flag_name(field) if value else f"--no-{field.replace('_', '-')}"
    return f"{flag_name(field)} {as_typed(value)}"


def as_typed(value: object) -> str:
    """A config value as a flag or a config file shows it: adam, 0.5, 8,16, true (an excerpt: values may be long)."""
    if isinstance(value, (list, tuple)):
        return excerpt(",".join(map(str, value))).strip("'")
    return excerpt(value).strip("'") if isinstance(value, str) else excerpt(value)


@dataclass(frozen=True)
class ValueSources:
    """Where each value of the run's config came from (a flag, a config file line, the resumed checkpoint, or
    the default), so that a message blames the value the user gave and tells them where it is."""

    file_values: Mapping[str, Any]
    flag_values: Mapping[str, Any]
    config_path: str | None = None
    resumed: Mapping[str, Any] | None = None

    def where(self, key: str) -> str:
        """`flags`, `file:line`, `the checkpoint's config` or `config` (a default)."""
        if key in self.flag_values:
            return "flags"
        if key in self.file_values and self.config_path:
            line = getattr(self.file_values, "lines", {}).get(key)
            return f"{self.config_path}:{line}" if line else str(self.config_path)
        return "the checkpoint's config" if self.resumed and key in self.resumed else "config"

    def typed(self, config: TrainConfig, key: str) -> str:
        """A value as its source spells it: `--epochs 1` from the flags, `epochs=1` from elsewhere."""
        value = getattr(config, key)
        return flag_named(key, value) if key in self.flag_values else f"{key}={as_typed(value)}"

    def shown(self, config: TrainConfig, key: str) -> str:
        """`optimizer=adam (flags)`, `schedule=onecycle (the default)`: a value that decides another's effect."""
        where = self.where(key)
        where = {"config": "the default", "the checkpoint's config": "the checkpoint's"}.get(where, where)
        return f"{key}={as_typed(getattr(config, key))} ({where})"


@dataclass(frozen=True)
class FlagEffect:
    """A TrainConfig flag that changes training only under some values of other fields (`controls`)."""

    field: str
    acts: Callable[[TrainConfig], bool]  # whether the field changes training under this config
    controls: tuple[str, ...]  # the fields `acts` reads
    when: str  # where it acts, as a person reads it
    off: Any = None  # the value that asks for nothing: "off" where nothing acts is no contradiction


def _trains_augmented(config: TrainConfig) -> bool:
    return config.final_plain_epochs < config.epochs


_AUGMENTED_EPOCHS = "in epochs before the final plain ones (--final-plain-epochs below --epochs)"
# Every pair of train flags where one does nothing under a value of the other. A value from a space file or
# a checkpoint may be unused (a space fixes momentum while it searches the optimizer); a flag typed on the
# command line that does nothing is a mistake about what the run will do, so it is refused.
FLAG_EFFECTS: tuple[FlagEffect, ...] = (
    FlagEffect("momentum", lambda c: c.optimizer == "sgd", ("optimizer",),
               "with --optimizer sgd (adam and adamw keep their own moment estimates)"),
    FlagEffect("nesterov", lambda c: c.optimizer == "sgd", ("optimizer",), "with --optimizer sgd", off=False),
    FlagEffect("nesterov", lambda c: c.momentum > 0, ("momentum",), "with a --momentum above 0", off=False),
    FlagEffect("plateau_patience", lambda c: c.schedule == "plateau", ("schedule",), "with --schedule plateau"),
    FlagEffect("plateau_factor", lambda c: c.schedule == "plateau", ("schedule",), "with --schedule plateau"),
    FlagEffect("alternate_flip", lambda c: c.flip, ("flip",), "with --flip", off=False),
    FlagEffect("bn_bias_decay", lambda c: c.weight_decay > 0, ("weight_decay",), "with a --weight-decay above 0",
               off=False),
    *(FlagEffect(field, _trains_augmented, ("final_plain_epochs", "epochs"), _AUGMENTED_EPOCHS, off=off)
      for field, off in (("crop_padding", 0), ("flip", False), ("alternate_flip", False), ("color_jitter", 0.0),
                         ("rotation", 0.0), ("translate", 0.0))),
)


def flag_contradictions(config: TrainConfig, sources: ValueSources) -> list[str]:
    """One message for each flag the user typed that cannot act as asked under the run's other values:
    a flag with no effect (FLAG_EFFECTS), or a warmup longer than the run. Each names both flags and the fix."""
    problems: list[str] = []
    refused: set[str] = set()
    for rule in FLAG_EFFECTS:
        value = getattr(config, rule.field)
        if rule.field not in sources.flag_values or rule.field in refused or value == rule.off or rule.acts(config):
            continue
        refused.add(rule.field)
        typed = flag_named(rule.field, sources.flag_values[rule.field])
        problems.append(f"flags: {typed} has no effect with "
                        f"{', '.join(sources.shown(config, key) for key in rule.controls)}: {rule.field} acts only "
                        f"{rule.when}; drop {typed} or change {' / '.join(map(flag_name, rule.controls))}")
    warmup_given = "warmup_epochs" in sources.flag_values or (
        "epochs" in sources.flag_values and "warmup_epochs" in sources.file_values)
    if warmup_given and config.warmup_epochs > config.epochs:
        problems.append(f"{sources.where('warmup_epochs')}: {sources.typed(config, 'warmup_epochs')} is longer "
                        f"than the run, {sources.shown(config, 'epochs')}: the learning rate would still be warming up "
                        f"when training ends; give --warmup-epochs {config.epochs} or less, or more --epochs")
    return problems


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
    problem is reported, each naming where its value came from (`file:line` or `flags`), and so is every
    flag that would do nothing under the other values (`flag_contradictions`)."""
    sources = ValueSources(file_values, flag_values, config_path, resumed)
    where = sources.where
    values = {**(resumed or {}), **file_values, **flag_values}
    config, problems = TrainConfig.check(values)
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
    contradictions = flag_contradictions(config, sources)
    if contradictions:
        raise UserError.of(contradictions)
    return config


def check_resumed_epochs(config: TrainConfig, checkpoint: Mapping[str, Any], path: str,
                         sources: ValueSources) -> int:
    """The epochs `checkpoint` has trained; a UserError unless `config.epochs` leaves at least one to train (a
    lower --epochs would save a checkpoint labelled with fewer epochs than it holds)."""
    try:
        done = int(checkpoint["epoch"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"checkpoint {path} records no epoch it stopped at: it is not a tuner checkpoint; "
                        "give one written by python -m tuner.train or a sweep") from None
    if config.epochs > done:
        return done
    if "epochs" in sources.flag_values or "epochs" in sources.file_values:
        raise UserError(f"{sources.where('epochs')}: {sources.typed(config, 'epochs')} is not above the {done} epoch"
                        f"{'s' * (done != 1)} checkpoint {path} has trained, so there is nothing to train: --epochs "
                        f"is the total a resumed run trains to; give --epochs {done + 1} or more")
    raise UserError(f"checkpoint {path} has trained all {done} epoch{'s' * (done != 1)} of its config: give "
                    f"--epochs {done + 1} or more to train it further")


def check_batch_size(config: TrainConfig, train_images: int, sources: ValueSources) -> None:
    """A --batch-size above the training images is refused: the trainer would step on all of them at once, so
    the flag would not mean what it says. A batch size the user did not type (the default, a config file's, the
    checkpoint's) is capped the same way, and a note says so."""
    if config.batch_size <= train_images:
        return
    if "batch_size" in sources.flag_values:
        raise UserError(f"flags: --batch-size {config.batch_size} is more than the {train_images:,} training images "
                        f"of this split, so every step would use all {train_images:,}; give --batch-size "
                        f"{train_images} or less, or more images (--subset, --val-size)")
    print(f"note: {sources.shown(config, 'batch_size')} is more than the {train_images:,} training images: every "
          f"step uses all {train_images:,}; give --batch-size to choose a smaller one", flush=True)


def check_output(path: str | Path) -> Path:
    """`--out` as a file this process can write, checked before training so a finished run is never lost."""
    path = Path(path).expanduser()  # `--out=~/x.pt`: the shell leaves a tilde after `=` as it is
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
    """The --val-size, --subset and --split-seed given, by the rules of a space file's `data:` section, before
    any data is read (a bad split seed would otherwise fail inside numpy)."""
    from tuner.space import DataSettings, declared_settings

    problems = []
    for field_name, key, setting in declared_settings(DataSettings):
        value = getattr(args, field_name)
        if value is None:  # not given: the resumed checkpoint's split or SPLIT_DEFAULTS decides
            continue
        flag = flag_name(key)
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
    # os.path.expanduser: `--config=~/c.yaml` keeps its tilde (the shell expands one only at a word's start)
    parser.add_argument("--config", type=os.path.expanduser, help="YAML file of TrainConfig fields; flags override it")
    parser.add_argument("--data-dir", default="data", type=data_folder,
                        help="folder holding cifar-10-batches-py (default: data)")
    # No defaults here: left out, a resumed run takes the split its checkpoint recorded (SPLIT_DEFAULTS otherwise).
    parser.add_argument("--val-size", type=int, help="validation images carved from training (default: 5000)")
    parser.add_argument("--subset", type=int, help="train on the first N training images only")
    parser.add_argument("--split-seed", type=int, help="seed of the stratified train/val split (default: 0)")
    parser.add_argument("--device", metavar="{cpu,cuda,cuda:N,mps}",
                        help=f"{DEVICES} (default: cuda when present, else cpu)")
    parser.add_argument("--out", default="runs/train/final.pt", help="where the final checkpoint goes")
    parser.add_argument("--resume", type=os.path.expanduser,
                        help="checkpoint to continue from (its config and data split; flags may extend --epochs)")
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


def resumable_split(checkpoint: Mapping[str, Any], recorded: Mapping[str, Any] | None,
                    path: str) -> Mapping[str, Any] | None:
    """`recorded` (the split `checkpoint` at `path` records, tuner.data.recorded_split) when a run can resume on it:
    a final fit that trained on the validation split too (`train_on: all`) has no held-out images left, so every
    validation figure of a resumed run would be measured on images it trained on. Refused in one line; a final fit
    stored before splits were recorded is known by its own `final_fit` entry."""
    final_fit = checkpoint.get("final_fit")
    trained_on = recorded["train_on"] if recorded is not None else \
        final_fit.get("train_on", "train") if isinstance(final_fit, Mapping) else "train"
    if trained_on == "train":
        return recorded
    raise UserError(f"checkpoint {path} is a final fit that trained on the training and the validation images "
                    "(train_on all): a resumed run would validate on images it trained on; to train it longer raise "
                    "final.epochs in the sweep's space, or resume its search trial's checkpoint.pt")


def split_settings(args: argparse.Namespace, recorded: Mapping[str, Any] | None, path: str | None) -> dict[str, Any]:
    """val_size, split_seed and subset of this run: each flag given, else the resumed checkpoint's, else the
    default. A flag that differs from the split the checkpoint trained on is refused: validation would then
    hold images the network has trained on, and its accuracy would be flattered without a word."""
    given = {name: getattr(args, name) for name in SPLIT_DEFAULTS if getattr(args, name) is not None}
    if recorded is None:
        return {**SPLIT_DEFAULTS, **given}
    different = [name for name, value in given.items() if value != recorded[name]]
    if different:
        typed = " ".join(flag_named(name, given[name]) for name in different)
        theirs = ", ".join(f"{name}={excerpt(recorded[name])}" for name in different)
        raise UserError(f"flags: {typed} differ{'s' * (len(different) == 1)} from the split checkpoint {path} trained "
                        f"on ({theirs}): its validation images would include images it trained on; leave "
                        f"{' '.join(map(flag_name, different))} out to resume on its split, or start a new run "
                        "without --resume")
    return {name: recorded[name] for name in SPLIT_DEFAULTS}


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
    from tuner.data import SPLIT_RECORD, load_splits, load_test, recorded_split, split_record
    from tuner.device import require_device
    from tuner.evaluate import evaluate_images
    from tuner.train import EpochMetrics, fit

    resume = load_checkpoint(args.resume, resumable=True) if args.resume else None
    recorded = None
    if resume is not None:
        # First: no flag can make a final fit on every image resumable, so nothing else is worth saying about it
        recorded = resumable_split(resume, recorded_split(resume, f"checkpoint {args.resume}"), args.resume)
        config = build_config(file_values, flag_values, args.config, resumed=resume["config"])
        check_resumed_epochs(config, resume, args.resume, ValueSources(file_values, flag_values, args.config,
                                                                       resume["config"]))
    split = split_settings(args, recorded, args.resume)
    if resume is not None and recorded is None:
        print(f"note: checkpoint {args.resume} records no data split (it predates split records): resuming with "
              f"{' '.join(flag_named(k, v) for k, v in split.items() if v is not None)}, which must be the split "
              "it trained on; the new checkpoint records it", flush=True)
    device = require_device(args.device) if args.device else None
    def split_named(name: str, value: object) -> str:  # blame a split value the user never typed on its source
        source = "" if getattr(args, name) is not None else " (the checkpoint's)" if recorded else " (the default)"
        return flag_named(name, value) + source

    data = load_splits(args.data_dir, split["val_size"], split["subset"], split["split_seed"], named=split_named)
    record = split_record(data)  # this run trains on data.train and validates on data.val
    assert record is not None  # load_splits says how it split
    fingerprint = record["fingerprint"]
    if recorded is not None and fingerprint != recorded["fingerprint"]:
        raise UserError(f"--data-dir {args.data_dir} holds other images than checkpoint {args.resume} trained on "
                        f"(split fingerprint {fingerprint}, recorded {recorded['fingerprint']}): resume with the "
                        "data it trained on, or start a new run without --resume")
    sources = ValueSources(file_values, flag_values, args.config, resume["config"] if resume is not None else None)
    check_batch_size(config, len(data.train), sources)
    test = load_test(args.data_dir)  # now: a damaged test batch is found before training, not after it
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
    checkpoint = {**result.checkpoint, SPLIT_RECORD: record}
    print(f"saved {save_checkpoint(checkpoint, out)}  best val acc {result.best.val_acc:.4f}")
    if test is None:
        print("no test_batch in the data folder: test accuracy not measured")
    else:
        model, _ = model_from_checkpoint(checkpoint)
        _, accuracy = evaluate_images(model, test, config.tta_flip, device)
        print(f"test acc {accuracy:.4f} ({len(test)} images, flip TTA {config.tta_flip})")


if __name__ == "__main__":
    from tuner.quick_exit import run_then_exit_quickly

    run_then_exit_quickly(main)
