"""Hypotheses registered before training: class groups to compare and confusable class pairs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsight_tf.core.errors import ConfigError, short_list
from deepsight_tf.core.inputs import read_input_json

# The CIFAR-10 defaults: man-made objects with rigid outlines against animals, whose pose and
# fur vary; and the pairs a CIFAR-10 classifier is known to mix up. They are registered only
# when every class they name is in the data set (see `default_hypotheses`).
DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "rigid": ("airplane", "automobile", "ship", "truck"),
    "organic": ("bird", "cat", "deer", "dog", "frog", "horse"),
}
DEFAULT_COMPARISONS: tuple[tuple[str, str], ...] = (("rigid", "organic"),)
DEFAULT_CONFUSABLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("cat", "dog"),
    ("automobile", "truck"),
    ("airplane", "bird"),
    ("deer", "horse"),
)

# Keys of a --hypotheses file. The metadata keys are what explore adds when it stores the
# registered hypotheses; they are accepted (and ignored) so a stored file can be passed again.
SCHEMA_KEYS = ("groups", "comparisons", "confusable_pairs", "description")
METADATA_KEYS = ("source", "note", "registered_at")


@dataclass
class Hypotheses:
    """What interpret tests: groups of classes, which groups to compare, pairs to watch."""

    groups: dict[str, list[str]] = field(default_factory=dict)
    comparisons: list[tuple[str, str]] = field(default_factory=list)  # (group a, group b)
    confusable_pairs: list[tuple[str, str]] = field(default_factory=list)  # (class a, class b)
    description: str = ""
    source: str = "none"  # "defaults", the --hypotheses file, or "none"
    note: str = ""  # why none (or only some) were registered
    registered_at: str | None = None  # when explore stored them, before any training

    @property
    def registered(self) -> bool:
        return bool(self.comparisons or self.confusable_pairs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hypotheses:
        """Rebuild from the stored hypotheses.json (already validated when it was written)."""
        return cls(
            groups={str(k): [str(c) for c in v] for k, v in data.get("groups", {}).items()},
            comparisons=[(str(a), str(b)) for a, b in data.get("comparisons", [])],
            confusable_pairs=[(str(a), str(b)) for a, b in data.get("confusable_pairs", [])],
            description=str(data.get("description", "")),
            source=str(data.get("source", "none")),
            note=str(data.get("note", "")),
            registered_at=data.get("registered_at"),
        )


def default_hypotheses(class_names: Sequence[str]) -> Hypotheses:
    """The CIFAR-10 defaults when every class they name exists; otherwise none, saying why."""
    named = {c for members in DEFAULT_GROUPS.values() for c in members}
    named |= {c for pair in DEFAULT_CONFUSABLE_PAIRS for c in pair}
    missing = sorted(named - set(class_names))
    if missing:
        return Hypotheses(
            note=(
                f"no hypotheses registered: the CIFAR-10 defaults need classes the data set "
                f"lacks ({short_list(missing)}); pass --hypotheses FILE to register your own"
            )
        )
    return Hypotheses(
        groups={name: list(members) for name, members in DEFAULT_GROUPS.items()},
        comparisons=list(DEFAULT_COMPARISONS),
        confusable_pairs=list(DEFAULT_CONFUSABLE_PAIRS),
        description="CIFAR-10 defaults: rigid against organic classes, known confusable pairs",
        source="defaults",
    )


def read_hypotheses_file(path: Path, class_names: Sequence[str]) -> Hypotheses:
    """Read and validate a --hypotheses JSON file; every error names the file and the fix."""
    path = Path(path)
    payload = read_input_json(path, "--hypotheses")
    hypotheses = parse_hypotheses(payload, class_names, where=str(path))
    hypotheses.source = str(path)
    if not hypotheses.registered:
        hypotheses.note = f"no hypotheses registered: {path} lists no comparisons or pairs"
    return hypotheses


def parse_hypotheses(payload: Any, class_names: Sequence[str], where: str) -> Hypotheses:
    """Validate a hypotheses object against the schema and the data set's class names.

    Schema: {"groups": {name: [class, ...]}, "comparisons": [[group, group], ...],
    "confusable_pairs": [[class, class], ...], "description": str}; every key is optional.
    When "comparisons" is absent and exactly two groups are defined, those two are compared.
    """
    if not isinstance(payload, dict):
        raise ConfigError(
            f"{where}: expected a JSON object with keys {', '.join(SCHEMA_KEYS)}; "
            f"got a JSON {_json_type(payload)}"
        )
    for key in payload:
        if key not in SCHEMA_KEYS and key not in METADATA_KEYS:
            raise ConfigError(
                f"{where}: unknown key '{key}'; allowed keys are {', '.join(SCHEMA_KEYS)}"
            )
    known = set(class_names)
    groups = _parse_groups(payload.get("groups", {}), known, class_names, where)
    if "comparisons" in payload:
        comparisons = [
            _pair(item, f"comparisons[{i}]", "group names", where)
            for i, item in enumerate(_list(payload["comparisons"], "comparisons", where))
        ]
    else:
        comparisons = [tuple(groups)] if len(groups) == 2 else []  # type: ignore[list-item]
        if len(groups) > 2:
            raise ConfigError(
                f"{where}: {len(groups)} groups but no 'comparisons'; list the pairs of groups "
                'to compare, e.g. "comparisons": [["a", "b"]]'
            )
    for a, b in comparisons:
        for name in (a, b):
            if name not in groups:
                raise ConfigError(
                    f"{where}: comparison [{a!r}, {b!r}] names unknown group '{name}'; "
                    f"defined groups: {short_list(list(groups)) or 'none'}"
                )
        shared = sorted(set(groups[a]) & set(groups[b]))
        if shared:
            raise ConfigError(
                f"{where}: compared groups '{a}' and '{b}' share class '{shared[0]}'; "
                "a class may sit in only one side of a comparison"
            )
    pairs = []
    for i, item in enumerate(_list(payload.get("confusable_pairs", []), "confusable_pairs", where)):
        a, b = _pair(item, f"confusable_pairs[{i}]", "class names", where)
        for name in (a, b):
            if name not in known:
                raise ConfigError(
                    f"{where}: confusable_pairs[{i}] names unknown class '{name}'; "
                    f"the data set's classes are {short_list(class_names)}"
                )
        pairs.append((a, b))
    description = payload.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be a string")
    return Hypotheses(
        groups=groups, comparisons=comparisons, confusable_pairs=pairs, description=description
    )


def _parse_groups(
    raw: Any, known: set[str], class_names: Sequence[str], where: str
) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: 'groups' must be an object of group name to class names; "
            f"got a JSON {_json_type(raw)}"
        )
    groups: dict[str, list[str]] = {}
    for name, members in raw.items():
        if not name:
            raise ConfigError(f"{where}: a group has an empty name; give every group a name")
        if (
            not isinstance(members, list)
            or not members
            or not all(isinstance(m, str) for m in members)
        ):
            raise ConfigError(f"{where}: groups.{name} must be a non-empty list of class names")
        for member in members:
            if member not in known:
                raise ConfigError(
                    f"{where}: groups.{name} names unknown class '{member}'; "
                    f"the data set's classes are {short_list(class_names)}"
                )
        if len(set(members)) != len(members):
            twice = next(m for m in members if members.count(m) > 1)
            raise ConfigError(f"{where}: groups.{name} lists class '{twice}' twice")
        groups[name] = list(members)
    return groups


def _list(raw: Any, key: str, where: str) -> list[Any]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: '{key}' must be a list of pairs; got a JSON {_json_type(raw)}")
    return raw


def _pair(item: Any, label: str, what: str, where: str) -> tuple[str, str]:
    if (
        not isinstance(item, list)
        or len(item) != 2
        or not all(isinstance(v, str) for v in item)
        or item[0] == item[1]
    ):
        raise ConfigError(f"{where}: {label} must be a pair of two different {what}")
    return item[0], item[1]


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
