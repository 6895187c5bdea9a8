"""The weight average (`--ema`): putting it into the model and giving it its own BatchNorm
statistics.

The optimizer keeps the average of the trainable weights (optim.py). BatchNorm's moving mean
and variance are not trainable and describe the activations of the raw weights, not of the
average, so after the swap they are re-estimated on the training stream (as SWA's
`bn_update` does): forward passes in training mode, enough of them that the statistics of the
raw weights weigh under 1% (BatchNorm's own momentum decides how many). Only layers that were
updating their statistics move: a BatchNorm frozen in inference mode keeps its statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

LEFTOVER = 0.01  # the raw weights' share left in the re-estimated statistics


@dataclass
class Average:
    """The phase's weight average once put in: its validation macro-F1 and its weights."""

    decay: float
    val_macro_f1: float
    weights: list[np.ndarray]  # the classifier's, BatchNorm statistics re-estimated


def updating_batchnorms(model: Any) -> list[keras.layers.BatchNormalization]:
    """BatchNorm layers that update their statistics in a training-mode call."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def reestimation_batches(model: Any, steps_per_epoch: int) -> int:
    """Batches that leave the old statistics under LEFTOVER of the new (at most an epoch)."""
    layers = updating_batchnorms(model)
    if not layers:
        return 0
    momentum = max(float(layer.momentum) for layer in layers)
    needed = math.ceil(math.log(LEFTOVER) / math.log(momentum)) if momentum > 0 else 1
    return max(1, min(needed, steps_per_epoch))


def reestimate_batchnorm(model: Any, batches: Any, count: int) -> int:
    """Run `count` batches of (images, labels[, weights]) through `model` in training mode,
    updating only BatchNorm statistics (no gradient step); returns the batches used."""
    import tensorflow as tf

    if count <= 0:
        return 0
    forward = tf.function(lambda x: model(x, training=True))
    used = 0
    for batch in batches.take(count):
        forward(batch[0])
        used += 1
    return used
