#!/usr/bin/env bash
# Issue #19's one device call (packing density with and without MPS, and the fused-array gate): runs
# bench/gpu_packing.py with the repository importable, on whichever Python has torch (the checkout's
# .venv here, the system's on the device machine). Results go under $OUT. See bench/gpu_packing.py.
#
#   bash bench/gpu_packing.sh               # on the GPU machine, at most ~8 minutes
#   bash bench/gpu_packing.sh --cpu-smoke   # here, to prove the script runs (a couple of minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/find_python.sh
find_python torch numpy || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_packing.py "$@"
