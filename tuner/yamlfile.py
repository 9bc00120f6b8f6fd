"""The YAML files a person writes (space files, `tuner.train --config`), read safely and with line numbers.

`load_yaml` is `yaml.safe_load` with four differences, each for a failure seen with hand-written or
hostile files:
- mappings remember the line of every key (`LineDict.lines`), so each error names file:line;
- aliases (`*name`) are refused: a 600-byte file of nested aliases expands to gigabytes (a "billion
  laughs"); these files are short enough to write out, so refusing them costs nothing;
- a repeated key is an error, not a silent overwrite;
- `1e9` and `1.0e9` are numbers, as in YAML 1.2 and JSON (YAML 1.1, which PyYAML follows, reads a float
  only with a dot and a signed exponent, so `max_macs: 1.0e9` was the string '1.0e9').
Files above `MAX_BYTES`, nesting deeper than Python can follow, and values PyYAML cannot construct (a number
too long to convert; an explicit tag on a value that is not of its type, `!!int ""`, `!!bool maybe`,
`!!timestamp abc`, on which PyYAML's constructors fail with IndexError, KeyError or AttributeError) are one
line each too, with the line of the value, never a traceback.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import UserError, excerpt, yaml_error

MAX_BYTES = 1 << 20  # the shipped space files are about 1 KB


class LineDict(dict):
    """A mapping from a YAML file; `lines[key]` is the 1-based line the key is on."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}


class _AliasRefused(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__()
        self.problem_mark = mark


class _ValueRefused(yaml.YAMLError):
    """A value of the file that PyYAML's constructor failed on, with the node it failed at."""

    def __init__(self, node: yaml.Node, err: Exception) -> None:
        super().__init__()
        self.node, self.err = node, err
        self.problem_mark = node.start_mark


# What to write instead of a value PyYAML could not construct, by its tag (those it constructs from the file)
_EXPECTED = {
    "int": ("an integer", "such as 42"), "float": ("a number", "such as 0.01 or 1e-3"),
    "bool": ("true or false", ""), "timestamp": ("a date", "such as 2026-01-31"), "null": ("null", ""),
    "binary": ("base64 text", ""), "str": ("text", ""), "map": ("a mapping", "such as {a: 1}"),
    "seq": ("a list", "such as [1, 2]"), "set": ("a set", "such as {a: null}"),
    "omap": ("a list of one-key mappings", ""), "pairs": ("a list of one-key mappings", ""),
}
_TAG_PREFIX = "tag:yaml.org,2002:"


def _refusal(path: Path, refused: _ValueRefused) -> str:
    """`file:line: '' cannot be read as an integer; write an integer such as 42 there instead, or remove the
    !!int tag` for a value PyYAML's constructor failed on."""
    node, mark = refused.node, refused.problem_mark
    tag = node.tag[len(_TAG_PREFIX):] if node.tag.startswith(_TAG_PREFIX) else node.tag
    tag = tag if len(tag) <= 40 else tag[:37] + "..."  # resolved tags are short; only a file's own can be long
    kind, example = _EXPECTED.get(tag, (f"a !!{tag} value", ""))
    value = excerpt(node.value) if isinstance(node, yaml.ScalarNode) else \
        "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
    # PyYAML's message helps only for a ValueError (too many digits); its IndexError or KeyError says nothing
    why = f" ({excerpt(str(refused.err))})" if isinstance(refused.err, ValueError) else ""
    # a tag written in the file (the node starts at it) can go; an implicit one (a bare 99999...) cannot
    explicit = isinstance(mark.buffer, str) and mark.buffer.startswith("!", mark.pointer)
    return (f"{path}:{mark.line + 1}: {value} cannot be read as {kind}{why}; write {kind}{' ' * bool(example)}"
            f"{example} there instead{f', or remove the !!{tag} tag' if explicit else ''}")


class _Loader(yaml.SafeLoader):
    """SafeLoader with key lines, no aliases, no repeated keys and YAML 1.2 floats (see the module doc)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.repeated: list[tuple[Any, int, int]] = []  # (key, line, line of its first occurrence)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's constructors assume a value fits its tag (`!!int ""` indexes an empty string, `!!bool maybe`
        # looks up a missing key): any failure of one is the file's fault, reported at the value's line
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as err:  # noqa: BLE001 - IndexError, KeyError, AttributeError, TypeError, ValueError
            raise _ValueRefused(node, err) from None


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    mapping = LineDict()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a key that is a list or a mapping",
                                                    key_node.start_mark) from None
        if key in mapping:
            loader.repeated.append((key, line, mapping.lines[key]))
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = line
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?|[-+]?\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def read_text(path: Path, what: str, fix: str) -> str:
    """The text of a file a user named; a directory, a missing, huge, unreadable or non-UTF-8 file is one line."""
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a {what}; {fix}")
    if not path.is_file():
        if path.exists():  # a FIFO, a device, a socket: reading could block or never end
            raise UserError(f"{path} is not a regular file, so it is not read as a {what}; {fix}")
        raise UserError(f"{path} does not exist; {fix}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise UserError(f"{path} is {size:,} bytes, more than a {what} can be ({MAX_BYTES:,}); {fix}")
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror or err}); {fix}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); {fix}") from None


def load_yaml(path: str | Path, what: str, fix: str) -> Any:
    """The data of a YAML file: mappings are LineDicts. Every problem is a UserError naming path:line.

    `what` names the kind of file ("space file"), `fix` says where its format is described.
    """
    path = Path(path)
    text = read_text(path, what, fix)
    try:
        loader = _Loader(text)  # its reader already refuses control characters (NUL, ESC)
    except yaml.YAMLError as err:
        raise yaml_error(path, err, fix) from None
    try:
        data = loader.get_single_data()
    except _AliasRefused as err:
        raise UserError(f"{path}:{err.problem_mark.line + 1}: YAML aliases (*name) are not accepted in a {what}; "
                        "write the value out where it is used") from None
    except _ValueRefused as err:
        raise UserError(_refusal(path, err)) from None
    except yaml.YAMLError as err:
        raise yaml_error(path, err, fix) from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to read; a {what} is a few levels deep ({fix})") from None
    except ValueError as err:  # e.g. an integer of more than 4,300 digits
        raise UserError(f"{path}: a value cannot be read ({excerpt(str(err))}); {fix}") from None
    finally:
        loader.dispose()
    if loader.repeated:
        raise UserError.of(f"{path}:{line}: key {excerpt(key)} repeats the one on line {first}; keep one of them"
                           for key, line, first in loader.repeated)
    return data
