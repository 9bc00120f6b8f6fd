"""Multi-node sweep: how well a sweep keeps a Ray cluster's trial slots busy.

Runs `python -m tuner.run --address ADDRESS ...` against a running cluster, then reads what Ray wrote
for every trial (`<storage>/<name>/*/result.json`) and prints:

- trials, and the nodes they ran on (the `node_id` each epoch reports);
- slots: how many trials the cluster can run at once with the space's `resources` (per alive node
  floor(CPU / cpus) and, for gpus > 0, floor(GPU / gpus); summed), capped by `search.max_concurrent`;
- span: first trial start to last trial result (the `reported_at` each epoch sends), and the wall time
  of the whole driver command (imports, data load, registration included);
- busy: the sum over every trial of its time between reports (`time_this_iter_s`; the first report
  includes the trial's set-up: data from the object store, model, tracking run);
- slot utilisation = busy / (slots x span). What is missing to 1.0 is worker start-up, scheduling
  gaps and the tail where fewer trials are left than slots.

Two local nodes on one machine (what tests/test_cluster.py does, with token auth as `ray start` wants):

    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
    ray start --head --port 6380 --num-cpus 1 --node-ip-address 127.0.0.1 --include-dashboard false
    ray start --address 127.0.0.1:6380 --num-cpus 1 --node-ip-address 127.0.0.1
    python bench/multinode_sweep.py --address 127.0.0.1:6380 --space smoke.yaml --min-nodes 2 \\
        --trials 12 --json runs/bench/multinode.json

The figures measured that way are in docs/benchmarks.md#multi-node-sweep.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tuner.errors import UserError, exit_on_user_error
from tuner.space import SearchSpace, load_space

NODE_WAIT_S = 60.0


def trial_results(experiment_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trial's results in the order Ray recorded them, by trial id (restored trials included)."""
    trials: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(experiment_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            trials[rows[0]["trial_id"]] = rows
    return trials


def cluster_slots(address: str, space: SearchSpace, min_nodes: int) -> tuple[int, int]:
    """(trial slots the alive nodes offer for the space's resources, alive nodes)."""
    import ray

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        deadline = time.monotonic() + NODE_WAIT_S
        while True:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            if len(nodes) >= min_nodes or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        ray.shutdown()
    if len(nodes) < min_nodes:
        raise UserError(f"--min-nodes {min_nodes}: only {len(nodes)} alive node(s) at {address} after "
                        f"{NODE_WAIT_S:.0f} s; start the workers (`ray start --address {address}`) or lower it")
    want = space.resources
    slots = 0
    for node in nodes:
        have = node.get("Resources", {})
        fits = math.floor(have.get("CPU", 0) / want.cpus + 1e-9) if want.cpus > 0 else math.inf
        if want.gpus > 0:
            fits = min(fits, math.floor(have.get("GPU", 0) / want.gpus + 1e-9))
        slots += 0 if fits is math.inf else fits
    return slots, len(nodes)


def figures(trials: dict[str, list[dict[str, Any]]], slots: int) -> dict[str, Any]:
    """Trials, nodes, span, busy time and slot utilisation from the trials' results."""
    rows = [r for results in trials.values() for r in results]
    if not rows:
        raise UserError("no trial reported a result: nothing to measure")
    # reported_at (sub-second) where the trainable sent it; Ray's whole-second timestamp for older results
    ends = [r.get("reported_at", r["timestamp"]) for r in rows]
    span = max(ends) - min(end - r["time_this_iter_s"] for end, r in zip(ends, rows))
    busy = sum(r["time_this_iter_s"] for r in rows)
    per_node = Counter(r["node_id"] for r in rows)  # epochs per node
    return {
        "trials": len(trials),
        "epochs": len(rows),
        "nodes": len(per_node),
        "epochs_per_node": {node[:12]: n for node, n in sorted(per_node.items())},
        "slots": slots,
        "span_s": round(span, 1),
        "busy_s": round(busy, 1),
        "slot_utilisation": round(busy / (slots * span), 3) if slots and span > 0 else None,
        # a trial restored from its checkpoint (worker or node lost) starts counting iterations again
        "restored_trials": sum(1 for results in trials.values()
                               if any(r.get("iterations_since_restore") == 1 for r in results[1:])),
    }


def machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()}: {os.cpu_count()} CPU cores{f' ({model})' if model else ''}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, help="Ray cluster address (head:port, or auto)")
    parser.add_argument("--space", required=True, help="space file (a bare name is looked up in search_spaces/)")
    parser.add_argument("--name", help="sweep name (default: multinode-<date>-<time>)")
    parser.add_argument("--storage", default="runs", help="results location shared by all nodes (default: runs)")
    parser.add_argument("--mlflow-uri", help="tracking server (default as tuner.run)")
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py (default: data)")
    parser.add_argument("--trials", type=int, help="override budget.trials")
    parser.add_argument("--min-nodes", type=int, default=1, help="wait up to a minute for this many alive nodes")
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    space = load_space(args.space)
    name = args.name or f"multinode-{time.strftime('%Y%m%d-%H%M%S')}"
    slots, nodes = cluster_slots(args.address, space, args.min_nodes)
    concurrent = min(slots, space.search.max_concurrent)
    command = [sys.executable, "-m", "tuner.run", "--address", args.address, "--space", args.space, "--name", name,
               "--storage", args.storage, "--data-dir", args.data_dir]
    command += ["--mlflow-uri", args.mlflow_uri] if args.mlflow_uri else []
    command += ["--trials", str(args.trials)] if args.trials else []
    started = time.monotonic()
    driver = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - started
    progress = re.compile(r"(\[\d+/\d+\] trial |sweep |best trial )")
    print("\n".join(line for line in driver.stdout.splitlines() if progress.match(line)))
    if driver.returncode != 0:
        print(driver.stdout[-4000:], file=sys.stderr)
        sys.exit(driver.returncode)
    values = figures(trial_results(Path(args.storage).resolve() / name), concurrent)
    values.update({"sweep": name, "alive_nodes": nodes, "cluster_slots": slots,
                   "max_concurrent": space.search.max_concurrent, "driver_wall_s": round(wall, 1),
                   "resources": {"cpus": space.resources.cpus, "gpus": space.resources.gpus},
                   "machine": machine()})
    print(f"multi-node sweep {name} on {values['machine']}\n"
          f"  {values['trials']} trials ({values['epochs']} epochs) on {values['nodes']} of {nodes} nodes, "
          f"epochs per node {values['epochs_per_node']}\n"
          f"  slots {concurrent} (cluster {slots} for cpus {space.resources.cpus:g} / gpus {space.resources.gpus:g}"
          f" per trial, max_concurrent {space.search.max_concurrent})\n"
          f"  trial span {values['span_s']} s (driver command {values['driver_wall_s']} s), trial busy "
          f"{values['busy_s']} s, slot utilisation {values['slot_utilisation']} = busy / (slots x span)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(values, indent=2) + "\n")


if __name__ == "__main__":
    main()
