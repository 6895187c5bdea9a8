"""One optimizer step outside `fit`: for the LR range test and the pre-flight step timing.

It does what Keras's compiled step does (forward, loss with sample weights and the model's
own losses, loss scaling, gradients, update), without the model's compile state or metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from keras import ops


def weighted_loss(loss: Callable[..., Any]) -> Callable[..., Any]:
    # Loss objects weight and reduce themselves; bare loss functions ("categorical_crossentropy")
    # return per-sample values, reduced here as Keras's default "sum_over_batch_size" does.
    if isinstance(loss, keras.losses.Loss):
        return loss

    def reduce(y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        per_sample = loss(y_true, y_pred)
        if sample_weight is not None:
            per_sample = per_sample * ops.cast(sample_weight, per_sample.dtype)
        return ops.mean(per_sample)

    return reduce


def train_step_function(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn: Callable[..., Any]
) -> Callable[..., Any]:
    """One optimizer step on a batch, returning its (unscaled) loss; the model's compile state
    is not used or touched."""

    @tf.function(reduce_retracing=True)
    def train_step(x: Any, y: Any, sample_weight: Any) -> Any:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            batch_loss = loss_fn(y, y_pred, sample_weight=sample_weight)
            if model.losses:
                batch_loss = batch_loss + ops.sum(ops.stack(model.losses))
            scaled = optimizer.scale_loss(batch_loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return batch_loss

    return train_step
