"""How the library reports while it works, without printing: callbacks the caller supplies."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Progress = Callable[[str, int, int], None]
"""progress(task, completed, total): called as a long task advances (files read, steps run)."""

Notify = Callable[[str], None]
"""notify(message): a one-line note for the user (an estimate, a phase starting, a warning)."""


_IMPORTED = time.monotonic()


@dataclass
class RunEstimate:
    """How long a training run should take, and how that was measured."""

    seconds_per_step: float
    steps: int  # optimizer steps in the whole run (every phase)
    train_seconds: float
    eval_seconds: float  # scoring validation and test at the end
    total_seconds: float
    measured: str  # e.g. "5 training steps timed after 2 warm-up steps, batch 128, 2 CPUs"


class TrainingMonitor:
    """What a training run reports as it goes; override the hooks you want.

    The command line draws them with rich (a live bar, a table row per epoch); a notebook can
    print them (`deepsight_tf.PrintMonitor`). Every hook is called from the training thread.
    """

    def estimate(self, estimate: RunEstimate) -> None:
        """Once, before the first epoch."""

    def step(self, done: int, total: int, logs: Mapping[str, float]) -> None:
        """After every optimizer step: running loss and accuracy of the epoch so far."""

    def epoch(self, row: Mapping[str, Any]) -> None:
        """After every epoch: the row just written to history.csv."""


class PrintMonitor(TrainingMonitor):
    """Plain lines: the estimate, then one line per epoch (notebooks, logs)."""

    def __init__(self, write: Callable[[str], Any] = print) -> None:
        self.write = write

    def estimate(self, estimate: RunEstimate) -> None:
        self.write(estimate_line(estimate))

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.write(epoch_line(row))


def estimate_line(estimate: RunEstimate) -> str:
    return (
        f"estimate: about {estimate.total_seconds / 60:.1f} min ({estimate.steps} steps at "
        f"{estimate.seconds_per_step * 1000:.0f} ms, then {estimate.eval_seconds:.0f} s of "
        f"scoring), from {estimate.measured}"
    )


EPOCH_FIELDS = (
    ("loss", "loss", ".4f"),
    ("accuracy", "acc", ".4f"),
    ("val_loss", "val_loss", ".4f"),
    ("val_accuracy", "val_acc", ".4f"),
    ("val_macro_f1", "val_F1", ".4f"),
    ("lr_end", "lr", ".3g"),
    ("seconds", "s", ".1f"),
)


def epoch_line(row: Mapping[str, Any]) -> str:
    """One history row as a log line: phase, epoch, train and validation metrics, rate, time."""
    parts = [f"phase {row.get('phase')} epoch {row.get('epoch')}"]
    parts += [f"{short} {row[key]:{spec}}" for key, short, spec in EPOCH_FIELDS if key in row]
    return "  ".join(parts)


def command_seconds() -> float:
    """Seconds since this process started (Linux's /proc), else since deepsight was imported:
    a --budget counts the whole command, imports and data loading included."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - int(fields[19]) / ticks, 0.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED
