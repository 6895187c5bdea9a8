"""Which run a run id names, and whether a command may continue it: --resume only ever
continues (an id with no run is an error, never a new run), --resume-or-start continues or
starts, an id that holds work is never trained over, and an interruption says what it left
and the command that continues from it."""

from __future__ import annotations

import signal
from dataclasses import asdict, replace
from pathlib import Path

from deepsight_tf.core.errors import (
    ConfigError,
    PrerequisiteError,
    StaleArtifactError,
    TrainingInterrupted,
    short_list,
)
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.storage import read_json
from deepsight_tf.core.workspace import CHECKPOINTS_DIR, CONFIG_FILE, MANIFEST, Workspace
from deepsight_tf.training.callbacks import RunControl
from deepsight_tf.training.checkpoints import CheckpointStore

# Settings that may differ on --resume: they do not change what the run computes.
RESUME_FREE = frozenset(
    {"resume", "resume_or_start", "run_id", "checkpoint_minutes", "keep_checkpoints", "estimate"}
)


def continuation(settings: TrainSettings, workspace: Workspace) -> TrainSettings:
    """`resume` only ever continues: a run id with no run is an error that lists the runs
    that can be resumed, never a fresh run under that id. `resume_or_start` (a script that
    reruns, such as make all) becomes `resume` when the run exists and a new run when not."""
    flag = "--resume" if settings.resume else "--resume-or-start"
    if not (settings.resume or settings.resume_or_start):
        return settings
    if not settings.run_id:
        raise ConfigError(f"{flag} needs the --run-id of the run to continue")
    exists = (workspace.run_dir(settings.run_id) / CONFIG_FILE).is_file()
    if settings.resume_or_start:
        return replace(settings, resume=exists, resume_or_start=False)
    if not exists:
        raise PrerequisiteError(
            f"--resume: no run '{settings.run_id}' to continue in {workspace.runs_dir()} "
            f"(unfinished runs: {short_list(workspace.unfinished_runs())}); check the id, or "
            "drop --resume to start a new run"
        )
    return settings


def refuse_existing(run_dir: Path, run_id: str, resume: bool) -> None:
    """A complete run, or one with committed steps, keeps its id (--resume continues the
    latter). A run that stopped before its first commit holds nothing to keep: it starts over,
    so a rejected setting or an early crash never blocks its id."""
    if resume or not holds_work(run_dir):
        return
    if (run_dir / MANIFEST).is_file():
        raise ConfigError(f"run {run_id} is already complete at {run_dir}; choose another --run-id")
    raise ConfigError(
        f"run {run_id} exists at {run_dir} (unfinished); pass --resume to continue it "
        "or choose another --run-id"
    )


def holds_work(run_dir: Path) -> bool:
    """A complete run, or an unfinished one with committed steps: work its id must not lose."""
    if (run_dir / MANIFEST).is_file():
        return True
    return (run_dir / CONFIG_FILE).is_file() and bool(
        CheckpointStore(run_dir / CHECKPOINTS_DIR).commits()
    )


def resumable_settings(
    run_dir: Path, settings: TrainSettings, explicit: set[str] | None
) -> TrainSettings:
    """The run's stored settings, refusing given ones that differ (those that do not change
    the result, such as how often to checkpoint, may differ)."""
    try:
        stored = read_json(run_dir / CONFIG_FILE)["settings"]
        if not isinstance(stored, dict):
            raise TypeError(f"settings is a JSON {type(stored).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StaleArtifactError(
            f"{run_dir / CONFIG_FILE} is unreadable ({exc!r}); the run cannot be resumed: start "
            "a new run with another --run-id"
        ) from exc
    current = asdict(settings)
    given = set(current) if explicit is None else explicit
    changed = sorted(k for k in given - RESUME_FREE if k in stored and stored[k] != current[k])
    if changed:
        raise ConfigError(
            f"--resume with different settings ({', '.join(changed)}) than "
            f"{run_dir / CONFIG_FILE}; drop them or rerun with the original values"
        )
    # Free settings typed now win; every other setting is the stored run's.
    overridden = (given & RESUME_FREE) | {"resume", "resume_or_start", "run_id"}
    kept = {k: v for k, v in stored.items() if k in current and k not in overridden}
    return replace(settings, **kept)


def interrupted(
    control: RunControl, run_dir: Path, workspace: str, run_id: str
) -> TrainingInterrupted:
    """What a stop left and the command that continues from it. Before the first commit (a
    stop during the set-up or the probe) nothing was trained: with config.json written,
    --resume starts the run over with its settings; without, the same command does."""
    signum = control.stop_signal or signal.SIGINT
    resume = f"deepsight --workspace {workspace} train --run-id {run_id} --resume"
    if CheckpointStore(run_dir / CHECKPOINTS_DIR).commits():
        where = control.last_commit.position.describe() if control.last_commit else "resumed"
        return TrainingInterrupted(
            f"interrupted at step {control.step} ({where}); saved in "
            f"{run_dir / CHECKPOINTS_DIR}; continue with: {resume}",
            signum,
        )
    if (run_dir / CONFIG_FILE).is_file():
        return TrainingInterrupted(
            f"interrupted before the first step; nothing to save; start it with: {resume}", signum
        )
    return TrainingInterrupted(
        "interrupted before the first step; nothing was written; run the same command again",
        signum,
    )
