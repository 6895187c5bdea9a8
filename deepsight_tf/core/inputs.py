"""Files and texts a user hands in (hypotheses, class weights, focus pairs, drop lists,
TF_CONFIG): the one reader, whose every failure is one error line naming the file and the flag.

Missing, not a regular file (a FIFO, /dev/zero), too large, unreadable, not UTF-8, not valid
JSON or CSV, nested deeper than any deepsight input (a parser's RecursionError), a number too
long to convert: each becomes the caller's error class (ConfigError unless said otherwise)
with `flag path: what is wrong`, never a traceback or a hang.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from deepsight_tf.core.errors import ConfigError, DeepsightError

MIB = 1 << 20
# Far above what a settings file or a per-class table of 1,000 classes needs; a file this
# large is the wrong file, and reading it whole would only delay that answer.
MAX_JSON_BYTES = 16 * MIB
MAX_TEXT_BYTES = 1 * MIB
# A ranked index list of a million-image data set (interpret's train_label_issues.csv).
MAX_CSV_BYTES = 256 * MIB
# The deepest deepsight input (a run's metrics.json read for --class-weights) nests about 6.
MAX_JSON_DEPTH = 32


def read_input_text(
    path: Path | str,
    flag: str,
    error: type[DeepsightError] = ConfigError,
    max_bytes: int = MAX_TEXT_BYTES,
) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes` (a missing file: ConfigError)."""
    path = Path(path)
    try:
        if not path.exists():
            raise ConfigError(f"{flag} {path}: no such file; check the path")
        if not path.is_file():
            raise error(f"{flag} {path}: not a regular file; give the path of a file")
        too_large = path.stat().st_size > max_bytes
        if not too_large:
            with open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)  # a file that grows, or lies about its size
            too_large = len(data) > max_bytes
    except OSError as exc:
        raise error(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    if too_large:
        raise error(
            f"{flag} {path}: larger than the {max_bytes // MIB} MiB such a file can be; "
            "check that it is the file you meant"
        )
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is no content
    except UnicodeDecodeError as exc:
        raise error(f"{flag} {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def parse_input_json(text: str, where: str, error: type[DeepsightError] = ConfigError) -> Any:
    """JSON text handed in by a user; `where` ("--hypotheses h.json") starts every error."""
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "fix the syntax"
        ) from None
    except RecursionError:
        raise error(
            f"{where}: JSON nested too deeply to read (more than {MAX_JSON_DEPTH} levels is "
            "never a deepsight input)"
        ) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise error(f"{where}: not valid JSON ({exc})") from None
    depth = json_depth(payload, MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise error(
            f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep; no deepsight input "
            "is (check that it is the file you meant)"
        )
    return payload


def read_input_json(path: Path | str, flag: str, error: type[DeepsightError] = ConfigError) -> Any:
    """A JSON file handed in with `flag`, parsed; see the module docstring for the failures."""
    text = read_input_text(path, flag, error, MAX_JSON_BYTES)
    return parse_input_json(text, f"{flag} {path}", error)


def read_input_csv(
    path: Path | str,
    flag: str,
    error: type[DeepsightError] = ConfigError,
    max_rows: int | None = None,
) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file with a header row: its column names and (the first `max_rows` of) its rows."""
    text = read_input_text(path, flag, error, MAX_CSV_BYTES)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[dict[str, str]] = []
    try:
        columns = list(reader.fieldnames or [])
        for row in reader:
            if max_rows is not None and len(rows) >= max_rows:
                break
            rows.append(row)
    except csv.Error as exc:
        raise error(f"{flag} {path}: not readable as CSV (line {reader.line_num}: {exc})") from None
    return columns, rows


def json_depth(value: Any, stop_above: int | None = None) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar: 0), without
    recursion; counting stops once it passes `stop_above`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if stop_above is not None and deepest > stop_above:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest
