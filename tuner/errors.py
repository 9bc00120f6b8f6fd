"""User-facing errors: one line each that says what is wrong, where, and how to fix it; exit code 2.

A UserError may hold several errors, one per line (a space file reports all of its errors in one run);
each line is complete on its own, the first one included, so a person or a script can stop reading after
it. Values a user wrote are echoed as short excerpts (`excerpt`), never whole: a hostile file cannot
turn an error message into megabytes.
"""
from __future__ import annotations

import argparse
import datetime
import difflib
import functools
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C
EXCERPT_CHARS = 80  # the most of a user's value an error message repeats
MAX_LINES = 20  # errors printed by one run; the rest are counted

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input from the person running a command. Printed as one line per error, never as a traceback."""

    @classmethod
    def of(cls, messages: Iterable[str]) -> UserError:
        """One error holding several, one per line, the first `MAX_LINES` of them; the rest are counted."""
        lines = list(messages)
        if len(lines) > MAX_LINES:
            lines = [*lines[:MAX_LINES], f"... and {len(lines) - MAX_LINES} more errors like these"]
        return cls("\n".join(lines))


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A value as the user wrote it in YAML (true, .inf, 'text'), cut to `limit` characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, datetime.date):  # YAML's reading of an unquoted 2026-01-01
        text = value.isoformat()
    elif isinstance(value, float) and not math.isfinite(value):
        text = ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    else:
        text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _normal(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def suggest(name: str, valid: Iterable[str], aliases: Mapping[str, str] | None = None) -> str:
    """' (did you mean 'lr'?)' for a known alias (learning_rate -> lr), a spelling that differs only in
    case or dashes (Weight-Decay -> weight_decay), or a close valid name; else ''."""
    name = str(name)
    if len(name) > 2 * EXCERPT_CHARS:  # no one mistyped a name that long
        return ""
    valid = list(valid)
    normal = _normal(name)
    target = (aliases or {}).get(normal) or next((v for v in valid if _normal(v) == normal), None)
    if target is None:
        close = difflib.get_close_matches(normal, valid, n=1)
        target = close[0] if close else None
    return f" (did you mean '{target}'?)" if target and target != name else ""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line like every other error of the commands (argparse prints the whole
    usage first): `error: argument --optimizer: invalid choice: 'lion' (choose from sgd, adam, adamw); ...`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())
        if len(message) > 4 * EXCERPT_CHARS:
            message = message[:4 * EXCERPT_CHARS - 3] + "..."
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def exit_on_user_error(main: F) -> F:
    """Wrap a CLI entry point so a UserError prints `error: ...` per line and exits 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            for line in str(err).splitlines() or [type(err).__name__]:
                print(f"error: {line}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:  # Ctrl-C where the command has no handler of its own: no traceback
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def yaml_error(path: object, err: Exception, fix: str) -> UserError:
    """A YAML parse error as one line: file:line, the parser's complaint (cut short), and the fix."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    if len(problem) > 2 * EXCERPT_CHARS:
        problem = problem[:2 * EXCERPT_CHARS - 3] + "..."
    return UserError(f"{where}: YAML syntax error ({problem}); {fix}")
