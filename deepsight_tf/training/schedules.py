"""The learning-rate schedule: OneCycle, with its momentum cycle, per optimizer step."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from deepsight_tf.core.settings import TrainSettings


def _cosine_anneal(start: Any, end: Any, remaining: Any) -> Any:
    # Half a cosine from `start` to `end`, as in PyTorch's OneCycleLR, written in the fraction
    # of the phase still to go, r = 1 - p: (cos(pi p) + 1) / 2 = sin(pi r / 2)^2. The same
    # value, but float32 keeps its precision near the end of a phase, where the rate is tiny.
    return end + (start - end) * ops.square(ops.sin(math.pi / 2.0 * remaining))


def _linear_anneal(start: Any, end: Any, remaining: Any) -> Any:
    # PyTorch's anneal_strategy="linear", in the same fraction still to go.
    return end + (start - end) * remaining


ANNEALS = {"cos": _cosine_anneal, "linear": _linear_anneal}


def _check_length(total_steps: int, pct_start: float) -> None:
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


@keras.saving.register_keras_serializable(package="deepsight")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle learning rate with the opposite momentum cycle, per optimizer step.

    The same two phases as PyTorch's `OneCycleLR` (`three_phase=False`), annealed by half a
    cosine (`anneal="cos"`, fastai's) or linearly (`anneal="linear"`: airbench's triangle,
    with `div_factor` 5 and `final_div_factor` 0.2 / 0.07). With `initial = peak_lr / div_factor`,
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
        anneal: "cos" (cos_anneal above) or "linear" (a straight line between the same ends).
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
        anneal: str = "cos",
    ) -> None:
        if anneal not in ANNEALS:
            raise ValueError(
                f"`anneal` must be one of {tuple(ANNEALS)}. Received: anneal={anneal!r}"
            )
        if not peak_lr > 0:
            raise ValueError(f"`peak_lr` must be > 0. Received: peak_lr={peak_lr}")
        _check_length(total_steps, pct_start)
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
        # The length as a variable too, read by the traced step: a --budget re-sized in flight
        # changes the rate every later step computes without tracing the step again.
        self._length = keras.Variable(
            float(total_steps), dtype="float32", trainable=False, name="one_cycle_length"
        )
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.base_momentum = float(base_momentum)
        self.max_momentum = float(max_momentum)
        self.anneal = anneal

    def set_total_steps(self, total_steps: int) -> None:
        """A new length from the next step on (a --budget re-sized in flight): the steps taken
        keep the rates they had; later ones follow the cycle of `total_steps`."""
        _check_length(total_steps, self.pct_start)
        self.total_steps = int(total_steps)
        self._length.assign(float(total_steps))

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
        length = ops.convert_to_tensor(self._length)
        last = length - 1.0
        step = ops.minimum(ops.cast(step, "float32"), last)
        w = self.pct_start * length - 1.0  # peak_step
        anneal = ANNEALS[self.anneal]
        up = anneal(warm_start, peak, (w - step) / w)
        down = anneal(peak, end, (last - step) / (last - w))
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
            "anneal": self.anneal,
        }


def phase_schedule(settings: TrainSettings, peak_lr: float, total_steps: int) -> OneCycle:
    """A phase's one-cycle schedule from the run's settings: the one place they become one.

    A constant --momentum is a cycle whose two momenta are equal."""
    momenta = {}
    if settings.momentum is not None:
        momenta = {"base_momentum": settings.momentum, "max_momentum": settings.momentum}
    return OneCycle(
        peak_lr,
        total_steps,
        pct_start=settings.pct_start,
        div_factor=settings.div_factor,
        final_div_factor=settings.final_div_factor,
        anneal=settings.anneal,
        **momenta,
    )
