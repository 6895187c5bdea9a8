"""Training figures: the LR range test, the OneCycle schedule, per-epoch history curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from deepsight_tf.plots import OKABE_ITO

if TYPE_CHECKING:
    from deepsight_tf.train.lr_finder import LRFinderResult


def plot_lr_finder(result: LRFinderResult) -> Figure:
    """Loss (raw and smoothed) against learning rate on a log axis, with the suggestion."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color=OKABE_ITO[0], alpha=0.35, label="loss")
    ax.plot(result.lrs, result.smoothed, color=OKABE_ITO[0], label="smoothed loss")
    ax.axvline(
        result.suggestion,
        color=OKABE_ITO[3],
        linestyle="--",
        label=f"suggested lr {result.suggestion:.2g} ({result.method})",
    )
    ax.set_xscale("log")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    # Keep the blow-up at the end from flattening the descent that matters.
    top = min(float(np.max(finite)), 2.0 * float(finite[0]))
    ax.set_ylim(bottom=float(np.min(finite)) * 0.95, top=top * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend()
    return fig


def plot_schedule(steps: np.ndarray, lrs: np.ndarray, momenta: np.ndarray) -> Figure:
    """Learning rate and momentum per optimizer step (e.g. `OneCycle.curve()`)."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    ax.plot(steps, lrs, color=OKABE_ITO[0], label="learning rate")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate", color=OKABE_ITO[0])
    twin = ax.twinx()
    twin.plot(steps, momenta, color=OKABE_ITO[1], label="momentum")
    twin.set_ylabel("momentum", color=OKABE_ITO[1])
    ax.set_title("OneCycle schedule")
    return fig


def plot_history(
    history: Mapping[str, Sequence[float]],
    metrics: Sequence[str] = ("loss", "accuracy", "macro_f1"),
) -> Figure:
    """One panel per metric with its train and validation ("val_" prefixed) values per epoch.

    Metrics missing from `history` (a Keras `History.history` or the columns of
    history.csv) are skipped.
    """
    present = [m for m in metrics if m in history or f"val_{m}" in history]
    if not present:
        raise ValueError(
            f"None of {list(metrics)} is in `history`. Received: keys={sorted(history)}"
        )
    fig = Figure(figsize=(4.0 * len(present), 3.4))
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    for ax, metric in zip(axes, present, strict=True):
        for key, colour, label in ((metric, 0, "train"), (f"val_{metric}", 1, "validation")):
            if key in history:
                values = np.asarray(history[key], dtype=float)
                ax.plot(
                    np.arange(1, len(values) + 1),
                    values,
                    color=OKABE_ITO[colour],
                    marker="o",
                    label=label,
                )
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    return fig
