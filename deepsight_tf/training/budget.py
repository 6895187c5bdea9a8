"""--budget: a wall-time budget turned into the last phase's epochs and last-epoch steps.

Sized twice. Before the first step, from the pre-flight probe (timing.py: seven timed steps
per kind of phase). Then once in flight, after the last phase's first epoch: the probe's
median of seven steps moves by about 15% from one probe to the next on these machines (a
30-minute run ended 14% over its budget), where an epoch's hundreds of steps give the pace
the run really keeps. The costs are scaled by the measured pace against the probed step, and
the rest of the phase is sized to what is left of the budget by the same criterion, so a run
that keeps the probed pace keeps its schedule to the step. The one-cycle schedule takes the
new length from the next step on; config.json is rewritten, so a resume repeats it. A
resumed process re-sizes nothing: the stored schedule is the one it continues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from deepsight_tf.core.checks import parse_duration
from deepsight_tf.core.progress import Notify, command_seconds
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.training.plan import PhasePlan, plan_phases
from deepsight_tf.training.prepare import Prepared
from deepsight_tf.training.timing import StepCosts, rescaled, resize_to_budget, size_to_budget

# Steps of the measured epoch left out of its pace: the first traces the step function, the
# next ones fill the input pipeline's buffers and create oneDNN primitives.
PACE_WARMUP = 5


@dataclass
class Budget:
    """One run's --budget: what was probed, how much time there was when it was sized."""

    settings: TrainSettings
    costs: StepCosts
    eval_images: tuple[int, int]
    budget_from: float | None = None  # time.monotonic() it counts from; None: the process
    left: float = 0.0  # seconds the budget had when the schedule was sized
    sized_at: float = 0.0  # self.clock() then

    def clock(self) -> float:
        """Seconds of the budget used: since the process started (its imports and data
        loading count), or since `budget_from`."""
        if self.budget_from is None:
            return command_seconds()
        return time.monotonic() - self.budget_from

    def size(
        self, prepared: Prepared, phases: list[PhasePlan], notify: Notify | None
    ) -> tuple[TrainSettings, list[PhasePlan]]:
        """The settings and phases that end the command within the budget, as probed."""
        settings = self.settings
        self.sized_at = self.clock()
        self.left = parse_duration(settings.budget) - self.sized_at
        epochs, last = size_to_budget(
            self.costs, prepared, phases, settings, self.eval_images, self.left
        )
        self.settings = replace(settings, epochs=epochs, last_epoch_steps=last)
        phases = plan_phases(self.settings, phases[-1].peak_lr)
        if notify:
            steps = phases[-1].total_steps(prepared.steps_per_epoch)
            notify(
                f"--budget {settings.budget}: {epochs} epochs of phase {phases[-1].index} "
                f"({steps} steps, the last epoch {last} of {prepared.steps_per_epoch}) in the "
                f"{self.left:.0f} s left"
            )
        return self.settings, phases

    def resize(
        self,
        prepared: Prepared,
        phases: list[PhasePlan],
        seconds_per_step: float,
        image_size: int | None,
        steps_done: int,
        notify: Notify | None,
    ) -> tuple[TrainSettings, list[PhasePlan]] | None:
        """The rest of the last phase sized to the measured pace (None: the same schedule)."""
        last = phases[-1]
        probed = self.costs.step(last.trainable, image_size)
        ratio = seconds_per_step / probed
        spent = self.clock() - self.sized_at
        epochs, last_steps = resize_to_budget(
            rescaled(self.costs, ratio),
            prepared,
            phases,
            self.settings,
            self.eval_images,
            self.left,
            spent,
            steps_done,
        )
        if (epochs, last_steps) == (self.settings.epochs, self.settings.last_epoch_steps):
            return None
        before = last.total_steps(prepared.steps_per_epoch)
        self.settings = replace(self.settings, epochs=epochs, last_epoch_steps=last_steps)
        phases = plan_phases(self.settings, last.peak_lr)
        if notify:
            after = phases[-1].total_steps(prepared.steps_per_epoch)
            notify(
                f"--budget {self.settings.budget}: steps ran at {seconds_per_step * 1000:.0f} ms "
                f"against the probe's {probed * 1000:.0f} ({ratio:.2f}x); phase "
                f"{last.index} re-sized from {before} to {after} steps ({epochs} epochs, the "
                f"last {last_steps} of {prepared.steps_per_epoch})"
            )
        return self.settings, phases
