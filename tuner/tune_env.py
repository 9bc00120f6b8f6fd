"""The TUNE_* environment variables Ray Tune parses as numbers, checked before a sweep starts.

Tune reads them deep inside `Tuner.fit` (or in a trial's worker) and a value it cannot parse ends the launch
with a ValueError traceback; Ray's own RAY_* variables fall back to their defaults with a warning instead. The
names and parsers are those of Ray 2.60 (`ray.tune.constants.TUNE_ENV_VARS` lists the names; the string-valued
ones, such as TUNE_RESULT_DIR, need no check)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from tuner.errors import UserError, excerpt

WHOLE = "a whole number"
NUMBER = "a number"
# name -> (what Tune parses it as, whether "auto" is also accepted)
NUMERIC_TUNE_VARIABLES: dict[str, tuple[str, bool]] = {
    "TUNE_DISABLE_DATED_SUBDIR": (WHOLE, False),
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": (WHOLE, False),
    "TUNE_DISABLE_SIGINT_HANDLER": (WHOLE, False),
    "TUNE_FORCE_TRIAL_CLEANUP_S": (WHOLE, False),
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": (WHOLE, False),
    "TUNE_MAX_LEN_IDENTIFIER": (WHOLE, False),
    "TUNE_PRINT_ALL_TRIAL_ERRORS": (WHOLE, False),
    "TUNE_RESULT_BUFFER_LENGTH": (WHOLE, False),
    "TUNE_RESTORE_RETRY_NUM": (WHOLE, False),
    "TUNE_MAX_PENDING_TRIALS_PG": (WHOLE, True),
    "TUNE_GLOBAL_CHECKPOINT_S": (NUMBER, True),
    "TUNE_RESULT_BUFFER_MIN_TIME_S": (NUMBER, False),
    "TUNE_RESULT_BUFFER_MAX_TIME_S": (NUMBER, False),
    "TUNE_STATE_REFRESH_PERIOD": (NUMBER, False),
    "TUNE_WARN_THRESHOLD_S": (NUMBER, False),
    "TUNE_WARN_INSUFFICENT_RESOURCE_THRESHOLD_S": (NUMBER, False),
    "TUNE_WARN_INSUFFICENT_RESOURCE_THRESHOLD_S_AUTOSCALER": (NUMBER, False),
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": (NUMBER, False),
    "TUNE_WARN_SLOW_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": (NUMBER, False),
}


def _parses(value: str, kind: str) -> bool:
    try:
        int(value) if kind == WHOLE else float(value)
    except ValueError:
        return False
    return True


def check_tune_environment(environ: Mapping[str, str] = os.environ) -> None:
    """UserError naming the first TUNE_* variable Tune would fail to parse, with the values it takes."""
    for name, (kind, auto) in NUMERIC_TUNE_VARIABLES.items():
        value = environ.get(name)
        if value is None or (auto and value == "auto") or _parses(value, kind):
            continue
        takes = f"{kind} or 'auto'" if auto else kind
        raise UserError(f"environment variable {name}={excerpt(value)} is not {kind} (Ray Tune reads it as one): "
                        f"set it to {takes}, or unset it")
