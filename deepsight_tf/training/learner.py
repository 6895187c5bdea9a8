"""The learner: a run's phases fit one epoch at a time, announcing each event to the run's
callbacks (events.py says what happens at each).

Each epoch is one Keras `fit` on that epoch's own batches (a pure function of the seed and the
epoch number), so an epoch resumed mid-way sees the rest of the same batches. A resume skips
the phases its commit has finished and starts inside the one it stopped in, with that phase's
optimizer state put back.
"""

from __future__ import annotations

import time
from typing import Any

import keras

from deepsight_tf.core.workspace import TENSORBOARD_DIR
from deepsight_tf.training.averaging import Average
from deepsight_tf.training.budget import PACE_WARMUP, EpochPace
from deepsight_tf.training.callbacks import (
    Checkpointer,
    DivergenceGuard,
    Pace,
    RestoreMetrics,
    StepProgress,
    assign_all,
)
from deepsight_tf.training.checkpoints import CheckpointStore, Commit
from deepsight_tf.training.events import (
    Callback,
    EpochEnd,
    RunContext,
    phase_end_file,
    put_in_average,
    save_phase_end,
)
from deepsight_tf.training.feature_cache import cached_head, can_cache_features
from deepsight_tf.training.metrics import training_metrics
from deepsight_tf.training.plan import PhasePlan
from deepsight_tf.training.prepare import Prepared, phase_optimizer, set_trainable
from deepsight_tf.training.schedules import OneCycle, phase_schedule


class Learner:
    """The phases of one run, each fit epoch by epoch, with the callbacks that react."""

    def __init__(
        self,
        run: RunContext,
        prepared: Prepared,
        store: CheckpointStore,
        val_ds: Any,
        history: list[dict[str, Any]],
        phases: list[PhasePlan],
        created: str,
        callbacks: list[Callback],
    ) -> None:
        self.run, self.prepared, self.store = run, prepared, store
        self.val_ds, self.history, self.phases, self.created = val_ds, history, phases, created
        self.callbacks = callbacks
        self.total_steps = sum(p.total_steps(prepared.steps_per_epoch) for p in phases)
        self.average: Average | None = None  # the last phase's weight average (--ema)
        self.schedule: OneCycle | None = None  # the phase being fit's
        # The phase being fit: the model fit trains, its validation data, its optimizer.
        self.fit_model: Any = None
        self.fit_val: Any = None
        self.optimizer: Any = None
        self._traced_size: int | None = None  # progressive resizing: the size traced last

    def fit(self, restored: tuple[Commit, dict] | None) -> int:
        """Every phase not yet done; returns the number of epochs the run has when finished."""
        here = restored[0].position if restored else None
        epoch_offset = 0
        for index in range(len(self.phases)):
            phase = self.phases[index]
            if here is None or phase.index > here.phase:
                self._fit_phase(phase, epoch_offset, None)
            elif phase.index == here.phase and here.epoch < phase.epochs:
                self._fit_phase(phase, epoch_offset, restored)
            elif phase.index == here.phase:
                self._finish_resumed(phase, restored)
            epoch_offset += self.phases[index].epochs  # as a --budget may have re-sized it
        return epoch_offset

    def set_phases(self, phases: list[PhasePlan]) -> None:
        """A re-sized plan in place: the one-cycle schedule the optimizer holds takes the last
        phase's new length (a variable the traced step reads: no new trace)."""
        self.phases = phases
        self.total_steps = sum(p.total_steps(self.prepared.steps_per_epoch) for p in phases)
        assert self.schedule is not None
        self.schedule.set_total_steps(phases[-1].total_steps(self.prepared.steps_per_epoch))

    def averages(self, phase: PhasePlan) -> bool:
        """Whether this phase keeps a weight average (--ema): the last phase, fit on pixels."""
        return bool(
            self.run.settings.ema
            and phase is self.phases[-1]
            and not (phase.trainable == "head" and can_cache_features(self.run.settings))
        )

    def _finish_resumed(self, phase: PhasePlan, restored: tuple[Commit, dict] | None) -> None:
        """The phase the commit finished: its end, had the run stopped before writing it."""
        assert restored is not None
        if self.averages(phase):
            # The average is in the optimizer's committed state: put it in again (the
            # restored model holds the raw weights, whether or not the end file exists).
            self._compile(phase, self.run.settings.ema)
            self._restore_optimizer(restored[1], skip=0)
            put_in_average(self, phase)
            save_phase_end(self, phase)
        elif not phase_end_file(self.run.run_dir, phase).is_file():
            # Killed between this phase's last commit and its end file: the restored
            # model is that phase's end.
            save_phase_end(self, phase)

    def _fit_phase(
        self, phase: PhasePlan, epoch_offset: int, restored: tuple[Commit, dict] | None
    ) -> None:
        """The phase's epochs from the first not done, announcing each event."""
        first_epoch, skip = (
            (restored[0].position.epoch, restored[0].position.batch) if restored else (0, 0)
        )
        train_dataset = self._compile(phase, self.run.settings.ema if self.averages(phase) else 0.0)
        self.run.control.epoch, self.run.control.batch = first_epoch, skip
        steps = self._keras_callbacks(phase)
        if restored:
            steps += self._restore_optimizer(restored[1], skip)
        self._announce("phase_begin", phase)
        self._traced_size = None
        epoch = first_epoch
        while epoch < phase.epochs:
            skipped = skip if epoch == first_epoch else 0
            end = self._fit_epoch(
                phase, epoch, epoch_offset, skipped, epoch == first_epoch, train_dataset, steps
            )
            phases = self.phases
            self._announce("epoch_end", end)
            if self.phases is not phases:  # a --budget re-sized the phase
                phase = self.phases[-1]
                steps = self._keras_callbacks(phase)
            epoch += 1
        self._announce("phase_end", phase)

    def _fit_epoch(
        self,
        phase: PhasePlan,
        epoch: int,
        epoch_offset: int,
        skipped: int,
        first: bool,
        train_dataset: Any,
        steps: list[Any],
    ) -> EpochEnd:
        """One epoch: one Keras fit on the epoch's own batches (less the `skipped` a resume
        has done) and its validation pass; with a --budget, the pace it measured."""
        pace = self._pace(phase, epoch, skipped)
        began, traces = pace.clock() if pace else 0.0, first
        # Progressive resizing only: a phase on cached features has no image size.
        sized = {}
        if phase.image_sizes is not None:
            sized["image_size"] = phase.image_sizes[epoch]
            if sized["image_size"] != self._traced_size:
                self._traced_size, traces = sized["image_size"], True
                self._new_size(epoch_offset + epoch, sized["image_size"])
        batches = train_dataset(first_epoch=epoch_offset + epoch, skip_batches=skipped, **sized)
        n_steps = phase.epoch_steps(epoch, self.prepared.steps_per_epoch)
        if n_steps < self.prepared.steps_per_epoch:  # a budget's shorter last epoch
            batches = batches.take(max(n_steps - skipped, 0))
        fit_began = time.perf_counter()
        logs = self.fit_model.fit(
            batches,
            validation_data=self.fit_val,
            initial_epoch=epoch,
            epochs=epoch + 1,
            callbacks=steps + ([pace] if pace else []),
            verbose=0,
            shuffle=False,
        ).history
        measured = None
        if pace is not None and pace.seconds_per_step is not None:
            measured = EpochPace(
                pace.clock() - began,
                n_steps - skipped,
                pace.seconds_per_step,
                pace.validation_seconds,
                traces,
                sized.get("image_size"),
            )
        epoch_logs = {k: float(v[-1]) for k, v in logs.items() if v}
        return EpochEnd(
            phase, epoch, epoch_offset, epoch_logs, time.perf_counter() - fit_began, measured
        )

    def _announce(self, event: str, subject: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, subject)

    def _pace(self, phase: PhasePlan, epoch: int, skipped: int) -> Pace | None:
        """The pace to measure in this epoch: each of the last phase's but its last, when a
        --budget sized in this process can still re-size the epochs after it (budget.py)."""
        budget = self.run.budget
        if budget is None or phase is not self.phases[-1] or skipped:
            return None
        if epoch >= phase.epochs - 1:
            return None
        return Pace(budget.clock, PACE_WARMUP)

    def _new_size(self, run_epoch: int, size: int) -> None:
        """A fresh training function for a new image size (progressive resizing): traced for
        that shape alone, where Keras's one function would relax to unknown sizes."""
        self.fit_model.train_function = None
        if self.run.notify:
            self.run.notify(f"epoch {run_epoch + 1}: training images at {size} px")

    def _compile(self, phase: PhasePlan, ema: float) -> Any:
        """The phase's model (its trainable stages set), validation data and fresh optimizer
        on the phase's one-cycle schedule, compiled together; returns its training batches."""
        settings, prepared = self.run.settings, self.prepared
        set_trainable(prepared.model, phase, settings, self.run.unfreeze)
        schedule = phase_schedule(
            settings, phase.peak_lr, phase.total_steps(prepared.steps_per_epoch)
        )
        self.schedule = schedule  # the optimizer's: a --budget re-sizes it in flight
        lookahead = settings.lookahead and phase is self.phases[-1]
        self.optimizer = phase_optimizer(settings, phase, schedule, ema, lookahead)
        self.fit_model, self.fit_val, train_dataset = self._phase_inputs(phase)
        self.fit_model.compile(
            optimizer=self.optimizer,
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=training_metrics(self.run.data.dataset.num_classes),
            jit_compile=False,
        )
        return train_dataset

    def _phase_inputs(self, phase: PhasePlan) -> tuple[Any, Any, Any]:
        """The model fit in this phase and its data: the classifier on pixel batches, or for a
        head phase without pixel augmentation its head on cached backbone features."""
        settings, prepared, data = self.run.settings, self.prepared, self.run.data
        if not (phase.trainable == "head" and can_cache_features(settings)):
            return prepared.model, self.val_ds, prepared.train_dataset
        dataset = data.dataset
        cached = cached_head(
            prepared.model,
            dataset.x_train,
            dataset.y_train,
            data.train_indices,
            data.val_indices,
            dataset.num_classes,
            prepared.eval_args,
            prepared.distribution["global_batch"],
            settings.seed,
            prepared.class_weights,
            settings.label_smoothing,
        )
        if self.run.notify:
            self.run.notify("phase 1 uses cached backbone features (no pixel augmentation)")
        return cached.head, cached.val_ds, cached.train_dataset

    def _keras_callbacks(self, phase: PhasePlan) -> list[Any]:
        """The events inside the phase's epochs: each step's count, NaN check and progress,
        commits within an epoch, TensorBoard."""
        run, control = self.run, self.run.control
        return [
            DivergenceGuard(control),
            StepProgress(run.progress, run.monitor, self.total_steps, control.step),
            Checkpointer(
                self.store,
                self.prepared.model,
                control,
                phase,
                run.settings.checkpoint_minutes * 60,
                self.prepared.steps_per_epoch,
                self.created,
            ),
            keras.callbacks.TensorBoard(
                str(run.run_dir / TENSORBOARD_DIR), write_graph=False, profile_batch=0
            ),
        ]

    def _restore_optimizer(self, arrays: dict, skip: int) -> list[Any]:
        """The optimizer's state as committed (its step, so the one-cycle rate; momenta), and
        mid-epoch a callback that puts back the epoch's metric sums."""
        self.optimizer.build(self.fit_model.trainable_variables)
        assign_all(self.optimizer.variables, arrays["optimizer"], "optimizer variables")
        if not skip:
            return []
        self.fit_model.evaluate(self.fit_val.take(1), verbose=0)  # builds the metrics' variables
        return [RestoreMetrics(arrays["metrics"])]
