"""Training figures: the LR range test, the OneCycle schedule, per-epoch history curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from deepsight_tf.plots import OKABE_ITO


def plot_lr_finder(
    lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, suggestion: float, method: str
) -> Figure:
    """Loss (raw and smoothed) against learning rate on a log axis, with the suggested rate
    (found by `method`)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color=OKABE_ITO[0], alpha=0.35, label="loss")
    ax.plot(lrs, smoothed, color=OKABE_ITO[0], label="smoothed loss")
    ax.axvline(
        suggestion,
        color=OKABE_ITO[3],
        linestyle="--",
        label=f"suggested lr {suggestion:.2g} ({method})",
    )
    ax.set_xscale("log")
    smoothed = np.asarray(smoothed)
    finite = smoothed[np.isfinite(smoothed)]
    # Keep the blow-up at the end from flattening the descent that matters.
    top = min(float(np.max(finite)), 2.0 * float(finite[0]))
    ax.set_ylim(bottom=float(np.min(finite)) * 0.95, top=top * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend()
    return fig


def plot_schedule(
    steps: np.ndarray,
    lrs: np.ndarray,
    momenta: np.ndarray,
    phase_starts: Sequence[int] = (),
    title: str = "OneCycle schedule",
) -> Figure:
    """Learning rate and momentum per optimizer step (e.g. `OneCycle.curve()`); dashed lines
    where a later phase (with its own cycle) starts."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    ax.plot(steps, lrs, color=OKABE_ITO[0], label="learning rate")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate", color=OKABE_ITO[0])
    twin = ax.twinx()
    twin.plot(steps, momenta, color=OKABE_ITO[1], label="momentum")
    twin.set_ylabel("momentum", color=OKABE_ITO[1])
    for start in phase_starts:
        ax.axvline(start, color="0.5", linestyle="--", linewidth=1)
    ax.set_title(title)
    return fig


def plot_batch(
    images: np.ndarray, targets: np.ndarray, class_names: Sequence[str], title: str
) -> Figure:
    """A training batch as the model is fed it (uint8 after augmentation, resize and mixing),
    each image titled with its target's largest shares ("cat 0.70 / dog 0.30" after mixing)."""
    n = len(images)
    cols = min(8, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(1.7 * cols, 1.9 * rows + 0.4))
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i], interpolation="nearest")
        order = np.argsort(-targets[i])[:2]
        shares = [f"{class_names[c]} {targets[i][c]:.2f}" for c in order if targets[i][c] >= 0.05]
        ax.set_title("\n".join(shares), fontsize=7)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
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
