"""The events inside an epoch, as Keras callbacks: steps counted, a NaN loss, progress, the
pace a --budget measures, commits within an epoch; and the state they share.

They share one `RunControl` (the position in the run, the best epoch, the stop flags), which
is how a Ctrl-C, a NaN or a commit seen by one callback reaches the others and the loop.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.progress import Notify, Progress, TrainingMonitor
from deepsight_tf.training.checkpoints import CheckpointStore, Commit, Position
from deepsight_tf.training.plan import PhasePlan

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MONITOR = "val_macro_f1"  # the best epoch is the one with the highest validation macro-F1


class StopRequested(Exception):
    """Raised inside fit after the state is committed, to stop at once (no validation)."""


@dataclass
class RunControl:
    """What the callbacks of one run share: the position, the best epoch, the stop flags."""

    epoch: int = 0  # epochs done in the current phase
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps over the whole run
    best: float | None = None
    best_epoch: int | None = None
    best_file: str | None = None
    diverged_step: int | None = None
    stop_requested: bool = False
    stop_signal: int | None = None  # SIGINT or SIGTERM, when one asked the run to stop
    last_commit: Commit | None = None
    committed_at: float = field(default_factory=time.monotonic)  # when last_commit was made


def assign_all(variables: list[Any], values: list[np.ndarray], what: str) -> None:
    """Assign saved values to variables, refusing a list that belongs to another model."""
    shapes = [tuple(v.shape) for v in variables]
    if shapes != [tuple(np.shape(a)) for a in values]:
        raise ConfigError(
            f"the checkpoint's {what} do not fit this model ({len(values)} arrays for "
            f"{len(variables)} variables); resume with the run's own settings"
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


@contextlib.contextmanager
def stop_on_interrupt(control: RunControl, notify: Notify | None) -> Any:
    """Ctrl-C (SIGINT) or SIGTERM (what a batch scheduler, `docker stop` or a spot reclaim sends
    before SIGKILL) asks training to stop after the current step and commit; a second one
    aborts at once. `control.stop_signal` records which came. Only the main thread can take
    signals."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def abort(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def request_stop(signum: int, frame: Any) -> None:
        control.stop_requested = True
        control.stop_signal = signum
        for handled in STOP_SIGNALS:
            signal.signal(handled, abort)
        if notify:
            notify("stopping after this step to save; a second signal aborts without saving")

    previous = {handled: signal.signal(handled, request_stop) for handled in STOP_SIGNALS}
    try:
        yield
    finally:
        for handled, handler in previous.items():
            signal.signal(handled, handler)


class StopScoring(keras.callbacks.Callback):
    """Ends the final scoring at the next batch once a stop is asked for: training is
    committed by then, so `--resume` scores it again, and a scheduler's SIGKILL (10 s after
    its SIGTERM) never lands in minutes of test-time views."""

    def __init__(self, control: RunControl) -> None:
        super().__init__()
        self.control = control

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.control.stop_requested:
            raise StopRequested


class StepProgress(keras.callbacks.Callback):
    """Reports every optimizer step, with the epoch's running loss and accuracy."""

    def __init__(
        self, progress: Progress | None, monitor: TrainingMonitor, total: int, done: int
    ) -> None:
        super().__init__()
        self.progress, self.monitor, self.total, self.done = progress, monitor, total, done

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.done += 1
        running = {k: float(v) for k, v in (logs or {}).items() if k in ("loss", "accuracy")}
        self.monitor.step(self.done, self.total, running)
        if self.progress:
            self.progress("training", self.done, self.total)


class Pace(keras.callbacks.Callback):
    """What one epoch really took, on `clock` (the budget's), for re-sizing a --budget:
    seconds per optimizer step over the steps after the first `warmup`, and seconds of the
    validation pass."""

    def __init__(self, clock: Callable[[], float], warmup: int) -> None:
        super().__init__()
        self.clock, self.warmup = clock, warmup
        self._start: float | None = None
        self._end, self._steps = 0.0, 0
        self._validation: list[float] = []
        self.validation_seconds: float | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if batch + 1 == self.warmup:
            self._start = self.clock()
        elif self._start is not None:
            self._end, self._steps = self.clock(), self._steps + 1

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._validation = [self.clock()]

    def on_test_end(self, logs: dict | None = None) -> None:
        if self._validation:
            self.validation_seconds = self.clock() - self._validation[0]

    @property
    def seconds_per_step(self) -> float | None:
        """None: the epoch had no step after the warm-up, or the clock did not move."""
        if self._start is None or not self._steps or self._end <= self._start:
            return None
        return (self._end - self._start) / self._steps


class DivergenceGuard(keras.callbacks.Callback):
    """Counts steps, and stops at the first non-finite loss; nothing after it is saved."""

    def __init__(self, control: RunControl) -> None:
        super().__init__()
        self.control = control

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.control.step += 1
        self.control.batch += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.control.diverged_step = self.control.step
            self.model.stop_training = True


class Checkpointer(keras.callbacks.Callback):
    """Commits the training state every `interval_s` seconds within an epoch, and at the step
    after Ctrl-C, which then stops the run (`StopRequested`). The epoch's end is committed by
    events.py's CommitEpoch."""

    def __init__(
        self,
        store: CheckpointStore,
        classifier: Any,
        control: RunControl,
        phase: PhasePlan,
        interval_s: float,
        steps_per_epoch: int,
        created: str,
    ) -> None:
        super().__init__()
        self.store, self.classifier, self.control = store, classifier, control
        self.phase, self.interval_s = phase, interval_s
        self.steps_per_epoch = steps_per_epoch
        self.created = created

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        control = self.control
        if control.diverged_step is not None:
            return
        last_step = control.batch >= self.phase.epoch_steps(control.epoch, self.steps_per_epoch)
        if control.stop_requested:
            if last_step:
                return  # the epoch's end validates, commits and stops
            self._commit()
            if control.diverged_step is None:
                raise StopRequested
        due = time.monotonic() - control.committed_at >= self.interval_s
        if self.interval_s and due and not last_step:  # the epoch's end commits next
            self._commit()

    def _commit(self) -> None:
        commit_state(
            self.store,
            self.classifier,
            self.model,
            self.control,
            self.phase.index,
            self.created,
            with_metrics=True,
        )


def commit_state(
    store: CheckpointStore,
    classifier: Any,
    fit_model: Any,
    control: RunControl,
    phase: int,
    created: str,
    with_metrics: bool,
) -> None:
    """Commit the classifier's variables and the optimizer's (with `with_metrics`, the
    epoch's running metric sums too) at the run's position. A state with a non-finite value
    is never committed: it counts as divergence at this step (an update can overflow the
    weights a step before the loss shows it)."""
    arrays = {
        "model": [v.numpy() for v in classifier.variables],
        "optimizer": [v.numpy() for v in fit_model.optimizer.variables],
    }
    if not all(np.isfinite(a).all() for group in arrays.values() for a in group):
        control.diverged_step = control.step
        fit_model.stop_training = True
        return
    if with_metrics:
        arrays["metrics"] = [v.numpy() for v in fit_model.metrics_variables]
    control.last_commit = store.commit(
        Position(phase, control.epoch, control.batch, control.step),
        arrays,
        control.best,
        control.best_epoch,
        control.best_file,
        created,
    )
    control.committed_at = time.monotonic()


class RestoreMetrics(keras.callbacks.Callback):
    """Puts back the running sums of the epoch a mid-epoch checkpoint was taken in (Keras
    resets metrics as each epoch begins, so this runs right after that, once)."""

    def __init__(self, values: list[np.ndarray]) -> None:
        super().__init__()
        self.values: list[np.ndarray] | None = values

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.values is not None:
            assign_all(self.model.metrics_variables, self.values, "training metrics")
            self.values = None
