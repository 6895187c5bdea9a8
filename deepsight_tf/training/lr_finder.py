"""fastai's LR range test: train briefly at an exponentially rising rate and read the loss curve."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.storage import atomic_write_json
from deepsight_tf.core.workspace import LR_FINDER_FIGURE, LR_FINDER_FILE, Workspace
from deepsight_tf.training.data import training_data
from deepsight_tf.training.plan import default_run_id, parse_unfreeze, plan_phases, resolve_settings
from deepsight_tf.training.prepare import phase_optimizer, prepare, set_trainable
from deepsight_tf.training.step import train_step_function, weighted_loss


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


def _check_range(
    min_lr: float, max_lr: float, steps: int, smoothing: float, divergence_factor: float
) -> None:
    if not 0 < min_lr < max_lr:
        raise ValueError(f"Need 0 < min_lr < max_lr. Received: min_lr={min_lr}, max_lr={max_lr}")
    if steps < 2:
        raise ValueError(f"`steps` must be >= 2. Received: steps={steps}")
    if not 0 <= smoothing < 1 or not divergence_factor > 1:
        raise ValueError(
            "Need 0 <= smoothing < 1 and divergence_factor > 1. Received: "
            f"smoothing={smoothing}, divergence_factor={divergence_factor}"
        )


def _range_optimizer(
    model: keras.Model,
    schedule: Any,
    factory: Callable[[Any], keras.optimizers.Optimizer] | None,
) -> keras.optimizers.Optimizer:
    """The training optimizer on the rising schedule (loss-scaled under mixed_float16)."""
    optimizer = (
        keras.optimizers.SGD(schedule, momentum=0.9) if factory is None else factory(schedule)
    )
    if model.dtype_policy.name == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


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
    _check_range(min_lr, max_lr, steps, smoothing, divergence_factor)
    schedule = keras.optimizers.schedules.ExponentialDecay(
        min_lr, decay_steps=steps - 1, decay_rate=max_lr / min_lr
    )
    optimizer = _range_optimizer(model, schedule, optimizer_factory)
    train_step = train_step_function(model, optimizer, weighted_loss(keras.losses.get(loss)))
    initial_weights = model.get_weights()
    try:
        lrs, losses, smoothed, stopped_early = _sweep(
            dataset, steps, optimizer, train_step, smoothing, divergence_factor
        )
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


def _sweep(
    dataset: tf.data.Dataset,
    steps: int,
    optimizer: Any,
    train_step: Callable[..., Any],
    smoothing: float,
    divergence_factor: float,
) -> tuple[list[float], list[float], list[float], bool]:
    """The steps of the range test: each step's rate, loss and smoothed loss, and whether
    the smoothed loss diverged before `steps`."""
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
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
            return lrs, losses, smoothed, True
    return lrs, losses, smoothed, False


@dataclass
class LRFinderReport:
    run_dir: str
    phase: str
    suggestion: float
    method: str
    min_loss_lr: float
    steps: int
    stopped_early: bool
    figure: str


def find_lr(settings: TrainSettings, workspace: Workspace, steps: int = 100) -> LRFinderReport:
    """The range test on the run's first phase; writes lr_finder.json and its figure."""
    from deepsight_tf.plots import save_figure
    from deepsight_tf.plots.training import plot_lr_finder

    settings = resolve_settings(settings)
    unfreeze = parse_unfreeze(settings.unfreeze)
    data = training_data(settings, workspace)
    run_id = settings.run_id or f"lr-finder-{default_run_id(settings)}"
    run_dir = workspace.run_dir(run_id)
    with workspace.lock(f"run-{run_id}"):
        prepared = prepare(settings, data, workspace)
        phase = plan_phases(settings)[0]
        set_trainable(prepared.model, phase, settings, unfreeze)
        result = lr_range_test(
            prepared.model,
            prepared.train_dataset(epochs=math.ceil(steps / prepared.steps_per_epoch)),
            keras.losses.CategoricalCrossentropy(),
            optimizer_factory=lambda schedule: phase_optimizer(settings, phase, schedule),
            steps=steps,
        )
        figure = save_figure(
            plot_lr_finder(
                result.lrs, result.losses, result.smoothed, result.suggestion, result.method
            ),
            run_dir / LR_FINDER_FIGURE,
        )
        atomic_write_json(
            run_dir / LR_FINDER_FILE, {"settings": asdict(settings), **result.to_dict()}
        )
    return LRFinderReport(
        run_dir=str(run_dir),
        phase=phase.name,
        suggestion=result.suggestion,
        method=result.method,
        min_loss_lr=result.min_loss_lr,
        steps=len(result.lrs),
        stopped_early=result.stopped_early,
        figure=str(figure),
    )
