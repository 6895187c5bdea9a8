"""The figures a run draws of its own inputs: a training batch as fed, each phase's schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.workspace import BATCH_FIGURE, SCHEDULE_FIGURE
from deepsight_tf.model.preprocessing import Normalization
from deepsight_tf.training.plan import PhasePlan
from deepsight_tf.training.prepare import Prepared
from deepsight_tf.training.schedules import phase_schedule


def draw_inputs(
    run_dir: Path,
    prepared: Prepared,
    phases: list[PhasePlan],
    class_names: list[str],
    settings: TrainSettings,
    images: int = 32,
) -> None:
    """figures/batch.png, the run's first batch as fed to the model (augmented, resized,
    mixed, un-normalised for display), and figures/schedule.png, each phase's one cycle."""
    from deepsight_tf.plots import save_figure
    from deepsight_tf.plots.training import plot_batch, plot_schedule

    x, targets = next(iter(prepared.train_dataset(first_epoch=0)))[:2]
    norm = prepared.preprocessing.normalization
    shown = np.asarray(x[:images], np.float64)
    if isinstance(norm, Normalization):
        shown = shown * np.asarray(norm.std) + np.asarray(norm.mean)
    shown = np.clip(np.round(shown), 0, 255).astype(np.uint8)
    title = f"first training batch: {len(shown)} of {x.shape[0]} images at {x.shape[1]} px"
    figure = plot_batch(shown, np.asarray(targets[:images]), class_names, title)
    save_figure(figure, run_dir / BATCH_FIGURE)
    curves, starts, offset = [], [], 0
    for phase in phases:
        total = phase.total_steps(prepared.steps_per_epoch)
        steps, lrs, momenta = phase_schedule(settings, phase.peak_lr, total).curve()
        curves.append((steps + offset, lrs, momenta))
        starts.append(offset)
        offset += total
    steps, lrs, momenta = (np.concatenate(parts) for parts in zip(*curves, strict=True))
    title = f"one-cycle rate and momentum: {len(phases)} phase(s), {offset} steps"
    save_figure(plot_schedule(steps, lrs, momenta, starts[1:], title), run_dir / SCHEDULE_FIGURE)
