"""What happens at each event of a training run: a phase begins, an epoch ends, a phase ends.

The learner (learner.py) fits a run's phases one epoch at a time and announces these events;
every behaviour that reacts to one is a callback here, and `run_callbacks` lists them in the
order they run. So what happens at the end of an epoch is that list read top to bottom:

    RecordHistory      the row in history.csv, which the monitor hears too
    CommitEpoch        the best epoch's weights, then the training state committed
    StopOnDivergence   a non-finite loss or state ends the run, naming the step
    StopIfRequested    Ctrl-C or SIGTERM ends the run once the epoch is committed
    ResizeBudget       --budget: the rest of the last phase sized to the measured pace

and at the end of a phase: the weight average put in (PutInAverage, --ema), then the phase's
end weights saved (SavePhaseEnd), which a resume starts the next phase from.

The events inside an epoch (each step) are Keras's own callbacks (callbacks.py: counting
steps, a NaN loss, progress, commits within an epoch, the pace a budget measures): only Keras's
`fit` sees single steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.progress import Notify, Progress, TrainingMonitor
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.workspace import CHECKPOINTS_DIR, HISTORY_FILE
from deepsight_tf.training.averaging import Average, reestimate_batchnorm, reestimation_batches
from deepsight_tf.training.budget import Budget, EpochPace
from deepsight_tf.training.callbacks import MONITOR, RunControl, StopRequested, commit_state
from deepsight_tf.training.checkpoints import CheckpointStore, save_weights_npz
from deepsight_tf.training.data import TrainingData
from deepsight_tf.training.history import write_history
from deepsight_tf.training.plan import PhasePlan
from deepsight_tf.training.prepare import Prepared


class RunContext(Protocol):
    """What the learner and its callbacks need of the run (training/loop.py's _Run)."""

    settings: TrainSettings  # a --budget re-size replaces them
    unfreeze: tuple[int, ...] | str
    data: TrainingData
    run_dir: Path
    control: RunControl
    progress: Progress | None
    notify: Notify | None
    monitor: TrainingMonitor
    budget: Budget | None


class Fitting(Protocol):
    """What a callback may read of the learner, and change through it."""

    run: RunContext
    prepared: Prepared
    store: CheckpointStore
    history: list[dict[str, Any]]
    phases: list[PhasePlan]
    created: str
    fit_model: Any  # the model `fit` trains: the classifier, or its head on cached features
    fit_val: Any
    optimizer: Any
    average: Average | None

    def averages(self, phase: PhasePlan) -> bool: ...

    def set_phases(self, phases: list[PhasePlan]) -> None: ...


@dataclass(frozen=True)
class EpochEnd:
    """One epoch as it ended."""

    phase: PhasePlan
    epoch: int  # within the phase, from 0
    offset: int  # the epochs of the phases before
    logs: dict[str, float]  # Keras's: loss and metrics, on training and validation batches
    seconds: float
    pace: EpochPace | None  # measured for a --budget re-size, else None

    @property
    def run_epoch(self) -> int:
        """The epoch's number in the run, from 1."""
        return self.offset + self.epoch + 1


class Callback:
    """A behaviour of the run; each event's default is to do nothing."""

    def phase_begin(self, learner: Fitting, phase: PhasePlan) -> None:
        """Before the phase's first step (also when a resume starts inside it)."""

    def epoch_end(self, learner: Fitting, end: EpochEnd) -> None:
        """After the epoch's last step and its validation pass."""

    def phase_end(self, learner: Fitting, phase: PhasePlan) -> None:
        """After the phase's last epoch."""


class AnnouncePhase(Callback):
    """Tells the phase's schedule: its epochs, steps, peak rate and the backbone's share."""

    def phase_begin(self, learner: Fitting, phase: PhasePlan) -> None:
        notify = learner.run.notify
        if not notify:
            return
        steps = learner.prepared.steps_per_epoch
        last = f" (the last {phase.last_epoch_steps})" if phase.last_epoch_steps is not None else ""
        notify(
            f"phase {phase.index}: {phase.name}, {phase.epochs} epochs of {steps} steps{last}, "
            f"peak lr {phase.peak_lr:g} (backbone x{phase.backbone_lr_mult:g})"
        )


class RecordHistory(Callback):
    """One row per epoch in history.csv (phase, rate, train and validation metrics), which the
    monitor hears too. An epoch redone after a resume replaces its row and any after it."""

    def epoch_end(self, learner: Fitting, end: EpochEnd) -> None:
        run = learner.run
        if run.control.diverged_step is not None:
            return  # a diverged epoch is not a result
        row: dict[str, Any] = {
            "epoch": end.run_epoch,
            "phase": end.phase.index,
            "lr_end": float(np.asarray(learner.fit_model.optimizer.learning_rate)),
            "seconds": round(end.seconds, 2),
        }
        if end.phase.image_sizes:  # progressive resizing: the epoch's training pixels
            row["image_size"] = end.phase.image_sizes[end.epoch]
        row.update({k: float(v) for k, v in sorted(end.logs.items()) if k != "learning_rate"})
        history = learner.history
        history[:] = [r for r in history if r["epoch"] < row["epoch"]] + [row]
        write_history(run.run_dir / HISTORY_FILE, history)
        run.monitor.epoch(row)


class CommitEpoch(Callback):
    """The best epoch by validation macro-F1 (its classifier weights saved before the commit
    that refers to them), then the training state committed at the epoch's end."""

    def epoch_end(self, learner: Fitting, end: EpochEnd) -> None:
        control = learner.run.control
        if control.diverged_step is not None:
            return
        control.epoch, control.batch = end.epoch + 1, 0
        value = end.logs.get(MONITOR)
        better = control.best is None or (value is not None and value > control.best)
        if value is not None and np.isfinite(value) and better:
            # The classifier's weights, also when a cached-feature head is being fit.
            name = learner.store.save_best(end.run_epoch, learner.prepared.model.get_weights())
            control.best, control.best_epoch = float(value), end.run_epoch
            control.best_file = name
        commit_state(
            learner.store,
            learner.prepared.model,
            learner.fit_model,
            control,
            end.phase.index,
            learner.created,
            with_metrics=False,
        )


class StopOnDivergence(Callback):
    """A non-finite loss, or a state that overflowed before the loss showed it, ends the run:
    the error names the step and the last good commit, which is kept."""

    def epoch_end(self, learner: Fitting, end: EpochEnd) -> None:
        control = learner.run.control
        if control.diverged_step is None:
            return
        last = control.last_commit
        kept = (
            f"the last good checkpoint ({last.position.describe()}, step "
            f"{last.position.step}) is kept in {learner.store.folder}"
            if last
            else "nothing was saved"
        )
        raise ConfigError(
            f"loss became NaN or infinite at step {control.diverged_step} (phase "
            f"{end.phase.index}, epoch {end.epoch + 1}); training stopped and "
            f"{kept}; lower --lr and start a new run"
        )


class StopIfRequested(Callback):
    """Ctrl-C or SIGTERM during the epoch's last step or its validation: the epoch is
    committed by now, so the run stops here (`--resume` continues from the next epoch)."""

    def epoch_end(self, learner: Fitting, end: EpochEnd) -> None:
        if learner.run.control.stop_requested:
            raise StopRequested


class ResizeBudget(Callback):
    """--budget: after each measured epoch, the rest of the last phase sized to the pace
    (budget.py). `rewritten` writes what the new schedule changes on disk (config.json, the
    schedule figure), so a resume repeats it."""

    def __init__(self, budget: Budget, rewritten: Callable[[list[PhasePlan]], None]) -> None:
        self.budget, self.rewritten = budget, rewritten

    def epoch_end(self, learner: Fitting, end: EpochEnd) -> None:
        if end.pace is None:
            return
        run = learner.run
        resized = self.budget.resize(
            learner.prepared, learner.phases, end.pace, run.control.step, run.notify
        )
        if resized is None:
            return
        run.settings, phases = resized
        learner.set_phases(phases)
        self.rewritten(phases)


class PutInAverage(Callback):
    """--ema, the last phase: the weight average into the model, its BatchNorm statistics
    re-estimated on the next epoch's batches (a pure function of the seed, so a resume gets
    the same), then its validation macro-F1, which the run weighs against the best epoch's."""

    def phase_end(self, learner: Fitting, phase: PhasePlan) -> None:
        if learner.averages(phase):
            put_in_average(learner, phase)


class SavePhaseEnd(Callback):
    """The phase's end weights, which the next phase (and a resume into it) starts from."""

    def phase_end(self, learner: Fitting, phase: PhasePlan) -> None:
        save_phase_end(learner, phase)


def run_callbacks(
    budget: Budget | None, rewritten: Callable[[list[PhasePlan]], None]
) -> list[Callback]:
    """Every callback of a run, in the order each event runs them."""
    callbacks: list[Callback] = [
        AnnouncePhase(),
        RecordHistory(),
        CommitEpoch(),
        StopOnDivergence(),
        StopIfRequested(),
    ]
    if budget is not None:
        callbacks.append(ResizeBudget(budget, rewritten))
    return [*callbacks, PutInAverage(), SavePhaseEnd()]


def put_in_average(learner: Fitting, phase: PhasePlan) -> None:
    """The optimizer's weight average into the classifier (see PutInAverage)."""
    prepared, settings, notify = learner.prepared, learner.run.settings, learner.run.notify
    optimizer = learner.optimizer
    getattr(optimizer, "inner_optimizer", optimizer).apply_average(
        learner.fit_model.trainable_variables
    )
    model = prepared.model
    count = reestimation_batches(model, prepared.steps_per_epoch)
    offset = sum(p.epochs for p in learner.phases if p.index < phase.index)
    batches = prepared.train_dataset(first_epoch=offset + phase.epochs)
    used = reestimate_batchnorm(model, batches, count)
    scores = learner.fit_model.evaluate(learner.fit_val, return_dict=True, verbose=0)
    learner.average = Average(settings.ema, float(scores["macro_f1"]), model.get_weights())
    if notify:
        notify(
            f"weight average (decay {settings.ema:g}) put in; BatchNorm statistics "
            f"re-estimated on {used} batches; validation macro-F1 "
            f"{learner.average.val_macro_f1:.4f}"
        )


def phase_end_file(run_dir: Path, phase: PhasePlan) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"phase{phase.index}.end.weights.npz"


def save_phase_end(learner: Fitting, phase: PhasePlan) -> None:
    save_weights_npz(learner.prepared.model, phase_end_file(learner.run.run_dir, phase))
