"""Command-line flags generated from a configuration dataclass, so a setting is described once.

    parser = argparse.ArgumentParser()
    add_flags(parser, FinetuneConfig)          # --epochs, --lr, ... one per field, default and type from it
    config = from_flags(FinetuneConfig, parser.parse_args())

A field that is itself a dataclass contributes its own fields as flags (``FinetuneConfig.train.lr``
is ``--lr``), so a config that contains another is flagged without copying it. A field with
``metadata={"flag": False}`` is not a flag (run plumbing such as checkpoint folders);
``metadata={"flag": "name"}`` renames it; ``"help"``, ``"choices"`` and ``"required"`` in the
metadata go to argparse (a required field still needs a default, e.g. None, for ``cls()``). Types: ``int``, ``float``, ``str``, ``bool`` (a switch: ``--flag`` / ``--no-flag``; from
the environment true/false/yes/no/1/0), ``Path``,
``X | None`` ("none" for None) and sequences of those (several values, e.g.
``--scale-jitter 0.875 1 1.125``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_bool(text: str) -> bool:
    if text.lower() not in BOOLEANS:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return BOOLEANS[text.lower()]


def _sequence_item(hint: Any) -> Any | None:
    """The item type of a sequence hint (``Sequence[float]``, ``list[int]``), else None."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str:
        return arguments[0] if arguments else str
    return None


def _parser_for(hint: Any):
    """A function from the flag's text to the field's value (an item's, for sequences)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in arguments:
        inner = _parser_for(next(a for a in arguments if a is not type(None)))
        return lambda text: None if text.lower() in ("none", "") else inner(text)
    if (item := _sequence_item(hint)) is not None:
        return _parser_for(item)
    if hint is bool:
        return _parse_bool
    if hint in (int, float, str, Path):
        return hint
    raise TypeError(f"no flag parser for type {hint!r}")


def _flag_fields(cls: type, prefix: tuple[str, ...] = ()):
    """``(path of field names, flag name, hint, default, metadata)`` for every flag of ``cls``, nested included."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for item in dataclasses.fields(cls):
        flag = item.metadata.get("flag", True)
        if flag is False:
            continue
        hint = hints[item.name]
        default = getattr(defaults, item.name)
        if dataclasses.is_dataclass(hint):
            for path, name, inner_hint, inner_default, metadata in _flag_fields(hint, (*prefix, item.name)):
                yield path, name, inner_hint, _nested_default(default, path[len(prefix) + 1:], inner_default), metadata
            continue
        yield (*prefix, item.name), flag if isinstance(flag, str) else item.name, hint, default, item.metadata


def _nested_default(value: Any, path: tuple[str, ...], fallback: Any) -> Any:
    """The default of a nested field as the outer dataclass's default instance sets it."""
    for name in path:
        value = getattr(value, name, fallback)
    return value


def parse_value(hint: Any, text: str) -> Any:
    """A field's value from text (a flag's, or an environment variable's: sequences comma-separated)."""
    if _sequence_item(hint) is not None:
        return tuple(_parser_for(hint)(part.strip()) for part in text.split(",") if part.strip())
    return _parser_for(hint)(text)


def add_flags(parser: argparse.ArgumentParser, cls: type, defaults: Any = None) -> None:
    """One ``--flag`` per field of the dataclass ``cls`` (nested dataclasses flattened); the
    defaults are those of ``defaults`` (an instance of ``cls``), else of ``cls()``."""
    seen: dict[str, tuple[str, ...]] = {}
    for path, name, hint, default, metadata in _flag_fields(cls):
        if defaults is not None:
            default = _nested_default(defaults, path, default)
        if name in seen:
            raise TypeError(f"{cls.__name__}: fields {'.'.join(seen[name])} and {'.'.join(path)} would both be --{name}")
        seen[name] = path
        sequence = _sequence_item(hint) is not None
        shown = " ".join(map(str, default)) if sequence else default
        text = f"{metadata['help']} (default {shown})" if "help" in metadata else f"default {shown}"
        flag = "--" + name.replace("_", "-")
        if hint is bool:  # a switch: --flag / --no-flag, never eating the next argument
            parser.add_argument(flag, dest="__".join(path), action=argparse.BooleanOptionalAction, default=default,
                                help=text)
            continue
        if metadata.get("required"):
            text = metadata.get("help", "")
        parser.add_argument(flag, dest="__".join(path), type=_parser_for(hint), default=default, help=text,
                            choices=metadata.get("choices"), metavar=name.upper(), required=bool(metadata.get("required")),
                            **({"nargs": "*"} if sequence else {}))


def to_argv(config: Any) -> list[str]:
    """The flags that give ``config`` (for a subprocess of the same command line)."""
    argv: list[str] = []
    for path, name, hint, _, _ in _flag_fields(type(config)):
        value, flag = _nested_default(config, path, None), name.replace("_", "-")
        if hint is bool:
            argv.append(f"--{flag}" if value else f"--no-{flag}")
            continue
        values = [str(v) for v in value] if _sequence_item(hint) is not None else ["none" if value is None else str(value)]
        argv += [f"--{flag}", *values]
    return argv


def from_flags(cls: type, args: argparse.Namespace, defaults: Any = None) -> Any:
    """The ``cls`` instance that `add_flags` flags describe (fields that are not flags from ``defaults``)."""
    return _build(cls, vars(args), (), defaults if defaults is not None else cls())


def _build(cls: type, values: dict, prefix: tuple[str, ...], base: Any, partial: bool = False) -> Any:
    """``base`` with the fields ``values`` (keyed by ``__``-joined paths) holds; with ``partial``
    the others keep ``base``'s values."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for item in dataclasses.fields(cls):
        path, current = (*prefix, item.name), getattr(base, item.name)
        if item.metadata.get("flag", True) is False or (partial and not dataclasses.is_dataclass(hints[item.name])
                                                        and "__".join(path) not in values):
            kwargs[item.name] = current
        elif dataclasses.is_dataclass(hints[item.name]):
            kwargs[item.name] = _build(hints[item.name], values, path, current, partial)
        else:
            value = values["__".join(path)]
            kwargs[item.name] = type(current)(value) if isinstance(current, (tuple, list)) else value
    return dataclasses.replace(base, **kwargs)


def from_dict(cls: type, document: dict) -> Any:
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output, e.g. read from JSON."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for item in dataclasses.fields(cls):
        if item.name not in document:
            continue
        value = document[item.name]
        if dataclasses.is_dataclass(hints[item.name]) and isinstance(value, dict):
            value = from_dict(hints[item.name], value)
        elif isinstance(value, list) and not isinstance(getattr(cls(), item.name), list):
            value = tuple(value)
        kwargs[item.name] = value
    return cls(**kwargs)


def with_flags(config: Any, **values) -> Any:
    """A copy of ``config`` with fields set by their flag names (nested fields included):
    ``with_flags(FinetuneConfig(), lr=1e-3, hybrid="co-detr")`` sets ``train.lr`` and ``hybrid.method``."""
    paths = {name: path for path, name, _, _, _ in _flag_fields(type(config))}
    unknown = sorted(set(values) - set(paths))
    if unknown:
        raise TypeError(f"{type(config).__name__} has no setting {', '.join(unknown)}; known: {', '.join(paths)}")
    return _build(type(config), {"__".join(paths[name]): value for name, value in values.items()}, (), config,
                  partial=True)
