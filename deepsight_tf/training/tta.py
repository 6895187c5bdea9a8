"""Test-time augmentation: the model's probabilities averaged over mirrored and shifted views.

Views are made from the preprocessed batch (after resize and normalisation), so every view
is what the model could have been fed in training: a horizontal mirror, and for flip-shift
the image moved by 1/16 of its side up, down, left and right (reflect-padded); flip-x-shift
is the product of the two, every shift also mirrored (10 views); flip-translate is airbench's
(Jordan 2024): the image and its mirror weigh half, and the two one-pixel diagonal shifts
(up-left, down-right), each with its mirror, the other half (6 views). Mirrored shifts earn
their cost: flip-x-shift beat flip by about half a test point on CIFAR-10, each paired
interval above zero (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from deepsight_tf.core.settings import TTA_MODES

View = Callable[[tf.Tensor], tf.Tensor]


def _shift(dy: int, dx: int) -> View:
    def view(images: tf.Tensor) -> tf.Tensor:
        size = images.shape[1]
        pad = max(abs(dy), abs(dx))
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        return padded[:, pad + dy : pad + dy + size, pad + dx : pad + dx + size, :]

    return view


def views(mode: str, image_size: int) -> list[View]:
    """The views of `mode`; "none" is the image alone."""
    if mode not in TTA_MODES:
        raise ValueError(f"mode must be one of {TTA_MODES}. Received: {mode!r}")
    out: list[View] = [lambda images: images]
    if mode in ("flip", "flip-shift", "flip-x-shift", "flip-translate"):
        out.append(tf.image.flip_left_right)
    if mode == "flip-translate":
        diagonals = [_shift(-1, -1), _shift(1, 1)]
        out += [view for shift in diagonals for view in (shift, _mirrored(shift))]
    if mode in ("flip-shift", "flip-x-shift"):
        step = max(1, image_size // 16)
        shifts = [_shift(step, 0), _shift(-step, 0), _shift(0, step), _shift(0, -step)]
        out += shifts
        if mode == "flip-x-shift":
            out += [_mirrored(shift) for shift in shifts]
    return out


def view_weights(mode: str) -> list[float]:
    """Each view's weight in the mean (they sum to 1): equal, except flip-translate's, whose
    unshifted pair counts as much as its four shifted views together."""
    count = len(views(mode, 32))
    if mode == "flip-translate":
        return [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    return [1.0 / count] * count


def _mirrored(view: View) -> View:
    def mirrored(images: tf.Tensor) -> tf.Tensor:
        return tf.image.flip_left_right(view(images))

    return mirrored


def predict_views(
    model: Any, dataset: tf.data.Dataset, mode: str = "none", callbacks: list[Any] | None = None
) -> list[np.ndarray]:
    """Softmax of every view of `mode` (the image itself first), for an evaluation dataset of
    (images, labels). `callbacks` go to every Keras predict call."""
    image_size = int(dataset.element_spec[0].shape[1])
    out = []
    for view in views(mode, image_size):
        images = dataset.map(lambda x, _y, view=view: view(x))
        probs = model.predict(images, verbose=0, callbacks=callbacks)
        out.append(np.asarray(probs, dtype=np.float64))
    return out


def mean_of_views(per_view: list[np.ndarray], mode: str | None = None) -> np.ndarray:
    """The views' probabilities averaged with `mode`'s weights (None: equal weights)."""
    if mode is None or len(set(view_weights(mode))) == 1:
        total = per_view[0]
        for probs in per_view[1:]:
            total = total + probs
        return (total / len(per_view)).astype(np.float32)
    weights = view_weights(mode)
    if len(weights) != len(per_view):
        raise ValueError(f"{mode} has {len(weights)} views. Received: {len(per_view)}")
    total = weights[0] * per_view[0]
    for weight, probs in zip(weights[1:], per_view[1:], strict=True):
        total = total + weight * probs
    return total.astype(np.float32)


def predict_probs(
    model: Any, dataset: tf.data.Dataset, mode: str = "none", callbacks: list[Any] | None = None
) -> np.ndarray:
    """Mean softmax over the views of `mode`, for an evaluation dataset of (images, labels)."""
    return mean_of_views(predict_views(model, dataset, mode, callbacks), mode)
