"""Figures of the explanations: CAM overlays and grids, faithfulness curves, context, sanity."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import scipy.ndimage
from matplotlib.figure import Figure

from deepsight_tf.plots import HEATMAP_CMAP, OKABE_ITO

OVERLAY_ALPHA = 0.45  # share of the heat map in an overlay; the image stays readable beneath


def _as_unit_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (H, W, 1 or 3). Received: {image.dtype}{image.shape}"
        )
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    return rgb.astype(np.float64) / 255.0


def _resize_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"cam must be one (H, W) map. Received: shape {cam.shape}")
    if cam.shape != (height, width):
        cam = scipy.ndimage.zoom(cam, (height / cam.shape[0], width / cam.shape[1]), order=1)
    return np.clip(cam, 0.0, 1.0)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1]: the uint8 image blended with the map in the viridis colours.

    The map (values in [0, 1], any size) is resized linearly to the image, which keeps its
    native resolution, so a 64 px model's map lies over the stored 32 px picture.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]. Received: {alpha}")
    rgb = _as_unit_rgb(image)
    heat = matplotlib.colormaps[HEATMAP_CMAP](_resize_map(cam, *rgb.shape[:2]))[..., :3]
    return (1.0 - alpha) * rgb + alpha * heat


def plot_cam_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    cams: Sequence[np.ndarray] | np.ndarray,
    titles: Sequence[str],
    *,
    pairs_per_row: int = 4,
    suptitle: str | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> Figure:
    """Rows of (image, overlay) pairs, each pair under its title, with one shared colour bar.

    The caller picks the images (per class right and wrong, top losses, a confused pair).
    """
    if not len(images) == len(cams) == len(titles) or len(images) == 0:
        raise ValueError(
            "images, cams and titles need the same non-zero length. "
            f"Received: {len(images)}, {len(cams)}, {len(titles)}"
        )
    columns = min(pairs_per_row, len(images))
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(
        rows, 2 * columns, figsize=(2.9 * columns, 1.7 * rows + 0.6), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, cam, title) in enumerate(zip(images, cams, titles, strict=True)):
        row, column = divmod(i, columns)
        left, right = axes[row, 2 * column], axes[row, 2 * column + 1]
        left.imshow(_as_unit_rgb(image), interpolation="nearest")
        right.imshow(cam_overlay(image, cam, alpha), interpolation="nearest")
        left.set_title(title, fontsize="small", loc="left")
    mappable = matplotlib.cm.ScalarMappable(
        norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=HEATMAP_CMAP
    )
    fig.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label="map value")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _mean_band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean curve and the half-width of its normal 95% interval (1.96 standard errors)."""
    mean = curves.mean(axis=0)
    if len(curves) < 2:
        return mean, np.zeros_like(mean)
    return mean, 1.96 * curves.std(axis=0, ddof=1) / math.sqrt(len(curves))


def plot_deletion_insertion(
    curves: Mapping[str, Mapping[str, np.ndarray]], baseline: str
) -> Figure:
    """Mean deletion and insertion curves per method against the random order, with 95% bands.

    `curves` maps each method, and "random" (the reference), to its "fractions" (the share of
    pixels removed or revealed at each step), its "deletion" and "insertion" curves (one row
    per image) and their per-image "deletion_auc" and "insertion_auc". `baseline` names what
    removed pixels become.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    chance = curves["random"]
    fractions = chance["fractions"]
    methods = [name for name in curves if name != "random"]
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for i, name in enumerate(methods):
            mean, band = _mean_band(curves[name][kind])
            colour = OKABE_ITO[i % len(OKABE_ITO)]
            auc = float(np.mean(curves[name][f"{kind}_auc"]))
            ax.plot(fractions, mean, color=colour, label=f"{name} (AUC {auc:.3f})")
            ax.fill_between(fractions, mean - band, mean + band, color=colour, alpha=0.2)
        mean, band = _mean_band(chance[kind])
        auc = float(np.mean(chance[f"{kind}_auc"]))
        ax.plot(fractions, mean, color="0.2", linestyle="--", label=f"random (AUC {auc:.3f})")
        ax.fill_between(fractions, mean - band, mean + band, color="0.5", alpha=0.15)
        verb = "removed" if kind == "deletion" else "revealed"
        ax.set_xlabel(f"share of pixels {verb}, in map order")
        ax.set_title(
            f"{kind.capitalize()} ({'lower' if kind == 'deletion' else 'higher'} is better)"
        )
        ax.legend(fontsize="small")
    axes[0].set_ylabel("probability of the target class")
    fig.suptitle(f"Faithfulness: removed pixels become the {baseline} baseline")
    return fig


def _errors(points: Sequence[float], cis: Sequence[tuple[float, float]]) -> np.ndarray:
    points_arr = np.asarray(points, dtype=float)
    cis_arr = np.asarray(cis, dtype=float).reshape(-1, 2)
    return np.clip(np.stack([points_arr - cis_arr[:, 0], cis_arr[:, 1] - points_arr]), 0, None)


# The occlusion test's conditions, in the order of the rows plot_context_reliance takes.
CONDITION_LABELS = (
    "clean",
    "centre occluded (object hidden)",
    "border occluded (context hidden)",
)


def plot_context_reliance(
    class_names: Sequence[str],
    accuracy: np.ndarray,
    accuracy_ci: np.ndarray,
    *,
    chance: float,
    ci_level: float,
    geometry: str,
    centre_share: Sequence[float] | None = None,
    centre_share_ci: Sequence[tuple[float, float]] | None = None,
    uniform_share: float | None = None,
) -> Figure:
    """Per-class accuracy clean / centre occluded / border occluded with CIs; CAM centre share.

    `accuracy` is (3, classes), one row per condition of CONDITION_LABELS, and `accuracy_ci`
    (3, classes, 2) their intervals; `geometry` describes the occluded regions. With
    `centre_share` (each class's mean share of CAM mass on the centre, its intervals in
    `centre_share_ci`) a second panel shows it against `uniform_share`, a uniform map's.
    """
    positions = np.arange(len(class_names))
    panels = 2 if centre_share is not None else 1
    fig, axes = plt.subplots(
        panels, 1, figsize=(max(9.0, 0.8 * len(class_names) + 4), 3.6 * panels), squeeze=False
    )
    ax = axes[0, 0]
    width = 0.27
    for i, label in enumerate(CONDITION_LABELS):
        ax.bar(
            positions + (i - 1) * width,
            accuracy[i],
            width,
            yerr=_errors(accuracy[i], accuracy_ci[i]),
            color=OKABE_ITO[i],
            label=label,
            capsize=2,
        )
    ax.axhline(chance, color="0.3", linestyle="--", linewidth=1, label="chance")
    tilt = 45 if len(class_names) > 6 else 0
    ax.set_xticks(positions, class_names, rotation=tilt, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Context reliance ({geometry}; {100 * ci_level:.0f}% CIs)", fontsize="medium")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if centre_share is not None:
        ax = axes[1, 0]
        ax.bar(
            positions,
            centre_share,
            0.5,
            yerr=None if centre_share_ci is None else _errors(centre_share, centre_share_ci),
            color=OKABE_ITO[5],
            capsize=2,
            label="mean share of CAM mass on the centre",
        )
        ax.axhline(uniform_share, color="0.3", linestyle="--", linewidth=1, label="uniform map")
        ax.set_xticks(positions, class_names, rotation=tilt)
        ax.set_ylim(0, 1.0)
        ax.set_ylabel("CAM mass on centre")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_sanity_check(
    method: str,
    groups: Sequence[str],
    spearman: np.ndarray,
    mean_spearman: Sequence[float],
    threshold: float,
    flagged_steps: Sequence[str],
    original_maps: np.ndarray,
    randomised_maps: np.ndarray,
    images: np.ndarray | None = None,
) -> Figure:
    """Spearman of the maps to the trained model's per cascade step, and example maps.

    Step k randomises `groups[0..k]`; `spearman` is (steps, images) with nan where a trained
    map is constant; the steps whose mean exceeds `threshold` are `flagged_steps`. The examples:
    `original_maps` (n, H, W), `randomised_maps` (steps, n, H, W) and their `images`.
    """
    steps = len(groups)
    examples = len(original_maps)
    fig = plt.figure(figsize=(max(7.0, 1.6 * (steps + 2)), 3.4 + 1.8 * examples))
    grid = fig.add_gridspec(
        1 + examples, steps + 2, height_ratios=[2.0] + [1.0] * examples, hspace=0.45
    )
    ax = fig.add_subplot(grid[0, :])
    labels = [f"+ {g}" for g in groups]
    for step in range(steps):
        values = spearman[step]
        values = values[np.isfinite(values)]
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(step + jitter[: len(values)], values, s=8, color=OKABE_ITO[0], alpha=0.4)
    ax.plot(range(steps), mean_spearman, marker="o", color=OKABE_ITO[1], label="mean")
    ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1, label="threshold")
    ax.set_xticks(range(steps), labels)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman to trained map")
    verdict = f"flagged: {', '.join(flagged_steps)}" if flagged_steps else "passed"
    ax.set_title(f"Sanity check ({method}, cascading randomisation): {verdict}")
    ax.legend(fontsize="small")
    for row in range(examples):
        columns = [original_maps[row], *randomised_maps[:, row]]
        titles = ["trained", *labels]
        if images is not None:
            image_ax = fig.add_subplot(grid[1 + row, 0])
            image_ax.imshow(_as_unit_rgb(images[row]), interpolation="nearest")
            image_ax.axis("off")
        for column, (cam, title) in enumerate(zip(columns, titles, strict=True)):
            map_ax = fig.add_subplot(grid[1 + row, column + 1])
            map_ax.imshow(cam, cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
            map_ax.axis("off")
            if row == 0:
                map_ax.set_title(title, fontsize="small")
    return fig
