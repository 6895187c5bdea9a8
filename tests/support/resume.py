"""What a resumed run must equal: settings with every kind of state a resume restores, the
outcome of a run (everything that must not depend on interruptions), and the comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.storage import read_json
from deepsight_tf.core.workspace import (
    CHECKPOINTS_DIR,
    HISTORY_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
)
from deepsight_tf.training.history import read_history

from support.separable import tiny


def two_phases(**overrides: object) -> TrainSettings:
    """Head phase then all stages, pixel augmentation and dropout on: every kind of state a
    resume must restore. 13 steps an epoch, 3 epochs."""
    base: dict[str, object] = dict(
        frozen_epochs=1,
        epochs=2,
        augment="light",
        deterministic=True,
        checkpoint_minutes=0,
    )
    base.update(overrides)
    return tiny(**base)


def outcome(run_dir: Path, final: str = "phase2.end.weights.npz") -> dict[str, object]:
    """Everything a run produces that must not depend on interruptions (`final`: the last
    phase's end weights)."""
    predictions = np.load(run_dir / PREDICTIONS_FILE)
    metrics = read_json(run_dir / METRICS_FILE)
    history = [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in read_history(run_dir / HISTORY_FILE)
    ]
    final = np.load(run_dir / CHECKPOINTS_DIR / final)
    return {
        "test_probs": predictions["test_probs"],
        "val_probs": predictions["val_probs"],
        "final_weights": [final[k] for k in sorted(final.files)],
        "val": metrics["val"],
        "test": metrics["test"],
        "best_epoch": metrics["best_epoch"],
        "history": history,
    }


def assert_same_outcome(got: dict[str, object], want: dict[str, object]) -> None:
    for key in ("test_probs", "val_probs"):
        np.testing.assert_array_equal(got[key], want[key])
    for a, b in zip(got["final_weights"], want["final_weights"], strict=True):  # type: ignore[call-overload]
        np.testing.assert_array_equal(a, b)
    assert got["history"] == want["history"]
    assert (got["val"], got["test"], got["best_epoch"]) == (
        want["val"],
        want["test"],
        want["best_epoch"],
    )


def crash_after_commit(monkeypatch: object, epoch: int, crash: type[Exception]) -> None:
    """The process dies right after the commit at the end of `epoch` (from 0, within its
    phase): the commit is on disk, nothing after it is."""
    from deepsight_tf.training.events import CommitEpoch

    original = CommitEpoch.epoch_end

    def commit_then_crash(self, learner, end):  # type: ignore[no-untyped-def]
        original(self, learner, end)
        if end.epoch == epoch:
            raise crash

    monkeypatch.setattr(CommitEpoch, "epoch_end", commit_then_crash)  # type: ignore[attr-defined]
