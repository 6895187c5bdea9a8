"""The pre-flight estimate: a few real training steps timed before the first epoch.

Each kind of phase the run has (head only, or stages unfrozen) is timed on the run's own
model, batches and optimizer, then every variable is put back (weights, BatchNorm statistics,
dropout's seed state), so the run computes exactly what it would have without the probe. The
cost of the final scoring and of each epoch's validation is a third of a step per image.
"""

from __future__ import annotations

import os
import time
from typing import Any

import keras
import numpy as np

from deepsight_tf.core.progress import RunEstimate
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.training.feature_cache import can_cache_features
from deepsight_tf.training.optim import loss_scaled
from deepsight_tf.training.plan import PhasePlan
from deepsight_tf.training.prepare import Prepared, phase_optimizer, set_trainable
from deepsight_tf.training.step import train_step_function

WARMUP_STEPS = 1  # traces the step
TIMED_STEPS = 3
# A training step costs about three forward passes (forward, then gradients of activations
# and of weights): the forward cost of scoring is taken as a third of a step, per image.
STEP_PER_FORWARD = 3.0


def estimate_run(
    prepared: Prepared,
    phases: list[PhasePlan],
    settings: TrainSettings,
    unfreeze: tuple[int, ...] | str,
    eval_images: tuple[int, int],
    steps_done: int = 0,
) -> RunEstimate:
    """The whole run's time on this machine; `steps_done` counts the steps a resume skips.

    `eval_images` is (validation, test): validation is scored after every epoch, both at the
    end. A head phase on cached features costs one forward pass over the training images.
    """
    model = prepared.model
    saved = [variable.numpy() for variable in model.variables]
    batch = prepared.distribution["global_batch"]
    try:
        per_step: dict[str, float] = {}
        for phase in phases:
            if phase.trainable not in per_step and not _cached(phase, settings):
                set_trainable(model, phase, settings, unfreeze)
                per_step[phase.trainable] = _step_seconds(prepared, settings, phase)
    finally:
        for variable, value in zip(model.variables, saved, strict=True):
            variable.assign(value)
    n_val, n_test = eval_images
    if per_step:
        forward = max(per_step.values()) / batch / STEP_PER_FORWARD
    else:  # only cached-feature head phases: time the backbone's forward pass itself
        forward = _forward_seconds_per_image(prepared)
    train_seconds, steps, skip = 0.0, 0, steps_done
    for phase in phases:
        phase_steps = prepared.steps_per_epoch * phase.epochs
        todo = max(phase_steps - skip, 0)
        skip = max(skip - phase_steps, 0)
        if _cached(phase, settings):
            # One pass of the backbone over the training images; the head's steps are tiny.
            train_seconds += (todo > 0) * prepared.steps_per_epoch * batch * forward
        else:
            train_seconds += todo * per_step[phase.trainable]
        epochs_left = todo / prepared.steps_per_epoch
        train_seconds += epochs_left * n_val * forward
        steps += todo
    eval_seconds = (n_val + n_test) * forward
    return RunEstimate(
        seconds_per_step=(sum(per_step.values()) / len(per_step)) if per_step else 0.0,
        steps=steps,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        total_seconds=train_seconds + eval_seconds,
        measured=(
            f"{TIMED_STEPS} training steps timed after {WARMUP_STEPS} warm-up step per kind "
            f"of phase (batch {batch}, {os.cpu_count()} CPUs); scoring at a third of a step"
        ),
    )


def _cached(phase: PhasePlan, settings: TrainSettings) -> bool:
    return phase.trainable == "head" and can_cache_features(settings)


def _step_seconds(prepared: Prepared, settings: TrainSettings, phase: PhasePlan) -> float:
    """Seconds per optimizer step of this phase's kind, on the run's first batches."""
    optimizer = loss_scaled(
        phase_optimizer(settings, phase, 1e-3), keras.config.dtype_policy().name
    )
    step = train_step_function(prepared.model, optimizer, keras.losses.CategoricalCrossentropy())
    batches = iter(prepared.train_dataset(first_epoch=0).repeat())
    for _ in range(WARMUP_STEPS):
        float(step(*next(batches)))
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        float(step(*next(batches)))
    return (time.perf_counter() - start) / TIMED_STEPS


def _forward_seconds_per_image(prepared: Prepared) -> float:
    images = next(iter(prepared.train_dataset(first_epoch=0)))[0]
    model: Any = prepared.model
    np.asarray(model(images, training=False))  # traces
    start = time.perf_counter()
    np.asarray(model(images, training=False))
    return (time.perf_counter() - start) / int(images.shape[0])
