#!/usr/bin/env bash
# Issue #19's one device call (packing density with and without MPS, and the fused-array gate): runs
# bench/gpu_packing.py with the repository importable, on whichever Python has torch (the checkout's
# .venv here, the system's on the device machine). Results go under $OUT. See bench/gpu_packing.py.
#
#   bash bench/gpu_packing.sh               # on the GPU machine, at most ~8 minutes
#   bash bench/gpu_packing.sh --cpu-smoke   # here, to prove the script runs (a couple of minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import torch, numpy' >/dev/null 2>&1; then
        PY=$candidate
        break
    fi
done
if [ -z "${PY:-}" ]; then
    echo "error: no Python with torch and numpy found (tried \$PYTHON, .venv/bin/python, python3, python)" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_packing.py "$@"
