"""The train phase: staged transfer learning, OneCycle, differential rates, the MVA gate.

`train` runs the phases that plan.py lays out (a head phase with the backbone frozen, then
fine-tuning), one Keras `fit` per epoch on that epoch's own batches, committing the state as
it goes (checkpoints.py), then scores the best epoch once on the validation and test sets and
writes the run folder. Every file goes through an atomic write; the manifest comes last.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np

from deepsight_tf.core.errors import (
    ConfigError,
    GateFailedError,
    TrainingInterrupted,
)
from deepsight_tf.core.manifest import Manifest, now_iso
from deepsight_tf.core.progress import Notify, Progress, TrainingMonitor
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.settings_file import PER_INVOCATION, settings_toml
from deepsight_tf.core.storage import (
    atomic_save_npz,
    atomic_write_json,
    atomic_write_text,
    read_json,
    storage_error,
)
from deepsight_tf.core.workspace import (
    BATCH_FIGURE,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    MANIFEST,
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_FILE,
    SCHEDULE_FIGURE,
    SETTINGS_FILE,
    Workspace,
)
from deepsight_tf.model.classifier import describe, stored_classifier
from deepsight_tf.model.saving import save_classifier
from deepsight_tf.training.averaging import Average
from deepsight_tf.training.budget import Budget
from deepsight_tf.training.callbacks import (
    RunControl,
    StopRequested,
    StopScoring,
    assign_all,
    stop_on_interrupt,
)
from deepsight_tf.training.checkpoints import CheckpointStore, Commit
from deepsight_tf.training.continuation import (
    continuation,
    interrupted,
    refuse_existing,
    resumable_settings,
)
from deepsight_tf.training.data import TrainingData, training_data
from deepsight_tf.training.distribute import is_chief, make_strategy, shard_by_data
from deepsight_tf.training.events import run_callbacks
from deepsight_tf.training.figures import draw_inputs
from deepsight_tf.training.history import read_history, write_history
from deepsight_tf.training.learner import Learner
from deepsight_tf.training.metrics import classification_scores
from deepsight_tf.training.optim import PrecisionChoice
from deepsight_tf.training.outcome import (
    Evaluation,
    TrainResult,
    completed_run,
    held_out,
    run_config,
    run_metrics,
)
from deepsight_tf.training.pipeline import make_eval_dataset
from deepsight_tf.training.plan import (
    PhasePlan,
    check_schedule,
    default_run_id,
    parse_unfreeze,
    plan_phases,
    resolve_settings,
)
from deepsight_tf.training.prepare import Prepared, prepare
from deepsight_tf.training.run_config import RunConfig
from deepsight_tf.training.timing import StepCosts, estimate_run, probe
from deepsight_tf.training.tta import mean_of_views, predict_probs, predict_views


# The phase --------------------------------------------------------------------------------
def train(
    settings: TrainSettings,
    workspace: Workspace,
    progress: Progress | None = None,
    notify: Notify | None = None,
    explicit: set[str] | None = None,
    monitor: TrainingMonitor | None = None,
    budget_from: float | None = None,
) -> TrainResult:
    """Train a classifier on scrub's split, evaluate it on the test set, apply the MVA gate.

    The result says whether the MVA gate passed; `check_gate` turns a failure into an error,
    so a run below the gate still keeps its model, metrics and predictions for `interpret`.
    With `resume`, an unfinished run continues from its last commit (see checkpoints.py)
    with its stored settings, and a run id with no run is a PrerequisiteError; with
    `resume_or_start` such an id starts a new run instead. `explicit` names the settings the
    user gave, which must agree with the stored ones (None: all of `settings` must).
    `monitor` hears the pre-flight estimate, every step (with the running loss and
    accuracy) and every epoch's history row. `budget_from`
    is the time.monotonic() a --budget counts from (None: the process's start, so the
    command's imports and data loading count; deepsight experiment gives each arm its own).
    """
    given = continuation(settings, workspace)
    settings = resolve_settings(given)
    run_id = settings.run_id or default_run_id(settings)
    run_dir = workspace.run_dir(run_id)
    if settings.resume and (run_dir / CONFIG_FILE).is_file():
        settings = resumable_settings(run_dir, settings, explicit)
        if (run_dir / MANIFEST).is_file():
            # Nothing to resume: report the finished run as it is, rewriting nothing (so
            # `make all` run again does not make interpret's inputs stale).
            if notify:
                notify(f"run {run_id} is already complete; nothing to resume")
            return completed_run(workspace, run_id)
    unfreeze = parse_unfreeze(settings.unfreeze, settings.backbone)
    strategy = make_strategy(settings.strategy)  # before TensorFlow builds anything
    data = training_data(settings, workspace)
    lock = workspace.lock(f"run-{run_id}")
    if not is_chief(strategy):
        # Other workers of a multi-worker run write to scratch; only the chief owns the run.
        run_dir = Path(tempfile.mkdtemp(prefix="deepsight-worker-")) / run_id
        lock = contextlib.nullcontext()
    run = _Run(settings, unfreeze, data, workspace, run_id, run_dir, progress, notify, monitor)
    run.given = given  # the recipe it stores: the settings before the defaults were decided
    run.budget_from = budget_from
    policy = keras.config.dtype_policy()  # the run sets its own; the caller gets theirs back
    with lock:
        refuse_existing(run_dir, run_id, settings.resume)
        try:
            with stop_on_interrupt(run.control, notify), strategy.scope():
                result = run.execute(strategy)
        except StopRequested:
            raise interrupted(run.control, run_dir, f"{workspace.root}", run_id) from None
        finally:
            keras.config.set_dtype_policy(policy)
        if run.control.stop_requested:  # Ctrl-C during the final evaluation: all of it is saved
            raise TrainingInterrupted(
                f"interrupted after training; the run at {run_dir} is complete",
                run.control.stop_signal or signal.SIGINT,
            )
        return result


def check_gate(result: TrainResult) -> None:
    """The Minimum Viable Accuracy gate: GateFailedError (exit code 8) below `result.mva`."""
    if not result.passed:
        raise GateFailedError(
            f"test accuracy {result.test['accuracy']:.2%} is below the MVA gate of "
            f"{result.mva:.0%} by {result.mva - result.test['accuracy']:.2%} points; "
            f"the run is kept at {result.run_dir}"
        )


def make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(run_dir, exc) from exc


class _Run:
    """One training run from its first (or resumed) step to its written artifacts."""

    def __init__(
        self,
        settings: TrainSettings,
        unfreeze: tuple[int, ...] | str,
        data: TrainingData,
        workspace: Workspace,
        run_id: str,
        run_dir: Path,
        progress: Progress | None,
        notify: Notify | None,
        monitor: TrainingMonitor | None,
    ) -> None:
        self.settings, self.unfreeze, self.data = settings, unfreeze, data
        self.given = settings  # as the command was given them; --budget re-sizes self.settings
        self.workspace, self.run_id, self.run_dir = workspace, run_id, run_dir
        self.progress, self.notify = progress, notify
        self.monitor = monitor or TrainingMonitor()
        self.control = RunControl()
        self.resumed_commit: Commit | None = None
        self.budget_from: float | None = None
        self.budget: Budget | None = None  # --budget, when sized in this process
        # A resumed run's float policy as its config.json records it (None: decided here)
        self.decided: PrecisionChoice | None = None

    def execute(self, strategy: Any) -> TrainResult:
        started, start = now_iso(), time.perf_counter()
        prepared, phases, costs = self._build(strategy)
        store, restored, created, history = self._open(prepared, phases, started)
        val_ds = shard_by_data(
            make_eval_dataset(
                self.data.dataset.x_train,
                self.data.dataset.y_train,
                self.data.val_indices,
                self.data.dataset.num_classes,
                **prepared.eval_args,
            )
        )
        if costs is not None and self.settings.estimate:
            self.monitor.estimate(
                estimate_run(
                    costs, prepared, phases, self.settings, self._eval_images(), self.control.step
                )
            )

        def rewritten(resized: list[PhasePlan]) -> None:  # by a --budget re-size
            self._write_config(prepared, resized, created)
            self._draw_inputs(prepared, resized)

        learner = Learner(
            self,
            prepared,
            store,
            val_ds,
            history,
            phases,
            created,
            run_callbacks(self.budget, rewritten),
        )
        self._stop_if_requested()
        epochs_run = learner.fit(restored)
        phases = learner.phases  # as a --budget re-sized them
        keep_average, other = self._keep_final_weights(store, prepared, learner.average)
        final = stored_classifier(prepared.model, self.settings.image_size)  # full precision
        scores = self._evaluate(final, prepared, val_ds)
        if learner.average is not None:
            scores.add_average(learner.average, keep_average, other, self.control.best, self.data)
        return self._write_results(
            final, prepared, phases, history, scores, epochs_run, started, start
        )

    def _build(self, strategy: Any) -> tuple[Prepared, list[PhasePlan], StepCosts | None]:
        """The model and its batch streams, the float policy, the probed step costs and the
        phases (sized to a --budget), checked before anything is written."""
        self.decided = self._stored_precision()
        prepared = prepare(self.settings, self.data, self.workspace, strategy, self.decided)
        costs = self._probe(prepared, strategy)
        self._stop_if_requested()
        phases = plan_phases(self.settings, prepared.distribution["lr"])
        if self.settings.budget and self.settings.last_epoch_steps is None and costs:
            # Sized in this process only; config.json keeps the epochs and steps, so a resume
            # repeats them.
            self.budget = Budget(self.settings, costs, self._eval_images(), self.budget_from)
            self.settings, phases = self.budget.size(prepared, phases, self.notify)
        check_schedule(
            phases,
            prepared.steps_per_epoch,
            self.settings.pct_start,
            len(self.data.train_indices),
            prepared.distribution["global_batch"],
        )
        return prepared, phases, costs

    def _open(
        self, prepared: Prepared, phases: list[PhasePlan], started: str
    ) -> tuple[CheckpointStore, tuple[Commit, dict] | None, str, list[dict[str, Any]]]:
        """The run folder: made (or a resume's commit restored), config.json, settings.toml and
        the input figures written; returns the checkpoint store, what was restored, when the
        run was created and its history so far."""
        recipe = self._recipe()  # before the folder exists: a setting TOML cannot hold fails
        make_run_dir(self.run_dir)
        # Told once the flags and the run folder have passed their checks: bad input gets
        # its one line and nothing before it.
        choice = prepared.precision_choice
        if self.decided is None and choice and choice.ms_per_step and self.notify:
            self.notify(choice.describe())
        store = CheckpointStore(self.run_dir / CHECKPOINTS_DIR)
        restored = self._restore(store, prepared) if self.settings.resume else None
        created = (store.created() if restored else None) or started
        self._write_config(prepared, phases, created, recipe)
        history = self._resumed_history(phases, restored[0] if restored else None)
        self._draw_inputs(prepared, phases)
        return store, restored, created, history

    def _draw_inputs(self, prepared: Prepared, phases: list[PhasePlan]) -> None:
        """The batch and schedule figures, as the run's inputs and phases are."""
        class_names = self.data.dataset.class_names
        draw_inputs(self.run_dir, prepared, phases, class_names, self.settings)

    def _stop_if_requested(self) -> None:
        """A stop asked for during the set-up or the probe ends the run before its first
        step: there is nothing to commit, and nothing to wait for."""
        if self.control.stop_requested:
            raise StopRequested

    def _keep_final_weights(
        self, store: CheckpointStore, prepared: Prepared, average: Average | None
    ) -> tuple[bool, np.ndarray | None]:
        """Put the weights the run keeps into the model: the best epoch by validation
        macro-F1, or with --ema the weight average when it scores higher there. Returns
        whether the average was kept and, with --ema, the test probabilities of the other
        candidate (so one run holds the average's ablation)."""
        best = None
        if self.control.last_commit is not None and self.control.last_commit.best_file:
            best = store.best_weights(self.control.last_commit)
        best_val = self.control.best
        keep_average = average is not None and (
            best is None or best_val is None or average.val_macro_f1 > best_val
        )
        other = None
        if average is not None and best is not None:
            prepared.model.set_weights(best if keep_average else average.weights)
            other = self._test_probs(
                stored_classifier(prepared.model, self.settings.image_size), prepared
            )
        if keep_average:
            prepared.model.set_weights(average.weights)  # type: ignore[union-attr]
        elif best is not None:
            prepared.model.set_weights(best)
        if average is not None and self.notify:
            self.notify(
                f"kept the {'weight average' if keep_average else 'best epoch'} (validation "
                f"macro-F1 {average.val_macro_f1:.4f} averaged, "
                f"{best_val if best_val is not None else float('nan'):.4f} best epoch)"
            )
        return keep_average, other

    def _probe(self, prepared: Prepared, strategy: Any) -> StepCosts | None:
        """Timed steps for the estimate and the budget (one device only: a probe outside the
        strategy's replica context would not be the step the run takes)."""
        wanted = self.settings.estimate or (
            self.settings.budget and self.settings.last_epoch_steps is None
        )
        if not wanted:
            return None
        if strategy.num_replicas_in_sync > 1:
            if self.settings.budget and self.settings.last_epoch_steps is None:
                raise ConfigError("--budget times the step on one device; give --epochs instead")
            return None
        phases = plan_phases(self.settings, prepared.distribution["lr"])
        return probe(
            prepared,
            phases,
            self.settings,
            self.unfreeze,
            self._timed_here(prepared),
            lambda: self.control.stop_requested,
        )

    def _timed_here(self, prepared: Prepared) -> dict[str, float] | None:
        """The last phase's step as --precision auto timed it in this process (the same model,
        batches and optimizer the budget's probe would time again); None when nothing was
        timed here (a resumed run's choice was timed by the process that started it)."""
        choice = prepared.precision_choice
        if choice is None or not choice.ms_per_step or self.decided is not None:
            return None
        ms = choice.ms_per_step.get(choice.policy)
        if ms is None:
            return None
        last = plan_phases(self.settings, prepared.distribution["lr"])[-1]
        return {last.trainable: ms / 1000.0}

    def _stored_precision(self) -> PrecisionChoice | None:
        """A resumed run's float policy as its config.json records it: the steps it resumes
        from were taken in it, whatever a new --precision auto probe would measure now."""
        path = self.run_dir / CONFIG_FILE
        if not self.settings.resume or not path.is_file():
            return None
        config = RunConfig.from_dict(read_json(path))
        if config.precision_choice is not None:
            return config.precision_choice
        return PrecisionChoice(config.precision, self.settings.precision, "stored by the run")

    def _eval_images(self) -> tuple[int, int]:
        return len(self.data.val_indices), len(self.data.dataset.y_test)

    def _recipe(self) -> str:
        """settings.toml's text: the settings as given (None where deepsight decides), without
        the epochs and the last epoch's steps where a budget decides them, so the file repeats
        and resumes the run."""
        sized = {"epochs", "last_epoch_steps"} if self.given.budget else set()
        return settings_toml(self.given, PER_INVOCATION | sized)

    def _write_config(
        self, prepared: Prepared, phases: list[PhasePlan], created: str, recipe: str | None = None
    ) -> None:
        """config.json, and at the run's start (`recipe`) settings.toml."""
        path = self.run_dir / SETTINGS_FILE
        if recipe is not None and not path.exists():  # a resume leaves it as it started
            atomic_write_text(path, recipe)
        atomic_write_json(
            self.run_dir / CONFIG_FILE,
            run_config(
                self.run_id,
                self.settings,
                prepared.precision,
                prepared.preprocessing,
                phases,
                prepared.distribution,
                created,
                prepared.precision_choice,
            ),
        )

    def _restore(self, store: CheckpointStore, prepared: Prepared) -> tuple[Commit, dict] | None:
        """Put the last usable commit's variables back into the model (None: start afresh)."""
        restored = store.latest_usable(self.notify)
        if restored is None:
            return None
        commit, arrays = restored
        assign_all(prepared.model.variables, arrays["model"], "model variables")
        control = self.control
        control.best, control.best_epoch = commit.best, commit.best_epoch
        control.best_file, control.step = commit.best_file, commit.position.step
        control.last_commit = commit
        self.resumed_commit = commit
        if self.notify:
            self.notify(
                f"resuming at {self.resumed_from(commit)} from {store.folder / commit.file}"
            )
        return restored

    @staticmethod
    def resumed_from(commit: Commit | None) -> str | None:
        if commit is None:
            return None
        return f"{commit.position.describe()}, step {commit.position.step}"

    def _resumed_history(self, phases: list[PhasePlan], commit: Commit | None) -> list[dict]:
        """Rows after the commit resumed from are redone; a fresh run starts a fresh history."""
        if commit is None:
            return []
        done = commit.position
        done_epochs = sum(p.epochs for p in phases if p.index < done.phase) + done.epoch
        path = self.run_dir / HISTORY_FILE
        history = [row for row in read_history(path) if row["epoch"] <= done_epochs]
        write_history(path, history)
        return history

    def _test_dataset(self, prepared: Prepared) -> Any:
        data = self.data.dataset
        return make_eval_dataset(
            data.x_test,
            data.y_test,
            np.arange(len(data.y_test)),
            data.num_classes,
            **prepared.eval_args,
        )

    def _test_probs(self, model: Any, prepared: Prepared) -> np.ndarray:
        """Test probabilities as the run scores them (averaged over --tta's views)."""
        return predict_probs(
            model, self._test_dataset(prepared), self.settings.tta, [StopScoring(self.control)]
        )

    def _evaluate(self, model: Any, prepared: Prepared, val_ds: Any) -> Evaluation:
        data = self.data.dataset
        test_ds = self._test_dataset(prepared)
        mode = self.settings.tta
        stop = [StopScoring(self.control)]
        val_probs = predict_probs(model, val_ds, mode, stop)
        test_views = predict_views(model, test_ds, mode, stop)  # the plain image comes first
        test_probs = mean_of_views(test_views, mode)
        val_labels = data.y_train[self.data.val_indices]
        scores = Evaluation(
            val_probs,
            test_probs,
            held_out(classification_scores(val_labels, val_probs, data.class_names)),
            held_out(classification_scores(data.y_test, test_probs, data.class_names)),
        )
        if mode != "none":
            plain = test_views[0].astype(np.float32)
            scores.test_probs_plain = plain
            scores.plain = held_out(classification_scores(data.y_test, plain, data.class_names))
        return scores

    def _save_predictions(self, scores: Evaluation) -> None:
        """predictions.npz: validation and test probabilities with their labels and indices
        (with --tta the test's plain-image probabilities too, with --ema each candidate's)."""
        data = self.data.dataset
        plain = {}
        if scores.test_probs_plain is not None:
            plain["test_probs_plain"] = scores.test_probs_plain
        atomic_save_npz(
            self.run_dir / PREDICTIONS_FILE,
            test_probs=scores.test_probs,
            test_labels=data.y_test,
            test_indices=np.arange(len(data.y_test)),
            val_probs=scores.val_probs,
            val_labels=data.y_train[self.data.val_indices],
            val_indices=self.data.val_indices,
            **plain,
            **scores.candidates,
        )

    def _write_results(
        self,
        model: Any,
        prepared: Prepared,
        phases: list[PhasePlan],
        history: list[dict[str, Any]],
        scores: Evaluation,
        epochs_run: int,
        started: str,
        start: float,
    ) -> TrainResult:
        """model.keras, predictions.npz, metrics.json, then the manifest that vouches for them."""
        data, run_dir, settings = self.data.dataset, self.run_dir, self.settings
        passed = scores.test["accuracy"] >= settings.mva
        save_classifier(model, run_dir / MODEL_FILE, prepared.preprocessing)
        self._save_predictions(scores)
        result = TrainResult(
            run_id=self.run_id,
            run_dir=str(run_dir),
            settings=asdict(settings),
            phases=phases,
            params=asdict(describe(model)),  # the stored model: its input at full size
            precision=prepared.precision,
            interpolation=prepared.preprocessing.interpolation,
            train_images=len(self.data.train_indices),
            epochs_run=epochs_run,
            duration_s=round(time.perf_counter() - start, 1),
            best_epoch=self.control.best_epoch,
            val=scores.val,
            test=scores.test,
            mva=settings.mva,
            passed=passed,
            history=history,
            resumed_from=self.resumed_from(self.resumed_commit),
        )
        metrics = run_metrics(result, data.name, data.class_names, scores, settings.tta)
        atomic_write_json(run_dir / METRICS_FILE, metrics.to_dict())
        self.workspace.write_manifest(
            run_dir,
            Manifest(
                phase="train",
                settings=asdict(settings),
                seed=settings.seed,
                inputs=self.data.inputs,
                outputs={name: "" for name in RUN_OUTPUTS},
                started=started,
                finished=now_iso(),
                duration_s=result.duration_s,
                extra={"dataset": data.name, "precision": prepared.precision},
            ),
        )
        if not settings.keep_checkpoints:
            # The run is complete and vouched for: its commits have nothing left to resume.
            shutil.rmtree(run_dir / CHECKPOINTS_DIR, ignore_errors=True)
        return result


RUN_OUTPUTS = (
    CONFIG_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    BATCH_FIGURE,
    SCHEDULE_FIGURE,
)
