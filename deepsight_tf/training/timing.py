"""The pre-flight estimate: a few real training steps timed before the first epoch.

Each kind of phase the run has (head only, or stages unfrozen) is timed on the run's own
model, batches and optimizer, then every variable is put back (weights, BatchNorm statistics,
dropout's seed state), so the run computes exactly what it would have without the probe. The
cost of the final scoring and of each epoch's validation is a third of a step per image.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import keras
import numpy as np

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.progress import RunEstimate
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.model.classifier import stored_classifier
from deepsight_tf.training.averaging import reestimation_batches
from deepsight_tf.training.callbacks import StopRequested
from deepsight_tf.training.feature_cache import can_cache_features
from deepsight_tf.training.optim import loss_scaled
from deepsight_tf.training.plan import PhasePlan, plan_phases, ramp_sizes
from deepsight_tf.training.prepare import Prepared, phase_optimizer, set_trainable
from deepsight_tf.training.step import WARMUP_STEPS, step_seconds, train_step_function
from deepsight_tf.training.tta import views

# The median of the timed steps (after step.py's warm-up) ignores a stall from a noisy
# neighbour: on this project's 2-core machines, the mean of 3 steps once read 892 ms for a
# 580 ms step.
TIMED_STEPS = 7
# A training step costs about three forward passes (forward, then gradients of activations
# and of weights): the forward cost of scoring is taken as a third of a step, per image.
STEP_PER_FORWARD = 3.0
# A budget keeps back a share of itself for what the probe cannot see (callbacks, a slower
# epoch) and some seconds for writing the model, predictions and figures.
BUDGET_MARGIN = 0.04
WRITE_SECONDS = 10.0


@dataclass
class StepCosts:
    """Seconds per optimizer step for each kind of phase ("head", "3,4", "all"), and per
    image of a forward pass (scoring)."""

    per_step: dict[str, float]
    forward: float
    batch: int
    # The final scoring runs on the float32 copy of a mixed-precision model (what is stored):
    # its own timing, slower than the mixed-precision forward pass (None: the same model).
    final_forward: float | None = None
    # Progressive resizing: seconds per step of the last phase's kind at each training size;
    # the largest, --image-size, is that kind's per_step itself (one measurement, so the
    # ratios of the smaller sizes to it are not those of two timings minutes apart).
    by_size: dict[int, float] | None = None
    # Seconds each epoch costs beyond its steps and validation (a fit call's set-up, the
    # first batches' pipeline, the commit): 0 as probed; measured in flight (budget.py).
    epoch_overhead: float = 0.0
    # Kinds of phase whose step the --precision auto probe timed (not timed again here).
    reused: tuple[str, ...] = ()

    def step(self, trainable: str, size: int | None = None) -> float:
        """Seconds per step of this kind of phase on training images of `size` pixels: the
        last phase's kind as timed at that size, another kind scaled by the same ratio."""
        full = self.per_step[trainable]
        if not self.by_size or size is None or size not in self.by_size:
            return full
        return full * self.by_size[size] / self.by_size[max(self.by_size)]

    @property
    def scoring(self) -> float:
        return self.forward if self.final_forward is None else self.final_forward

    @property
    def measured(self) -> str:
        timed = (
            f"the median of {TIMED_STEPS} training steps timed after {WARMUP_STEPS} warm-up "
            "steps per kind of phase"
        )
        if self.reused and set(self.reused) == set(self.per_step):
            timed = "the step as the precision probe timed it"
        elif self.reused:
            timed += f" ({', '.join(self.reused)}: as the precision probe timed it)"
        return (
            f"{timed} (batch {self.batch}, {os.cpu_count()} CPUs); validation at "
            "a third of a step"
            + ("; final scoring timed on the float32 model" if self.final_forward else "")
            + (
                f"; the last kind also at {', '.join(str(size) for size in self.by_size)} px"
                if self.by_size
                else ""
            )
        )


def probe(
    prepared: Prepared,
    phases: list[PhasePlan],
    settings: TrainSettings,
    unfreeze: tuple[int, ...] | str,
    known: dict[str, float] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> StepCosts:
    """Time each kind of phase on the run's own model, then put every variable back.

    `known` holds seconds per step already timed for a kind of phase on this model and
    these batches (the --precision auto probe times the last phase's): not timed again.
    `stopping()` true (Ctrl-C, SIGTERM) ends the probe at the next step with StopRequested."""
    model = prepared.model
    saved = [variable.numpy() for variable in model.variables]
    batch = prepared.distribution["global_batch"]
    by_size: dict[int, float] | None = None
    try:
        per_step: dict[str, float] = dict(known or {})
        for phase in phases:
            if phase.trainable not in per_step and not _cached(phase, settings):
                set_trainable(model, phase, settings, unfreeze)
                # The last phase's step with the weight average's update, when --ema.
                ema = settings.ema if phase is phases[-1] else 0.0
                per_step[phase.trainable] = _step_seconds(
                    prepared, settings, phase, ema, stopping=stopping
                )
        if settings.progressive_resize is not None and not _cached(phases[-1], settings):
            # Every size a budget's schedule could give, on the last phase's kind of step.
            last = phases[-1]
            set_trainable(model, last, settings, unfreeze)
            by_size = {
                size: _step_seconds(prepared, settings, last, settings.ema, size, stopping)
                for size in ramp_sizes(settings.progressive_resize, settings.image_size)[:-1]
            }
            by_size[settings.image_size] = per_step[last.trainable]
    finally:
        for variable, value in zip(model.variables, saved, strict=True):
            variable.assign(value)
    if per_step:
        forward = max(per_step.values()) / batch / STEP_PER_FORWARD
    else:  # only cached-feature head phases: time the backbone's forward pass itself
        forward = _forward_seconds_per_image(prepared, model)
    final_forward = None
    if keras.config.dtype_policy().name != "float32":
        final_forward = _forward_seconds_per_image(
            prepared, stored_classifier(model, settings.image_size)
        )
    reused = tuple(kind for kind in known or {} if kind in per_step)
    return StepCosts(per_step, forward, batch, final_forward, by_size, reused=reused)


def estimate_run(
    costs: StepCosts,
    prepared: Prepared,
    phases: list[PhasePlan],
    settings: TrainSettings,
    eval_images: tuple[int, int],
    steps_done: int = 0,
) -> RunEstimate:
    """The whole run's time on this machine; `steps_done` counts the steps a resume skips.

    `eval_images` is (validation, test): validation is scored after every epoch, both at the
    end. A head phase on cached features costs one forward pass over the training images.
    """
    n_val, n_test = eval_images
    per_epoch = prepared.steps_per_epoch
    train_seconds, steps, skip = 0.0, 0, steps_done
    resized = [0.0, 0]  # seconds and steps of the phases with progressive resizing
    for phase in phases:
        by_epoch = []  # the steps left in each of the phase's epochs
        for epoch in range(phase.epochs):
            count = phase.epoch_steps(epoch, per_epoch)
            by_epoch.append(max(count - skip, 0))
            skip = max(skip - count, 0)
        todo = sum(by_epoch)
        if _cached(phase, settings):
            # One pass of the backbone over the training images; the head's steps are tiny.
            train_seconds += (todo > 0) * per_epoch * costs.batch * costs.forward
        elif phase.image_sizes is None:
            train_seconds += todo * costs.per_step[phase.trainable]
        else:
            seconds = sum(
                count * costs.step(phase.trainable, phase.image_sizes[epoch])
                for epoch, count in enumerate(by_epoch)
            )
            train_seconds += seconds
            resized = [resized[0] + seconds, resized[1] + todo]
        train_seconds += todo / per_epoch * n_val * costs.forward
        if not _cached(phase, settings):
            train_seconds += sum(count > 0 for count in by_epoch) * costs.epoch_overhead
        steps += todo
    eval_seconds = _final_scoring_images(settings, n_val, n_test) * costs.scoring
    if settings.ema:
        # The average's BatchNorm re-estimation and validation score, and the test scoring
        # of the candidate not kept.
        batches = reestimation_batches(prepared.model, per_epoch)
        eval_seconds += (batches * costs.batch + n_val) * costs.forward
        eval_seconds += n_test * len(views(settings.tta, settings.image_size)) * costs.scoring
    per_step = costs.per_step
    mean_step = (sum(per_step.values()) / len(per_step)) if per_step else 0.0
    if resized[1]:  # the mean over the planned steps, each at its epoch's size
        mean_step = resized[0] / resized[1]
    return RunEstimate(
        seconds_per_step=mean_step,
        steps=steps,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        total_seconds=train_seconds + eval_seconds,
        measured=costs.measured,
    )


def size_to_budget(
    costs: StepCosts,
    prepared: Prepared,
    phases: list[PhasePlan],
    settings: TrainSettings,
    eval_images: tuple[int, int],
    seconds: float,
) -> tuple[int, int]:
    """(epochs, steps in the last epoch) of the last phase that fill `seconds` of wall time:
    the most steps whose whole-run estimate (earlier phases and scoring included) fits."""
    last = phases[-1]
    usable = seconds * (1 - BUDGET_MARGIN) - WRITE_SECONDS
    steps = _most_steps(costs, prepared, phases, settings, eval_images, usable)
    needed = _fewest_steps(settings)
    if steps < needed:
        fixed = estimate_run(costs, prepared, phases[:-1], settings, eval_images).total_seconds
        per_step = costs.per_step.get(last.trainable, 0.0) + _val_share(
            costs, prepared, eval_images
        )
        short = (fixed + needed * per_step + WRITE_SECONDS) / (1 - BUDGET_MARGIN) - seconds
        raise ConfigError(
            f"--budget {settings.budget}: the {seconds:.0f} s left leave room for "
            f"{max(steps, 0)} optimizer steps of {per_step * 1000:.0f} ms after {fixed:.0f} s "
            f"of scoring and earlier phases; raise it by {math.ceil(short / 60)} min at least"
        )
    return _schedule(steps, prepared.steps_per_epoch)


def resize_to_budget(
    costs: StepCosts,
    prepared: Prepared,
    phases: list[PhasePlan],
    settings: TrainSettings,
    eval_images: tuple[int, int],
    seconds: float,
    spent: float,
    steps_done: int,
) -> tuple[int, int]:
    """The last phase re-sized in flight: (epochs, steps in the last epoch) that fill the
    `seconds` the budget had when it was sized, `spent` of them gone on the `steps_done`
    steps taken (over all phases), with `costs` as now measured. The same criterion as
    size_to_budget: with the costs and time it planned on, the same schedule. Never fewer
    steps than taken plus one, nor than the one cycle needs (a budget already spent
    overruns rather than stopping mid-cycle)."""
    usable = seconds * (1 - BUDGET_MARGIN) - WRITE_SECONDS - spent
    steps = _most_steps(costs, prepared, phases, settings, eval_images, usable, steps_done)
    earlier = sum(phase.total_steps(prepared.steps_per_epoch) for phase in phases[:-1])
    steps = max(steps, _fewest_steps(settings), steps_done - earlier + 1)
    return _schedule(steps, prepared.steps_per_epoch)


def rescaled(
    costs: StepCosts, ratio: float, forward_ratio: float | None = None, epoch_overhead: float = 0.0
) -> StepCosts:
    """The probe's timings corrected by what the run measured: every step's cost times
    `ratio`, every forward pass's times `forward_ratio` (None: `ratio`), and the seconds an
    epoch costs beyond its steps and validation (the ratios between sizes, between kinds of
    phase and between the mixed-precision and float32 forward passes are kept)."""
    forward_ratio = ratio if forward_ratio is None else forward_ratio
    return replace(
        costs,
        per_step={kind: seconds * ratio for kind, seconds in costs.per_step.items()},
        forward=costs.forward * forward_ratio,
        final_forward=None if costs.final_forward is None else costs.final_forward * forward_ratio,
        by_size=None
        if costs.by_size is None
        else {size: seconds * ratio for size, seconds in costs.by_size.items()},
        epoch_overhead=epoch_overhead,
    )


def _most_steps(
    costs: StepCosts,
    prepared: Prepared,
    phases: list[PhasePlan],
    settings: TrainSettings,
    eval_images: tuple[int, int],
    usable: float,
    steps_done: int = 0,
) -> int:
    """The most steps of the last phase whose estimate from `steps_done` on fits `usable`
    seconds (a binary search: the estimate grows with the steps)."""
    last = phases[-1]
    per_epoch = prepared.steps_per_epoch

    def fits(steps: int) -> bool:
        epochs, last_steps = _schedule(steps, per_epoch)
        sized = replace(settings, epochs=epochs, last_epoch_steps=last_steps)
        plan = plan_phases(sized, last.peak_lr)
        estimate = estimate_run(costs, prepared, plan, sized, eval_images, steps_done)
        return estimate.total_seconds <= usable

    # Every step costs at least the cheapest size's step and its share of validation.
    sizes = ramp_sizes(settings.progressive_resize, settings.image_size)
    cheapest = min(costs.step(last.trainable, size) for size in sizes)
    cheapest += _val_share(costs, prepared, eval_images)
    if cheapest <= 0:
        return 0
    low, high = 0, steps_done + max(int(usable / cheapest), 0) + 1  # fits(low); not high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _schedule(steps: int, per_epoch: int) -> tuple[int, int]:
    """(epochs, steps in the last) of a phase of `steps` optimizer steps."""
    epochs = max(1, math.ceil(steps / per_epoch))
    return epochs, steps - (epochs - 1) * per_epoch


def _fewest_steps(settings: TrainSettings) -> int:
    """One cycle's minimum: two steps, and one of warm-up at least."""
    return max(2, math.floor(1 / settings.pct_start) + 1)


def _val_share(costs: StepCosts, prepared: Prepared, eval_images: tuple[int, int]) -> float:
    """Each step's share of the validation after every epoch."""
    return eval_images[0] * costs.forward / prepared.steps_per_epoch


def _final_scoring_images(settings: TrainSettings, n_val: int, n_test: int) -> int:
    """Images the final scoring passes through the model: every view of test-time
    augmentation of validation and test (the plain test scores are the first view's)."""
    return (n_val + n_test) * len(views(settings.tta, settings.image_size))


def _cached(phase: PhasePlan, settings: TrainSettings) -> bool:
    return phase.trainable == "head" and can_cache_features(settings)


def _step_seconds(
    prepared: Prepared,
    settings: TrainSettings,
    phase: PhasePlan,
    ema: float = 0.0,
    image_size: int | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> float:
    """Seconds per optimizer step of this phase's kind, on the run's first batches (resized
    to `image_size`, else the run's size)."""
    optimizer = loss_scaled(
        phase_optimizer(settings, phase, 1e-3, ema), keras.config.dtype_policy().name
    )
    step = train_step_function(prepared.model, optimizer, keras.losses.CategoricalCrossentropy())
    batches = iter(prepared.train_dataset(first_epoch=0, image_size=image_size).repeat())

    def before_step() -> None:
        if stopping():
            raise StopRequested

    return step_seconds({"step": step}, batches, TIMED_STEPS, before_step)["step"]


def _forward_seconds_per_image(prepared: Prepared, model: Any) -> float:
    """One batch through `model` compiled as predict compiles it (an eager call pays Python's
    dispatch per layer: it read 4.5 ms an image where scoring took about 1.8)."""
    import tensorflow as tf

    images = next(iter(prepared.train_dataset(first_epoch=0)))[0]
    forward = tf.function(lambda x: model(x, training=False))
    np.asarray(forward(images))  # traces
    start = time.perf_counter()
    np.asarray(forward(images))
    return (time.perf_counter() - start) / int(images.shape[0])
