"""Planted label issues of three kinds, for the tests and bench/label_issues.py.

    uniform      a label changed to a random other class
    confusable   a label changed to the class its own class is most often confused with (a
                 cat labelled dog): the realistic kind, harder for any detector, since the
                 image does look a little like the wrong class
    composite    a CutMix-style image: a box of an image of another class pasted in, and the
                 image labelled with that smaller part

Every function draws from the generator it is given and returns the new labels (and images)
with the indices it planted; nothing else changes.
"""

from __future__ import annotations

import numpy as np

KINDS = ("uniform", "confusable", "composite")
# The pasted box's share of the image: a second object plain to see, yet the smaller part.
COMPOSITE_AREA = (0.25, 0.45)


def uniform_flips(
    labels: np.ndarray, num_classes: int, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`share` of the labels changed to a uniformly drawn other class."""
    flipped = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, num_classes, len(flipped))) % num_classes
    return noisy, np.sort(flipped)


def most_confused_with(confusion: np.ndarray) -> np.ndarray:
    """For each true class (row), the other class it is most often predicted as; rows are
    normalised first, so a large class does not outvote a small one."""
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or len(confusion) < 2:
        raise ValueError(
            f"confusion must be square, 2 classes at least. Received: {confusion.shape}"
        )
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    np.fill_diagonal(rates, -1.0)
    return rates.argmax(axis=1)


def confusable_flips(
    labels: np.ndarray, targets: np.ndarray, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`share` of the labels changed to targets[label] (most_confused_with of a confusion
    matrix that did not come from these labels)."""
    flipped = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[flipped] = targets[labels[flipped]]
    return noisy, np.sort(flipped)


def composites(
    images: np.ndarray, labels: np.ndarray, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`share` of the images get a square box (COMPOSITE_AREA of the image) copied from the same
    place of a random image of another class, and that image's label.

    Returns (images, labels, planted indices, the box's share of each planted image's area).
    """
    n, height, width = images.shape[:3]
    planted = np.sort(rng.choice(n, size=round(share * n), replace=False))
    out, noisy = images.copy(), labels.copy()
    areas = np.zeros(len(planted))
    for j, i in enumerate(planted):
        donor = rng.choice(np.flatnonzero(labels != labels[i]))
        side = np.sqrt(rng.uniform(*COMPOSITE_AREA) * height * width)
        box_h, box_w = min(height, round(side)), min(width, round(side))
        top, left = rng.integers(0, height - box_h + 1), rng.integers(0, width - box_w + 1)
        out[i, top : top + box_h, left : left + box_w] = images[
            donor, top : top + box_h, left : left + box_w
        ]
        noisy[i] = labels[donor]
        areas[j] = box_h * box_w / (height * width)
    return out, noisy, planted, areas
