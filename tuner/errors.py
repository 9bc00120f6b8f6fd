"""User-facing errors: one line that says what is wrong, where, and how to fix it; exit code 2."""
from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input from the person running a command. Printed as one line, never as a traceback."""


def suggest(name: str, valid: Iterable[str]) -> str:
    """' (did you mean 'lr'?)' when a close valid name exists, else ''."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def exit_on_user_error(main: F) -> F:
    """Wrap a CLI entry point so a UserError prints `error: ...` and exits 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]


def yaml_error(path: object, err: Exception, fix: str) -> UserError:
    """A YAML parse error as one line: file:line, the parser's complaint, and the fix."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    return UserError(f"{where}: YAML syntax error ({getattr(err, 'problem', None) or err}); {fix}")
