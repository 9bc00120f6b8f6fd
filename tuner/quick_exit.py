"""Run a command's `main` and leave the process without the interpreter's last cyclic garbage collection.

A process that imported torch, Ray and MLflow spends seconds of its exit collecting objects that die with
it anyway (measured in docs/notes/benchmark-journal.md). Freezing the heap skips that collection only: atexit
handlers (Ray's shutdown, MLflow's flush) still run and module teardown still releases objects by reference
count. For the `__main__` blocks of the CLIs; tests call `main` directly and never freeze their heap.
"""
from __future__ import annotations

import gc
from collections.abc import Callable


def run_then_exit_quickly(main: Callable[[], object]) -> None:
    """Call main(); however it ends (return, sys.exit, an exception), freeze the heap on the way out."""
    try:
        main()
    finally:
        gc.freeze()
