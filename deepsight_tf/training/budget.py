"""--budget: a wall-time budget turned into the last phase's epochs and last-epoch steps.

Sized before the first step, from the pre-flight probe (timing.py: seven timed steps per kind
of phase), then again after each epoch of the last phase but its last. The probe's median of
seven steps moves by about 15% from one probe to the next on these machines (a 30-minute run
ended 14% over its budget), and it cannot see what an epoch costs beyond its steps; an epoch
measures all of it. The costs are corrected by what the last few epochs took (PACE_WINDOW):
their steps' pace against the probed step; from the second epoch on (the first traces the step
and the validation function) also their validation passes against the probed forward pass
(which scales the final scoring too), and the low median of the seconds each took beyond steps
and validation, counted again for every epoch left. The rest of the phase is then sized to what is
left of the budget by the same criterion, so a run that keeps the probed costs keeps its
schedule to the step. The one-cycle schedule takes a new length from the next step on;
config.json is rewritten, so a resume repeats it. A resumed process re-sizes nothing: the
stored schedule is the one it continues.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace

from deepsight_tf.core.checks import parse_duration
from deepsight_tf.core.progress import Notify, command_seconds
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.training.plan import PhasePlan, plan_phases
from deepsight_tf.training.prepare import Prepared
from deepsight_tf.training.timing import StepCosts, rescaled, resize_to_budget, size_to_budget

# Steps of the measured epoch left out of its pace: the first traces the step function, the
# next ones fill the input pipeline's buffers and create oneDNN primitives.
PACE_WARMUP = 5
# Epochs a re-sizing reads, the last ones measured. One epoch alone is noisy (on a 30-minute
# run its steps' pace moved between 0.87x and 1.04x of the probe's from epoch to epoch), and
# one stall beyond its steps, counted again for every epoch left, would cut hundreds of steps.
# Three epochs pool the pace, their low median outvotes one stall (of two epochs, the lower
# counts), and a machine that turns slower for good is still followed within three epochs.
PACE_WINDOW = 3


@dataclass(frozen=True)
class EpochPace:
    """One epoch of the last phase as the budget's clock saw it."""

    seconds: float  # the whole epoch: its batches made, steps, validation, commit
    steps: int
    seconds_per_step: float  # over the steps after PACE_WARMUP
    validation_seconds: float | None
    traced: bool  # the step (and validation) functions were traced in it
    image_size: int | None = None  # its training images' size (progressive resizing)

    @property
    def overhead(self) -> float:
        """Seconds beyond its steps and validation."""
        steps = self.steps * self.seconds_per_step
        return max(0.0, self.seconds - steps - (self.validation_seconds or 0.0))


@dataclass
class Budget:
    """One run's --budget: what was probed, how much time there was when it was sized."""

    settings: TrainSettings
    costs: StepCosts
    eval_images: tuple[int, int]
    budget_from: float | None = None  # time.monotonic() it counts from; None: the process
    left: float = 0.0  # seconds the budget had when the schedule was sized
    sized_at: float = 0.0  # self.clock() then
    measured: list[EpochPace] = field(default_factory=list)  # the epochs re-sized after

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
        pace: EpochPace,
        steps_done: int,
        notify: Notify | None,
    ) -> tuple[TrainSettings, list[PhasePlan]] | None:
        """The rest of the last phase sized to the costs `pace` measured (None: the same
        schedule)."""
        last = phases[-1]
        costs = self.corrected(pace, last.trainable)
        spent = self.clock() - self.sized_at
        epochs, last_steps = resize_to_budget(
            costs, prepared, phases, self.settings, self.eval_images, self.left, spent, steps_done
        )
        if (epochs, last_steps) == (self.settings.epochs, self.settings.last_epoch_steps):
            return None
        before = last.total_steps(prepared.steps_per_epoch)
        self.settings = replace(self.settings, epochs=epochs, last_epoch_steps=last_steps)
        phases = plan_phases(self.settings, last.peak_lr)
        if notify:
            after = phases[-1].total_steps(prepared.steps_per_epoch)
            probed = self.costs.step(last.trainable, pace.image_size)
            paced = costs.step(last.trainable, pace.image_size)
            read = min(len(self.measured), PACE_WINDOW)
            notify(
                f"--budget {self.settings.budget}: steps ran at "
                f"{pace.seconds_per_step * 1000:.0f} ms, {paced * 1000:.0f} over the last "
                f"{read} epoch{'s' if read > 1 else ''} against the probe's "
                f"{probed * 1000:.0f} ({paced / probed:.2f}x), "
                f"{costs.epoch_overhead:.0f} s an epoch besides; phase {last.index} re-sized "
                f"from {before} to {after} steps ({epochs} epochs, the last {last_steps} of "
                f"{prepared.steps_per_epoch})"
            )
        return self.settings, phases

    def corrected(self, pace: EpochPace, trainable: str) -> StepCosts:
        """The probed costs corrected by `pace` and the epochs measured before it, the last
        PACE_WINDOW of them: their steps' pace always; their validation and overhead (the
        low median) from those that traced nothing, none before the first such epoch."""
        self.measured.append(pace)
        recent = self.measured[-PACE_WINDOW:]
        took = sum(p.steps * p.seconds_per_step for p in recent)
        ratio = took / sum(p.steps * self.costs.step(trainable, p.image_size) for p in recent)
        n_val = self.eval_images[0]
        untraced = [p for p in self.measured if not p.traced and p.validation_seconds]
        untraced = untraced[-PACE_WINDOW:]
        if not untraced or not n_val or self.costs.forward <= 0:
            return rescaled(self.costs, ratio)
        validation = sum(p.validation_seconds or 0.0 for p in untraced)
        forward_ratio = validation / (len(untraced) * n_val * self.costs.forward)
        overhead = statistics.median_low([p.overhead for p in untraced])
        return rescaled(self.costs, ratio, forward_ratio, overhead)
