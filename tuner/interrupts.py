"""Stop signals in the driver (Ctrl-C, SIGTERM, Tune's SIGUSR1), while Ray Tune runs a sweep and after it; and
a quiet exit for Ray's workers (`quiet_exit_in_finalizers`).

Tune catches SIGINT itself, stops the trials, saves its state and returns from `fit()` as if the sweep
were done. The driver must know, so that it does not register a best model and call the sweep finished.
Its own module: Tune pickles the sweep's callbacks, and an Event (a lock) must not be pickled with them.

Tune's handlers stay installed after `fit()` returns: a Ctrl-C in the final fit or the registration would
reach one that stops a run already over, and then hands the next Ctrl-C to Python's default (a
KeyboardInterrupt wherever the driver is); the first is only noted here, and lost if the driver does not look
again. `defer_interrupts` replaces them for that phase, and the driver looks at each of its safe points.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any

_INTERRUPTED = threading.Event()
# Tune stops a run on SIGUSR1 as on SIGINT (schedulers such as Slurm send it before a job's time is up)
STOP_SIGNALS = (signal.SIGINT,) + ((signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ())


def watch_stop_signals() -> None:
    """Put a handler in front of the current handler of each stop signal (Tune's, once Tune has set up
    callbacks), so that the driver knows the sweep was stopped, not finished."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for number in STOP_SIGNALS:
        previous = signal.getsignal(number)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            _INTERRUPTED.set()
            if callable(previous):
                previous(signum, frame)

        signal.signal(number, handler)


def sigterm_as_sigint() -> None:
    """SIGTERM (systemd, Kubernetes, `timeout`) ends the sweep as Ctrl-C does: Tune stops the trials and
    saves its state, and the driver says how to resume. Ray's own driver handler exits at once instead, in
    the middle of whatever it was writing. Set after ray.init, which installs Ray's."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, handler)


def defer_interrupts() -> None:
    """After Tune's `fit()`: a stop signal is recorded, and the driver stops at its next safe point (a stored
    final fit, a recorded registration: tuner/run.py `stop_if_interrupted`), so that what it was writing is
    whole and a --resume takes it over. A second one before then raises KeyboardInterrupt at once, as a
    second Ctrl-C skips Tune's last save; the driver ends the same way, and what it leaves is what a killed
    driver leaves, which --resume handles."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        if _INTERRUPTED.is_set():
            raise KeyboardInterrupt
        _INTERRUPTED.set()

    for number in STOP_SIGNALS:
        signal.signal(number, handler)


def interrupted() -> bool:
    return _INTERRUPTED.is_set()


def quiet_exit_in_finalizers() -> None:
    """Ray worker setup hook (tuner.run hands it to ray.init): no traceback for an exit request that a
    finalizer swallowed. A worker Ray ends (the actor of a trial ASHA stopped, once Tune has no trial for it)
    disconnects from its raylet, which sends it SIGTERM at once; Ray's handler raises SystemExit wherever the
    exiting worker is, often inside a weakref callback of its teardown, where Python can only print it
    ("Exception ignored in: <function WeakSet...>", SystemExit: 1) to the worker's stderr, which Ray shows on
    the driver's console. The worker exits anyway (the raylet follows with SIGKILL); any other exception a
    finalizer raises is still printed."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, SystemExit):
            return
        previous(unraisable)

    sys.unraisablehook = hook
