"""Issue #19's one device call: packing density (item 1) and the fused-array gate (item 3) on one GPU.

Item 1: 1, 2, 4 and 8 trials per GPU as separate processes (`gpus: 1 / 0.5 / 0.25 / 0.125`), without and
with CUDA MPS, at full width (64,128,256 / 2,2,2) and at the smallest network of search_spaces/widths.yaml:
aggregate training images/s, trial-epochs per GPU-hour, per-trial epoch time, peak GPU memory per process
(torch.cuda.max_memory_allocated). Item 3's gate: fused arrays (tuner.fused.fit_array) of K = 1, 2, 4, 8
at both widths, against the best packing; the gate is >= 2x its trial-epochs per GPU-hour.

Every figure is a bench/fused_throughput.py measurement (spawned processes, a barrier, timed epochs of
generated images: accuracy is not measured here). Needs torch and numpy only (no Ray, Optuna, MLflow).
Runs go in the order the gate needs them, each skipped once the time left (--budget-s) cannot hold it;
the MPS daemon is started for the MPS runs and quit after them (also on error or SIGTERM). Written under
$OUT (else --out): gpu_packing.json (every row, rewritten after each run), gpu_packing.txt (table, gate).

    bash bench/gpu_packing.sh                  # on the GPU machine; OUT set by the device tool
    bash bench/gpu_packing.sh --cpu-smoke      # the same steps on CPU with tiny networks, MPS skipped
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fused_throughput as bench  # bench/ is on sys.path: this file runs from it

from tuner.errors import UserError, exit_on_user_error

ROOT = Path(__file__).resolve().parent.parent
FULL = ((64, 128, 256), (2, 2, 2))
DEFAULT_SMALLEST = ((32, 32, 32), (1, 1, 1))
MPS_CONTROL = "nvidia-cuda-mps-control"
# where a driver mounted into a container keeps it when it is not on PATH
DRIVER_BINARIES = (Path("/usr/local/nvidia/bin") / MPS_CONTROL, Path("/usr/bin") / MPS_CONTROL)


def smallest_network(space: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The low end of widths.yaml's `widths` and `blocks` ranges, each stage; read with a regex because the
    device image has no YAML parser. Falls back to the values of the file when this was written."""
    try:
        text = space.read_text()
    except OSError:
        return DEFAULT_SMALLEST
    found = {}
    for name in ("widths", "blocks"):
        match = re.search(rf"^\s*{name}:\s*{{[^}}]*\blow:\s*(\d+)[^}}]*\bper_stage:\s*(\d+)", text, re.MULTILINE)
        if match is None:
            return DEFAULT_SMALLEST
        found[name] = (int(match.group(1)),) * int(match.group(2))
    return found["widths"], found["blocks"]


class Mps:
    """The CUDA MPS control daemon, with its pipe and log folders private to this run."""

    def __init__(self, scratch: Path) -> None:
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(scratch / "mps-pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": str(scratch / "mps-log")}
        self.running = False
        self.note = ""
        self.control = MPS_CONTROL

    def start(self) -> bool:
        found = shutil.which(MPS_CONTROL) or next((str(p) for p in DRIVER_BINARIES if p.exists()), None)
        if found is None:
            self.note = f"{MPS_CONTROL} not found on PATH nor in {', '.join(str(p.parent) for p in DRIVER_BINARIES)}"
            return False
        self.control = found
        for folder in self.env.values():
            Path(folder).mkdir(parents=True, exist_ok=True)
        done = self._control(["-d"])
        if done.returncode != 0:
            self.note = f"{MPS_CONTROL} -d failed ({done.returncode}): {(done.stderr or done.stdout).strip()[:200]}"
            return False
        os.environ.update(self.env)  # the spawned trial processes inherit it and connect to the daemon
        self.running = True
        return True

    def client_works(self) -> bool:
        """One CUDA client through the daemon, in a minute at most: a setup where clients fail or hang (some
        container runtimes) is found here once instead of stalling every MPS run to its timeout."""
        probe = "import torch; torch.zeros(1, device='cuda').add(1).sum().item()"
        try:
            done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                                  env={**os.environ, **self.env})
        except subprocess.TimeoutExpired:
            self.note = "a CUDA client through MPS did not start within 60 s"
            return False
        if done.returncode != 0:
            self.note = f"a CUDA client through MPS failed: {done.stderr.strip().splitlines()[-1:]}"
            return False
        return True

    def servers(self) -> str:
        """MPS servers running: non-empty once a CUDA process has gone through MPS."""
        return self._control([], "get_server_list\n").stdout.strip() if self.running else ""

    def stop(self) -> None:
        if not self.running:
            return
        self._control([], "quit\n")
        for name in self.env:
            os.environ.pop(name, None)
        self.running = False

    def _control(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.control, *args], input=stdin, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **self.env})


def steps(full: tuple[tuple[int, ...], tuple[int, ...]],
          small: tuple[tuple[int, ...], tuple[int, ...]]) -> list[tuple[str, dict[str, Any]]]:
    """(group, run) in the order the gate and item 1 need them, so a short budget cuts the least needed: full
    width one at a time and packed, fused arrays; the smallest network packed; packing under MPS (both widths,
    one daemon); the smallest network fused; cuDNN autotuning for a fused array and one trial; a fused array of
    one (its overhead over fit)."""
    def run(arch: tuple[tuple[int, ...], tuple[int, ...]], mode: str, k: int, **extra: Any) -> dict[str, Any]:
        return {"widths": arch[0], "blocks": arch[1], "mode": mode, "k": k, **extra}

    first = [("plain", run(full, "separate", k)) for k in (1, 2, 4, 8)]
    first += [("plain", run(full, "fused", k)) for k in (8, 4, 2)]
    first += [("plain", run(small, "separate", k)) for k in (1, 2, 4, 8)]
    mps = [("mps", run(arch, "separate", k)) for arch in (full, small) for k in (2, 4, 8)]
    later = [("plain", run(small, "fused", k)) for k in (8, 4, 2)]
    later += [("plain", run(full, "fused", 8, cudnn_benchmark=True)),
              ("plain", run(full, "separate", 1, cudnn_benchmark=True)),
              ("plain", run(full, "fused", 1))]
    return first + mps + later


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench._Parser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for the results (default: $OUT, else runs/bench/gpu_packing)")
    parser.add_argument("--budget-s", type=float, default=450, help="stop starting runs after this (default 450)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per trial (default 3)")
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="CPU, tiny networks, K 1 and 2, a few hundred images: proves the script runs")
    args = parser.parse_args(argv)
    if args.budget_s <= 0 or args.epochs <= 0 or args.train_images <= 0 or args.val_images <= 0:
        raise UserError("--budget-s, --epochs, --train-images and --val-images must be positive")
    return args


def settings(args: argparse.Namespace) -> SimpleNamespace:
    """What fused_throughput.spec_for reads, for this script's runs."""
    if args.cpu_smoke:
        return SimpleNamespace(device="cpu", batch_size=32, epochs=1, train_images=256, val_images=64,
                               precision="auto", channels_last="true", ema_epochs=0.5, compile=False,
                               cudnn_benchmark=False, threads=1, timeout=120)
    return SimpleNamespace(device="cuda", batch_size=256, epochs=args.epochs, train_images=args.train_images,
                           val_images=args.val_images, precision="auto", channels_last="true", ema_epochs=0.5,
                           compile=False, cudnn_benchmark=False, threads=None, timeout=120)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.monotonic()
    out = Path(args.out or os.environ.get("OUT") or ROOT / "runs/bench/gpu_packing")
    out.mkdir(parents=True, exist_ok=True)
    base = settings(args)
    full, small = FULL, smallest_network(ROOT / "search_spaces/widths.yaml")
    plan = steps(full, small)
    if args.cpu_smoke:  # full width is minutes an epoch on a CPU: smaller stand-ins, the same plan up to K = 2
        print(f"(smallest network of widths.yaml: {small}; CPU stand-ins below)")
        full, small = ((16, 32, 64), (1, 1, 1)), ((8, 8, 8), (1, 1, 1))
        plan = [(group, run) for group, run in steps(full, small) if run["k"] <= 2]
    info = bench.machine(base.device)
    report: dict[str, Any] = {"machine": info, "argv": list(sys.argv[1:]), "full": full, "smallest": small,
                              "settings": vars(base), "rows": [], "skipped": [], "mps": {}}
    print(f"{info.get('gpu') or info['cpu']}; torch {info['torch']}; full {full}, smallest {small}; "
          f"{base.epochs} timed epochs of {base.train_images} + {base.val_images} images; budget {args.budget_s:.0f}s",
          flush=True)

    # SIGTERM (the device tool's time limit) unwinds through `finally`, so the MPS daemon is quit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        data = bench.make_data(scratch / "data", base.train_images, base.val_images)
        mps = Mps(scratch)
        seconds: dict[tuple[Any, ...], float] = {}  # process seconds seen per (mode, K, widths): the next estimate
        try:
            for group, run in plan:
                left = args.budget_s - (time.monotonic() - began)
                if group == "mps" and not mps.running and not report["mps"].get("tried"):
                    report["mps"]["tried"] = True
                    report["mps"]["started"] = mps.start()
                    if mps.running and base.device == "cuda" and not mps.client_works():
                        mps.stop()
                    report["mps"]["client_works"] = mps.running
                    report["mps"]["note"] = mps.note
                    print(f"MPS: {'started' if mps.running else 'unavailable: ' + mps.note}", flush=True)
                if group != "mps" and mps.running:
                    report["mps"]["servers_seen"] = mps.servers()
                    mps.stop()
                    print("MPS: quit", flush=True)
                if group == "mps" and not mps.running:
                    report["skipped"].append({**run, "mps": True, "why": "MPS unavailable: " + mps.note})
                    continue
                key = (run["mode"], run["k"], run["widths"])
                needed = 1.5 * seconds.get(key, 25.0)
                if left < needed:
                    why = f"{left:.0f}s left, ~{needed:.0f}s needed"
                    report["skipped"].append({**run, "mps": group == "mps", "why": why})
                    print(f"skip {run}: {left:.0f}s left", flush=True)
                    continue
                options = SimpleNamespace(**{**vars(base), "widths": run["widths"], "blocks": run["blocks"],
                                             "cudnn_benchmark": run.get("cudnn_benchmark", False),
                                             "timeout": min(base.timeout, max(30.0, left - 10))})
                spec = bench.spec_for(options, data, run["mode"], run["k"], mps=group == "mps")
                row = bench.measure(spec)
                seconds[key] = max(seconds.get(key, 0.0), row["process_seconds"])
                report["rows"].append(row)
                if group == "mps" and "error" in row:  # a broken MPS setup would stall every MPS run: stop here
                    mps.note = f"an MPS run failed: {row['error']}"
                    report["mps"]["note"] = mps.note
                    mps.stop()
                print(f"  {'MPS ' if spec['mps'] else ''}{run['mode']} K={run['k']} {run['widths']}"
                      f"{' cudnn.benchmark' if spec['cudnn_benchmark'] else ''}: "
                      + (row["error"] if "error" in row else f"{row['images_per_s']:.0f} images/s, "
                         f"{row['trial_epochs_per_hour']:.0f} trial-epochs/h, {row['process_seconds']:.0f}s"),
                      flush=True)
                write(out, report)
        finally:
            if mps.running:
                report["mps"]["servers_seen"] = mps.servers()
                mps.stop()
                print("MPS: quit", flush=True)
            report["seconds"] = time.monotonic() - began
            write(out, report)
    print()
    print((out / "gpu_packing.txt").read_text())


def write(out: Path, report: dict[str, Any]) -> None:
    """The JSON and the text table as they stand: a run cut short still leaves every finished row."""
    rows = report["rows"]
    bench.add_ratios(rows)
    report["gate"] = bench.gate([r for r in rows if not r.get("cudnn_benchmark")])  # fit's default settings
    report["gate_with_cudnn_benchmark"] = bench.gate(rows)  # the best of either setting on each side
    (out / "gpu_packing.json").write_text(json.dumps(report, indent=2, default=list) + "\n")
    lines = [bench.format_table(rows), ""]
    gates = [("gate", report["gate"]), ("gate, cudnn.benchmark rows too", report["gate_with_cudnn_benchmark"])]
    for label, verdicts in gates:
        for arch, verdict in (verdicts or {}).items():
            lines.append(f"{label} {arch}: best fused K={verdict['best_fused_k']} over best packing "
                         f"K={verdict['best_separate_k']}{' (MPS)' if verdict['best_separate_mps'] else ''}: "
                         f"{verdict['fused_over_best_separate']:.2f}x (needs >= 2x); over one at a time: "
                         f"{verdict['fused_over_one_at_a_time'] or float('nan'):.2f}x")
    lines += [f"skipped: {s}" for s in report["skipped"]]
    lines.append(f"MPS: {report['mps']}")
    (out / "gpu_packing.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
