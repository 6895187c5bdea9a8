"""Figures of the scrub phase: duplicate pairs side by side, and one image under each resize."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from deepsight_tf.plots import OKABE_ITO

if TYPE_CHECKING:
    from deepsight_tf.data.interpolation import InterpolationStudy
    from deepsight_tf.data.scrub import DuplicatePair

PAIRS_PER_ROW = 4
CONFLICT_COLOUR = OKABE_ITO[3]  # vermillion: the two sides carry different labels


def duplicate_pairs_figure(
    pairs: Sequence[DuplicatePair],
    images_a: Sequence[np.ndarray],
    images_b: Sequence[np.ndarray],
    title: str,
) -> Figure:
    """Each pair as two images side by side, captioned with split:index, label and distance."""
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
    for n, (pair, a, b) in enumerate(zip(pairs, images_a, images_b, strict=True)):
        row, col = divmod(n, PAIRS_PER_ROW)
        colour = "black" if pair.same_label else CONFLICT_COLOUR
        for side, (image, split, index, label) in enumerate(
            (
                (a, pair.split_a, pair.index_a, pair.label_a),
                (b, pair.split_b, pair.index_b, pair.label_b),
            )
        ):
            ax = axes[row, 2 * col + side]
            ax.imshow(image, interpolation="nearest")
            ax.set_title(f"{split}:{index}\n{label}", fontsize=6.5, color=colour)
        caption = "identical" if pair.kind == "exact" else f"d={pair.distance:.3f}"
        axes[row, 2 * col].text(
            1.0, -0.08, caption, transform=axes[row, 2 * col].transAxes, ha="center",
            va="top", fontsize=6.5, color=colour,
        )  # fmt: skip
    fig.suptitle(f"{title} (red: labels differ)", fontsize=9)
    fig.tight_layout()
    return fig


def interpolation_figure(
    source: np.ndarray, upsampled: Mapping[str, np.ndarray], study: InterpolationStudy
) -> Figure:
    """The source image and its upsampled versions, full and as a zoomed centre crop."""
    rows = {r.method: r for r in study.rows}
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
        elif name in rows:
            row = rows[name]
            chosen = " (selected)" if row.selected else ""
            label = f"{name}{chosen}\nrecon. RMSE {row.reconstruction_rmse:.1f}"
        else:
            label = name
        axes[0, col].set_title(
            label, fontsize=7, fontweight="bold" if name == study.selected else None
        )
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[1, 0].set_ylabel("centre crop", fontsize=7)
    fig.suptitle(
        f"Upsampling to {study.image_size} px; rule: {study.rule}", fontsize=7.5, wrap=True
    )
    fig.tight_layout()
    return fig
