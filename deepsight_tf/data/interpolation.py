"""The interpolation study: which tf.image.resize method upsamples the images to training size.

Each method is measured on the same seeded sample of training images:

- reconstruction error (the rule's measure): shrink each image by the upsampling factor with
  area averaging (how a sensor with larger pixels would have seen it), upsample it back with
  the method and compare with the real image. This is the one measure with a known right
  answer, and it charges a method for both blur (lost detail) and invented detail (ringing,
  blocks) wherever the real image has neither.
- round-trip error: upsample to the training size, area-average back down, compare with the
  source. Low means no source information was lost; it cannot see invented detail (nearest
  neighbour is exact here by construction), so it is context, not the rule.
- high-frequency energy retained: energy in the upper half of the source's frequency band
  (1/4 to 1/2 cycle per source pixel) after upsampling, over that of the source; 1 is ideal.
- overshoot: share of upsampled values more than 1 grey level outside the range of the 2x2
  source pixels around them (ringing halos that the source does not contain).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sp_fft

# The contest the issue sets: bilinear against bicubic. The other methods are measured as
# context (nearest and area replicate pixels; lanczos3 is the sharper, wider-ringing kernel).
CANDIDATES = ("bilinear", "bicubic")
CONTEXT = ("nearest", "area", "lanczos3")
METHODS = CANDIDATES + CONTEXT
CHUNK = 64  # images per step: bounds memory at large --image-size
# The reconstruction protocol shrinks by the training factor, capped so the shrunken image
# keeps enough pixels (a 224 px target would otherwise leave 4.6 px of a 32 px image).
MAX_PROTOCOL_FACTOR = 4.0
OVERSHOOT_TOLERANCE = 1.0  # grey levels: rounding-level excursions are not ringing
RULE = (
    f"lowest reconstruction error among {' and '.join(CANDIDATES)} (shrink by the upsampling "
    f"factor with area averaging, upsample back, compare with the real image); "
    f"{', '.join(CONTEXT)} are context"
)
NO_UPSAMPLING_RULE = (
    "no upsampling: images are already at least --image-size, so area averaging (the "
    "alias-free downsampler) is used"
)


@dataclass
class InterpolationRow:
    method: str
    reconstruction_rmse: float  # grey levels (0..255), lower is better: the rule's measure
    round_trip_rmse: float  # grey levels, up to --image-size and area-averaged back
    high_freq_retained: float  # 1.0 = the source's high-frequency energy kept exactly
    overshoot_pct: float  # % of upsampled values beyond their 2x2 source neighbourhood
    candidate: bool  # competes for selection; otherwise context
    selected: bool = False


@dataclass
class InterpolationStudy:
    source_size: list[int]
    image_size: int
    sample: int
    seed: int
    protocol_size: list[int]  # the shrunken size the reconstruction protocol starts from
    rows: list[InterpolationRow] = field(default_factory=list)
    selected: str = "bilinear"
    rule: str = RULE


def resize(images: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """tf.image.resize of (N, H, W, C) images to `size`, float32 and unclipped (overshoot shows)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Received: {method!r}")
    import tensorflow as tf  # deferred: importing TensorFlow takes seconds

    out = tf.image.resize(tf.convert_to_tensor(images, tf.float32), size, method=method)
    return out.numpy()


def _hann(n: int) -> np.ndarray:
    return np.hanning(n + 2)[1:-1].astype(np.float32)


def high_band_energy(images: np.ndarray, source_shape: tuple[int, int]) -> float:
    """Mean power in the band 1/4..1/2 cycle per *source* pixel (either axis), Hann-windowed.

    Frequencies are measured in cycles per source pixel, so a source image and its upsampled
    version are compared on the same physical band.
    """
    n, height, width, _ = images.shape
    x = images - images.mean(axis=(1, 2), keepdims=True)
    x = x * (_hann(height)[:, None] * _hann(width)[None, :])[None, :, :, None]
    power = np.abs(sp_fft.fft2(x, axes=(1, 2), workers=-1)) ** 2 / float(height * width) ** 2
    fy = np.abs(np.fft.fftfreq(height)) * height / source_shape[0]
    fx = np.abs(np.fft.fftfreq(width)) * width / source_shape[1]
    extent = np.maximum(fy[:, None], fx[None, :])
    band = (extent > 0.25) & (extent <= 0.5)
    return float(power[:, band, :].sum() / n)


def overshoot_fraction(source: np.ndarray, upsampled: np.ndarray) -> float:
    """Share of upsampled values beyond the min..max of the 2x2 source pixels around them."""
    _, h, w, _ = source.shape
    _, big_h, big_w, _ = upsampled.shape

    def neighbours(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        # Half-pixel centres, as tf.image.resize uses.
        position = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        low = np.clip(np.floor(position).astype(int), 0, n_in - 1)
        return low, np.clip(low + 1, 0, n_in - 1)

    y0, y1 = neighbours(big_h, h)
    x0, x1 = neighbours(big_w, w)
    corners = [source[:, ys][:, :, xs] for ys in (y0, y1) for xs in (x0, x1)]
    low = np.minimum.reduce(corners)
    high = np.maximum.reduce(corners)
    beyond = (upsampled > high + OVERSHOOT_TOLERANCE) | (upsampled < low - OVERSHOOT_TOLERANCE)
    return float(beyond.mean())


def interpolation_study(
    images: np.ndarray, image_size: int, sample: int = 512, seed: int = 42
) -> InterpolationStudy:
    """Measure every method in METHODS on a seeded sample of `images` (uint8 NHWC)."""
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array. Received: {images.shape}")
    if image_size < 1 or sample < 1:
        raise ValueError(
            f"image_size and sample must be positive. Received: {image_size}, {sample}"
        )
    height, width = images.shape[1:3]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), size=min(sample, len(images)), replace=False))
    source = images[chosen].astype(np.float32)
    study = InterpolationStudy(
        source_size=[int(height), int(width)],
        image_size=image_size,
        sample=len(chosen),
        seed=seed,
        protocol_size=[int(height), int(width)],
    )
    factor = min(image_size / height, image_size / width)
    if factor <= 1.0:
        study.selected, study.rule = "area", NO_UPSAMPLING_RULE
        return study
    protocol = min(factor, MAX_PROTOCOL_FACTOR)
    small_shape = (max(4, round(height / protocol)), max(4, round(width / protocol)))
    study.protocol_size = list(small_shape)
    # Sums over chunks: squared errors, high-band energies, overshoot counts, per method.
    totals = {m: np.zeros(4) for m in METHODS}
    source_energy = 0.0
    for start in range(0, len(source), CHUNK):
        block = source[start : start + CHUNK]
        small = resize(block, small_shape, "area")
        source_energy += high_band_energy(block, (height, width)) * len(block)
        for method in METHODS:
            up = resize(block, (image_size, image_size), method)
            back = resize(up, (height, width), "area")
            reconstructed = resize(small, (height, width), method)
            totals[method] += (
                np.sum(np.square(reconstructed - block), dtype=np.float64),
                np.sum(np.square(back - block), dtype=np.float64),
                high_band_energy(up, (height, width)) * len(block),
                overshoot_fraction(block, up) * len(block),
            )
    values = source.size
    for method in METHODS:
        rec, trip, energy, over = totals[method]
        study.rows.append(
            InterpolationRow(
                method=method,
                reconstruction_rmse=round(float(np.sqrt(rec / values)), 3),
                round_trip_rmse=round(float(np.sqrt(trip / values)), 3),
                high_freq_retained=round(float(energy / max(source_energy, 1e-12)), 3),
                overshoot_pct=round(float(100 * over / len(source)), 3),
                candidate=method in CANDIDATES,
            )
        )
    best = min((r for r in study.rows if r.candidate), key=lambda r: r.reconstruction_rmse)
    best.selected = True
    study.selected = best.method
    return study


def examples(image: np.ndarray, image_size: int) -> dict[str, np.ndarray]:
    """One uint8 (H, W, C) image upsampled by every method, clipped to uint8 for display."""
    out = {}
    for method in METHODS:
        up = resize(image[None].astype(np.float32), (image_size, image_size), method)[0]
        out[method] = np.clip(np.rint(up), 0, 255).astype(np.uint8)
    return out
