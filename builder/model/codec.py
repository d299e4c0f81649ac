"""The model's dataclasses as JSON-able data and back, driven by their type hints.

One encoder and one decoder serve every frozen dataclass of the model (the plan, the
profile's parts it carries, the guest facts), so a new field needs no new code: its
type hint says how it is written and read. What a hint can be is what the model
uses: dataclasses, enums, ``X | None``, ``tuple[X, ...]`` and ``tuple[X, Y]``,
``list[X]``, ``dict[str, X]`` and ``Mapping[str, X]``, the ipaddress and UUID types
(written as text), ``str``, ``int``, ``float``, ``bool`` and ``Any`` (kept as is).

Decoding checks as it goes: an unknown or missing field, or a value of the wrong
type, is a DecodeError naming the path to it (``Plan.vms[2].disk.mode``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import ipaddress
import json
import json.encoder
import types
import typing
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from vmbuild.errors import UserError

T = TypeVar("T")

#: Types written as their text and read back by calling the type on it.
_TEXT_TYPES = (ipaddress.IPv4Address, ipaddress.IPv4Network, uuid.UUID)
#: JSON's scalars, and the Python types each may be read from.
_SCALARS: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
}


class DecodeError(UserError, ValueError):
    """Data that does not fit the type it is read as; ``path`` (its place) says where.
    A ValueError too, as ``json.loads`` raises for text that is not JSON, so one
    ``except ValueError`` serves a reader of either."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message, place=path)
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


#: Values that are JSON as they are (a big plan holds thousands).
_PLAIN = frozenset({str, int, float, bool})


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(kind))


def to_data(value: Any) -> Any:
    """``value`` as JSON-able data: dataclasses as objects (fields in order), enums
    as their values, tuples as lists, addresses and UUIDs as text."""
    if value is None or type(value) in _PLAIN:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: to_data(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_data(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_data(item) for key, item in value.items()}
    if isinstance(value, _TEXT_TYPES):
        return str(value)
    return value


def from_data(kind: type[T], data: Any, path: str = "") -> T:
    """``data`` (as to_data wrote it) read back as a ``kind``; DecodeError if it
    does not fit. ``path`` names the value in messages; the type's name by default."""
    result: T = _decode(kind, data, path or getattr(kind, "__name__", str(kind)))
    return result


@functools.cache
def _fields(kind: type) -> tuple[tuple[str, Any, bool], ...]:
    """(name, resolved type hint, required) for each field ``kind.__init__`` takes."""
    hints = typing.get_type_hints(kind)
    return tuple(
        (
            field.name,
            hints[field.name],
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING,
        )
        for field in dataclasses.fields(kind)
        if field.init
    )


def _show(data: Any) -> str:
    """A value for a message: scalars as JSON, containers by their kind."""
    if isinstance(data, dict):
        return "an object"
    if isinstance(data, (list, tuple)):
        return "a list"
    if isinstance(data, str):  # what json.dumps(ensure_ascii=False) says, without its setup
        return json.encoder.encode_basestring(data)
    return json.dumps(data, ensure_ascii=False, default=repr)


def _decode(hint: Any, data: Any, path: str) -> Any:
    if hint is Any or hint is object:
        return data
    if hint is type(None):
        if data is not None:
            raise DecodeError(path, f"expected null, got {_show(data)}")
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return _decode_union(typing.get_args(hint), data, path)
    if origin is not None:
        return _decode_generic(origin, typing.get_args(hint), data, path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, data, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(data)
        except ValueError:
            options = ", ".join(json.dumps(member.value) for member in hint)
            raise DecodeError(path, f"expected one of {options}, got {_show(data)}") from None
    if isinstance(hint, type) and issubclass(hint, _TEXT_TYPES):
        if not isinstance(data, str):
            raise DecodeError(path, f"expected {hint.__name__} as text, got {_show(data)}")
        try:
            return hint(data)
        except ValueError:
            raise DecodeError(path, f"{_show(data)} is not a valid {hint.__name__}") from None
    if hint in _SCALARS:
        # bool is an int to Python, not to JSON.
        if not isinstance(data, _SCALARS[hint]) or (isinstance(data, bool) and hint is not bool):
            raise DecodeError(path, f"expected {hint.__name__}, got {_show(data)}")
        return data
    raise TypeError(f"{path}: the codec cannot read the type {hint!r}")


def _decode_union(options: tuple[Any, ...], data: Any, path: str) -> Any:
    if data is None and type(None) in options:
        return None
    others = [option for option in options if option is not type(None)]
    for option in others[:-1]:
        with contextlib.suppress(DecodeError):
            return _decode(option, data, path)
    # The last (for X | None, the only) option says what was wrong.
    return _decode(others[-1], data, path)


def _decode_generic(origin: Any, args: tuple[Any, ...], data: Any, path: str) -> Any:
    if origin in (tuple, list):
        if not isinstance(data, (list, tuple)):
            raise DecodeError(path, f"expected a list, got {_show(data)}")
        if origin is list:
            return [_decode(args[0], item, f"{path}[{i}]") for i, item in enumerate(data)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item, f"{path}[{i}]") for i, item in enumerate(data))
        if len(data) != len(args):
            raise DecodeError(path, f"expected {len(args)} items, got {len(data)}")
        pairs = enumerate(zip(args, data, strict=True))
        return tuple(_decode(arg, item, f"{path}[{i}]") for i, (arg, item) in pairs)
    if origin in (dict, Mapping):
        if not isinstance(data, dict):
            raise DecodeError(path, f"expected an object, got {_show(data)}")
        key_hint, value_hint = args
        return {
            _decode(key_hint, key, path): _decode(value_hint, value, f"{path}[{_show(key)}]")
            for key, value in data.items()
        }
    raise TypeError(f"{path}: the codec cannot read the type {origin!r}")


def _decode_dataclass(kind: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise DecodeError(path, f"expected an object ({kind.__name__}), got {_show(data)}")
    fields = _fields(kind)
    names = {name for name, _, _ in fields}
    for key in data:
        if key not in names:
            raise DecodeError(path, f"unknown field {_show(key)} in {kind.__name__}")
    values = {}
    for name, hint, required in fields:
        if name in data:
            values[name] = _decode(hint, data[name], f"{path}.{name}")
        elif required:
            raise DecodeError(path, f"missing field {_show(name)} of {kind.__name__}")
    return kind(**values)
