"""Training state on disk: commits a killed or interrupted run continues from exactly.

A commit is one checkpoint file (the model's variables, the optimizer's, and mid-epoch the
training metrics' running sums) plus its entry in `state.json`: where training stood (phase,
epochs done, batches done, optimizer step), the file's SHA-256, and the best epoch so far.
Files are written atomically and state.json is rewritten atomically after them, so the
rewrite is the commit point: a kill before it leaves the previous commit in force, and files
no commit refers to are removed at the next commit. The last KEEP commits are kept, so a
latest checkpoint found corrupt (its hash differs, or it does not load) falls back to the
one before it.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import ConfigError, StaleArtifactError
from deepsight_tf.core.manifest import now_iso
from deepsight_tf.core.progress import Notify
from deepsight_tf.core.storage import atomic_save_npz, atomic_write_json, read_json, sha256_file
from deepsight_tf.core.workspace import STATE_FILE

KEEP = 2
FORMAT = 2  # state.json layout; 1 was Keras's BackupAndRestore with phase-level state
GROUPS = ("model", "optimizer", "metrics")


@dataclass(frozen=True)
class Position:
    """Where training stands: `epoch` epochs of `phase` done, then `batch` batches of the next."""

    phase: int
    epoch: int
    batch: int
    step: int  # optimizer steps of the whole run

    def describe(self) -> str:
        if self.batch:
            return f"phase {self.phase}, epoch {self.epoch + 1}, batch {self.batch}"
        return f"phase {self.phase}, after epoch {self.epoch}"


@dataclass(frozen=True)
class Commit:
    position: Position
    file: str
    sha256: str
    best: float | None  # best validation score so far (None before the first epoch ends)
    best_epoch: int | None  # its epoch, counted over the whole run
    best_file: str | None  # the classifier's weights at that epoch
    saved: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "position": asdict(self.position)}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Commit:
        return cls(**{**payload, "position": Position(**payload["position"])})


class CheckpointStore:
    """The checkpoints folder of one run."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.state_path = self.folder / STATE_FILE

    # Reading ------------------------------------------------------------------------------
    def commits(self) -> list[Commit]:
        """The kept commits, newest first; none for a run that has not committed yet."""
        state = self._state()
        if state is None:
            return []
        if state.get("format") != FORMAT:
            raise ConfigError(
                f"{self.state_path} was written by an older deepsight and cannot be resumed; "
                "start a new run with another --run-id"
            )
        try:
            return [Commit.from_json(c) for c in state["commits"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._unreadable(exc) from exc

    def created(self) -> str | None:
        state = self._state()
        return state.get("created") if state else None

    def _state(self) -> dict[str, Any] | None:
        """state.json as a dict (None before the first commit); StaleArtifactError if corrupt."""
        if not self.state_path.is_file():
            return None
        try:
            state = read_json(self.state_path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise self._unreadable(exc) from exc
        if not isinstance(state, dict):
            raise self._unreadable(TypeError(f"a JSON {type(state).__name__}, not an object"))
        return state

    def _unreadable(self, exc: Exception) -> StaleArtifactError:
        return StaleArtifactError(
            f"{self.state_path} is unreadable ({type(exc).__name__}: {exc}); it cannot be "
            "resumed: start a new run with another --run-id"
        )

    def latest_usable(self, warn: Notify | None = None) -> tuple[Commit, dict[str, list]] | None:
        """The newest commit whose files are intact, with its arrays; older ones on failure."""
        commits = self.commits()
        for i, commit in enumerate(commits):
            try:
                arrays = self.load(commit)
            except ConfigError as exc:
                if warn:
                    fallback = "falling back to the previous one" if i + 1 < len(commits) else ""
                    warn(f"checkpoint unusable: {exc}; {fallback or 'no older checkpoint left'}")
                continue
            if i:  # forget the unusable newer commits, so none is ever kept as a fallback
                self._write_state(commits[i:], self.created())
            self.collect_garbage(commits[i:])
            return commit, arrays
        if commits:
            raise ConfigError(
                f"no intact checkpoint in {self.folder}; start a new run with another --run-id"
            )
        return None

    def load(self, commit: Commit) -> dict[str, list[np.ndarray]]:
        """The commit's arrays by group, after checking the file against its hash."""
        path = self.folder / commit.file
        for name in (commit.file, commit.best_file):
            if name and not (self.folder / name).is_file():
                raise ConfigError(f"{self.folder / name} is missing")
        if sha256_file(path) != commit.sha256:
            raise ConfigError(f"{path} does not match its SHA-256 in {self.state_path}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                groups: dict[str, list[np.ndarray]] = {g: [] for g in GROUPS}
                for key in sorted(npz.files):
                    group, _ = key.split(".", 1)
                    groups[group].append(npz[key])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ConfigError(f"{path} does not load ({exc})") from exc
        return groups

    def best_weights(self, commit: Commit) -> list[np.ndarray] | None:
        if commit.best_file is None:
            return None
        with np.load(self.folder / commit.best_file, allow_pickle=False) as npz:
            return [npz[k] for k in sorted(npz.files)]

    # Writing ------------------------------------------------------------------------------
    def save_best(self, epoch: int, weights: Sequence[np.ndarray]) -> str:
        """The classifier's weights at a new best epoch; referenced by the next commit."""
        name = f"best-epoch{epoch:04d}.weights.npz"
        atomic_save_npz(self.folder / name, **{f"w{i:05d}": w for i, w in enumerate(weights)})
        return name

    def commit(
        self,
        position: Position,
        arrays: dict[str, Sequence[np.ndarray]],
        best: float | None,
        best_epoch: int | None,
        best_file: str | None,
        created: str,
    ) -> Commit:
        name = f"step{position.step:08d}-b{position.batch}.npz"
        path = self.folder / name
        atomic_save_npz(
            path,
            **{
                f"{group}.{i:05d}": np.asarray(a)
                for group, values in arrays.items()
                for i, a in enumerate(values)
            },
        )
        commit = Commit(
            position=position,
            file=name,
            sha256=sha256_file(path),
            best=None if best is None or not math.isfinite(best) else float(best),
            best_epoch=best_epoch,
            best_file=best_file,
            saved=now_iso(),
        )
        older = [c for c in self._commits_or_none() if c.file != name]
        kept = [commit, *older[: KEEP - 1]]
        self._write_state(kept, created)
        self.collect_garbage(kept)
        return commit

    def _write_state(self, commits: Sequence[Commit], created: str | None) -> None:
        atomic_write_json(
            self.state_path,
            {"format": FORMAT, "created": created, "commits": [c.to_json() for c in commits]},
        )

    def collect_garbage(self, kept: Sequence[Commit] | None = None) -> None:
        """Remove checkpoint files no kept commit refers to (left by a kill before a commit)."""
        kept = self._commits_or_none() if kept is None else kept
        referenced = {c.file for c in kept} | {c.best_file for c in kept if c.best_file}
        for path in self.folder.glob("step*.npz"):
            if path.name not in referenced:
                path.unlink(missing_ok=True)
        for path in self.folder.glob("best-epoch*.weights.npz"):
            if path.name not in referenced:
                path.unlink(missing_ok=True)
        # Half-written files of a killed write (the run's lock is held, so none is in use).
        for path in self.folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _commits_or_none(self) -> list[Commit]:
        try:
            return self.commits()
        except ConfigError:
            return []


def save_weights_npz(model: Any, path: Path) -> None:
    atomic_save_npz(path, **{f"w{i:04d}": w for i, w in enumerate(model.get_weights())})


def load_weights_npz(model: Any, path: Path) -> None:
    with np.load(path, allow_pickle=False) as npz:
        model.set_weights([npz[k] for k in sorted(npz.files)])
