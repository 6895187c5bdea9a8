"""Fitting a run's phases: one Keras fit per epoch on that epoch's own batches, with the
callbacks that report progress, record history and commit the training state."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import keras

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.progress import Notify, Progress, TrainingMonitor
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.workspace import CHECKPOINTS_DIR, HISTORY_FILE, TENSORBOARD_DIR
from deepsight_tf.training.averaging import Average, reestimate_batchnorm, reestimation_batches
from deepsight_tf.training.budget import PACE_WARMUP, Budget, EpochPace
from deepsight_tf.training.callbacks import (
    Checkpointer,
    DivergenceGuard,
    HistoryRecorder,
    Pace,
    RestoreMetrics,
    RunControl,
    StepProgress,
    assign_all,
)
from deepsight_tf.training.checkpoints import CheckpointStore, Commit, save_weights_npz
from deepsight_tf.training.data import TrainingData
from deepsight_tf.training.feature_cache import cached_head, can_cache_features
from deepsight_tf.training.metrics import training_metrics
from deepsight_tf.training.plan import PhasePlan
from deepsight_tf.training.prepare import Prepared, phase_optimizer, set_trainable
from deepsight_tf.training.schedules import OneCycle, phase_schedule


class RunContext(Protocol):
    """What the fitter needs of the run it fits (training/loop.py's _Run)."""

    settings: TrainSettings
    unfreeze: tuple[int, ...] | str
    data: TrainingData
    run_dir: Path
    control: RunControl
    progress: Progress | None
    notify: Notify | None
    monitor: TrainingMonitor
    budget: Budget | None

    def resize_budget(
        self, prepared: Prepared, phases: list[PhasePlan], pace: EpochPace, created: str
    ) -> list[PhasePlan] | None: ...


class PhaseFitter:
    """The phases of one run, each a fit per epoch, with the callbacks that commit its state."""

    def __init__(
        self,
        run: RunContext,
        prepared: Prepared,
        store: CheckpointStore,
        val_ds: Any,
        history: list[dict[str, Any]],
        phases: list[PhasePlan],
        created: str,
    ) -> None:
        self.run, self.prepared, self.store = run, prepared, store
        self.val_ds, self.history, self.phases, self.created = val_ds, history, phases, created
        self.total_steps = sum(p.total_steps(prepared.steps_per_epoch) for p in phases)
        self.average: Average | None = None  # the last phase's weight average (--ema)
        self.schedule: OneCycle | None = None  # the phase being fit's

    def fit_all(self, restored: tuple[Commit, dict] | None) -> int:
        """Every phase not yet done; returns the number of epochs the run has when finished."""
        here = restored[0].position if restored else None
        epoch_offset = 0
        for index in range(len(self.phases)):
            phase = self.phases[index]
            phase_end = self.run.run_dir / CHECKPOINTS_DIR / f"phase{phase.index}.end.weights.npz"
            done = here is not None and (
                phase.index < here.phase
                or (phase.index == here.phase and here.epoch == phase.epochs)
            )
            if done:
                if phase.index == here.phase and self._averages(phase):
                    # The average is in the optimizer's committed state: put it in again (the
                    # restored model holds the raw weights, whether or not the end file exists).
                    self._average_from_commit(phase, epoch_offset, restored[1])
                    save_weights_npz(self.prepared.model, phase_end)
                elif phase.index == here.phase and not phase_end.is_file():
                    # Killed between this phase's last commit and its end file: the restored
                    # model is that phase's end.
                    save_weights_npz(self.prepared.model, phase_end)
            else:
                inside = restored if here is not None and phase.index == here.phase else None
                self._fit_phase(phase, epoch_offset, inside)
                save_weights_npz(self.prepared.model, phase_end)
                restored = None  # later phases start from this one's end, with fresh optimizers
            epoch_offset += self.phases[index].epochs  # as a --budget may have re-sized it
        return epoch_offset

    def _fit_phase(
        self, phase: PhasePlan, epoch_offset: int, restored: tuple[Commit, dict] | None
    ) -> None:
        settings, prepared, control = self.run.settings, self.prepared, self.run.control
        first_epoch, skip = (
            (restored[0].position.epoch, restored[0].position.batch) if restored else (0, 0)
        )
        ema = settings.ema if self._averages(phase) else 0.0
        fit_model, fit_val, train_dataset, optimizer = self._compiled(phase, ema)
        control.epoch, control.batch = first_epoch, skip
        callbacks = self._callbacks(phase, epoch_offset)
        if restored:
            callbacks += self._restore_optimizer(fit_model, fit_val, optimizer, restored[1], skip)
        if self.run.notify:
            self.run.notify(
                f"phase {phase.index}: {phase.name}, {phase.epochs} epochs of "
                f"{prepared.steps_per_epoch} steps"
                + (
                    f" (the last {phase.last_epoch_steps})"
                    if phase.last_epoch_steps is not None
                    else ""
                )
                + f", peak lr {phase.peak_lr:g} "
                f"(backbone x{phase.backbone_lr_mult:g})"
            )
        # One fit per epoch, each on that epoch's own batches (a pure function of the seed and
        # the epoch number), so an epoch resumed mid-way sees the rest of the same batches.
        traced_size = None
        epoch = first_epoch
        while epoch < phase.epochs:
            skipped = skip if epoch == first_epoch else 0
            pace = self._pace(phase, epoch, skipped)
            began, traces = pace.clock() if pace else 0.0, epoch == first_epoch
            # Progressive resizing only: a phase on cached features has no image size.
            sized = {}
            if phase.image_sizes is not None:
                sized["image_size"] = phase.image_sizes[epoch]
                if sized["image_size"] != traced_size:
                    traced_size, traces = sized["image_size"], True
                    self._new_size(fit_model, epoch_offset + epoch, traced_size)
            batches = train_dataset(first_epoch=epoch_offset + epoch, skip_batches=skipped, **sized)
            steps = phase.epoch_steps(epoch, prepared.steps_per_epoch)
            if steps < prepared.steps_per_epoch:  # a budget's shorter last epoch
                batches = batches.take(max(steps - skipped, 0))
            fit_model.fit(
                batches,
                validation_data=fit_val,
                initial_epoch=epoch,
                epochs=epoch + 1,
                callbacks=callbacks + ([pace] if pace else []),
                verbose=0,
                shuffle=False,
            )
            if control.diverged_step is not None:
                raise self._diverged(phase, epoch)
            if pace is not None and pace.seconds_per_step is not None:
                measured = EpochPace(
                    pace.clock() - began,
                    steps - skipped,
                    pace.seconds_per_step,
                    pace.validation_seconds,
                    traces,
                    sized.get("image_size"),
                )
                resized = self.run.resize_budget(prepared, self.phases, measured, self.created)
                if resized is not None:
                    phase = self._resized(resized)
                    callbacks = self._callbacks(phase, epoch_offset)
            epoch += 1
        if ema:
            self._put_in_average(phase, epoch_offset, fit_model, optimizer, fit_val)

    def _pace(self, phase: PhasePlan, epoch: int, skipped: int) -> Pace | None:
        """The pace to measure in this epoch: each of the last phase's but its last, when a
        --budget sized in this process can still re-size the epochs after it (budget.py)."""
        budget = self.run.budget
        if budget is None or phase is not self.phases[-1] or skipped:
            return None
        if epoch >= phase.epochs - 1:
            return None
        return Pace(budget.clock, PACE_WARMUP)

    def _resized(self, phases: list[PhasePlan]) -> PhasePlan:
        """The re-sized plan in place: the one-cycle schedule the optimizer holds takes the
        new length (a variable the traced step reads: no new trace)."""
        self.phases = phases
        self.total_steps = sum(p.total_steps(self.prepared.steps_per_epoch) for p in phases)
        phase = phases[-1]
        assert self.schedule is not None
        self.schedule.set_total_steps(phase.total_steps(self.prepared.steps_per_epoch))
        return phase

    def _new_size(self, fit_model: Any, run_epoch: int, size: int) -> None:
        """A fresh training function for a new image size (progressive resizing): traced for
        that shape alone, where Keras's one function would relax to unknown sizes."""
        fit_model.train_function = None
        if self.run.notify:
            self.run.notify(f"epoch {run_epoch + 1}: training images at {size} px")

    def _compiled(self, phase: PhasePlan, ema: float) -> tuple[Any, Any, Any, Any]:
        """The phase's model (its trainable stages set), validation and training data, and
        fresh optimizer on the phase's one-cycle schedule, compiled together."""
        settings, prepared = self.run.settings, self.prepared
        set_trainable(prepared.model, phase, settings, self.run.unfreeze)
        schedule = phase_schedule(
            settings, phase.peak_lr, phase.total_steps(prepared.steps_per_epoch)
        )
        self.schedule = schedule  # the optimizer's: a --budget re-sizes it in flight
        lookahead = settings.lookahead and phase is self.phases[-1]
        optimizer = phase_optimizer(settings, phase, schedule, ema, lookahead)
        fit_model, fit_val, train_dataset = self._phase_inputs(phase)
        fit_model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=training_metrics(self.run.data.dataset.num_classes),
            jit_compile=False,
        )
        return fit_model, fit_val, train_dataset, optimizer

    # The weight average (--ema) -----------------------------------------------------------
    def _averages(self, phase: PhasePlan) -> bool:
        """Whether this phase keeps a weight average: the last phase, fit on pixels."""
        return bool(
            self.run.settings.ema
            and phase is self.phases[-1]
            and not (phase.trainable == "head" and can_cache_features(self.run.settings))
        )

    def _put_in_average(
        self, phase: PhasePlan, epoch_offset: int, fit_model: Any, optimizer: Any, fit_val: Any
    ) -> None:
        """The average into the model, BatchNorm statistics re-estimated on the next epoch's
        batches (a pure function of the seed, so a resume gets the same), then its
        validation macro-F1, which the run weighs against the best epoch's."""
        model, prepared = self.prepared.model, self.prepared
        getattr(optimizer, "inner_optimizer", optimizer).apply_average(
            fit_model.trainable_variables
        )
        count = reestimation_batches(model, prepared.steps_per_epoch)
        batches = prepared.train_dataset(first_epoch=epoch_offset + phase.epochs)
        used = reestimate_batchnorm(model, batches, count)
        scores = fit_model.evaluate(fit_val, return_dict=True, verbose=0)
        self.average = Average(
            self.run.settings.ema, float(scores["macro_f1"]), model.get_weights()
        )
        if self.run.notify:
            self.run.notify(
                f"weight average (decay {self.run.settings.ema:g}) put in; BatchNorm statistics "
                f"re-estimated on {used} batches; validation macro-F1 "
                f"{self.average.val_macro_f1:.4f}"
            )

    def _average_from_commit(self, phase: PhasePlan, epoch_offset: int, arrays: dict) -> None:
        """The finished phase's average from its committed optimizer state (a resume after
        the last commit)."""
        fit_model, fit_val, _, optimizer = self._compiled(phase, self.run.settings.ema)
        self._restore_optimizer(fit_model, fit_val, optimizer, arrays, skip=0)
        self._put_in_average(phase, epoch_offset, fit_model, optimizer, fit_val)

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

    def _callbacks(self, phase: PhasePlan, epoch_offset: int) -> list[Any]:
        run, control = self.run, self.run.control
        return [
            DivergenceGuard(control),
            StepProgress(run.progress, run.monitor, self.total_steps, control.step),
            HistoryRecorder(
                run.run_dir / HISTORY_FILE, self.history, phase, epoch_offset, control, run.monitor
            ),
            Checkpointer(
                self.store,
                self.prepared.model,
                control,
                phase,
                epoch_offset,
                run.settings.checkpoint_minutes * 60,
                self.prepared.steps_per_epoch,
                self.created,
            ),
            keras.callbacks.TensorBoard(
                str(run.run_dir / TENSORBOARD_DIR), write_graph=False, profile_batch=0
            ),
        ]

    @staticmethod
    def _restore_optimizer(
        fit_model: Any, fit_val: Any, optimizer: Any, arrays: dict, skip: int
    ) -> list[Any]:
        """The optimizer's state as committed (its step, so the one-cycle rate; momenta), and
        mid-epoch a callback that puts back the epoch's metric sums."""
        optimizer.build(fit_model.trainable_variables)
        assign_all(optimizer.variables, arrays["optimizer"], "optimizer variables")
        if not skip:
            return []
        fit_model.evaluate(fit_val.take(1), verbose=0)  # builds the metrics' variables
        return [RestoreMetrics(arrays["metrics"])]

    def _diverged(self, phase: PhasePlan, epoch: int) -> ConfigError:
        control, last = self.run.control, self.run.control.last_commit
        kept = (
            f"the last good checkpoint ({last.position.describe()}, step "
            f"{last.position.step}) is kept in {self.store.folder}"
            if last
            else "nothing was saved"
        )
        return ConfigError(
            f"loss became NaN or infinite at step {control.diverged_step} (phase "
            f"{phase.index}, epoch {epoch + 1}); training stopped and "
            f"{kept}; lower --lr and start a new run"
        )
