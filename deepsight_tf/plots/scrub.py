"""Figures of the scrub phase: duplicate pairs side by side, and one image under each resize."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from deepsight_tf.plots import OKABE_ITO

PAIRS_PER_ROW = 4
CONFLICT_COLOUR = OKABE_ITO[3]  # vermillion: the two sides carry different labels


def duplicate_pairs_figure(
    images_a: Sequence[np.ndarray],
    images_b: Sequence[np.ndarray],
    sides_a: Sequence[tuple[str, int, str]],
    sides_b: Sequence[tuple[str, int, str]],
    distances: Sequence[float | None],
    title: str,
) -> Figure:
    """Each pair as two images side by side, captioned with split:index, label and distance.

    Pair i is `images_a[i]` and `images_b[i]`, each side described by (split, index within the
    split, label) in `sides_a[i]` and `sides_b[i]`; `distances[i]` is None for an identical
    pair. Pairs whose labels differ are drawn in the conflict colour.
    """
    pairs = list(zip(sides_a, sides_b, distances, strict=True))
    if not pairs:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no duplicates found", ha="center", va="center")
        ax.set_title(title)
        return fig
    rows = math.ceil(len(pairs) / PAIRS_PER_ROW)
    fig, axes = plt.subplots(
        rows, 2 * PAIRS_PER_ROW, figsize=(2 * PAIRS_PER_ROW * 1.3, rows * 1.75), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for n, ((side_a, side_b, distance), a, b) in enumerate(
        zip(pairs, images_a, images_b, strict=True)
    ):
        row, col = divmod(n, PAIRS_PER_ROW)
        colour = "black" if side_a[2] == side_b[2] else CONFLICT_COLOUR
        for side, (image, (split, index, label)) in enumerate(((a, side_a), (b, side_b))):
            ax = axes[row, 2 * col + side]
            ax.imshow(image, interpolation="nearest")
            ax.set_title(f"{split}:{index}\n{label}", fontsize=6.5, color=colour)
        caption = "identical" if distance is None else f"d={distance:.3f}"
        axes[row, 2 * col].text(
            1.0, -0.08, caption, transform=axes[row, 2 * col].transAxes, ha="center",
            va="top", fontsize=6.5, color=colour,
        )  # fmt: skip
    fig.suptitle(f"{title} (red: labels differ)", fontsize=9)
    fig.tight_layout()
    return fig


def interpolation_figure(
    source: np.ndarray,
    upsampled: Mapping[str, np.ndarray],
    reconstruction_rmse: Mapping[str, float],
    selected: str,
    image_size: int,
    rule: str,
) -> Figure:
    """The source image and its upsampled versions, full and as a zoomed centre crop.

    Each method of the study has its reconstruction RMSE in `reconstruction_rmse`; `selected`
    is the method the `rule` chose for `image_size` px.
    """
    names = ["source", *upsampled]
    fig, axes = plt.subplots(2, len(names), figsize=(1.9 * len(names), 4.0), squeeze=False)
    for col, name in enumerate(names):
        image = source if name == "source" else upsampled[name]
        h, w = image.shape[:2]
        crop = image[h // 4 : h // 4 + h // 4, w // 4 : w // 4 + w // 4]
        axes[0, col].imshow(image, interpolation="nearest")
        axes[1, col].imshow(crop, interpolation="nearest")
        if name == "source":
            label = f"source {w}x{h}"
        elif name in reconstruction_rmse:
            chosen = " (selected)" if name == selected else ""
            label = f"{name}{chosen}\nrecon. RMSE {reconstruction_rmse[name]:.1f}"
        else:
            label = name
        axes[0, col].set_title(label, fontsize=7, fontweight="bold" if name == selected else None)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[1, 0].set_ylabel("centre crop", fontsize=7)
    fig.suptitle(f"Upsampling to {image_size} px; rule: {rule}", fontsize=7.5, wrap=True)
    fig.tight_layout()
    return fig
