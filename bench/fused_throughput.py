"""Trial-epochs per device-hour: fused trial arrays vs K trials as separate processes vs one trial at a time.

Issue #19 items 2 and 3 (the gate). Three ways to train K configurations of one architecture on one device:
- one at a time: `fit` in one process (the baseline, K = 1 of the next);
- separate: K processes at once, each `fit`-ing one configuration (what Ray does with fractional GPUs);
- fused: one process, `tuner.fused.fit_array` training the K configurations as one grouped network.
Every measurement runs in fresh spawned processes (their own CUDA context and memory peak): each builds
its data and network, trains a short untimed warm-up, waits at a barrier, then trains `--epochs` timed
epochs (training and validation, as a trial spends them). Wall time runs from the barrier to the last
process's end; trial-epochs per device-hour = K x epochs / wall x 3600; images/s counts training images
of all K trials. Ratios are to one-at-a-time measured in the same run. The members differ in seed, learning
rate and weight decay (throughput does not depend on them); `--ema-epochs` defaults to recipe.yaml's 0.5.

    python bench/fused_throughput.py --device cuda --out runs/bench/fused.json    # full width, K 1,2,4,8
    python bench/fused_throughput.py --device cuda --widths 32,32,32 --blocks 1,1,1 --k 2,8 --modes fused
    python bench/fused_throughput.py --tiny                                        # CPU smoke, ~1 minute

The epochs here are `--train-images` long (10,000 by default, a fifth of CIFAR-10's training images with
the validation images in the same proportion as recipe.yaml's), so trial-epochs per hour compare
settings with each other, not with a 45,000-image epoch.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import queue
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuner.config import TrainConfig, parse_stages
from tuner.data import DataSplits, load_splits, write_synthetic_cifar10
from tuner.errors import UserError, exit_on_user_error
from tuner.fused import fit_array
from tuner.train import fit

MODES = ("separate", "fused")  # one at a time is separate with K = 1, always measured
WARMUP_BATCHES = 3


def member_configs(spec: dict[str, Any]) -> list[TrainConfig]:
    """K recipe-like configurations of the spec's architecture, differing where a search differs them."""
    configs = []
    for i in range(spec["k"]):
        configs.append(TrainConfig(
            widths=tuple(spec["widths"]), blocks=tuple(spec["blocks"]), batch_size=spec["batch_size"],
            epochs=spec["epochs"], lr=0.2 * 0.8**i, weight_decay=5e-4 * 1.5**i, seed=i,
            ema_epochs=min(spec["ema_epochs"], spec["epochs"]), precision=spec["precision"],
            channels_last=spec["channels_last"], compile=spec["compile"],
        ))
    return configs


def _worker(spec: dict[str, Any], member: int, barrier: Any, results: Any) -> None:
    """One process of a measurement: `fit` one member (separate) or `fit_array` all (fused), timed after a barrier."""
    try:
        torch.set_num_threads(spec["threads"])
        torch.backends.cudnn.benchmark = spec["cudnn_benchmark"]
        device = torch.device(spec["device"])
        data = load_splits(spec["data_dir"], val_size=spec["val_images"], subset=spec["train_images"], download=False)
        configs = member_configs(spec)
        if spec["mode"] == "separate":
            configs = [configs[member]]
        warm = DataSplits(data.train.take(np.arange(min(len(data.train), WARMUP_BATCHES * spec["batch_size"]))),
                          data.val.take(np.arange(min(len(data.val), 256))))
        warm_configs = [dataclasses.replace(c, epochs=1, ema_epochs=min(c.ema_epochs, 1.0)) for c in configs]
        train = (lambda cs, d: fit_array(cs, d, device=device)) if spec["mode"] == "fused" else \
                (lambda cs, d: [fit(cs[0], d, device=device)])
        train(warm_configs, warm)  # kernels chosen, allocator grown, lazy imports done: not in the timed part
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        barrier.wait(timeout=spec["timeout_s"])
        started = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes on this machine
        outcome = train(configs, data)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ended = time.monotonic()
        results.put({
            "member": member, "started": started, "ended": ended,
            "statuses": [r.status for r in outcome],
            "epoch_seconds": [m.epoch_seconds for r in outcome for m in r.history],
            "train_images_per_s": [m.images_per_s for r in outcome for m in r.history],
            "trial_epochs": sum(len(r.history) for r in outcome),
            "max_memory_allocated_mib": _mib(torch.cuda.max_memory_allocated, device),
            "max_memory_reserved_mib": _mib(torch.cuda.max_memory_reserved, device),
        })
    except BaseException as err:  # noqa: BLE001 - reported in the table, the other measurements go on
        results.put({"member": member, "error": f"{type(err).__name__}: {err}"})


def _mib(counter: Any, device: torch.device) -> float | None:
    return counter(device) / 2**20 if device.type == "cuda" else None


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement (`spec["mode"]`, `spec["k"]`) in spawned processes; its row for the table."""
    processes = spec["k"] if spec["mode"] == "separate" else 1
    context = mp.get_context("spawn")  # CUDA cannot be forked
    barrier, results = context.Barrier(processes), context.Queue()
    # not daemons: torch.compile's workers are child processes, which a daemon may not have
    workers = [context.Process(target=_worker, args=(spec, member, barrier, results)) for member in range(processes)]
    began = time.monotonic()
    for worker in workers:
        worker.start()
    reports = []
    deadline = began + spec["timeout_s"]
    while len(reports) < processes:
        try:
            reports.append(results.get(timeout=max(0.1, min(5.0, deadline - time.monotonic()))))
        except queue.Empty:
            if time.monotonic() > deadline or all(not w.is_alive() for w in workers):
                break
    for worker in workers:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
    row: dict[str, Any] = {key: spec[key] for key in ("mode", "k", "widths", "blocks", "batch_size", "epochs",
                                                       "train_images", "device", "mps", "cudnn_benchmark")}
    row["process_seconds"] = time.monotonic() - began
    errors = [r["error"] for r in reports if "error" in r]
    if errors or len(reports) < processes:
        row["error"] = errors[0] if errors else f"{processes - len(reports)} process(es) gave no result in time"
        return row
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    trial_epochs = sum(r["trial_epochs"] for r in reports)
    epoch_seconds = [s for r in reports for s in r["epoch_seconds"]]
    memory = [r["max_memory_allocated_mib"] for r in reports if r["max_memory_allocated_mib"] is not None]
    row.update(
        wall_s=wall,
        trial_epochs=trial_epochs,
        trial_epochs_per_hour=trial_epochs / wall * 3600,
        images_per_s=trial_epochs * (spec["train_images"] // spec["batch_size"] * spec["batch_size"]) / wall,
        epoch_s_per_trial=sum(epoch_seconds) / len(epoch_seconds),
        statuses=[s for r in reports for s in r["statuses"]],
        max_memory_allocated_mib_per_process=max(memory) if memory else None,
        max_memory_allocated_mib_total=sum(memory) if memory else None,
        max_memory_reserved_mib_total=sum(r["max_memory_reserved_mib"] for r in reports if memory) if memory else None,
    )
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's trial-epochs per hour over one-at-a-time's (separate, K = 1, same architecture and MPS off)."""
    for row in rows:
        base = next((r for r in rows if r["mode"] == "separate" and r["k"] == 1 and "error" not in r
                     and r["widths"] == row["widths"] and r["blocks"] == row["blocks"] and not r.get("mps")
                     and not r.get("cudnn_benchmark")), None)
        if base is not None and "error" not in row:
            row["x_one_at_a_time"] = row["trial_epochs_per_hour"] / base["trial_epochs_per_hour"]


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'mode':9s} {'K':>2s} {'MPS':>3s} {'cuDNN':>5s} {'widths':>12s} {'blocks':>6s} {'wall s':>7s} "
             f"{'trial-ep/h':>10s} {'images/s':>9s} {'x one':>6s} {'epoch s':>8s} {'MiB/proc':>8s} {'MiB all':>8s}"]
    for r in rows:
        head = (f"{r['mode']:9s} {r['k']:2d} {'on' if r.get('mps') else 'off':>3s} "
                f"{'bench' if r.get('cudnn_benchmark') else '-':>5s} "
                f"{','.join(map(str, r['widths'])):>12s} {','.join(map(str, r['blocks'])):>6s}")
        if "error" in r:
            lines.append(f"{head} error: {r['error']}")
            continue
        memory = r["max_memory_allocated_mib_per_process"]
        lines.append(f"{head} {r['wall_s']:7.2f} {r['trial_epochs_per_hour']:10.0f} {r['images_per_s']:9.0f} "
                     f"{r.get('x_one_at_a_time', float('nan')):5.2f}x {r['epoch_s_per_trial']:8.2f} "
                     + (f"{memory:8.0f} {r['max_memory_allocated_mib_total']:8.0f}" if memory is not None else
                        f"{'-':>8s} {'-':>8s}"))
    return "\n".join(lines)


def gate(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best fused over best separate (K > 1 or one at a time) per architecture: the issue's >= 2x gate."""
    verdicts = {}
    for arch in {(tuple(r["widths"]), tuple(r["blocks"])) for r in rows}:
        mine = [r for r in rows if (tuple(r["widths"]), tuple(r["blocks"])) == arch and "error" not in r]
        fused = max((r for r in mine if r["mode"] == "fused"), key=lambda r: r["trial_epochs_per_hour"], default=None)
        separate = max((r for r in mine if r["mode"] == "separate"), key=lambda r: r["trial_epochs_per_hour"],
                       default=None)
        if fused and separate:
            verdicts[f"{','.join(map(str, arch[0]))} / {','.join(map(str, arch[1]))}"] = {
                "best_fused_k": fused["k"], "best_separate_k": separate["k"], "best_separate_mps": separate["mps"],
                "fused_over_best_separate": fused["trial_epochs_per_hour"] / separate["trial_epochs_per_hour"],
                "fused_over_one_at_a_time": fused.get("x_one_at_a_time"),
            }
    return verdicts or None


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform()}
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    info["cpu"] = cpu
    info["avx512_bf16"] = "avx512_bf16" in _read("/proc/cpuinfo")
    if device.startswith("cuda"):
        info["gpu"] = gpu_description()
    return info


def gpu_description() -> str | None:
    """The GPU's name, memory and driver from nvidia-smi: the parent process never opens a CUDA context."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_mode",
                               "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def make_data(root: Path, train_images: int, val_images: int) -> Path:
    """Generated CIFAR-10 look-alikes: throughput does not depend on the pixels."""
    write_synthetic_cifar10(root, n_train=train_images + val_images, seed=0)
    return root


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _Parser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--widths", default="64,128,256", help="stage widths (default: full width 64,128,256)")
    parser.add_argument("--blocks", help="blocks per stage (default: 2 per stage)")
    parser.add_argument("--k", default="1,2,4,8", help="trials per device, comma-separated (default 1,2,4,8)")
    parser.add_argument("--modes", default="separate,fused", help="separate, fused or both (default both)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per trial (default 3)")
    parser.add_argument("--train-images", type=int, default=10000, help="training images per epoch (default 10000)")
    parser.add_argument("--val-images", type=int, default=1000, help="validation images per epoch (default 1000)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--channels-last", default="true", choices=("true", "false"))
    parser.add_argument("--ema-epochs", type=float, default=0.5, help="weight average (recipe.yaml: 0.5; 0 off)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (slow first epoch)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms first")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: CPUs / processes)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one measurement may take (default 300)")
    parser.add_argument("--data-dir", help="a cifar-10-batches-py parent to read instead of generated images")
    parser.add_argument("--out", help="write the rows and the machine as JSON here")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke: widths 8,16, blocks 1,1, batch 32, K 1,2, 512+128 images, 1 epoch")
    args = parser.parse_args(argv)
    if args.tiny:
        args.device, args.widths, args.blocks, args.k = args.device or "cpu", "8,16", "1,1", "1,2"
        args.batch_size, args.epochs, args.train_images, args.val_images = 32, 1, 512, 128
    try:
        args.widths = parse_stages(args.widths)
        args.blocks = parse_stages(args.blocks) if args.blocks else (2,) * len(args.widths)
        args.k = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError:
        raise UserError("--widths, --blocks and --k take whole numbers, comma-separated, e.g. --k 1,2,4,8") from None
    args.modes = [m for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        raise UserError(f"--modes {','.join(args.modes)}: choose from {', '.join(MODES)}")
    if not args.k or min(args.k) < 1:
        raise UserError("--k needs positive trial counts, e.g. --k 1,2,4,8")
    for name in ("batch_size", "epochs", "train_images", "val_images", "timeout"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be positive")
    if args.train_images < args.batch_size:
        raise UserError(f"--train-images {args.train_images} is less than one batch of {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} must be at least 1")
    TrainConfig(widths=args.widths, blocks=args.blocks, batch_size=args.batch_size, epochs=args.epochs,
                precision=args.precision).validate("flags")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device here; use --device cpu (or --tiny)")
    return args


def spec_for(args: argparse.Namespace, data_dir: Path, mode: str, k: int, mps: bool = False) -> dict[str, Any]:
    processes = k if mode == "separate" else 1
    threads = args.threads or max(1, (os.cpu_count() or 1) // processes)
    return {"mode": mode, "k": k, "widths": list(args.widths), "blocks": list(args.blocks),
            "batch_size": args.batch_size, "epochs": args.epochs, "train_images": args.train_images,
            "val_images": args.val_images, "precision": args.precision, "channels_last": args.channels_last == "true",
            "ema_epochs": args.ema_epochs, "compile": args.compile, "cudnn_benchmark": args.cudnn_benchmark,
            "threads": threads, "device": args.device, "data_dir": str(data_dir), "timeout_s": args.timeout,
            "mps": mps}


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """One at a time first (the baseline), then each mode at each K."""
    runs = [("separate", 1)]
    for mode in args.modes:
        runs += [(mode, k) for k in args.k if (mode, k) != ("separate", 1)]
    return runs


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(args.data_dir) if args.data_dir else make_data(Path(scratch), args.train_images,
                                                                        args.val_images)
        info = machine(args.device)
        print(f"{args.device} ({info.get('gpu', info['cpu'])}), torch {info['torch']}, {info['cpus']} CPUs; widths "
              f"{','.join(map(str, args.widths))} blocks {','.join(map(str, args.blocks))}, batch {args.batch_size}, "
              f"{args.epochs} timed epochs of {args.train_images} + {args.val_images} images", flush=True)
        rows = []
        for mode, k in plan(args):
            row = measure(spec_for(args, data_dir, mode, k))
            rows.append(row)
            print(f"  {mode} K={k}: " + (row["error"] if "error" in row else
                                         f"{row['trial_epochs_per_hour']:.0f} trial-epochs/h, "
                                         f"{row['images_per_s']:.0f} images/s"), flush=True)
    add_ratios(rows)
    print()
    print(format_table(rows))
    verdict = gate(rows)
    for arch, v in (verdict or {}).items():
        print(f"{arch}: best fused (K={v['best_fused_k']}) / best separate (K={v['best_separate_k']}) = "
              f"{v['fused_over_best_separate']:.2f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"machine": info, "argv": sys.argv[1:], "rows": rows, "gate": verdict},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
