"""Exact and near-duplicate images: pixel hashes, then image structure matched under alignment.

Near duplicates are found in three stages, each with a stated reason:

1. Candidates: each image's nearest neighbours (scikit-learn NearestNeighbors) in two indexes.
   Layout: 8x8 luminance thumbnails with zero mean and unit norm; they barely change under
   crops, colour or compression changes. Spectrum: the magnitudes of the lowest spatial
   frequencies (up to 6 cycles per image) of the windowed luminance; a shift changes only the
   phases, so shifted copies stay close. A copy ranks among the first few neighbours of its
   original in at least one of them.
2. Verification: the structure of each candidate pair is compared at full resolution. Structure
   is the band-pass luminance (a difference of Gaussians, sigma 1 and 4 px at 32 px: it drops
   the smooth layout and lighting that unrelated photos share and the pixel noise that JPEG
   re-compression changes), taken as its vertical and horizontal derivatives. The score of an
   alignment is the lower of the two channels' Pearson correlations, so a single straight edge
   such as a horizon cannot make two different photos match; correlation makes it blind to
   brightness and contrast. Alignments searched: every shift up to 3 px (FFT
   cross-correlation) at zooms as if 0, 2 or 4 px were cropped from either image.

The distance of a pair is 1 - its best correlation: 0 for the same pixels, about 1 for
unrelated images.

3. Decision: how close "the same image" is depends on the images. A CIFAR-10 photo's nearest
   other photo of its class is typically 0.63 away; a 16 px handwritten digit's nearest other
   digit of its class, by another writer, is typically 0.14 away, where copies of photos lie.
   So the threshold is set on the data set itself. Each image's distance to its nearest
   verified neighbour of the same class is, for all but the copies, how close distinct samples
   of this data set come. Their logarithms (a copy is a multiple closer, not a fixed amount)
   are fitted by a normal curve through their median and interquartile range, which the
   copies, a minority at the low end, barely move (and only toward a stricter threshold); a
   pair is a near duplicate when it is closer than all but 1 in 1,000 distinct nearest
   neighbours would be by that fit, and never above the 0.2 set on photos (the ceiling:
   copies of photos stay below 0.19, unrelated photos above 0.39).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy.ndimage import gaussian_filter1d
from sklearn.neighbors import NearestNeighbors

from deepsight_tf.core.progress import Progress
from deepsight_tf.core.settings import NEAR_CEILING, NEAR_FALSE_MATCH_TAIL

# ITU-R BT.601 luma weights: a colour change that keeps the luminance structure keeps the match.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# The geometry below is stated for 32 px images and scales with the image side.
REFERENCE_SIDE = 32
DOG_SIGMAS_PX = (1.0, 4.0)  # band-pass: structure between about 2 and 8 px
MAX_SHIFT_PX = 3  # alignment search: shifts up to 3 px (9% of the side) each way
ZOOM_CROPS_PX = (2, 4)  # zooms as if 2 or 4 px were cropped from the side and resized back
THUMBNAIL_SIDE = 8  # layout index: 8x8 = 64 numbers per image
SPECTRUM_CYCLES = 6  # spectrum index: frequencies up to 6 cycles per image (78 numbers)
# The decision (stage 3; its ceiling and tail are in core/settings.py): bench/duplicates.py
# prints the threshold it sets on each kind of image.
MIN_CALIBRATION_IMAGES = 50  # fewer nearest-neighbour distances than this: the ceiling alone
DISTANCE_FLOOR = 1e-4  # identical images (distance 0) enter the logarithm as this


@dataclass
class DuplicateGroups:
    """Sets of images with identical pixels: each group lists indices into the images given."""

    groups: list[np.ndarray]

    def pairs(self) -> np.ndarray:
        """Every unordered pair inside every group, as a (P, 2) array with i < j."""
        out = [
            (int(g[a]), int(g[b]))
            for g in self.groups
            for a in range(len(g))
            for b in range(a + 1, len(g))
        ]
        return np.asarray(out, dtype=np.int64).reshape(-1, 2)


@dataclass
class Calibration:
    """How the near-duplicate threshold was set, and from what."""

    rule: str  # "calibrated" (the fit, or the ceiling where lower) | "ceiling" | "fixed"
    threshold: float  # the distance at or below which a pair is a near duplicate
    ceiling: float
    tail: float  # share of distinct nearest neighbours the fit puts below the threshold
    images: int  # images whose nearest same-class distance entered the fit
    typical: float | None = None  # median nearest same-class distance
    log_sigma: float | None = None  # spread of its logarithm: interquartile range / 1.349
    fitted: float | None = None  # the fit's threshold before the ceiling

    def statement(self) -> str:
        """One sentence on the threshold and where it came from (stored in scrub's report)."""
        if self.rule == "fixed":
            return f"near-duplicate threshold {self.threshold:g}, given (no calibration)"
        if self.rule == "ceiling":
            return (
                f"near-duplicate threshold {self.threshold:g}: the ceiling set on photos, since "
                f"only {self.images} images had a same-class neighbour to calibrate on "
                f"(at least {MIN_CALIBRATION_IMAGES} needed)"
            )
        decided = (
            f"the ceiling {self.ceiling:g} set on photos is lower and applies"
            if self.fitted is not None and self.fitted >= self.ceiling
            else f"which is under the ceiling {self.ceiling:g} set on photos"
        )
        return (
            f"near-duplicate threshold {self.threshold:.3g}, calibrated on this data set: its "
            f"{self.images:,} images lie at a median distance of {self.typical:.3f} from their "
            f"nearest neighbour of the same class (log spread {self.log_sigma:.2f}); a "
            f"log-normal fit puts 1 in {round(1 / self.tail):,} of such neighbours below "
            f"{self.fitted:.3g}, {decided}"
        )


@dataclass
class NearDuplicates:
    """Pairs (i < j, indices into the images given) with their aligned distance, closest first."""

    pairs: np.ndarray  # (P, 2) int64
    distances: np.ndarray  # (P,) float32, 1 - best aligned correlation
    candidates: int  # candidate pairs verified to find them
    calibration: Calibration


def image_digests(images: np.ndarray) -> list[bytes]:
    """A 128-bit BLAKE2 digest of each image's pixels (shape is fixed within a data set)."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def exact_duplicate_groups(images: np.ndarray) -> DuplicateGroups:
    """Groups of images whose pixels are identical, confirmed byte for byte."""
    by_digest: dict[bytes, list[int]] = defaultdict(list)
    for index, digest in enumerate(image_digests(images)):
        by_digest[digest].append(index)
    groups = []
    for members in by_digest.values():
        if len(members) > 1:
            # A digest collision is astronomically unlikely; checking costs little and makes
            # "identical pixels" literally true.
            first = images[members[0]]
            same = [m for m in members if np.array_equal(images[m], first)]
            if len(same) > 1:
                groups.append(np.asarray(same, dtype=np.int64))
    groups.sort(key=lambda g: int(g[0]))
    return DuplicateGroups(groups)


# Linear operators along one image axis -------------------------------------------------------
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """The (n, n) matrix that blurs a column with edge replication (so borders stay neutral)."""
    return gaussian_filter1d(np.eye(n, dtype=np.float32), sigma, axis=0, mode="nearest")


def _zoom_matrix(n: int, factor: float) -> np.ndarray:
    """The (n, n) matrix of a bilinear zoom about the centre by `factor` (> 1 zooms in).

    Zooming out samples beyond the edge; those rows repeat the edge pixel.
    """
    centre = (n - 1) / 2
    source = np.clip(centre + (np.arange(n) - centre) / factor, 0, n - 1)
    low = np.floor(source).astype(int)
    high = np.clip(low + 1, 0, n - 1)
    weight = (source - low).astype(np.float32)
    matrix = np.zeros((n, n), dtype=np.float32)
    matrix[np.arange(n), low] += 1 - weight
    matrix[np.arange(n), high] += weight
    return matrix


def _area_matrix(n: int, out: int) -> np.ndarray:
    """The (out, n) matrix that averages n pixels into `out` equal cells (overlaps weighted)."""
    edges = np.linspace(0, n, out + 1)
    matrix = np.zeros((out, n), dtype=np.float32)
    for row in range(out):
        for col in range(n):
            overlap = min(edges[row + 1], col + 1) - max(edges[row], col)
            matrix[row, col] = max(overlap, 0.0)
    return matrix / matrix.sum(axis=1, keepdims=True)


def _rfft2(x: np.ndarray, s: tuple[int, int] | None = None) -> np.ndarray:
    return sp_fft.rfft2(x, s=s, workers=-1)  # every core: the FFTs are most of the work


def _scaled(px: float, side: int) -> float:
    return px * side / REFERENCE_SIDE


def band_pass(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Luminance difference-of-Gaussians of uint8 (N, H, W, 3) images as float32 (N, H, W)."""
    luma = luminance(images, chunk)
    _, height, width = luma.shape
    fine, coarse = DOG_SIGMAS_PX
    gy1 = _gaussian_matrix(height, _scaled(fine, height))
    gx1 = _gaussian_matrix(width, _scaled(fine, width))
    gy2 = _gaussian_matrix(height, _scaled(coarse, height))
    gx2 = _gaussian_matrix(width, _scaled(coarse, width))
    for start in range(0, len(luma), chunk):
        block = luma[start : start + chunk]
        luma[start : start + chunk] = gy1 @ block @ gx1.T - gy2 @ block @ gx2.T
    return luma


def luminance(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """BT.601 luminance of uint8 (N, H, W, 3) images as float32 (N, H, W) in 0..255."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3). Received: shape {images.shape}")
    out = np.empty(images.shape[:3], dtype=np.float32)
    for start in range(0, len(images), chunk):
        out[start : start + chunk] = images[start : start + chunk].astype(np.float32) @ LUMA_WEIGHTS
    return out


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows with zero mean and unit norm; a flat row (no shape to compare) becomes zero, which
    keeps it equally far from all others."""
    features = features - features.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 1e-6)


def thumbnails(images: np.ndarray, side: int = THUMBNAIL_SIDE, chunk: int = 4096) -> np.ndarray:
    """Area-averaged side x side luminance thumbnails, zero mean and unit norm, as (N, side^2)."""
    ay = _area_matrix(images.shape[1], side)
    ax = _area_matrix(images.shape[2], side)
    out = np.empty((len(images), side * side), dtype=np.float32)
    for start in range(0, len(images), chunk):
        luma = luminance(images[start : start + chunk])
        out[start : start + chunk] = _unit_rows((ay @ luma @ ax.T).reshape(len(luma), -1))
    return out


def spectra(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Log magnitudes of the lowest spatial frequencies of the Hann-windowed luminance, with
    zero mean and unit norm, as (N, D): unchanged by shifts, which only move the phases."""
    height, width = images.shape[1:3]
    window = np.outer(np.hanning(height + 2)[1:-1], np.hanning(width + 2)[1:-1])
    c = SPECTRUM_CYCLES
    out = np.empty((len(images), 2 * c + 1, c + 1), dtype=np.float32)
    for start in range(0, len(images), chunk):
        luma = luminance(images[start : start + chunk])
        luma -= luma.mean(axis=(1, 2), keepdims=True)
        magnitude = np.abs(sp_fft.rfft2(luma * window.astype(np.float32), workers=-1))
        out[start : start + chunk] = np.log1p(
            np.concatenate([magnitude[:, : c + 1, : c + 1], magnitude[:, -c:, : c + 1]], axis=1)
        )
    return _unit_rows(out.reshape(len(images), -1))


def candidate_pairs(
    features: np.ndarray,
    neighbours: int,
    progress: Progress | None = None,
    task: str = "near duplicates: nearest neighbours",
    chunk: int = 4096,
) -> np.ndarray:
    """Unordered pairs (i < j) linking each row of `features` to its nearest neighbours."""
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1. Received: {neighbours}")
    k = min(neighbours + 1, len(features))
    if k < 2:
        return np.empty((0, 2), dtype=np.int64)
    index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(features)
    found = []
    for start in range(0, len(features), chunk):
        _, nearest = index.kneighbors(features[start : start + chunk])
        rows = np.repeat(np.arange(start, start + len(nearest)), k)
        found.append(np.stack([rows, nearest.ravel()], axis=1))
        if progress is not None:
            progress(task, start + len(nearest), len(features))
    pairs = np.concatenate(found)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


def _gradient_matrix(n: int) -> np.ndarray:
    """The (n, n) matrix of numpy.gradient along one axis (central inside, one-sided at edges)."""
    return np.gradient(np.eye(n, dtype=np.float32), axis=0)


def _window_matrix(n: int, start: int, size: int) -> np.ndarray:
    """The (n, n) matrix that keeps rows start..start+size-1, moves them to the top, and
    reverses them circularly, so that an FFT convolution with it is a cross-correlation."""
    matrix = np.zeros((n, n), dtype=np.float32)
    for i in range(size):
        matrix[(-i) % n, start + i] = 1.0
    return matrix


class _Aligner:
    """Best aligned structure correlation of two band-pass images, for many pairs at once.

    Structure is compared as two channels, the vertical and horizontal derivatives of the
    band-pass image; a shift scores the lower of the two channels' correlations, so a single
    straight edge (a horizon, a table edge) cannot make two different photos match. Image a
    gives the template (its centre window, optionally zoomed); image b is searched over every
    shift by FFT. Zooming a in matches b cropped from a; zooming it out matches a cropped from b
    (the centre window of a zoomed-out image still lies inside the image).
    """

    def __init__(self, height: int, width: int) -> None:
        self.shape = (height, width)
        sy = max(1, round(_scaled(MAX_SHIFT_PX, height)))
        sx = max(1, round(_scaled(MAX_SHIFT_PX, width)))
        my, mx = height - 2 * sy, width - 2 * sx
        if my < 4 or mx < 4:
            raise ValueError(f"images are too small to align. Received: {height}x{width}")
        self.shifts = (2 * sy + 1, 2 * sx + 1)
        self.count = my * mx
        dy, dx = _gradient_matrix(height), _gradient_matrix(width)
        self.derivatives = (
            (dy, np.eye(width, dtype=np.float32)),
            (np.eye(height, dtype=np.float32), dx),
        )
        # Window sums for every shift: (2s+1, n) boxes of ones.
        self.box_y = np.stack(
            [np.roll(np.r_[np.ones(my), np.zeros(2 * sy)], k) for k in range(2 * sy + 1)]
        ).astype(np.float32)
        self.box_x = np.stack(
            [np.roll(np.r_[np.ones(mx), np.zeros(2 * sx)], k) for k in range(2 * sx + 1)]
        ).astype(np.float32)
        zooms = [(1.0, 1.0)]
        for crop in ZOOM_CROPS_PX:
            fy = height / (height - _scaled(crop, height))
            fx = width / (width - _scaled(crop, width))
            zooms += [(fy, fx), (1 / fy, 1 / fx)]
        wy, wx = _window_matrix(height, sy, my), _window_matrix(width, sx, mx)
        # One (left, right) operator pair per zoom and channel: derivative, zoom, window, flip.
        self.templates = [
            [
                (wy @ _zoom_matrix(height, fy) @ left, wx @ _zoom_matrix(width, fx) @ right)
                for left, right in self.derivatives
            ]
            for fy, fx in zooms
        ]

    def searched(self, bands: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spectra, window sums and centred window norms of both channels of images b."""
        channels = np.stack([left @ bands @ right.T for left, right in self.derivatives], axis=1)
        sums = self.box_y @ channels @ self.box_x.T
        squares = self.box_y @ np.square(channels) @ self.box_x.T
        norms = np.sqrt(np.maximum(squares - sums * sums / self.count, 0.0))
        return _rfft2(channels), sums, norms

    def template(self, bands: np.ndarray, zoom: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spectra, sums and centred norms of both channels of the (zoomed) windows of images a."""
        window = np.stack([left @ bands @ right.T for left, right in self.templates[zoom]], axis=1)
        sums = window.sum(axis=(2, 3))
        norms = np.sqrt(np.maximum(np.square(window).sum(axis=(2, 3)) - sums**2 / self.count, 0))
        return _rfft2(window), sums[..., None, None], norms[..., None, None]

    def correlation(
        self,
        template: tuple[np.ndarray, np.ndarray, np.ndarray],
        searched: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """Max over shifts of the lower channel correlation of each template against its image."""
        t_spectra, t_sums, t_norms = template
        spectra, sums, norms = searched
        cross = sp_fft.irfft2(t_spectra * spectra, s=self.shape, workers=-1)
        cross = cross[..., : self.shifts[0], : self.shifts[1]] - t_sums * sums / self.count
        denominator = t_norms * norms
        # A channel with no structure in the window cannot vouch for a match: it scores 0.
        r = np.where(denominator > 1e-3, cross / np.maximum(denominator, 1e-3), 0.0)
        return r.min(axis=1).reshape(len(r), -1).max(axis=1)

    def best_correlation(self, bands: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Best correlation of bands[i] against bands[j] for each (i, j), over shifts and zooms.

        Each image's spectra are computed once per call however many pairs it is in.
        """
        firsts, a = np.unique(pairs[:, 0], return_inverse=True)
        seconds, b = np.unique(pairs[:, 1], return_inverse=True)
        searched = tuple(x[b] for x in self.searched(bands[seconds]))
        best = np.full(len(pairs), -1.0, dtype=np.float32)
        for zoom in range(len(self.templates)):
            template = tuple(x[a] for x in self.template(bands[firsts], zoom))
            best = np.maximum(best, self.correlation(template, searched))
        return best


def aligned_distances(
    bands: np.ndarray,
    pairs: np.ndarray,
    progress: Progress | None = None,
    chunk: int = 1024,  # pairs per step: small blocks reuse memory (measured less CPU than 4096)
) -> np.ndarray:
    """1 - best aligned structure correlation for each (i, j) row of `pairs`."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.empty(len(pairs), dtype=np.float32)
    if not len(pairs):
        return out
    aligner = _Aligner(bands.shape[1], bands.shape[2])
    for start in range(0, len(pairs), chunk):
        block = pairs[start : start + chunk]
        r = aligner.best_correlation(bands, block)
        out[start : start + len(block)] = 1.0 - np.clip(r, -1.0, 1.0)
        if progress is not None:
            progress("near duplicates: aligning pairs", start + len(block), len(pairs))
    return out


def nearest_distances(
    pairs: np.ndarray, distances: np.ndarray, labels: np.ndarray | None, n_images: int
) -> np.ndarray:
    """Each image's distance to its closest partner among the verified pairs that share its
    label (any partner when labels is None); inf where it has none."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if labels is not None:
        labels = np.asarray(labels)
        same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
        pairs, distances = pairs[same], distances[same]
    nearest = np.full(n_images, np.inf)
    np.minimum.at(nearest, pairs[:, 0], distances)
    np.minimum.at(nearest, pairs[:, 1], distances)
    return nearest


def calibrate_threshold(
    nearest: np.ndarray, ceiling: float = NEAR_CEILING, tail: float = NEAR_FALSE_MATCH_TAIL
) -> Calibration:
    """The near-duplicate threshold for a data set whose images lie at `nearest` distances
    from their nearest same-class neighbours (the module docstring, stage 3, says why)."""
    from scipy.stats import norm

    if not 0.0 < ceiling < 1.0 or not 0.0 < tail < 0.5:
        raise ValueError(f"ceiling in (0, 1), tail in (0, 0.5). Received: {ceiling}, {tail}")
    found = nearest[np.isfinite(nearest)]
    if len(found) < MIN_CALIBRATION_IMAGES:
        return Calibration("ceiling", ceiling, ceiling, tail, len(found))
    logs = np.log(np.maximum(found, DISTANCE_FLOOR))
    low, median, high = np.quantile(logs, [0.25, 0.5, 0.75])
    sigma = (high - low) / (2 * norm.ppf(0.75))  # the normal's IQR is 1.349 sigma
    fitted = float(np.exp(median + norm.ppf(tail) * sigma))
    return Calibration(
        rule="calibrated",
        threshold=round(min(fitted, ceiling), 4),
        ceiling=ceiling,
        tail=tail,
        images=len(found),
        typical=round(float(np.exp(median)), 4),
        log_sigma=round(float(sigma), 4),
        fitted=round(fitted, 4),
    )


def find_near_duplicates(
    images: np.ndarray,
    threshold: float | None,
    neighbours: int,
    labels: np.ndarray | None = None,
    progress: Progress | None = None,
) -> NearDuplicates:
    """Pairs of images that are the same image after small shifts, crops, colour or compression.

    Returns the verified pairs at distance <= the threshold, closest first: `threshold` if
    given, else the one calibrate_threshold sets from the same verified pairs (same-class
    neighbours where `labels` are given). Identical images are found too (distance 0);
    exact_duplicate_groups names them more cheaply. ScrubSettings.near_threshold and
    .neighbours hold the defaults and their reasons.
    """
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1). Received: {threshold}")
    layout = candidate_pairs(thumbnails(images), neighbours, progress, "near duplicates: layouts")
    spectrum = candidate_pairs(spectra(images), neighbours, progress, "near duplicates: spectra")
    pairs = np.unique(np.concatenate([layout, spectrum]), axis=0)
    distances = aligned_distances(band_pass(images), pairs, progress=progress)
    if threshold is None:
        calibration = calibrate_threshold(nearest_distances(pairs, distances, labels, len(images)))
    else:
        calibration = Calibration("fixed", threshold, NEAR_CEILING, NEAR_FALSE_MATCH_TAIL, 0)
    keep = np.flatnonzero(distances <= calibration.threshold)
    keep = keep[np.argsort(distances[keep], kind="stable")]
    return NearDuplicates(pairs[keep], distances[keep], len(pairs), calibration)
