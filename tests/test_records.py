"""Typed records read back from JSON (core/records.py): every supported shape round-trips, and
every mismatch is a ValueError naming the field's path."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from deepsight_tf.core.records import check_schema, from_json
from deepsight_tf.core.storage import to_jsonable


@dataclass(frozen=True)
class Inner:
    count: int
    share: float


@dataclass(frozen=True)
class Outer:
    name: str
    flag: bool
    inner: Inner
    rows: list[Inner]
    pair: tuple[str, str]
    sizes: tuple[int, ...]
    by_name: dict[str, Inner]
    maybe: Inner | None = None
    either: int | str = 0
    extra: Any = None
    notes: list[str] = field(default_factory=list)


SAMPLE = Outer(
    name="a",
    flag=True,
    inner=Inner(3, 0.5),
    rows=[Inner(1, 1.0), Inner(2, 0.25)],
    pair=("cat", "dog"),
    sizes=(32, 32, 3),
    by_name={"x": Inner(4, 0.0)},
    maybe=None,
    either="text",
    extra={"free": [1, 2]},
    notes=["n"],
)


def test_a_record_round_trips_through_json_text() -> None:
    text = json.dumps(to_jsonable(SAMPLE))
    assert from_json(Outer, json.loads(text)) == SAMPLE


def test_absent_defaults_are_filled_and_unknown_keys_ignored() -> None:
    data = to_jsonable(SAMPLE)
    for key in ("maybe", "either", "extra", "notes"):
        del data[key]
    data["written_by_a_later_version"] = 1
    back = from_json(Outer, data)
    assert (back.maybe, back.either, back.extra, back.notes) == (None, 0, None, [])


def test_an_int_reads_as_a_float_but_not_the_other_way() -> None:
    data = to_jsonable(SAMPLE)
    data["inner"] = {"count": 3, "share": 1}
    assert from_json(Outer, data).inner == Inner(3, 1.0)
    data["inner"] = {"count": 3.0, "share": 1}
    with pytest.raises(ValueError, match=r"^Outer\.inner\.count: expected int, found float$"):
        from_json(Outer, data)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("name",), 5, r"Outer\.name: expected str, found int"),
        (("flag",), 1, r"Outer\.flag: expected bool, found int"),
        (("inner",), [1], r"Outer\.inner: expected an object, found list"),
        (("rows",), {"a": 1}, r"Outer\.rows: expected a list, found dict"),
        (("rows", 1, "count"), True, r"Outer\.rows\[1\]\.count: expected int, found bool"),
        (("pair",), ["cat"], r"Outer\.pair: expected 2 items, found 1"),
        (("sizes", 2), "3", r"Outer\.sizes\[2\]: expected int, found str"),
        (("by_name", "x", "share"), None, r"Outer\.by_name\.x\.share: expected float"),
        (("by_name",), [], r"Outer\.by_name: expected an object, found list"),
    ],
)
def test_a_mismatch_names_its_field(path: tuple, value: object, message: str) -> None:
    data = to_jsonable(SAMPLE)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError, match=message):
        from_json(Outer, data)


def test_a_missing_required_field_is_named() -> None:
    data = to_jsonable(SAMPLE)
    del data["rows"][0]["share"]
    with pytest.raises(ValueError, match=r"^Outer\.rows\[0\]\.share: missing$"):
        from_json(Outer, data)


def test_schema_versions() -> None:
    assert check_schema({}, 1, "f") == 0  # written before versions were
    assert check_schema({"schema": 1}, 1, "f") == 1
    with pytest.raises(ValueError, match=r"f: schema 2 is newer than this deepsight reads \(1\)"):
        check_schema({"schema": 2}, 1, "f")
    for bad in ("1", -1, True, 1.0):
        with pytest.raises(ValueError, match="is not a version number"):
            check_schema({"schema": bad}, 1, "f")
