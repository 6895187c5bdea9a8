"""Pre-batch verification: the shape and dtype checks that scrub and the training pipeline share."""

from __future__ import annotations

import re

import numpy as np

from deepsight_tf.core.errors import ConfigError, DataError


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


# Input sizes deepsight trains, studies and predicts at: below 8 px a ResNet's stride-32 stack
# has nothing left to pool; above 1024 px one batch of activations no longer fits in memory.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024


def check_image_size(size: int, flag: str = "--image-size") -> None:
    """The one image-size rule: an integer number of pixels in 8..1024."""
    if isinstance(size, bool) or int(size) != size or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(
            f"{flag} {size}: use a whole number of pixels from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"
        )


_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"^(?:{_NUMBER}h)?\s*(?:{_NUMBER}m)?\s*(?:{_NUMBER}s)?$")


def parse_duration(text: str, flag: str = "--budget") -> float:
    """Seconds in a duration such as 10m, 1h30m, 90s or 1.5h (a bare number is minutes)."""
    stripped = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):
        seconds = float(stripped) * 60
    else:
        match = _DURATION.match(stripped)
        if not stripped or match is None or not any(match.groups()):
            raise ConfigError(f"{flag} {text!r}: give a duration such as 10m, 1h30m or 600s")
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ConfigError(f"{flag} {text!r}: give a duration above zero")
    return seconds


# Data set names and run ids name folders in the workspace: no separators, no leading dot.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, flag: str) -> None:
    """A data set name or run id: letters, digits, '.', '_', '-', not starting with '.' or '-'."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{flag} {name!r}: use letters, digits, '.', '_' and '-' (at most 128, starting with "
            "a letter or digit); it names a folder in the workspace, not a path"
        )
