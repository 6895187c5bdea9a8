"""Typed records read back from the JSON artifacts they were written as.

A phase's result is a dataclass; `storage.atomic_write_json` writes it as plain JSON, and
`from_json(Record, data)` reads the file back into the same dataclass, field by field, by the
type hints: nested dataclasses, lists, tuples, string-keyed dicts, `X | None`, str, int,
float, bool, numpy arrays (stored as lists) and Any. A field with a default may be absent
(a file written before the field existed); one without must be present; keys the record
does not name are ignored. Every mismatch is a ValueError that names the field's path, which
each loader turns into the error that names the command rewriting the file.

`check_schema` is the version rule of every versioned record: a file without `schema` is
version 0 (written before versions were), one newer than this code reads is refused;
`from_versioned_json` applies it and reads the record, its `schema` field the file's version.
`read_record` reads a stored record, or says which command rewrites the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from deepsight_tf.core.errors import StaleArtifactError
from deepsight_tf.core.storage import read_json

R = TypeVar("R")


def from_json(cls: type[R], data: Any, where: str = "") -> R:
    """`data` (parsed JSON) as a `cls` record; ValueError naming the first field that is not."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not spec.init:
            continue
        if spec.name not in data:
            required = (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            )
            if required:
                raise ValueError(f"{where}.{spec.name}: missing")
            continue
        values[spec.name] = _decode(hints[spec.name], data[spec.name], f"{where}.{spec.name}")
    return cls(**values)


def check_schema(data: Any, known: int, where: str) -> int:
    """The file's layout version (0 where it has none); ValueError if newer than `known`."""
    schema = data.get("schema", 0) if isinstance(data, dict) else 0
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 0:
        raise ValueError(f"{where}: schema {schema!r} is not a version number")
    if schema > known:
        raise ValueError(
            f"{where}: schema {schema} is newer than this deepsight reads ({known}); upgrade it"
        )
    return schema


def from_versioned_json(cls: type[R], data: Any, known: int, where: str) -> R:
    """`data` as a `cls` record that has a `schema` field, set to the file's version."""
    version = check_schema(data, known, where)
    return from_json(cls, {**data, "schema": version}, where)


def read_record(path: Path, parse: Callable[[Any], R], hint: str) -> R:
    """The record stored at `path` (`parse` reads the parsed JSON), or a StaleArtifactError that
    names the file and the command `hint` that rewrites it."""
    try:
        return parse(read_json(path))
    except (OSError, ValueError) as exc:
        raise StaleArtifactError(f"{path}: not what `{hint}` writes ({exc}); rerun it") from exc


def _decode(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is np.ndarray:  # stored as (nested) lists of numbers
        return np.asarray(_list(value, where))
    if origin in (typing.Union, types.UnionType):
        return _decode_union(args, value, where)
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, where)  # type: ignore[arg-type]
    if origin is list:
        return [_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(_list(value, where))]
    if origin is tuple:
        items = _list(value, where)
        kinds = [args[0]] * len(items) if len(args) == 2 and args[1] is ... else list(args)
        if len(kinds) != len(items):
            raise ValueError(f"{where}: expected {len(kinds)} items, found {len(items)}")
        pairs = enumerate(zip(kinds, items, strict=True))
        return tuple(_decode(kind, v, f"{where}[{i}]") for i, (kind, v) in pairs)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, found {type(value).__name__}")
        return {str(k): _decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(hint, value, where)


def _decode_union(args: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for option in (a for a in args if a is not type(None)):
        try:
            return _decode(option, value, where)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError("; ".join(errors) or f"{where}: null where a value is needed")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, found {type(value).__name__}")
    return value


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if hint in (bool, int, float, str):
        raise ValueError(f"{where}: expected {hint.__name__}, found {type(value).__name__}")
    raise TypeError(f"{where}: records do not read fields of type {hint!r}")
