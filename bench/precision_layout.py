"""Training images/s of `fit` for each precision x memory layout, same network, same data, one run.

The measurement behind what `precision: auto` and `channels_last` choose on a device (tuner.device); the
figures are in docs/benchmarks.md#trainer-speed (CPU) and docs/benchmarks.md#gpu-h200 (GPU).

    python bench/precision_layout.py --data-dir data [--device cuda] [--widths 32,64,128] [--images 2560]
"""
from __future__ import annotations

import argparse
import platform

import torch

from tuner.config import TrainConfig
from tuner.data import load_splits
from tuner.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--images", type=int, default=2560)
    args = parser.parse_args()
    data = load_splits(args.data_dir, val_size=1000, subset=args.images)
    print(f"{args.device} ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"widths {args.widths}, {len(data.train)} images, one epoch each")
    print("precision  channels_last  images/s")
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            config = TrainConfig.from_dict({"widths": args.widths, "epochs": 1, "warmup_epochs": 0,
                                            "precision": precision, "channels_last": channels_last})
            speed = fit(config, data, device=args.device).history[0].images_per_s
            print(f"{precision:9s}  {str(channels_last):13s}  {speed:8.1f}", flush=True)


if __name__ == "__main__":
    main()
