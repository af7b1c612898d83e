"""What every command line of the project shares: one-line errors, and flags derived from a frozen dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def first_line(err: BaseException | str) -> str:
    """The first line of an error's message, or its type's name when it has none: what a one-line error shows."""
    text = str(err).strip()
    if text:
        return text.splitlines()[0]
    return type(err).__name__ if isinstance(err, BaseException) else ""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line `error: ...` (and exit status 2) instead of the usage block."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


# --- a command line derived from a frozen dataclass ------------------------------------------------
# A field declares what a user may set: `setting(default, help, choices=..., minimum=..., above=..., parse=...)`.
# Fields with a help text become flags (--field-name); every field's constraints are checked by `field_problems`.
def setting(default: Any, help: str | None = None, **constraints: Any) -> Any:
    """A dataclass field with its help text (None: not a flag) and constraints: `choices` (of the value or of
    each item of a tuple), `minimum` / `above` (inclusive / exclusive lower bound of a number or of each item),
    `parse` (a text -> value function for argparse, where the field's type alone does not say enough)."""
    return dataclasses.field(default=default, metadata={"help": help, **constraints})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def number(kind: type, minimum: float | None = None, above: float | None = None) -> Callable[[str], Any]:
    """argparse type: an int or float, at least `minimum` / above `above`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        problem = _bound_problem(value, minimum, above)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value
    return parse


def items(parse_one: Callable[[str], Any], what: str) -> Callable[[str], tuple]:
    """argparse type: a non-empty comma-separated list, each item read by `parse_one`."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(parse_one(x.strip()) for x in text.split(",") if x.strip())
        except (argparse.ArgumentTypeError, ValueError):
            values = ()
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        return values
    return parse


def one_of(allowed: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text
    return parse


def add_fields(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """One flag per field of the dataclass `cls` that has a help text, its type read from the annotation (bool:
    --x/--no-x; int, float, str, their tuples, each optional); every default is None, "not given". Returns the
    names of the fields that became flags."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("help"):
            continue
        kind = _without_none(hints[f.name])
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=meta["help"])
        else:
            choices = meta.get("choices") if kind is str and not meta.get("parse") else None
            parser.add_argument(flag(f.name), type=meta.get("parse") or _reader(kind, meta), choices=choices,
                                help=meta["help"])
        names.append(f.name)
    return names


def field_problems(obj: Any) -> list[str]:
    """What breaks the fields' `choices`/`minimum`/`above` constraints, one line each, naming the flag."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value if isinstance(value, tuple) else (value,)
        choices = f.metadata.get("choices")
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            out.append(f"unknown {flag(f.name)} {bad[0]!r}: use one of {', '.join(map(str, choices))}")
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        problem = next(((p, v) for v in numbers
                        if (p := _bound_problem(v, f.metadata.get("minimum"), f.metadata.get("above")))), None)
        if problem:
            out.append(f"{flag(f.name)} {problem[0]}, got {problem[1]}")
    return out


def _bound_problem(value: Any, minimum: float | None, above: float | None) -> str | None:
    if minimum is not None and not value >= minimum:
        return "must be 0 or more" if minimum == 0 else f"must be at least {minimum:g}"
    if above is not None and not value > above:
        return f"must be above {above:g}"
    return None


def _without_none(kind: Any) -> Any:
    """X | None -> X."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) in (types.UnionType, typing.Union) and len(args) == 1 else kind


def _reader(kind: Any, meta: Mapping[str, Any]) -> Callable[[str], Any]:
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        choices = meta.get("choices")
        if choices:
            return items(one_of(choices), ", ".join(choices))
        bound = "" if meta.get("minimum") is None else f" (each at least {meta['minimum']:g})"
        return items(_reader(item, meta), f"{'integers' if item is int else 'numbers'}{bound}")
    if kind in (int, float):
        return number(kind, meta.get("minimum"), meta.get("above"))
    return str
