"""What `deepsight train` shows while it runs: the estimate, a live bar, a row per epoch.

On a terminal: a rich bar with the epoch's running loss and accuracy, and above it one table
row per epoch (the history.csv row). In a log or a pipe: plain lines, no redraws.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from deepsight_tf.core.progress import (
    EPOCH_FIELDS,
    RunEstimate,
    TrainingMonitor,
    epoch_line,
    estimate_line,
)


class TerminalMonitor(TrainingMonitor):
    """Rows and a live bar on a terminal; plain lines otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.bar: Progress | None = None
        self.task: Any = None
        self._header_shown = False

    def estimate(self, estimate: RunEstimate) -> None:
        self.console.print(f"[dim]{estimate_line(estimate)}[/]", highlight=False, soft_wrap=True)

    def step(self, done: int, total: int, logs: Mapping[str, float]) -> None:
        if self.bar is None:
            return
        running = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
        if self.task is None:
            self.task = self.bar.add_task("training", total=total, metrics=running)
        self.bar.update(self.task, completed=done, total=total, metrics=running)

    def epoch(self, row: Mapping[str, Any]) -> None:
        if not self.live:
            self.console.print(epoch_line(row), highlight=False, markup=False, soft_wrap=True)
            return
        present = [(key, short, spec) for key, short, spec in EPOCH_FIELDS if key in row]
        table = Table(box=None, show_header=not self._header_shown, pad_edge=False)
        for header in ("phase", "epoch", *(short for _, short, _ in present)):
            table.add_column(header, justify="right", min_width=8)
        table.add_row(
            str(row.get("phase")),
            str(row.get("epoch")),
            *(format(row[key], spec) for key, _, spec in present),
        )
        self._header_shown = True
        self.console.print(table)


@contextmanager
def training_display(console: Console) -> Iterator[TerminalMonitor]:
    """The monitor for `deepsight train`, with its bar drawn while the block runs."""
    monitor = TerminalMonitor(console)
    if not monitor.live:
        yield monitor
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        monitor.bar = bar
        yield monitor
