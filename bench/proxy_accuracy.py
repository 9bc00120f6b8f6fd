"""CPU proxy of the accuracy target: our default recipe vs the student report's recipe, same network.

The proxy (issue #2): widths 32/64/128, the first 10,000 training images, 10 epochs, validation on
5,000 held-out training images (stratified, seed 0). Both recipes run through the same trainer, so the
difference is the recipe alone. Prints one line per epoch and a closing table. Results:
docs/benchmarks.md#trainer-accuracy-cpu-proxy.

    python bench/proxy_accuracy.py --data-dir data [--epochs 10] [--subset 10000] [--device cpu]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import torch

from tuner.data import load_splits
from tuner.train import TrainConfig, fit

# The report: Adam 1e-3 + ReduceLROnPlateau, crop + flip + colour jitter + rotation + affine, no TTA.
REPORT_RECIPE = dict(
    optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, schedule="plateau", warmup_epochs=0.0,
    plateau_patience=2, plateau_factor=0.1, label_smoothing=0.0,
    crop_padding=4, flip=True, color_jitter=0.2, rotation=15.0, translate=0.1, tta_flip=False,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--device", default=None)
    parser.add_argument("--recipes", default="default,report", help="comma list of default, report")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    data = load_splits(args.data_dir, val_size=5000, subset=args.subset, seed=0)
    arch = dict(widths=args.widths, epochs=args.epochs)
    recipes = {"default": TrainConfig.from_dict(arch),
               "report": TrainConfig.from_dict({**REPORT_RECIPE, **arch})}
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; train {len(data.train)} val {len(data.val)}", flush=True)
    results = {}
    for name in args.recipes.split(","):
        config = recipes[name]
        started = time.perf_counter()
        result = fit(config, data, lambda m, _, name=name: print(
            f"{name:8s} epoch {m.epoch:2d} val acc {m.val_acc:.4f} loss {m.val_loss:.4f} "
            f"train acc {m.train_acc:.4f} {m.images_per_s:.0f} img/s", flush=True), device=args.device)
        results[name] = {
            "final_val_acc": result.history[-1].val_acc,
            "best_val_acc": result.best.val_acc,
            "minutes": (time.perf_counter() - started) / 60,
            "config": {k: v for k, v in config.to_dict().items()
                       if v != dataclasses.asdict(TrainConfig()).get(k) or k in ("widths", "epochs")},
        }
    print("\nrecipe    final val acc  best val acc  minutes")
    for name, r in results.items():
        print(f"{name:8s}  {r['final_val_acc']:.4f}         {r['best_val_acc']:.4f}        {r['minutes']:.1f}")
    if {"default", "report"} <= results.keys():
        gap = results["default"]["final_val_acc"] - results["report"]["final_val_acc"]
        print(f"default - report (final val acc): {gap * 100:+.2f} points")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
