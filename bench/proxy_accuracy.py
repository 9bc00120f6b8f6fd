"""CPU proxy of the accuracy target: our default recipe vs the student report's recipe, same network.

The proxy (issue #2): widths 32/64/128, the first 10,000 training images, 10 epochs, validation on
5,000 held-out training images (stratified, seed 0). Both recipes run through the same trainer, so the
difference is the recipe alone. Prints one line per epoch and a closing table; --json records, per
recipe, the validation accuracy and loss of every epoch (rewritten after each epoch, so a run stopped by a
time limit keeps what it measured). Results: docs/benchmarks.md#trainer-accuracy-cpu-proxy.

The report's recipe at full width on all 45,000 training images for 50 epochs is issue #18's anchor
(docs/benchmarks.md#gpu-h200; bench/gpu_acceptance.sh runs it on a GPU):

    python bench/proxy_accuracy.py --data-dir data [--epochs 10] [--subset 10000] [--device cpu]
    python bench/proxy_accuracy.py --recipe report --widths 64,128,256 --epochs 50 --subset all \
        --device cuda --json runs/bench/report50.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from machine import describe_machine, machine_line  # bench/ is on sys.path: this file runs from it

from tuner.config import TrainConfig
from tuner.data import load_splits
from tuner.errors import exit_on_user_error
from tuner.train import EpochMetrics, fit

# The report: Adam 1e-3 + ReduceLROnPlateau, crop + flip + colour jitter + rotation + affine, no TTA; torch's
# default initialisation and none of our recipe options (pinned, so a change of our defaults never leaks in).
REPORT_RECIPE = dict(
    optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, schedule="plateau", warmup_epochs=0.0,
    plateau_patience=2, plateau_factor=0.1, label_smoothing=0.0,
    crop_padding=4, flip=True, color_jitter=0.2, rotation=15.0, translate=0.1, tta_flip=False,
    zero_init_residual=False, dirac_init=False, bn_bias_decay=True, alternate_flip=False, final_plain_epochs=0,
    tta_translate=0, ema_epochs=0.0,
)
RECIPES = ("default", "report")


def parse_subset(text: str) -> int | None:
    """The number of training images, or None for all of them (`all` or 0)."""
    if text.strip().lower() in ("all", "0"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("--subset must be a positive number of images, 0 or all")
    return value


def epoch_record(history: list[EpochMetrics]) -> dict[str, list[float]]:
    """Per-epoch figures of a run, one list each, in epoch order."""
    return {f"{name}_per_epoch": [getattr(m, name) for m in history]
            for name in ("val_acc", "val_loss", "train_acc", "train_loss", "lr", "epoch_seconds")}


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--subset", type=parse_subset, default=10_000, help="first N training images; 0 or all")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--device", default=None)
    parser.add_argument("--recipes", "--recipe", dest="recipes", default="default,report",
                        help="comma list of default, report")
    parser.add_argument("--json", help="also write the results here (after every epoch)")
    args = parser.parse_args()

    names = args.recipes.split(",")
    if unknown := [n for n in names if n not in RECIPES]:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    arch = dict(widths=args.widths, epochs=args.epochs)
    recipes = {"default": TrainConfig.from_dict(arch),
               "report": TrainConfig.from_dict({**REPORT_RECIPE, **arch})}
    data = load_splits(args.data_dir, val_size=args.val_size, subset=args.subset, seed=0)
    machine = describe_machine(args.device)
    print(f"{machine_line(machine)}; train {len(data.train)} val {len(data.val)}", flush=True)
    document: dict[str, Any] = {
        "machine": machine, "command": " ".join(sys.argv), "results": {},
        "settings": {"widths": args.widths, "epochs": args.epochs, "train_images": len(data.train),
                     "val_images": len(data.val), "split_seed": 0, "device": args.device},
    }
    results = document["results"]
    for name in names:
        config = recipes[name]
        started = time.perf_counter()
        history: list[EpochMetrics] = []

        def on_epoch(m: EpochMetrics, _: Any, name: str = name, config: TrainConfig = config,
                     history: list[EpochMetrics] = history, started: float = started) -> None:
            print(f"{name:8s} epoch {m.epoch:2d} val acc {m.val_acc:.4f} loss {m.val_loss:.4f} "
                  f"train acc {m.train_acc:.4f} lr {m.lr:.2g} {m.images_per_s:.0f} img/s", flush=True)
            history.append(m)
            results[name] = {
                "final_val_acc": m.val_acc,
                "best_val_acc": max(h.val_acc for h in history),
                "epochs_run": len(history),
                "minutes": (time.perf_counter() - started) / 60,
                "config": {k: v for k, v in config.to_dict().items()
                           if v != dataclasses.asdict(TrainConfig()).get(k) or k in ("widths", "epochs")},
                **epoch_record(history),
            }
            if args.json:
                _write(args.json, document)

        result = fit(config, data, on_epoch, device=args.device)
        results[name]["status"] = result.status
    print("\nrecipe    final val acc  best val acc  minutes")
    for name, r in results.items():
        print(f"{name:8s}  {r['final_val_acc']:.4f}         {r['best_val_acc']:.4f}        {r['minutes']:.1f}")
    if {"default", "report"} <= results.keys():
        gap = results["default"]["final_val_acc"] - results["report"]["final_val_acc"]
        print(f"default - report (final val acc): {gap * 100:+.2f} points")
    if args.json:
        document["machine"]["load_average_end"] = describe_machine()["load_average"]
        _write(args.json, document)


def _write(path: str, document: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(document, f, indent=2)


if __name__ == "__main__":
    main()
