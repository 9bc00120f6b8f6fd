"""How well a trial's rank after k epochs predicts its rank at the end: the basis for ASHA's grace period.

Reads the random-search sweeps (no early stopping: every trial ran every epoch) that
bench/search_efficiency.py left in OUT/runs, and prints, for each epoch k, the Spearman rank correlation
between the trials' validation accuracy at epoch k and their best validation accuracy, plus how often the
eventual best trial of a sweep ranks in the top third at epoch k (the share ASHA keeps at reduction 3).
Results: docs/benchmarks.md#weight-average-at-the-rungs.

    python bench/rung_correlation.py runs/bench/search
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from tuner.errors import UserError, exit_on_user_error


def random_sweeps(out: Path) -> dict[str, pd.DataFrame]:
    """Per sweep: one row per trial, one column per epoch (validation accuracy)."""
    sweeps = {}
    for sweep_dir in sorted((out / "runs").glob("random-*")):
        trials = {}
        for result_file in sweep_dir.glob("*/result.json"):
            rows = [json.loads(line) for line in result_file.read_text().splitlines()]
            trials[result_file.parent.name] = {r["epoch"]: r["val_acc"] for r in rows if "val_acc" in r}
        frame = pd.DataFrame.from_dict(trials, orient="index").sort_index(axis=1)
        sweeps[sweep_dir.name] = frame.dropna()  # trials that ran every epoch
    return sweeps


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out folder of bench/search_efficiency.py")
    args = parser.parse_args()
    sweeps = random_sweeps(args.out)
    if not sweeps:
        raise UserError(f"no random-search sweeps under {args.out / 'runs'}; run bench/search_efficiency.py")
    frames = list(sweeps.values())
    epochs = frames[0].columns[:-1]
    final = pd.concat([f.max(axis=1) for f in frames])
    print(f"{len(final)} random-search trials in {len(frames)} sweeps, {frames[0].columns[-1]} epochs each")
    print("epoch  rank correlation with the final  eventual best in the top third")
    for k in epochs:
        at_k = pd.concat([f[k] for f in frames])
        rho = at_k.corr(final, method="spearman")
        kept = sum(f[k].rank(ascending=False)[f.max(axis=1).idxmax()] <= len(f) / 3 for f in frames)
        print(f"{k:>5}  {rho:>31.2f}  {kept:>3} of {len(frames)}")


if __name__ == "__main__":
    main()
