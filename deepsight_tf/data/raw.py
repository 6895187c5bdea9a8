"""A data set as a source gave it, before it is stored: arrays, names, what was skipped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from deepsight_tf.core.errors import DataError


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class RawDataset:
    """A data set as read from its source, before it is stored in the workspace."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    train_paths: list[str]
    test_paths: list[str]
    kind: str
    skipped: list[SkippedFile] = field(default_factory=list)
    conversions: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    train_sizes: np.ndarray | None = None  # (N, 2) height, width before any resizing
    test_sizes: np.ndarray | None = None


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (a library's multi-line text stays out)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def stack_images(
    split: tuple[list[np.ndarray], list[int], list[str]],
    root: Path,
    resize: int | None,
    conversions: Counter[str],
) -> np.ndarray:
    images, _, paths = split
    if resize is not None:
        out = np.empty((len(images), resize, resize, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            if image.shape[:2] != (resize, resize):
                conversions[f"resized to {resize}x{resize}"] += 1
                image = np.asarray(Image.fromarray(image).resize((resize, resize), Image.BICUBIC))
            out[i] = image
        return out
    shapes = Counter(image.shape for image in images)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = next(i for i, image in enumerate(images) if image.shape != common)
        raise DataError(
            f"{root / paths[odd]}: image is {images[odd].shape[1]}x{images[odd].shape[0]} but most "
            f"are {common[1]}x{common[0]} ({len(shapes)} sizes in all); pass --resize N to resize "
            "every image to NxN"
        )
    return np.stack(images) if images else np.empty((0, 0, 0, 3), dtype=np.uint8)


def image_sizes(images: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """(N, 2) height and width of each image."""
    return np.asarray([image.shape[:2] for image in images], dtype=np.int64).reshape(-1, 2)


def resize_all(data: RawDataset, size: int) -> None:
    conversions: Counter[str] = Counter(data.conversions)
    data.train_sizes, data.test_sizes = image_sizes(data.x_train), image_sizes(data.x_test)
    data.x_train = stack_images(
        ([*data.x_train], [], data.train_paths), Path("."), size, conversions
    )
    data.x_test = stack_images(([*data.x_test], [], data.test_paths), Path("."), size, conversions)
    data.conversions = dict(conversions)
