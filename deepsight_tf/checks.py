"""Pre-batch verification: the shape and dtype checks that scrub and the training pipeline share."""

from __future__ import annotations

import numpy as np

from deepsight_tf.errors import DataError


def verify_batch(
    images: np.ndarray,
    image_shape: tuple[int, int, int],
    dtype: np.dtype | type = np.uint8,
    first_index: int = 0,
    where: str = "batch",
) -> None:
    """Refuse a batch that is not (N, H, W, C) of `dtype` with finite values in range.

    `first_index` is the data set index of images[0], so the error names the offending
    image in the data set rather than in the batch.
    """
    images = np.asarray(images)
    expected = np.dtype(dtype)
    if images.ndim != 4:
        raise DataError(
            f"{where}: expected a 4-D (N, {', '.join(map(str, image_shape))}) batch, got shape "
            f"{images.shape}; images must be channels-last"
        )
    if tuple(images.shape[1:]) != tuple(image_shape):
        hint = (
            "; it looks channels-first, transpose to (N, H, W, C)"
            if images.shape[1] == image_shape[-1]
            else ""
        )
        raise DataError(
            f"{where}: image {first_index} has shape {tuple(images.shape[1:])}, expected "
            f"{tuple(image_shape)}{hint}"
        )
    if images.dtype != expected:
        raise DataError(
            f"{where}: images are {images.dtype}, expected {expected}; convert before batching"
        )
    if np.issubdtype(expected, np.floating):
        bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
        if bad.any():
            index = first_index + int(np.argmax(bad))
            raise DataError(f"{where}: image {index} holds NaN or infinite values")


def verify_labels(labels: np.ndarray, num_classes: int, where: str = "labels") -> None:
    """Refuse labels that are not integers in [0, num_classes), naming the first bad index."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: expected 1-D integer labels, got {labels.dtype}{labels.shape}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(
            f"{where}: label {int(labels[index])} at index {index} is outside 0..{num_classes - 1}"
        )
