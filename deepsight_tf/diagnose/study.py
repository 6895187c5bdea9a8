"""What interpret's steps share: the run, its data and predictions, and where figures go."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.progress import Progress
from deepsight_tf.core.settings import InterpretSettings
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.data.dataset import Dataset
from deepsight_tf.training.record import RunRecord


def stratified_sample(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Up to n indices with the classes as equal as possible (all when n is None or large)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for pool in per_class:
            if depth < len(pool) and len(chosen) < n:
                chosen.append(int(pool[depth]))
        depth += 1
    return np.sort(np.asarray(chosen))


@dataclass
class Study:
    """What every step of interpret reads, and where it puts its figures and timings."""

    settings: InterpretSettings
    workspace: Workspace
    record: RunRecord
    model: Any  # the run's classifier, loaded before anything is written
    data: Dataset
    predictions: dict[str, np.ndarray]
    out: Path
    progress: Progress | None
    # --ensemble-with: the other run's id and its stored predictions
    ensemble: tuple[str, dict[str, np.ndarray]] | None = None
    figures: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.predictions["test_labels"]

    @property
    def probs(self) -> np.ndarray:
        return self.predictions["test_probs"]

    @property
    def names(self) -> list[str]:
        return self.data.class_names

    @property
    def boot(self) -> dict[str, int]:
        return {"n_boot": self.settings.n_boot, "seed": self.settings.seed}

    def figure(self, fig: Any, name: str) -> None:
        """Save `fig` as `name`, a figure's path in the interpret folder (core/workspace.py)."""
        from deepsight_tf.plots import save_figure

        self.figures.append(str(save_figure(fig, self.out / name)))

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        self.timings[name] = round(time.perf_counter() - start, 2)
        return value
