"""Recipe candidates (issue #18): the default recipe against one-change variants of it, same network.

Each candidate changes one thing of the default `TrainConfig` (the fast-CIFAR literature's list: no
weight decay on BatchNorm and biases, zero-initialised last BN of each residual branch, identity (Dirac)
convolutions, alternating flips, translate + flip TTA, a plain final epoch, a weight average for
evaluation, label smoothing 0.2, batch 512 at twice the lr) and trains through the same trainer on the
same split, so the difference is that one change; `proposed` is the screen's winners together. Prints
one line per epoch and a closing table (final and best val acc, the final's delta against the default,
minutes) and writes everything to --json.
Results: docs/benchmarks.md#recipe-candidates.

A candidate that changes evaluation only (tta_flip, tta_translate) on a schedule that does not read the
validation loss trains exactly as the default does, so it is scored on the default's final weights
instead of training again (its best-epoch figure is then not measured).

    # the CPU proxy (as bench/proxy_accuracy.py): widths 32/64/128, first 10,000 images, 10 epochs
    python bench/recipe_candidates.py --data-dir data --json runs/bench/candidates.json
    # a cheaper screen first: 4 epochs on the first 5,000 images
    python bench/recipe_candidates.py --data-dir data --epochs 4 --subset 5000 --json runs/bench/screen.json
    # the full proxy for today's default and the screen's winners together
    python bench/recipe_candidates.py --data-dir data --only default,proposed --json runs/bench/proposed.json
    # two recipes only, one of them a combination
    python bench/recipe_candidates.py --only default,combo --set combo:zero_init_residual=true,alternate_flip=true
    # full width on a GPU (bench/gpu_acceptance.sh runs this)
    python bench/recipe_candidates.py --device cuda --widths 64,128,256 --subset all --epochs 15
    # one table from several runs' JSON (e.g. candidates split across parallel processes)
    python bench/recipe_candidates.py --table a.json b.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from machine import describe_machine, machine_line  # bench/ is on sys.path: this file runs from it
from proxy_accuracy import parse_subset

from tuner.checkpoint import model_from_checkpoint
from tuner.config import TrainConfig
from tuner.data import DataSplits, load_splits
from tuner.errors import exit_on_user_error
from tuner.evaluate import evaluate_images
from tuner.train import FitResult, fit

# One change each against the default TrainConfig (the name says what changed), and one combination.
CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    "no-bn-bias-decay": {"bn_bias_decay": False},
    "zero-init-residual": {"zero_init_residual": True},
    "dirac-init": {"dirac_init": True},
    "alternate-flip": {"alternate_flip": True},
    "tta-translate-1": {"tta_translate": 1},
    "final-plain-1": {"final_plain_epochs": 1},
    "ema-1": {"ema_epochs": 1.0},
    "smoothing-0.2": {"label_smoothing": 0.2},
    "batch-512-lr-x2": {"batch_size": 512, "lr": 2 * TrainConfig.lr},  # linear scaling of the lr with the batch
    # The changes that won the reduced CPU screen, together (docs/benchmarks.md#recipe-candidates): the
    # combination to check on the full proxy and at full width before it becomes the default.
    "proposed": {"dirac_init": True, "alternate_flip": True, "label_smoothing": 0.2, "bn_bias_decay": False},
    # The changes that did not lose on the full proxy one at a time (dirac init lost 2.2 points there, label
    # smoothing 0.2 was level): the combination the GPU table checks at full width.
    "proposed-b": {"alternate_flip": True, "bn_bias_decay": False, "final_plain_epochs": 1},
}
# Fields that change only how a trained network is scored; a plateau schedule reads the validation loss,
# so there they change training too.
EVALUATION_FIELDS = ("tta_flip", "tta_translate")


def parse_changes(text: str) -> dict[str, Any]:
    """`field=value,field=value` -> {field: value} (values as text; TrainConfig.from_dict types and checks
    them). Stage fields take `widths=64/128/256` (slashes, since commas separate the changes)."""
    changes: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r} is not field=value")
        changes[name.strip()] = value.strip().replace("/", ",")
    return changes


def parse_candidate(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME:field=value,...` -> (NAME, changes)."""
    name, sep, changes = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:field=value,field=value")
    return name, parse_changes(changes)


def evaluation_only(changes: Mapping[str, Any], config: TrainConfig) -> bool:
    """Whether a candidate trains exactly as the default does (it changes evaluation alone)."""
    return bool(changes) and set(changes) <= set(EVALUATION_FIELDS) and config.schedule != "plateau"


def run_candidate(name: str, config: TrainConfig, data: DataSplits, device: str | None) -> tuple[dict[str, Any],
                                                                                                  FitResult]:
    started = time.perf_counter()
    result = fit(config, data, lambda m, _: print(
        f"{name:20s} epoch {m.epoch:2d} val acc {m.val_acc:.4f} loss {m.val_loss:.4f} "
        f"train acc {m.train_acc:.4f} {m.images_per_s:.0f} img/s", flush=True), device=device)
    record = {
        "status": result.status,
        "final_val_acc": result.history[-1].val_acc if result.history else None,
        "best_val_acc": result.best.val_acc if result.best else None,
        "val_acc_per_epoch": [m.val_acc for m in result.history],
        "val_loss_per_epoch": [m.val_loss for m in result.history],
        "minutes": (time.perf_counter() - started) / 60,
    }
    return record, result


def score_default_weights(name: str, config: TrainConfig, default: FitResult, data: DataSplits,
                          device: str | None) -> dict[str, Any]:
    """An evaluation-only candidate scored on the default run's final weights."""
    started = time.perf_counter()
    model, _ = model_from_checkpoint(default.checkpoint)
    loss, accuracy = evaluate_images(model, data.val, config.tta_flip, device or "cpu", config.precision,
                                     config.tta_translate)
    print(f"{name:20s} scored on the default's final weights: val acc {accuracy:.4f} loss {loss:.4f}", flush=True)
    return {"status": "completed", "final_val_acc": accuracy, "best_val_acc": None, "val_acc_per_epoch": [],
            "val_loss_per_epoch": [], "minutes": (time.perf_counter() - started) / 60,
            "scored_on": "the default's final weights"}


def print_table(results: Mapping[str, Mapping[str, Any]]) -> None:
    """The closing table: final and best val acc, the final's delta against `default` (when run), minutes."""
    base = results.get("default", {}).get("final_val_acc")
    print(f"\n{'candidate':20s} {'final val acc':>13s} {'best val acc':>12s} {'delta':>7s} {'minutes':>7s}  changes")
    for name, r in results.items():
        final, best = r.get("final_val_acc"), r.get("best_val_acc")
        delta = f"{(final - base) * 100:+.2f}" if final is not None and base is not None else "-"
        changes = ", ".join(f"{k}={v}" for k, v in r.get("changes", {}).items()) or "(the default)"
        if r.get("scored_on"):
            changes += f" [{r['scored_on']}]"
        print(f"{name:20s} {_acc(final):>13s} {_acc(best):>12s} {delta:>7s} {r.get('minutes', 0):7.1f}  {changes}")


def _acc(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def merge_tables(paths: Sequence[str]) -> None:
    """Print one table from several runs' JSON (the default's figures from whichever file has them)."""
    merged: dict[str, Any] = {}
    for path in paths:
        with open(path) as f:
            document = json.load(f)
        print(f"{path}: {machine_line(document['machine'])}; {document['settings']}")
        merged.update(document["results"])
    print_table(dict(sorted(merged.items(), key=lambda item: item[0] != "default")))


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best available)")
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--subset", type=parse_subset, default=10_000, help="first N training images; 0 or all")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--only", help=f"comma list of candidates to run (default: all of {', '.join(CANDIDATES)})")
    parser.add_argument("--set", action="append", type=parse_candidate, default=[], metavar="NAME:FIELD=V,...",
                        help="add (or redefine) a candidate: its changes against the base recipe")
    parser.add_argument("--base", type=parse_changes, default={}, metavar="FIELD=V,...",
                        help="changes applied to every candidate, the default included (e.g. today's default "
                             "once the TrainConfig defaults have moved)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="start no candidate once this much time has passed (the rest are listed as skipped)")
    parser.add_argument("--json", help="write settings, machine and results here")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="only print one table from these runs' JSON")
    args = parser.parse_args(argv)
    if args.table:
        merge_tables(args.table)
        return

    candidates = {**CANDIDATES, **dict(args.set)}
    names = args.only.split(",") if args.only else list(candidates)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        parser.error(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(candidates)} "
                     "(or add one with --set)")
    shared = {**args.base, "widths": args.widths, "epochs": args.epochs}
    configs = {name: TrainConfig.from_dict({**shared, **candidates[name]}, source=f"candidate {name}")
               for name in names}  # every candidate checked before the first one trains
    data = load_splits(args.data_dir, val_size=args.val_size, subset=args.subset, seed=0)
    machine = describe_machine(args.device)
    settings = {"widths": args.widths, "epochs": args.epochs, "train_images": len(data.train),
                "val_images": len(data.val), "split_seed": 0, "base": args.base, "device": args.device}
    print(f"{machine_line(machine)}; train {len(data.train)} val {len(data.val)}, widths {args.widths}, "
          f"{args.epochs} epochs", flush=True)

    started, results, skipped = time.perf_counter(), {}, []
    default_run: FitResult | None = None
    for name in names:
        if args.minutes is not None and (time.perf_counter() - started) / 60 > args.minutes:
            skipped.append(name)
            continue
        config, changes = configs[name], candidates[name]
        if default_run is not None and default_run.checkpoint is not None and evaluation_only(changes, config):
            record = score_default_weights(name, config, default_run, data, args.device)
        else:
            record, result = run_candidate(name, config, data, args.device)
            if name == "default":
                default_run = result
        results[name] = {**record, "changes": changes}
        if args.json:  # after every candidate: a run stopped by a time limit keeps what it measured
            _write(args.json, machine, settings, results, skipped)
    print_table(results)
    if skipped:
        print(f"skipped (past --minutes {args.minutes:g}): {', '.join(skipped)}")
    if args.json:
        _write(args.json, {**machine, "load_average_end": describe_machine()["load_average"]}, settings, results,
               skipped)


def _write(path: str, machine: Mapping[str, Any], settings: Mapping[str, Any], results: Mapping[str, Any],
           skipped: Sequence[str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine, "settings": settings, "results": results, "skipped": list(skipped),
                   "command": " ".join(sys.argv)}, f, indent=2)


if __name__ == "__main__":
    main()
