"""Context reliance: accuracy with the centre or the border occluded, and CAM mass on the centre."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np

from deepsight_tf.core.checks import verify_labels
from deepsight_tf.core.progress import Progress
from deepsight_tf.core.settings import DEFAULT_ALPHA, DEFAULT_N_BOOT
from deepsight_tf.diagnose.bootstrap import bootstrap_ci
from deepsight_tf.diagnose.interpret_record import CentreEnergy, ClassContext, ContextSummary

CONDITIONS = ("clean", "centre_occluded", "border_occluded")
# What the test takes "centre" and "border" to be: stored with every result, since on other
# images the same numbers mean something else.
ASSUMES = (
    "the object sits in the centre and its surroundings in the border, as in object-centred "
    "photos such as CIFAR-10's; where the object fills the frame (handwriting, textures), both "
    "regions are parts of it"
)


@dataclass(frozen=True)
class OcclusionGeometry:
    """A centred rectangle ("centre") and a frame ("border") of about the same pixel count.

    The centre has sides round(side * sqrt(centre_fraction)); the border is everything outside
    a centred rectangle of sides round(side * sqrt(1 - centre pixels / all pixels)), so each
    occlusion hides about the same area. On 32 px with 0.5: a 23 x 23 centre (529 px) and
    the frame outside the central 22 x 22 (540 px).
    """

    height: int
    width: int
    centre_fraction: float
    centre: tuple[int, int, int, int]  # top, left, bottom, right (exclusive) of the centre
    kept: tuple[int, int, int, int]  # the rectangle the border occlusion leaves visible
    centre_pixels: int
    border_pixels: int

    def centre_mask(self) -> np.ndarray:
        """(H, W) bool, True on the centre rectangle."""
        return _box_mask(self.height, self.width, self.centre)

    def border_mask(self) -> np.ndarray:
        """(H, W) bool, True on the frame."""
        return ~_box_mask(self.height, self.width, self.kept)

    def describe(self) -> str:
        top, left, bottom, right = self.centre
        k_top, k_left, k_bottom, k_right = self.kept
        return (
            f"centre {bottom - top}x{right - left} ({self.centre_pixels} px); border outside "
            f"the central {k_bottom - k_top}x{k_right - k_left} ({self.border_pixels} px) "
            f"of {self.height}x{self.width}"
        )


def _box_mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = True
    return mask


def _centred(height: int, width: int, box_h: int, box_w: int) -> tuple[int, int, int, int]:
    top, left = (height - box_h) // 2, (width - box_w) // 2
    return top, left, top + box_h, left + box_w


def occlusion_geometry(height: int, width: int, centre_fraction: float = 0.5) -> OcclusionGeometry:
    """The centre and border regions of an H x W image; see OcclusionGeometry."""
    if not 0.0 < centre_fraction < 1.0:
        raise ValueError(f"centre_fraction must lie in (0, 1). Received: {centre_fraction}")
    if height < 3 or width < 3:
        raise ValueError(f"images must be at least 3 x 3. Received: {height} x {width}")
    scale = math.sqrt(centre_fraction)
    box_h = min(height - 2, max(1, round(height * scale)))
    box_w = min(width - 2, max(1, round(width * scale)))
    centre_pixels = box_h * box_w
    keep = math.sqrt(1.0 - centre_pixels / (height * width))
    kept_h = min(height - 2, max(1, round(height * keep)))
    kept_w = min(width - 2, max(1, round(width * keep)))
    return OcclusionGeometry(
        height=height,
        width=width,
        centre_fraction=centre_fraction,
        centre=_centred(height, width, box_h, box_w),
        kept=_centred(height, width, kept_h, kept_w),
        centre_pixels=centre_pixels,
        border_pixels=height * width - kept_h * kept_w,
    )


def occlude(images: np.ndarray, mask: np.ndarray, fill: Sequence[float]) -> np.ndarray:
    """Copies of uint8 NHWC images with the masked pixels set to `fill` (one value a channel)."""
    out = np.array(images, copy=True)
    out[:, mask] = np.clip(np.round(np.asarray(fill, dtype=np.float64)), 0, 255).astype(out.dtype)
    return out


@dataclass
class ContextReliance:
    """Per-class and overall results of the occlusion test, and the classes it singles out."""

    geometry: OcclusionGeometry
    fill: tuple[float, ...]  # uint8 value a channel put on occluded pixels
    chance: float  # 1 / number of classes
    hold_margin: float
    ci_level: float
    overall: ClassContext
    classes: list[ClassContext]
    holds_without_object: list[str]
    above_chance_without_object: list[str]
    relies_on_context: list[str]  # context_gap CI above 0
    relies_on_object: list[str]  # context_gap CI below 0

    def summary(self, energy: CentreEnergy | None = None) -> ContextSummary:
        """What report.json keeps: every field, the geometry described, the test's
        assumption, and the CAMs' centre share where measured."""
        return ContextSummary(
            geometry={**asdict(self.geometry), "description": self.geometry.describe()},
            fill=[float(v) for v in self.fill],
            chance=self.chance,
            hold_margin=self.hold_margin,
            ci_level=self.ci_level,
            overall=self.overall,
            classes=list(self.classes),
            holds_without_object=list(self.holds_without_object),
            above_chance_without_object=list(self.above_chance_without_object),
            relies_on_context=list(self.relies_on_context),
            relies_on_object=list(self.relies_on_object),
            assumes=ASSUMES,
            cam_energy=energy,
        )


def _predict_labels(
    model: keras.Model,
    images: np.ndarray,
    preprocess_fn: Callable[[np.ndarray], Any],
    batch_size: int,
    task: str,
    progress: Progress | None,
) -> np.ndarray:
    predicted = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        outputs = model.predict_on_batch(preprocess_fn(images[start:stop]))
        predicted[start:stop] = np.argmax(np.asarray(outputs), axis=-1)
        if progress is not None:
            progress(task, stop, len(images))
    return predicted


def _mean_ci(correct: np.ndarray, n_boot: int, alpha: float, seed: int) -> tuple[float, ...]:
    if len(correct) == 0:
        return (math.nan, math.nan, math.nan)
    return bootstrap_ci(_mean_over_last, correct, n_boot=n_boot, alpha=alpha, seed=seed)


def _mean_over_last(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=-1)


def _class_context(
    name: str,
    correct: dict[str, np.ndarray],
    chance: float,
    hold_margin: float,
    n_boot: int,
    alpha: float,
    seed: int,
) -> ClassContext:
    clean, centre, border = (
        _mean_ci(correct[c].astype(np.float64), n_boot, alpha, seed) for c in CONDITIONS
    )
    gap = correct["centre_occluded"].astype(np.float64) - correct["border_occluded"]
    gap_ci = _mean_ci(gap, n_boot, alpha, seed)
    return ClassContext(
        name=name,
        n=len(gap),
        clean=clean[0],
        clean_ci=(clean[1], clean[2]),
        centre_occluded=centre[0],
        centre_occluded_ci=(centre[1], centre[2]),
        border_occluded=border[0],
        border_occluded_ci=(border[1], border[2]),
        context_gap=gap_ci[0],
        context_gap_ci=(gap_ci[1], gap_ci[2]),
        holds_without_object=bool(clean[0] - centre[0] <= hold_margin),
        above_chance_without_object=bool(centre[1] > chance),
    )


def _check_inputs(
    images_uint8: Any, labels: Any, k: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images_uint8)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(
            f"images_uint8 must be a non-empty uint8 NHWC batch. Received: "
            f"{images.dtype}{images.shape}"
        )
    if labels.shape != (len(images),):
        raise ValueError(f"labels must be {len(images)} integers. Received: {labels.shape}")
    verify_labels(labels, k, where="labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: {batch_size}")
    return images, labels


def _fill_values(images: np.ndarray, fill: Sequence[float] | None) -> tuple[float, ...]:
    """The occluder's colour per channel: `fill`, or the images' own mean, rounded to 0..255."""
    if fill is None:
        fill = images.mean(axis=(0, 1, 2))
    values = tuple(float(v) for v in np.clip(np.round(np.asarray(fill, float)), 0, 255))
    if len(values) != images.shape[-1]:
        raise ValueError(f"fill needs one value per channel. Received: {fill}")
    return values


def context_reliance(
    model: keras.Model,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    preprocess_fn: Callable[[np.ndarray], Any],
    class_names: Sequence[str],
    *,
    centre_fraction: float = 0.5,
    fill: Sequence[float] | None = None,
    hold_margin: float = 0.1,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> ContextReliance:
    """Accuracy per class on clean images, with the centre occluded and with the border occluded.

    Occlusion happens on the stored uint8 images (before `preprocess_fn` resizes and normalises
    them), with `fill` per channel, by default the images' own per-channel mean rounded: a flat
    average colour. Both regions hide about the same number of pixels (occlusion_geometry).
    A class "holds without the object" when its centre-occluded accuracy is within
    `hold_margin` of its clean accuracy; "above chance without the object" when the lower end
    of its centre-occluded CI exceeds 1 / K. The context gap (centre-occluded minus
    border-occluded accuracy, paired per image) says which region the class needs more.
    """
    images, labels = _check_inputs(images_uint8, labels, len(class_names), batch_size)
    geometry = occlusion_geometry(images.shape[1], images.shape[2], centre_fraction)
    fill_values = _fill_values(images, fill)
    k = len(class_names)
    versions = {
        "clean": images,
        "centre_occluded": occlude(images, geometry.centre_mask(), fill_values),
        "border_occluded": occlude(images, geometry.border_mask(), fill_values),
    }
    correct = {
        condition: _predict_labels(
            model, batch, preprocess_fn, batch_size, f"context reliance: {condition}", progress
        )
        == labels
        for condition, batch in versions.items()
    }
    chance = 1.0 / k
    per_class = [
        _class_context(
            name,
            {c: v[labels == i] for c, v in correct.items()},
            chance,
            hold_margin,
            n_boot,
            alpha,
            seed,
        )
        for i, name in enumerate(class_names)
    ]
    present = [c for c in per_class if c.n > 0]
    return ContextReliance(
        geometry=geometry,
        fill=fill_values,
        chance=chance,
        hold_margin=hold_margin,
        ci_level=1 - alpha,
        overall=_class_context("all", correct, chance, hold_margin, n_boot, alpha, seed),
        classes=per_class,
        holds_without_object=[c.name for c in present if c.holds_without_object],
        above_chance_without_object=[c.name for c in present if c.above_chance_without_object],
        relies_on_context=[c.name for c in present if c.context_gap_ci[0] > 0],
        relies_on_object=[c.name for c in present if c.context_gap_ci[1] < 0],
    )


# --- CAM energy -----------------------------------------------------------------------------------


def cam_energy(cams: np.ndarray, centre_fraction: float = 0.5) -> np.ndarray:
    """(N,) share of each map's mass on the centre rectangle (nan for an all-zero map).

    The rectangle is occlusion_geometry's at the maps' own size, so it covers the same part of
    the image as the occlusion test; a uniform map scores centre_pixels / (H * W).
    """
    cams = np.asarray(cams, dtype=np.float64)
    if cams.ndim != 3 or np.any(cams < 0):
        raise ValueError(
            f"cams must be non-negative (N, H, W) maps. Received: shape {cams.shape}, "
            f"min {cams.min() if cams.size else 'n/a'}"
        )
    centre = occlusion_geometry(cams.shape[1], cams.shape[2], centre_fraction).centre_mask()
    total = cams.sum(axis=(1, 2))
    inside = cams[:, centre].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def centre_energy_by_class(
    cams: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    centre_fraction: float = 0.5,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> CentreEnergy:
    """cam_energy per class (images grouped by `labels`), with percentile bootstrap CIs."""
    energy = cam_energy(cams, centre_fraction)
    labels = np.asarray(labels)
    if labels.shape != energy.shape:
        raise ValueError(f"labels must be one per map. Received: shape {labels.shape}")
    geometry = occlusion_geometry(cams.shape[1], cams.shape[2], centre_fraction)
    means, cis, counts = [], [], []
    for i in range(len(class_names)):
        values = energy[(labels == i) & np.isfinite(energy)]
        point, low, high = _mean_ci(values, n_boot, alpha, seed)
        means.append(point)
        cis.append((low, high))
        counts.append(len(values))
    return CentreEnergy(
        class_names=list(class_names),
        mean=means,
        ci=cis,
        n=counts,
        uniform=geometry.centre_pixels / (geometry.height * geometry.width),
        ci_level=1 - alpha,
    )
