"""Figures of the explore phase: class balance, brightness and contrast, samples, class means."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from deepsight_tf.plots import OKABE_ITO

GAP_PX = 2  # white pixels between images in a mosaic
MEANS_PER_ROW = 10


def plot_class_balance(
    class_names: Sequence[str],
    counts: Mapping[str, Sequence[int]],
    p_values: Mapping[str, float | None],
) -> Figure:
    """Share of each class per split, against the uniform share, with each chi-square p-value.

    `counts` maps each split to its images per class (in `class_names` order); `p_values` maps
    it to the chi-square test's p-value of a uniform distribution (None: undefined).
    """
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * k + 2), 3.8))
    width = 0.8 / max(len(counts), 1)
    positions = np.arange(k)
    for i, (split, split_counts) in enumerate(counts.items()):
        values = np.asarray(split_counts, dtype=float)
        total = int(values.sum())
        share = 100 * values / max(total, 1)
        p_value = p_values[split]
        p = "n/a" if p_value is None else f"{p_value:.3g}"
        ax.bar(
            positions + (i - (len(counts) - 1) / 2) * width,
            share,
            width=width,
            color=OKABE_ITO[i % len(OKABE_ITO)],
            label=f"{split} (n={total:,}, chi-square p={p})",
        )
    ax.axhline(100 / k, color="0.3", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(
        positions, class_names, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center"
    )
    ax.set_ylabel("share of split (%)")
    ax.set_title("Class balance")
    # Outside the axes: with balanced classes every bar reaches the uniform line.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_brightness_contrast(
    class_names: Sequence[str],
    brightness: Sequence[np.ndarray],
    contrast: Sequence[np.ndarray],
) -> Figure:
    """Box plots per class of per-image mean luma and RMS contrast (whiskers at 1.5 IQR)."""
    k = len(class_names)
    fig, axes = plt.subplots(1, 2, figsize=(10, max(3.0, 0.35 * k + 1)), sharey=True)
    for ax, values, title in (
        (axes[0], brightness, "brightness (mean luma, 0..1)"),
        (axes[1], contrast, "RMS contrast (std of luma, 0..1)"),
    ):
        parts = ax.boxplot(
            list(values),
            orientation="horizontal",
            tick_labels=list(class_names),
            showfliers=False,
            patch_artist=True,
            medianprops={"color": "black"},
        )
        for box in parts["boxes"]:
            box.set_facecolor(OKABE_ITO[5])
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # first class at the top, as in the tables
    fig.suptitle("Brightness and contrast per class (train)")
    return fig


def plot_sample_grid(samples: Sequence[np.ndarray], class_names: Sequence[str]) -> Figure:
    """One row of images per class; `samples[i]` holds class i's images as (n, H, W, C) uint8."""
    if len(samples) != len(class_names) or not samples:
        raise ValueError(
            f"need one image array per class. Received: {len(samples)} arrays for "
            f"{len(class_names)} classes"
        )
    h, w = samples[0].shape[1:3]
    cols = max(max(len(s) for s in samples), 1)
    mosaic = _mosaic([list(s) for s in samples], cols, h, w)
    fig, ax = plt.subplots(figsize=(0.6 * cols + 1.5, 0.6 * len(samples) + 0.6))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([r * (h + GAP_PX) + h / 2 for r in range(len(samples))], class_names)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("Random training images per class")
    return fig


def plot_class_means(means: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The mean training image of each class (pixel-wise average, 0..255)."""
    if len(means) != len(class_names):
        raise ValueError(
            f"need one mean image per class. Received: {len(means)} for {len(class_names)} classes"
        )
    cols = min(len(class_names), MEANS_PER_ROW)
    rows = math.ceil(len(class_names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.3 * cols, 1.5 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.axis("off")
    images = np.clip(np.rint(means), 0, 255).astype(np.uint8)
    for ax, image, name in zip(axes.ravel(), images, class_names, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize="small")
    fig.suptitle("Mean image per class (train)")
    return fig


def _mosaic(rows: list[list[np.ndarray]], cols: int, h: int, w: int) -> np.ndarray:
    """Tile images into one array with white gaps; short rows are padded with white."""
    out = np.full(
        (len(rows) * (h + GAP_PX) - GAP_PX, cols * (w + GAP_PX) - GAP_PX, 3), 255, dtype=np.uint8
    )
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            y, x = r * (h + GAP_PX), c * (w + GAP_PX)
            out[y : y + h, x : x + w] = image
    return out
