"""Image quality, as cleanvision checks it: too dark, too bright, near-constant, low
information, blurry, odd size or aspect; one score per image and issue, a fixed threshold each.

Every score is computed on the luminance (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) of
the stored image, in chunks, with numpy alone:

    dark            the 99th percentile of luminance: even the brightest pixels are below
                    35% of the range (underexposed, not merely dark-toned; 99.5% of CIFAR-10
                    photos have highlights over 126)
    light           the 1st percentile: even the darkest pixels are above 63% of the range
                    (washed out; 99.5% of CIFAR-10 photos have shadows under 124)
    near_constant   the standard deviation of luminance, in grey levels: under 3 is below
                    what JPEG noise alone leaves on a flat picture
    low_information the Shannon entropy of the 256-bin luminance histogram, in bits: under
                    3 means fewer than 8 equally used grey levels (posterised, a placeholder)
    blurry          the contrast-normalised sharpness std(Laplacian) / std(luminance): a
                    Gaussian blur of 1.5 px takes a 32 px photo from a median of 1.0 to 0.19,
                    while 99.5% of sharp CIFAR-10 photos score over 0.47

and from each image's size at its source (before obtain resized anything), against the data
set's median:

    odd_size        linear size sqrt(w * h) over 2x off the median: resizing scales it by
                    more than twice (or less than half) the common factor, so its detail
                    differs from its class mates' (an upsampled thumbnail is a blurred one)
    odd_aspect      w / h over 2x off the median: the square resize squeezes its content by
                    more than half

The luminance thresholds are fixed and were set for photos (CIFAR-10's above): on handwriting,
line art or scans, ordinary images fall under the entropy and sharpness lines (most of
scikit-learn's 8x8 digits are "low information"), and the report says so (ASSUMES).
The thresholds are set by principle above and checked on planted cases (real images
darkened, brightened, flattened, posterised, blurred): `bench/image_quality.py` prints each
issue's recall and its false-flag rate on the untouched images. No published list of
CIFAR-10's bad images was used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
CHUNK = 4096  # images per vectorised pass


@dataclass(frozen=True)
class Check:
    """One issue: its score's name, the threshold, and which side of it is flagged."""

    issue: str
    score: str
    threshold: float
    below: bool  # flagged when the score is below the threshold (else above)
    meaning: str

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return scores < self.threshold if self.below else scores > self.threshold


CHECKS = (
    Check("dark", "brightest", 90.0, True, "99th-percentile luminance under 90 of 255"),
    Check("light", "darkest", 160.0, False, "1st-percentile luminance over 160 of 255"),
    Check("near_constant", "contrast", 3.0, True, "luminance std under 3 grey levels"),
    Check("low_information", "entropy", 3.0, True, "luminance entropy under 3 bits"),
    Check("blurry", "sharpness", 0.4, True, "std(Laplacian) / std(luminance) under 0.4"),
)
SIZE_CHECKS = (
    Check("odd_size", "size_factor", 2.0, False, "linear size over 2x off the median at source"),
    Check("odd_aspect", "aspect_factor", 2.0, False, "aspect ratio over 2x off the median"),
)
ISSUES = tuple(check.issue for check in CHECKS + SIZE_CHECKS)
ASSUMES = (
    "thresholds were set for photos such as CIFAR-10's; on handwriting, line art or scans, "
    "ordinary images can fall under the low-information and blurry lines"
)


def luminance(images: np.ndarray) -> np.ndarray:
    """(N, H, W) float32 luminance of uint8 (N, H, W, 3) or (N, H, W, 1) images."""
    x = images.astype(np.float32)
    if x.shape[-1] == 1:
        return x[..., 0]
    return x @ LUMA


def quality_scores(images: np.ndarray) -> dict[str, np.ndarray]:
    """Every check's score for every image (float64 arrays of length N)."""
    n = len(images)
    out = {check.score: np.empty(n, dtype=np.float64) for check in CHECKS}
    for start in range(0, n, CHUNK):
        chunk = _chunk_scores(images[start : start + CHUNK])
        for key, values in chunk.items():
            out[key][start : start + len(values)] = values
    return out


def stored_sizes(images: np.ndarray) -> np.ndarray:
    """(N, 2) heights and widths of an NHWC batch as stored: every image the batch's size."""
    return np.tile(np.asarray(images.shape[1:3], dtype=np.int64), (len(images), 1))


def size_scores(sizes: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """How many times each image's linear size and aspect ratio are off the reference images'
    medians (>= 1: 1 is the median itself). sizes, reference: (N, 2) heights and widths."""
    size, aspect = _size_and_aspect(sizes)
    ref_size, ref_aspect = (np.median(v) for v in _size_and_aspect(reference))
    return {
        "size_factor": np.exp(np.abs(np.log(size) - np.log(ref_size))),
        "aspect_factor": np.exp(np.abs(np.log(aspect) - np.log(ref_aspect))),
    }


def _size_and_aspect(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = (np.maximum(sizes[:, i].astype(np.float64), 1.0) for i in (0, 1))
    return np.sqrt(h * w), w / h


def _chunk_scores(images: np.ndarray) -> dict[str, np.ndarray]:
    lum = luminance(images)
    flat = lum.reshape(len(lum), -1)
    brightest, darkest = np.percentile(flat, [99, 1], axis=1)
    contrast = flat.std(axis=1)
    return {
        "brightest": brightest,
        "darkest": darkest,
        "contrast": contrast,
        "entropy": _entropy_bits(flat),
        "sharpness": _laplacian_std(lum) / np.maximum(contrast, 1e-6),
    }


def _entropy_bits(flat: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row's 256-bin histogram of grey levels."""
    n, pixels = flat.shape
    levels = np.clip(np.rint(flat), 0, 255).astype(np.int64)
    counts = np.bincount((levels + 256 * np.arange(n)[:, None]).ravel(), minlength=256 * n)
    p = counts.reshape(n, 256) / pixels
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return terms.sum(axis=1)


def _laplacian_std(lum: np.ndarray) -> np.ndarray:
    """Std of the 4-neighbour Laplacian over each image's interior pixels."""
    if lum.shape[1] < 3 or lum.shape[2] < 3:
        return np.zeros(len(lum))
    centre = lum[:, 1:-1, 1:-1]
    laplacian = (
        lum[:, :-2, 1:-1] + lum[:, 2:, 1:-1] + lum[:, 1:-1, :-2] + lum[:, 1:-1, 2:] - 4 * centre
    )
    return laplacian.reshape(len(lum), -1).std(axis=1)


def quality_issues(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each issue, the indices of the images it flags (ascending)."""
    return {check.issue: np.flatnonzero(check.flags(scores[check.score])) for check in CHECKS}


@dataclass(frozen=True)
class CheckRule:
    """One check as scrub's report stores it."""

    issue: str
    score: str
    threshold: float
    flagged: str  # "below" or "above" the threshold
    rule: str


@dataclass(frozen=True)
class QualitySummary:
    """Scrub's quality section: the checks and the images each flagged per split (empty: a
    scrub that predates the checks)."""

    checks: list[CheckRule] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> issue -> images
    method: str = ""
    assumes: str | None = None


def describe_checks() -> list[CheckRule]:
    """The checks as stored in scrub's report: issue, score, threshold, rule."""
    return [
        CheckRule(c.issue, c.score, c.threshold, "below" if c.below else "above", c.meaning)
        for c in CHECKS + SIZE_CHECKS
    ]


@dataclass(frozen=True)
class QualityFlag:
    """One flagged image: where it is, its label, the issue and its score."""

    split: str
    index: int
    path: str
    label: str
    issue: str
    score: float


QUALITY_COLUMNS = ("split", "index", "path", "label", "issue", "score")


def assess_quality(
    images: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    paths: dict[str, list[str]],
    class_names: list[str],
    sizes: dict[str, np.ndarray] | None = None,
) -> tuple[QualitySummary, list[QualityFlag]]:
    """Scrub's quality section (checks, counts per split and issue) and every flag, most
    extreme first within each issue. `sizes`: each split's (N, 2) sizes at the source (None:
    as stored); size and aspect are judged against the median of all splits together."""
    if sizes is None:
        sizes = {split: stored_sizes(x) for split, x in images.items()}
    reference = np.concatenate([sizes[split] for split in images])
    flags: list[QualityFlag] = []
    counts: dict[str, dict[str, int]] = {}
    for split, x in images.items():
        scores = quality_scores(x) | size_scores(sizes[split], reference)
        counts[split] = {}
        for check in CHECKS + SIZE_CHECKS:
            values = scores[check.score]
            hits = np.flatnonzero(check.flags(values))
            hits = hits[np.argsort(values[hits] if check.below else -values[hits], kind="stable")]
            counts[split][check.issue] = len(hits)
            flags.extend(
                QualityFlag(
                    split,
                    int(i),
                    paths[split][i] if i < len(paths[split]) else "",
                    class_names[int(labels[split][i])],
                    check.issue,
                    round(float(values[i]), 4),
                )
                for i in hits
            )
        counts[split]["any"] = len({f.index for f in flags if f.split == split})
    summary = QualitySummary(
        checks=describe_checks(),
        counts=counts,
        method="luminance (BT.601) percentiles, std, histogram entropy and Laplacian "
        "sharpness per image; size and aspect at the source against the median; thresholds "
        "fixed (data/quality.py), checked on planted cases by bench/image_quality.py",
        assumes=ASSUMES,
    )
    return summary, flags
