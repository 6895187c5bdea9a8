"""Settings as a TOML file: a recipe any command reads with `--config`, and each run's record.

One file holds any phase's settings, each command's in its own table, keys spelled as the
flags are (or as the fields are):

    [train]
    backbone = "airbench94"
    image-size = 32
    lookahead = true

    [interpret]
    max-images = 200

A command reads its own table and leaves the others alone; flags typed on the command line
override the file. Every training run stores what it was given in this same form (its
workspace.SETTINGS_FILE), and `deepsight train --config` on that file repeats the run.
"""

from __future__ import annotations

import json
import numbers
import tomllib
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.inputs import read_input_text

CONFIG_FLAG = "--config"
# Settings of one invocation, never a recipe's: a stored file that named its run would refuse
# to start again ("exists"), and one that resumed would never start.
PER_INVOCATION = frozenset({"run_id", "resume", "resume_or_start"})


def section_of(cls: type) -> str:
    """The table a settings class reads: TrainSettings -> "train"."""
    return cls.__name__.removesuffix("Settings").lower()


def _sections() -> frozenset[str]:
    from deepsight_tf.core import settings

    return frozenset(
        section_of(value)
        for name, value in vars(settings).items()
        if isinstance(value, type) and name.endswith("Settings") and name != "Settings"
    )


def read_settings_file(path: Path | str, cls: type, names: frozenset[str]) -> dict[str, Any]:
    """The values `path`'s table for `cls` gives to the settings in `names` (the command's own
    options); ConfigError, naming the file and the key, for anything else."""
    text = read_input_text(path, CONFIG_FLAG)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_FLAG} {path}: not TOML ({exc}); fix the file") from None
    known = _sections()
    for key, value in data.items():
        if key not in known or not isinstance(value, dict):
            raise ConfigError(
                f"{CONFIG_FLAG} {path}: {key!r} is not a command's table; put settings under "
                f"one of {', '.join(f'[{s}]' for s in sorted(known))}"
            )
    section = section_of(cls)
    hints = typing.get_type_hints(cls)
    # Settings this command decides itself (experiment names its runs): read, not applied.
    decided_here = {f.name for f in fields(cls) if f.metadata.get("cli", True)} - names
    values: dict[str, Any] = {}
    for key, value in data.get(section, {}).items():
        name = key.replace("-", "_")
        if name in values:
            raise ConfigError(
                f"{CONFIG_FLAG} {path}: [{section}] sets {name.replace('_', '-')} twice; keep one"
            )
        if name in decided_here:
            continue
        if name not in names:
            raise ConfigError(
                f"{CONFIG_FLAG} {path}: [{section}] has no setting {key!r}; "
                f"`deepsight {section} --help` lists them"
            )
        values[name] = _typed(value, hints[name], f"{CONFIG_FLAG} {path}: [{section}] {key}")
    return values


def settings_from_file(path: Path | str, cls: type, **overrides: Any) -> Any:
    """`cls` from `path`'s table for it, `overrides` winning, as `--config` and typed flags:
    `settings_from_file("my-recipe.toml", TrainSettings, budget="30m")`."""
    names = frozenset(f.name for f in fields(cls) if f.metadata.get("cli", True))
    return cls(**{**read_settings_file(path, cls, names), **overrides})


def _typed(value: Any, annotation: Any, where: str) -> Any:
    """`value` as the field's type (a TOML integer where a float is wanted becomes one)."""
    wanted = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    kind = wanted[0]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{where} = {value!r}: give a whole number")
    if not isinstance(value, kind):
        words = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
        raise ConfigError(f"{where} = {value!r}: give {words.get(kind, kind.__name__)}")
    return value


def _toml_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    text = str(value)  # a path given from Python, too
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"--{name.replace('_', '-')} {text!r}: not UTF-8 text, which a settings file "
            "cannot hold; rename it"
        ) from None
    # A TOML basic string: JSON's escapes, and DEL, which TOML refuses raw.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def settings_toml(settings: Any, exclude: frozenset[str] = PER_INVOCATION) -> str:
    """`settings` (a settings dataclass) as its command's TOML table: every command-line field
    but `exclude` and those left to decide (None), keys spelled as the flags are."""
    lines = [f"[{section_of(type(settings))}]"]
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name in exclude or not f.metadata.get("cli", True) or value is None:
            continue
        lines.append(f"{f.name.replace('_', '-')} = {_toml_value(f.name, value)}")
    return "\n".join(lines) + "\n"
