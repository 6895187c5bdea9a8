"""Learning-rate schedules: OneCycle (with its momentum cycle) and the LR range test."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from deepsight_tf.errors import ConfigError


def _cosine_anneal(start: Any, end: Any, remaining: Any) -> Any:
    # Half a cosine from `start` to `end`, as in PyTorch's OneCycleLR, written in the fraction
    # of the phase still to go, r = 1 - p: (cos(pi p) + 1) / 2 = sin(pi r / 2)^2. The same
    # value, but float32 keeps its precision near the end of a phase, where the rate is tiny.
    return end + (start - end) * ops.square(ops.sin(math.pi / 2.0 * remaining))


@keras.saving.register_keras_serializable(package="deepsight")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle learning rate with the opposite momentum cycle, per optimizer step.

    The same two cosine phases as PyTorch's `OneCycleLR` (`three_phase=False`,
    `anneal_strategy="cos"`). With `initial = peak_lr / div_factor`,
    `floor = initial / final_div_factor`, `w = pct_start * total_steps - 1` (the peak step,
    not necessarily an integer) and `cos_anneal(a, b, p) = b + (a - b) / 2 * (cos(pi p) + 1)`:

        step <= w:  lr = cos_anneal(initial, peak_lr, step / w)
                    momentum = cos_anneal(max_momentum, base_momentum, step / w)
        step >  w:  p = (step - w) / (total_steps - 1 - w)
                    lr = cos_anneal(peak_lr, floor, p)
                    momentum = cos_anneal(base_momentum, max_momentum, p)

    so the rate is `initial` at step 0, `peak_lr` at step w and `floor` at the last step
    `total_steps - 1`; momentum is `max_momentum` where the rate is lowest and
    `base_momentum` at the peak. Steps past the end keep the last values (PyTorch raises).

    Args:
        peak_lr: the highest learning rate, reached after `pct_start` of the steps.
        total_steps: optimizer steps in the whole schedule (epochs * steps per epoch).
        pct_start: fraction of the steps spent warming up.
        div_factor: `peak_lr / div_factor` is the starting rate.
        final_div_factor: the final rate is the starting rate divided by this.
        base_momentum: momentum (or Adam's beta_1) at the peak rate.
        max_momentum: momentum at the lowest rates (start and end).
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        pct_start: float = 0.25,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ) -> None:
        if not peak_lr > 0:
            raise ValueError(f"`peak_lr` must be > 0. Received: peak_lr={peak_lr}")
        if int(total_steps) != total_steps or total_steps < 2:
            raise ValueError(
                f"`total_steps` must be an integer >= 2. Received: total_steps={total_steps}"
            )
        if not 0 < pct_start < 1 or pct_start * total_steps <= 1:
            raise ValueError(
                "`pct_start` must be in (0, 1) and leave at least one warm-up step "
                f"(pct_start * total_steps > 1). Received: pct_start={pct_start}, "
                f"total_steps={total_steps}"
            )
        if not div_factor > 0 or not final_div_factor > 0:
            raise ValueError(
                "`div_factor` and `final_div_factor` must be > 0. Received: "
                f"div_factor={div_factor}, final_div_factor={final_div_factor}"
            )
        if not 0 <= base_momentum <= max_momentum < 1:
            raise ValueError(
                "Momenta must satisfy 0 <= base_momentum <= max_momentum < 1. Received: "
                f"base_momentum={base_momentum}, max_momentum={max_momentum}"
            )
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.base_momentum = float(base_momentum)
        self.max_momentum = float(max_momentum)

    @property
    def initial_lr(self) -> float:
        return self.peak_lr / self.div_factor

    @property
    def final_lr(self) -> float:
        return self.initial_lr / self.final_div_factor

    @property
    def peak_step(self) -> float:
        return self.pct_start * self.total_steps - 1.0

    def _phase(self, step: Any, warm_start: float, peak: float, end: float) -> Any:
        # One value cycled through both phases; the lr and momentum differ only in end points.
        step = ops.minimum(ops.cast(step, "float32"), float(self.total_steps - 1))
        w = self.peak_step
        last = float(self.total_steps - 1)
        up = _cosine_anneal(warm_start, peak, (w - step) / w)
        down = _cosine_anneal(peak, end, (last - step) / (last - w))
        return ops.where(step <= w, up, down)

    def __call__(self, step: Any) -> Any:
        return self._phase(step, self.initial_lr, self.peak_lr, self.final_lr)

    def momentum(self, step: Any) -> Any:
        """Momentum (SGD) or beta_1 (Adam) at `step`, cycled against the learning rate."""
        return self._phase(step, self.max_momentum, self.base_momentum, self.max_momentum)

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, learning rates, momenta) over the whole schedule, for plots and reports."""
        steps = np.arange(self.total_steps)
        lrs = ops.convert_to_numpy(self(steps))
        momenta = ops.convert_to_numpy(self.momentum(steps))
        return steps, lrs, momenta

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "base_momentum": self.base_momentum,
            "max_momentum": self.max_momentum,
        }


@dataclass
class LRFinderResult:
    """What an LR range test measured and the rate it suggests.

    `suggestion` is the rate where the smoothed loss falls fastest against log(lr)
    (`method == "steepest"`); when too few points remain after trimming the noisy start and
    the diverging end, it is the rate of the lowest smoothed loss divided by 10
    (`method == "min/10"`).
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    method: str
    min_loss_lr: float
    stopped_early: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "lrs": self.lrs.tolist(),
            "losses": self.losses.tolist(),
            "smoothed": self.smoothed.tolist(),
            "suggestion": self.suggestion,
            "method": self.method,
            "min_loss_lr": self.min_loss_lr,
            "stopped_early": self.stopped_early,
        }


def suggest_lr(lrs: np.ndarray, smoothed: np.ndarray, stopped_early: bool) -> tuple[float, str]:
    """The steepest-descent rate of a smoothed loss curve, or min/10 when the curve is short."""
    n = len(lrs)
    # The first tenth is dominated by the smoothing's warm-up; the last points of a run that
    # diverged are the blow-up itself, not a descent.
    start = n // 10
    stop = n - max(1, n // 20) if stopped_early else n
    if stop - start >= 3:
        log_lrs = np.log(lrs[start:stop])
        slopes = np.diff(smoothed[start:stop]) / np.diff(log_lrs)
        return float(lrs[start + int(np.argmin(slopes))]), "steepest"
    return float(lrs[int(np.argmin(smoothed))] / 10.0), "min/10"


def _weighted_loss(loss: Callable[..., Any]) -> Callable[..., Any]:
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


def lr_range_test(
    model: keras.Model,
    dataset: tf.data.Dataset,
    loss: str | keras.losses.Loss | Callable[..., Any],
    *,
    optimizer_factory: Callable[[Any], keras.optimizers.Optimizer] | None = None,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 100,
    smoothing: float = 0.98,
    divergence_factor: float = 4.0,
) -> LRFinderResult:
    """Train for up to `steps` batches with an exponentially rising rate; restore the weights.

    The rate at step t is `min_lr * (max_lr / min_lr) ** (t / (steps - 1))`. The loss is
    smoothed exponentially with bias correction (fastai's recorder); the test stops once the
    smoothed loss exceeds `divergence_factor` times its lowest value or is not finite
    (`stopped_early`). The
    model's weights (trainable and not, e.g. BatchNorm statistics) are put back afterwards,
    even on error, and its compile state is not touched: the test runs its own train step.

    Args:
        model: the model to probe (built, compiled or not).
        dataset: batches of (x, y) or (x, y, sample_weight); repeated if shorter than `steps`.
        loss: a Keras loss (name or object) taking (y_true, y_pred, sample_weight).
        optimizer_factory: builds the optimizer from a learning-rate schedule, so the test
            uses the same optimizer as training (e.g. `lambda s: make_optimizer("sgd", s)`);
            default SGD with momentum 0.9. Wrapped in a LossScaleOptimizer under a
            mixed_float16 model.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"Need 0 < min_lr < max_lr. Received: min_lr={min_lr}, max_lr={max_lr}")
    if steps < 2:
        raise ValueError(f"`steps` must be >= 2. Received: steps={steps}")
    if not 0 <= smoothing < 1 or not divergence_factor > 1:
        raise ValueError(
            "Need 0 <= smoothing < 1 and divergence_factor > 1. Received: "
            f"smoothing={smoothing}, divergence_factor={divergence_factor}"
        )
    schedule = keras.optimizers.schedules.ExponentialDecay(
        min_lr, decay_steps=steps - 1, decay_rate=max_lr / min_lr
    )
    if optimizer_factory is None:
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    else:
        optimizer = optimizer_factory(schedule)
    if model.dtype_policy.name == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    loss_fn = _weighted_loss(keras.losses.get(loss))

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

    initial_weights = model.get_weights()
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, stopped_early = 0.0, math.inf, False
    try:
        for batch in dataset.repeat().take(steps):
            x, y, sample_weight = (*batch, None) if len(batch) == 2 else batch
            # The rate this step will use (a LossScaleOptimizer only advances on finite steps).
            lrs.append(float(ops.convert_to_numpy(optimizer.learning_rate)))
            value = float(train_step(x, y, sample_weight))
            losses.append(value)
            average = smoothing * average + (1 - smoothing) * value
            smooth = average / (1 - smoothing ** len(losses))
            smoothed.append(smooth)
            best = min(best, smooth)
            if not math.isfinite(smooth) or smooth > divergence_factor * best:
                stopped_early = True
                break
    finally:
        model.set_weights(initial_weights)
    if not losses:
        raise ValueError("`dataset` yielded no batches. Received: an empty dataset")
    lr_array, smooth_array = np.asarray(lrs), np.asarray(smoothed)
    finite = np.isfinite(smooth_array)
    if not finite.any():
        raise ConfigError(f"the loss was not finite even at the lowest rate; lower min_lr={min_lr}")
    suggestion, method = suggest_lr(lr_array[finite], smooth_array[finite], stopped_early)
    return LRFinderResult(
        lrs=lr_array,
        losses=np.asarray(losses),
        smoothed=smooth_array,
        suggestion=suggestion,
        method=method,
        min_loss_lr=float(lr_array[finite][np.argmin(smooth_array[finite])]),
        stopped_early=stopped_early,
    )
