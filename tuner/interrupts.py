"""Notice Ctrl-C while Ray Tune runs a sweep.

Tune catches SIGINT itself, stops the trials, saves its state and returns from `fit()` as if the sweep
were done. The driver must know, so that it does not register a best model and call the sweep finished.
Its own module: Tune pickles the sweep's callbacks, and an Event (a lock) must not be pickled with them.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

_INTERRUPTED = threading.Event()


def watch_sigint() -> None:
    """Put a handler in front of the current SIGINT handler (Tune's, once Tune has set up callbacks)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        _INTERRUPTED.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGINT, handler)


def sigterm_as_sigint() -> None:
    """SIGTERM (systemd, Kubernetes, `timeout`) ends the sweep as Ctrl-C does: Tune stops the trials and
    saves its state, and the driver says how to resume. Ray's own driver handler exits at once instead, in
    the middle of whatever it was writing. Set after ray.init, which installs Ray's."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, handler)


def interrupted() -> bool:
    return _INTERRUPTED.is_set()
