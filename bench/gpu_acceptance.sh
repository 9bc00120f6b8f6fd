#!/usr/bin/env bash
# Issue #18's one device call, at most 8 minutes on one H200. Three processes share the GPU:
#   A  the report's recipe (Adam 1e-3, plateau on the val loss, batch 128, crop/flip/jitter/rotation) at full
#      width on all 45,000 training images for 50 epochs: the anchor (bench/proxy_accuracy.py --recipe report)
#   B  the default recipe at full width for 15 epochs, then half of the one-change candidates
#   C  the full CPU proxy's non-losers together (`proposed-b`), then the other half (bench/recipe_candidates.py;
#      the table is docs/benchmarks.md#recipe-candidates)
# Each writes its figures to JSON under $OUT after every epoch (A) or candidate (B, C), so a hard timeout
# keeps what was measured; B and C start no candidate after CANDIDATE_MINUTES. summary.txt holds one table.
#
# Stage the data once, here (the device machine gets the repository and the paths named in `carry`;
# ../shared does not travel, see /work/.library/device/README.md):
#   echo /.gpu_data/ >> .git/info/exclude
#   mkdir -p .gpu_data && cp ../shared/data/cifar10/cifar10-train-jpeg.npz ../shared/data/cifar10/make_batches.py .gpu_data/
# The pack is 51 MB; the tree that travels (tracked + untracked-not-ignored files + carried paths) must stay
# under 64 MiB: check with `git ls-files -co --exclude-standard | xargs du -cb | tail -1` (+ 51 MB).
#
# Prove it here first: the same steps with tiny settings (widths 8,16,32, 300 images, 1 epoch, CPU):
#   bash bench/gpu_acceptance.sh --cpu-smoke                 # a few minutes on 2 loaded cores
# Then one device call (the `run` tool), nothing else in it:
#   command: bash bench/gpu_acceptance.sh      carry: [".gpu_data"]      timeout_s: 560
# and give the machine back unless rerunning at once. The files come back from $OUT (at most 8):
# report.json, candidates-a.json, candidates-b.json, summary.txt, and one log per process.
#
# Options: --cpu-smoke; --data-dir DIR (default data; built from .gpu_data/ when absent); --out DIR
# (default $OUT, else runs/gpu_acceptance); --val-size N (default 5000); --with-sweep (off: see step 4;
# SWEEP_TRIALS=N sets its trials: default 8, 2 with --cpu-smoke).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0 WITH_SWEEP=0 DATA_DIR=data VAL_SIZE=5000 OUT_DIR=${OUT:-runs/gpu_acceptance}
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) SMOKE=1 ;;
        --with-sweep) WITH_SWEEP=1 ;;
        --data-dir) DATA_DIR=$2; shift ;;
        --out) OUT_DIR=$2; shift ;;
        --val-size) VAL_SIZE=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "error: unknown option $1 (see bash bench/gpu_acceptance.sh --help)" >&2; exit 2 ;;
    esac
    shift
done

source bench/find_python.sh
find_python torch numpy PIL || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu WIDTHS=8,16,32 SUBSET=300 REPORT_EPOCHS=1 EPOCHS=1 CANDIDATE_MINUTES=30 LIMIT_S=1200
else
    # 420 s of training leaves the data build and start-up inside 8 minutes
    DEVICE=cuda WIDTHS=64,128,256 SUBSET=all REPORT_EPOCHS=50 EPOCHS=15 CANDIDATE_MINUTES=4.5 LIMIT_S=420
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "error: no CUDA device (use --cpu-smoke here)")'
fi
# B and C split the candidates of bench/recipe_candidates.py; evaluation-only ones go with the default,
# which B trains first (they are scored on its weights).
# Most telling first, since the last ones may not start: C opens with the CPU screen's winners together.
HALF_B=default,tta-translate-1,dirac-init,alternate-flip,zero-init-residual
HALF_C=proposed-b,final-plain-1,no-bn-bias-decay,smoothing-0.2,batch-512-lr-x2,proposed,ema-1

# 1. The data: the training batches from the carried JPEG pack (the test batch stays sealed).
if [ ! -d "$DATA_DIR/cifar-10-batches-py" ]; then
    if [ ! -f .gpu_data/make_batches.py ] || [ ! -f .gpu_data/cifar10-train-jpeg.npz ]; then
        echo "error: no $DATA_DIR/cifar-10-batches-py and no .gpu_data/ pack to build it from; stage it as the" \
             "header of bench/gpu_acceptance.sh says" >&2
        exit 2
    fi
    "$PY" .gpu_data/make_batches.py "$DATA_DIR"
fi
mkdir -p "$OUT_DIR"
echo "gpu_acceptance: device $DEVICE, widths $WIDTHS, subset $SUBSET, epochs $REPORT_EPOCHS/$EPOCHS, out $OUT_DIR"

# 2. A, B and C side by side on the one GPU (packing several runs raises the GPU's total throughput:
#    docs/benchmarks.md#gpu-h200).
common=(--data-dir "$DATA_DIR" --device "$DEVICE" --widths "$WIDTHS" --subset "$SUBSET" --val-size "$VAL_SIZE")
timeout "$LIMIT_S" "$PY" bench/proxy_accuracy.py "${common[@]}" --recipe report --epochs "$REPORT_EPOCHS" \
    --json "$OUT_DIR/report.json" >"$OUT_DIR/report.log" 2>&1 &
report=$!
timeout "$LIMIT_S" "$PY" bench/recipe_candidates.py "${common[@]}" --epochs "$EPOCHS" --only "$HALF_B" \
    --minutes "$CANDIDATE_MINUTES" --json "$OUT_DIR/candidates-a.json" >"$OUT_DIR/candidates-a.log" 2>&1 &
half_b=$!
timeout "$LIMIT_S" "$PY" bench/recipe_candidates.py "${common[@]}" --epochs "$EPOCHS" --only "$HALF_C" \
    --minutes "$CANDIDATE_MINUTES" --json "$OUT_DIR/candidates-b.json" >"$OUT_DIR/candidates-b.log" 2>&1 &
half_c=$!
status=0
for pid in $report $half_b $half_c; do
    wait "$pid" || { code=$?; echo "process $pid ended with status $code (124: stopped at ${LIMIT_S}s)"; status=1; }
done

# 3. One summary: the anchor's final and best epoch, then the candidate table (delta against the default).
{
    "$PY" - "$OUT_DIR/report.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))["results"]["report"]
    print(f"report recipe, {r['epochs_run']} epochs: final val acc {r['final_val_acc']:.4f}, "
          f"best {r['best_val_acc']:.4f}, {r['minutes']:.1f} min")
except (OSError, ValueError, KeyError) as err:
    print(f"report recipe: no figures ({type(err).__name__}: {err})")
EOF
    tables=()
    for f in "$OUT_DIR/candidates-a.json" "$OUT_DIR/candidates-b.json"; do
        if [ -f "$f" ]; then tables+=("$f"); fi
    done
    if [ ${#tables[@]} -gt 0 ]; then "$PY" bench/recipe_candidates.py --table "${tables[@]}"; fi
} 2>&1 | tee "$OUT_DIR/summary.txt" || status=1

# 4. With --with-sweep: a short recipe.yaml sweep whose champion gets its final fit, from the space's own
#    `final:` section (retrained on all 50,000 training images, then registered); the sweep's log, with the
#    final fit's lines, is sweep.log in $OUT and its summary joins summary.txt. Needs Ray, Optuna and MLflow,
#    which the device image lacks; their pack (bench/device_pack.sh, 29 MB) does not fit beside the 51 MB data
#    pack in the 64 MiB a call carries, and the time above is spent, so this step is off unless asked for,
#    and then needs a call of its own on the warm machine (data/ stays there): carry [".gpu_py"], command
#    `source bench/device_env.sh && bash bench/gpu_acceptance.sh --with-sweep`. --cpu-smoke runs recipe.yaml shrunk to the smoke's size (its
#    widths and subset, 1 epoch, a 1-epoch final fit, 2 trials on 1 CPU each), final: section and all.
if [ "$WITH_SWEEP" = 1 ]; then
    if ! "$PY" -c 'import ray, optuna, mlflow' 2>/dev/null; then
        echo "error: --with-sweep needs Ray, Optuna and MLflow in $PY (on the device: bash bench/device_pack.sh here, carry .gpu_py, source bench/device_env.sh first)" >&2
        exit 2
    fi
    # the sweep's state stays outside $OUT (at most 8 files come back); its log is the figure
    SWEEP_DIR=$(mktemp -d) SPACE=recipe.yaml
    if [ "$SMOKE" = 1 ]; then
        SWEEP_TRIALS=${SWEEP_TRIALS:-2} SPACE=$SWEEP_DIR/recipe-smoke.yaml
        "$PY" - "$SPACE" "$WIDTHS" "$SUBSET" "$VAL_SIZE" <<'EOF'
import sys

import yaml

from tuner.space import SPACES_DIR

out, widths, subset, val_size = sys.argv[1:]
space = yaml.safe_load((SPACES_DIR / "recipe.yaml").read_text())
if "final" not in space:
    sys.exit("error: search_spaces/recipe.yaml has no final: section; this step checks its final fit")
space["fixed"]["widths"] = [int(w) for w in widths.split(",")]
space["scheduler"].update(max_epochs=1, grace_period=1)
space["final"]["epochs"] = 1
space["search"].update(max_concurrent=2)
space["resources"] = {"cpus": 1, "gpus": 0}
space["data"] = {"val_size": int(val_size), "subset": int(subset)}
with open(out, "w") as f:
    yaml.safe_dump(space, f, sort_keys=False)
EOF
    fi
    SWEEP_TRIALS=${SWEEP_TRIALS:-8}
    "$PY" -m tuner.run --space "$SPACE" --trials "$SWEEP_TRIALS" --data-dir "$DATA_DIR" --name acceptance \
        --storage "$SWEEP_DIR" --mlflow-uri "sqlite:///$SWEEP_DIR/mlflow.db" 2>&1 | tee "$OUT_DIR/sweep.log" \
        || { echo "the sweep ended with an error (see sweep.log)"; status=1; }
    grep -E '^(best trial|final fit of|  final fit:|  registered as)' "$OUT_DIR/sweep.log" >>"$OUT_DIR/summary.txt" \
        || { echo "the sweep registered no final fit (see sweep.log)"; status=1; }
fi
exit $status
