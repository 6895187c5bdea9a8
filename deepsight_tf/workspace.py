"""The workspace folder: where artifacts live, their manifests, atomic writes and locks."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.errors import (
    ConfigError,
    PrerequisiteError,
    StaleArtifactError,
    StorageError,
    WorkspaceBusyError,
)

MANIFEST = "manifest.json"
DEFAULT_LOCK_TIMEOUT_S = 120.0
# Libraries whose versions are recorded in every manifest (read from package metadata, no import).
RECORDED_PACKAGES = (
    "deepsight",
    "numpy",
    "tensorflow",
    "keras",
    "keras-hub",
    "albumentations",
    "scikit-learn",
    "tf-keras-vis",
    "cleanlab",
    "pillow",
)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


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
        raise _storage_error(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared and read
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _storage_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _storage_error(path: Path, exc: OSError) -> StorageError:
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
    """Turn dataclasses, numpy scalars/arrays and paths into plain JSON values."""
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
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@dataclass
class Manifest:
    """What made an artifact: the phase, its inputs and outputs with SHA-256, settings, versions."""

    phase: str
    settings: dict[str, Any]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    started: str = field(default_factory=now_iso)
    finished: str | None = None
    duration_s: float | None = None
    versions: dict[str, str] = field(default_factory=library_versions)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class Workspace:
    """Paths of every artifact; the one place that knows the workspace layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    # Layout -------------------------------------------------------------------------------
    def data_dir(self, dataset: str) -> Path:
        return self.root / "data" / dataset

    def scrub_dir(self, dataset: str) -> Path:
        return self.root / "scrub" / dataset

    def explore_dir(self, dataset: str) -> Path:
        return self.root / "explore" / dataset

    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir() / run_id

    def datasets(self) -> list[str]:
        data = self.root / "data"
        if not data.is_dir():
            return []
        return sorted(p.name for p in data.iterdir() if (p / MANIFEST).is_file())

    def resolve_dataset(self, name: str | None) -> str:
        """The data set a phase works on: the one named, or the only one in the workspace."""
        stored = self.datasets()
        if name is not None:
            if name not in stored:
                have = ", ".join(stored) or "none"
                raise PrerequisiteError(
                    f"no data set '{name}' in {self.root / 'data'} (stored: {have}); "
                    f"run `deepsight obtain --name {name}` first"
                )
            return name
        if not stored:
            raise PrerequisiteError(
                f"no data set in workspace {self.root}; run `deepsight obtain` first"
            )
        if len(stored) > 1:
            raise ConfigError(
                f"workspace {self.root} holds several data sets ({', '.join(stored)}); "
                "choose one with --dataset"
            )
        return stored[0]

    # Manifests ----------------------------------------------------------------------------
    def write_manifest(self, artifact_dir: Path, manifest: Manifest) -> None:
        """Record the outputs' hashes and write manifest.json last, so it vouches for them."""
        for name in list(manifest.outputs):
            manifest.outputs[name] = sha256_file(artifact_dir / name)
        atomic_write_json(artifact_dir / MANIFEST, manifest)

    def read_manifest(self, artifact_dir: Path, phase_hint: str) -> Manifest:
        path = artifact_dir / MANIFEST
        if not path.is_file():
            raise PrerequisiteError(
                f"{self._rel(artifact_dir)} has not been made yet; run `{phase_hint}` first"
            )
        try:
            return Manifest.from_dict(read_json(path))
        except (OSError, ValueError, TypeError) as exc:
            raise StaleArtifactError(
                f"{self._rel(path)} is unreadable ({exc}); rerun `{phase_hint}`"
            ) from exc

    def verify(self, artifact_dir: Path, phase_hint: str) -> Manifest:
        """Check every output against its recorded SHA-256; refuse tampered or partial artifacts."""
        manifest = self.read_manifest(artifact_dir, phase_hint)
        for name, expected in manifest.outputs.items():
            path = artifact_dir / name
            if not path.is_file():
                raise StaleArtifactError(
                    f"{self._rel(path)} is missing though its manifest lists it; "
                    f"rerun `{phase_hint}`"
                )
            if sha256_file(path) != expected:
                raise StaleArtifactError(
                    f"{self._rel(path)} does not match the SHA-256 in its manifest "
                    f"(changed or half-written); rerun `{phase_hint}`"
                )
        return manifest

    def check_inputs(
        self, manifest: Manifest, current: Mapping[str, str], artifact: str, phase_hint: str
    ) -> None:
        """Refuse an artifact made from inputs that have since changed."""
        for label, sha in current.items():
            recorded = manifest.inputs.get(label, {}).get("sha256")
            if recorded != sha:
                raise StaleArtifactError(
                    f"{artifact} was made from an older {label}; rerun `{phase_hint}`"
                )

    def _rel(self, path: Path) -> str:
        try:
            return (
                str(path.relative_to(self.root.parent)) if self.root.parent != path else str(path)
            )
        except ValueError:
            return str(path)

    # Locks --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, timeout_s: float | None = None) -> Iterator[None]:
        """Hold an exclusive lock on one artifact; wait up to `timeout_s`, then refuse."""
        if timeout_s is None:
            timeout_s = float(os.environ.get("DEEPSIGHT_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S))
        lock_dir = self.root / ".locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            handle = open(lock_dir / f"{name}.lock", "a+")  # noqa: SIM115 - held across yield
        except OSError as exc:
            raise _storage_error(lock_dir, exc) from exc
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "another process"
                        raise WorkspaceBusyError(
                            f"{self.root}: '{name}' is locked by {holder}; wait for it to "
                            "finish or raise DEEPSIGHT_LOCK_TIMEOUT"
                        ) from None
                    time.sleep(0.2)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {now_iso()}")
            handle.flush()
            yield
        finally:
            handle.close()
