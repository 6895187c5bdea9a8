"""Writing artifacts safely: atomic files (temporary name, fsync, rename), JSON, npz, SHA-256."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import StorageError


def sha256_file(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    A crash or an exception leaves the old file (if any) untouched and no half-written file
    under the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared and read
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def storage_error(path: Path, exc: OSError) -> StorageError:
    if exc.errno == errno.ENOSPC:
        hint = "free some disk space and rerun; earlier artifacts were kept"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "make the workspace writable or pass --workspace elsewhere"
    else:
        hint = "check the workspace folder and rerun"
    return StorageError(f"could not write {path}: {exc.strerror or exc}; {hint}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Turn dataclasses, numpy scalars/arrays and paths into plain JSON values; a typed record
    with a `to_dict` (its file's layout) is written as that."""
    if hasattr(value, "__dataclass_fields__") and callable(getattr(value, "to_dict", None)):
        return to_jsonable(value.to_dict())
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(payload), indent=2, sort_keys=False) + "\n")


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save arrays uncompressed (fast to load) without pickles, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_json(path: Path) -> Any:
    """A JSON artifact of the workspace. Every way it can fail to parse (torn, tampered, not
    UTF-8, nested past the parser's recursion limit) is a ValueError, which callers turn into
    a StaleArtifactError naming the phase that rewrites it; user files go through inputs.py."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to parse") from None
