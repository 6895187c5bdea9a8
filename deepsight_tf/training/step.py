"""One optimizer step outside `fit`, and how long it takes: for the LR range test, the
pre-flight step timing and the precision probe.

It does what Keras's compiled step does (forward, loss with sample weights and the model's
own losses, loss scaling, gradients, update), without the model's compile state or metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

# The first step traces; the second still creates oneDNN primitives and fills the input
# pipeline's buffers: neither is timed.
WARMUP_STEPS = 2


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


def step_seconds(
    steps: Mapping[str, Callable[..., Any]],
    batches: Iterator[Any],
    timed: int,
    before_step: Callable[[], None] = lambda: None,
    settled: Callable[[dict[str, list[float]]], bool] | None = None,
) -> dict[str, float]:
    """Median seconds of `timed` calls of each step on `batches` (x, y, sample_weight), after
    WARMUP_STEPS calls each. Several steps take turns, one call of each, so a neighbour's load
    or a slower stretch of the machine falls on all alike. The wait for each batch counts, as
    it does in training. `before_step` runs before every call (untimed): it may raise to end
    the timing, as a stop request does. `settled(seconds so far)` true after a round ends
    the timing early (a decision the rounds so far already make)."""
    for _ in range(WARMUP_STEPS):
        for step in steps.values():
            before_step()
            float(step(*next(batches)))
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(timed):
        for name, step in steps.items():
            before_step()
            start = time.perf_counter()
            float(step(*next(batches)))
            seconds[name].append(time.perf_counter() - start)
        if settled is not None and settled(seconds):
            break
    return {name: float(np.median(values)) for name, values in seconds.items()}


def clear_winner(seconds: dict[str, list[float]], rounds: int = 2, margin: float = 1.1) -> bool:
    """Whether `rounds` rounds at least were timed and in every one the same step was the
    fastest by `margin` or more over each other: more rounds would not change the choice."""
    count = min(len(values) for values in seconds.values())
    if count < rounds or len(seconds) < 2:
        return False
    winners = set()
    for i in range(count):
        times = sorted((values[i], name) for name, values in seconds.items())
        if times[1][0] < margin * times[0][0]:
            return False
        winners.add(times[0][1])
    return len(winners) == 1
