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
import errno
import functools
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C
EXIT_BROKEN_PIPE = 141  # the shell's code for a writer whose reader left (`... --dry-run | head -1`), as git's
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


# What the operating system says about a path or a stream the user pointed a command at (no permission, a name
# too long, a symlink loop, a file where a folder belongs or the reverse, a read-only or full disk), and
# pathlib's words for `~nosuchuser/...` and a symlink loop (Python 3.11): the user's to fix, not a bug of ours,
# wherever a command meets it first.
PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR,
                         errno.EROFS, errno.ENOSPC, errno.EDQUOT})
PATH_RUNTIME_ERRORS = ("Could not determine home directory", "Symlink loop")


def data_folder(value: str) -> str:
    """argparse type of every --data-dir: an empty value (a variable that expanded to nothing) would otherwise
    read as the current folder, where a run then downloads CIFAR-10."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty: give the folder that holds (or will hold) cifar-10-batches-py "
                                         "(default: data)")
    return value


def path_problem(err: BaseException) -> str | None:
    """One line for an error about a path or stream the user gave (see PATH_ERRNOS); None for any other error."""
    if isinstance(err, OSError) and err.errno in PATH_ERRNOS:
        what = (err.strerror or os.strerror(err.errno)).lower()
        where = excerpt(os.fsdecode(err.filename)) if err.filename is not None else None
        if where is None and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return f"cannot write: {what}; free space or write elsewhere"
        where = where or excerpt(" ".join(str(err).split()))
        return f"{what}: {where}; check that path (given on the command line, in a file or in the environment)"
    if isinstance(err, RuntimeError) and str(err).startswith(PATH_RUNTIME_ERRORS):
        text = str(err).rstrip(".")
        text = text[:1].lower() + (text[1:] if len(text) <= 2 * EXCERPT_CHARS else f"{text[1:2 * EXCERPT_CHARS]}...")
        return f"{text}: check the paths given to this command (~user, symlinks)"
    return None


def _stdout_to_devnull() -> None:
    """Nothing more reaches a standard output that failed, so the interpreter's own flush at exit cannot fail
    again with a traceback of its own."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def exit_on_user_error(main: F) -> F:
    """Wrap a CLI entry point so a UserError prints `error: ...` per line and exits 2 instead of a traceback;
    so does an error about a path the user gave (`path_problem`). A reader that leaves early (`| head -1`)
    ends the command quietly with the shell's code for it."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()  # here, not at exit, so that a closed or full stdout is handled below
            return result
        except UserError as err:
            for line in str(err).splitlines() or [type(err).__name__]:
                print(f"error: {line}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:  # Ctrl-C where the command has no handler of its own: no traceback
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _stdout_to_devnull()
            sys.exit(EXIT_BROKEN_PIPE)
        except (OSError, RuntimeError) as err:
            problem = path_problem(err)
            if problem is None:
                raise
            if isinstance(err, OSError) and err.filename is None:  # a stream: stdout may be the one that failed
                _stdout_to_devnull()
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]


def yaml_error(path: object, err: Exception, fix: str) -> UserError:
    """A YAML parse error as one line: file:line, the parser's complaint (cut short), and the fix."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    if len(problem) > 2 * EXCERPT_CHARS:
        problem = problem[:2 * EXCERPT_CHARS - 3] + "..."
    return UserError(f"{where}: YAML syntax error ({problem}); {fix}")
