"""Training throughput: our trainer vs the student report's input pipeline, same network, same device.

Ours (`tuner.train.fit`): the split lives on the device as uint8; every batch is sliced, augmented
(batched crop + flip, optionally jitter/rotation/translation) and normalised there; bf16 autocast (on CUDA
and on CPUs with native bf16) and channels_last. Measured with the default TrainConfig (epochs=1 on the
first --images training images) and again with the report's augmentation set (color_jitter=0.2,
rotation=15, translate=0.1). Its figure is `EpochMetrics.images_per_s`, which times the training steps
and excludes evaluation.

The report, re-implemented faithfully: a Dataset that turns each uint8 image into a PIL image (as
`torchvision.datasets.CIFAR10` does), torchvision transforms per image (RandomCrop(32, padding=4),
RandomHorizontalFlip, ColorJitter(0.2, 0.2, 0.2), RandomRotation(15), RandomAffine(0,
translate=(0.1, 0.1)), ToTensor, Normalize), a shuffling DataLoader with --workers processes, fp32,
Adam(lr=1e-3), batch 128, and the usual per-batch `loss.item()` / accuracy bookkeeping.

Both sides train the same number of images on the same ModifiedResNet (two blocks per stage, as in
the report); a few warmup batches (worker start-up, allocator, kernel selection) run before the clock
starts: inside the report's loop, and as a short untimed `fit` of that many batches for ours. Prints images/s of each
and the ratio ours/report, with the device, torch version, threads and widths. Results:
docs/benchmarks.md#trainer-speed.

    python bench/trainer_speed.py --data-dir data --device cuda --json runs/bench/speed.json
    python bench/trainer_speed.py --synthetic --images 512 --widths 8,16,32    # smoke run, seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from tuner.config import TrainConfig, format_stages, parse_stages
from tuner.data import DataSplits, ImageSet, load_train, write_synthetic_cifar10
from tuner.device import autocast_dtype, pick_device
from tuner.errors import UserError, exit_on_user_error
from tuner.evaluate import CIFAR_MEAN, CIFAR_STD
from tuner.model import ModifiedResNet
from tuner.train import fit

REPORT_BATCH = 128
REPORT_AUGMENTATION = dict(color_jitter=0.2, rotation=15.0, translate=0.1)
VAL_IMAGES = 256  # fit needs a validation split; its evaluation is not part of the timed figure


class PilCifar(Dataset):
    """The report's dataset: one PIL image per item, transformed on the fly (like torchvision's CIFAR10)."""

    def __init__(self, images: ImageSet, transform: transforms.Compose) -> None:
        self.images, self.labels, self.transform = images.images, images.labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def report_transform() -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.2, 0.2, 0.2),
        transforms.RandomRotation(15),
        transforms.RandomAffine(0, translate=(0.1, 0.1)),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report_images_per_s(
    train: ImageSet, arch: TrainConfig, device: torch.device, workers: int, warmup_batches: int
) -> tuple[float, int]:
    """(images/s, images timed) of the report's loop over `train`; the first warmup batches are not timed."""
    torch.manual_seed(0)
    loader = DataLoader(PilCifar(train, report_transform()), batch_size=REPORT_BATCH, shuffle=True,
                        num_workers=workers, drop_last=True)
    model = ModifiedResNet(arch.widths, arch.blocks).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    model.train()
    running_loss, correct, seen, started = 0.0, 0, 0, time.perf_counter()
    for batch, (inputs, targets) in enumerate(loader):
        if batch == warmup_batches:
            synchronize(device)
            seen, started = 0, time.perf_counter()
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        correct += outputs.argmax(1).eq(targets).sum().item()
        seen += len(targets)
    synchronize(device)
    return seen / (time.perf_counter() - started), seen


def ours_images_per_s(
    config: TrainConfig, train: ImageSet, val: ImageSet, device: torch.device, warmup_batches: int
) -> tuple[float, int]:
    """(images/s, images timed) of one epoch of `fit` on `train`, after a short untimed warmup fit."""
    if warmup_batches:
        fit(config, DataSplits(train.take(np.arange(min(len(train), warmup_batches * config.batch_size))), val),
            device=device)
    result = fit(config, DataSplits(train, val), device=device)
    if result.status != "completed":
        raise RuntimeError(f"our trainer diverged with {config}; the speed figure would be meaningless")
    batch = min(config.batch_size, len(train))
    return result.history[-1].images_per_s, len(train) // batch * batch  # fit drops the ragged last batch


def load_images(args: argparse.Namespace, needed: int) -> tuple[ImageSet, str]:
    if args.synthetic:
        with tempfile.TemporaryDirectory() as folder:
            write_synthetic_cifar10(folder, n_train=needed, seed=0)
            return load_train(folder, download=False), "synthetic"
    try:
        images = load_train(args.data_dir, download=False)
    except UserError as err:
        raise UserError(f"{err}; or pass --synthetic to time on generated images") from None
    if len(images) < needed:
        raise UserError(f"--images {args.images} needs {needed} training images, {args.data_dir} has {len(images)}")
    return images, f"CIFAR-10 from {args.data_dir}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py (default: data)")
    parser.add_argument("--synthetic", action="store_true", help="time on generated images instead")
    parser.add_argument("--widths", default="32,64,128", help="stage widths for both pipelines")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--images", type=int, default=5120, help="timed training images per pipeline")
    parser.add_argument("--batch-size", type=int, help=f"our batch size (default: {TrainConfig.batch_size})")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the report pipeline")
    parser.add_argument("--warmup-batches", type=int, default=3, help="untimed batches before the clock starts")
    parser.add_argument("--json", help="also write the results here")

    @exit_on_user_error
    def run() -> None:
        args = parser.parse_args()
        if args.images <= 0 or args.warmup_batches < 0 or args.workers < 0:
            raise UserError("--images must be positive; --warmup-batches and --workers must be >= 0")
        try:
            widths = parse_stages(args.widths)
        except ValueError:
            raise UserError(f"--widths {args.widths!r}: give whole numbers, one per stage, e.g. 32,64,128") from None
        # the report's network has two blocks per stage; warmup must fit in the single epoch timed
        overrides = {"widths": widths, "blocks": [2] * len(widths), "epochs": 1, "warmup_epochs": 1.0}
        if args.batch_size is not None:
            overrides["batch_size"] = args.batch_size
        ours = TrainConfig.from_dict(overrides, source="flags")
        ours_report_aug = dataclasses.replace(ours, **REPORT_AUGMENTATION)
        device = pick_device(args.device)

        report_needed = args.images + args.warmup_batches * REPORT_BATCH
        images, source = load_images(args, max(args.images, report_needed) + VAL_IMAGES)
        train = images.take(np.arange(args.images))
        val = images.take(np.arange(len(images) - VAL_IMAGES, len(images)))

        threads = torch.get_num_threads()
        processor = platform.processor() or platform.machine()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else processor
        print(f"device {device} ({name}), torch {torch.__version__}, {threads} threads; "
              f"widths {format_stages(ours.widths)} blocks {format_stages(ours.blocks)}; "
              f"{args.images} timed images after {args.warmup_batches} warmup batches; {source}", flush=True)

        precision = "bf16" if autocast_dtype(ours.precision, device) is not None else "fp32"  # what fit runs here
        rows = []
        for label, config in (("ours, default recipe", ours), ("ours, report augmentation", ours_report_aug)):
            speed, seen = ours_images_per_s(config, train, val, device, args.warmup_batches)
            rows.append({"pipeline": label, "batch_size": config.batch_size, "precision": precision,
                         "images": seen, "images_per_s": speed})
            print(f"  {label}: {speed:.1f} images/s", flush=True)
        report_train = images.take(np.arange(report_needed))
        speed, seen = report_images_per_s(report_train, ours, device, args.workers, args.warmup_batches)
        report = {"pipeline": f"report, PIL transforms + DataLoader ({args.workers} workers)",
                  "batch_size": REPORT_BATCH, "precision": "fp32", "images": seen, "images_per_s": speed}
        rows.append(report)
        for row in rows:
            row["ratio_to_report"] = row["images_per_s"] / report["images_per_s"]

        print(f"\n{'pipeline':50s} {'batch':>5s} {'precision':>9s} {'images':>7s} {'images/s':>10s} "
              f"{'ours/report':>11s}")
        for row in rows:
            print(f"{row['pipeline']:50s} {row['batch_size']:5d} {row['precision']:>9s} {row['images']:7d} "
                  f"{row['images_per_s']:10.1f} {row['ratio_to_report']:10.2f}x")
        if args.json:
            results = {"device": str(device), "device_name": name, "torch": torch.__version__, "threads": threads,
                       "widths": list(ours.widths), "blocks": list(ours.blocks), "data": source,
                       "warmup_batches": args.warmup_batches, "workers": args.workers, "rows": rows}
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    run()


if __name__ == "__main__":
    main()
