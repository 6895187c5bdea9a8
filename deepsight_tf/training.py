"""The train phase: staged transfer learning, OneCycle, differential rates, the MVA gate."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.checkpoints import CheckpointStore, Commit, Position
from deepsight_tf.config import TrainSettings
from deepsight_tf.dataset import IMAGES_FILE, Dataset, load_dataset
from deepsight_tf.errors import (
    ConfigError,
    GateFailedError,
    PrerequisiteError,
    TrainingInterrupted,
)
from deepsight_tf.feature_cache import cached_head, can_cache_features
from deepsight_tf.sources import Progress
from deepsight_tf.workspace import (
    MANIFEST,
    Manifest,
    Workspace,
    atomic_save_npz,
    atomic_write_json,
    atomic_write_text,
    now_iso,
    read_json,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
CHECKPOINTS_DIR = "checkpoints"
MONITOR = "val_macro_f1"

Notify = Callable[[str], None]


@dataclass
class PhasePlan:
    """One fit call: which layers train, for how many epochs, at which peak rate."""

    index: int
    name: str
    epochs: int
    trainable: str  # "head" or the stages unfrozen, e.g. "3,4" / "all"
    peak_lr: float
    backbone_lr_mult: float


@dataclass
class TrainResult:
    run_id: str
    run_dir: str
    settings: dict[str, Any]
    phases: list[PhasePlan]
    params: dict[str, int]
    precision: str
    interpolation: str
    train_images: int
    epochs_run: int
    duration_s: float
    best_epoch: int | None
    val: dict[str, Any]
    test: dict[str, Any]
    mva: float
    passed: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None


# Settings ---------------------------------------------------------------------------------
def resolve_settings(settings: TrainSettings) -> TrainSettings:
    """Fill the defaults that depend on other settings; the one place that decides them."""
    pretrained = settings.weights != "none"
    resolved = replace(
        settings,
        stem=settings.stem
        or ("cifar" if not pretrained and settings.image_size <= 32 else "imagenet"),
        frozen_epochs=settings.frozen_epochs
        if settings.frozen_epochs is not None
        else int(pretrained),
        unfreeze=settings.unfreeze or ("3,4" if pretrained else "all"),
        lr=settings.lr if settings.lr is not None else (0.05 if pretrained else 0.4),
        backbone_lr_mult=(
            settings.backbone_lr_mult
            if settings.backbone_lr_mult is not None
            else (0.1 if pretrained else 1.0)
        ),
    )
    if resolved.focus_pairs and resolved.focus_pairs.startswith("@"):
        # interpret writes the most-confused pairs to a file: --focus-pairs @hard_pairs.txt
        path = Path(resolved.focus_pairs[1:])
        try:
            resolved = replace(resolved, focus_pairs=path.read_text().strip())
        except OSError as exc:
            raise ConfigError(f"--focus-pairs {resolved.focus_pairs}: cannot read {path}") from exc
    checks = [
        (resolved.epochs >= 0, f"--epochs {resolved.epochs} must be >= 0"),
        (resolved.frozen_epochs >= 0, f"--frozen-epochs {resolved.frozen_epochs} must be >= 0"),
        (resolved.epochs + resolved.frozen_epochs > 0, "--epochs and --frozen-epochs are both 0"),
        (resolved.batch_size >= 1, f"--batch-size {resolved.batch_size} must be positive"),
        (8 <= resolved.image_size <= 512, f"--image-size {resolved.image_size}: use 8..512"),
        (0 <= resolved.mva <= 1, f"--mva {resolved.mva} must be a fraction in [0, 1]"),
        (0 < resolved.pct_start < 1, f"--pct-start {resolved.pct_start} must be in (0, 1)"),
        (0 <= resolved.dropout < 1, f"--dropout {resolved.dropout} must be in [0, 1)"),
        (resolved.stem in ("cifar", "imagenet"), f"--stem {resolved.stem}: use cifar or imagenet"),
        (
            resolved.checkpoint_minutes >= 0,
            f"--checkpoint-minutes {resolved.checkpoint_minutes} must be >= 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return resolved


def parse_unfreeze(text: str) -> tuple[int, ...] | str:
    if text == "all":
        return "all"
    try:
        stages = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        stages = ()
    if not stages or any(s < 1 for s in stages):
        raise ConfigError(f"--unfreeze {text!r}: give stage numbers such as 3,4, or all")
    return stages


def plan_phases(settings: TrainSettings) -> list[PhasePlan]:
    phases = []
    if settings.frozen_epochs:
        phases.append(
            PhasePlan(1, "head (backbone frozen)", settings.frozen_epochs, "head", settings.lr, 0.0)
        )
    if settings.epochs:
        phases.append(
            PhasePlan(
                len(phases) + 1,
                f"fine-tune (stages {settings.unfreeze})",
                settings.epochs,
                settings.unfreeze,
                settings.lr,
                settings.backbone_lr_mult,
            )
        )
    return phases


def default_run_id(settings: TrainSettings) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{settings.backbone}-{stamp}"


# Data -------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    dataset: Dataset
    train_indices: np.ndarray
    val_indices: np.ndarray
    interpolation: str
    inputs: dict[str, dict[str, Any]]


def training_data(settings: TrainSettings, workspace: Workspace) -> TrainingData:
    """The stored data set and scrub's split (both verified), optionally subsampled."""
    from deepsight_tf.scrub import load_scrub_report, load_split

    data, data_manifest = load_dataset(workspace, settings.dataset)
    split = load_split(workspace, data.name)
    report = load_scrub_report(workspace, data.name)
    interpolation = settings.interpolation or report["interpolation"]["selected"]
    train = np.asarray(split.train)
    if settings.max_train_images is not None and settings.max_train_images < len(train):
        train = stratified_subset(
            train, data.y_train[train], settings.max_train_images, settings.seed
        )
    scrub_manifest = workspace.read_manifest(workspace.scrub_dir(data.name), "deepsight scrub")
    inputs = {
        "data set": {
            "path": f"data/{data.name}/{IMAGES_FILE}",
            "sha256": data_manifest.outputs[IMAGES_FILE],
        },
        "split": {
            "path": f"scrub/{data.name}/split.json",
            "sha256": scrub_manifest.outputs.get("split.json"),
        },
    }
    return TrainingData(data, train, np.asarray(split.val), interpolation, inputs)


def stratified_subset(indices: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(indices, train_size=n, stratify=labels, random_state=seed)
    return np.sort(keep)


# Evaluation -------------------------------------------------------------------------------
def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1 and the per-class table, all computed by scikit-learn."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    predicted = probs.argmax(axis=1)
    ids = list(range(len(class_names)))
    report = classification_report(
        labels, predicted, labels=ids, target_names=class_names, output_dict=True, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(
            f1_score(labels, predicted, labels=ids, average="macro", zero_division=0)
        ),
        "n": len(labels),
        "per_class": {name: {k: float(v) for k, v in report[name].items()} for name in class_names},
    }


def input_normalization(settings: TrainSettings, workspace: Workspace, dataset: str) -> Any:
    """How inputs are normalised: as the weights were trained (ImageNet's statistics, or the
    source run's own), or from scratch with explore's statistics when explore has run."""
    from deepsight_tf.backbones import Normalization, choose_normalization, weights_kind
    from deepsight_tf.explore import load_pixel_stats

    if weights_kind(settings.weights) == "run":
        config = Path(settings.weights) / CONFIG_FILE
        try:
            return Normalization(**read_json(config)["normalization"])
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise PrerequisiteError(
                f"{config}: no readable normalization ({exc}); give a finished deepsight run"
            ) from exc
    mean = std = None
    if settings.weights == "none":
        try:
            stats = load_pixel_stats(workspace, dataset)
            mean, std = stats.mean, stats.std
        except PrerequisiteError:
            log.info("explore has not run; normalising with ImageNet statistics")
    return choose_normalization(settings.backbone, settings.weights, mean, std)


def predict_probs(model: Any, dataset: Any) -> np.ndarray:
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)


# Callbacks --------------------------------------------------------------------------------
def _callbacks_module() -> Any:
    import keras

    class StepProgress(keras.callbacks.Callback):
        """Reports every optimizer step to `progress`, and a run-time estimate after a few."""

        ESTIMATE_AFTER = 8  # steps timed after the first (which includes tracing)

        def __init__(
            self, progress: Progress | None, notify: Notify | None, total: int, done: int
        ) -> None:
            super().__init__()
            self.progress, self.notify, self.total, self.done = progress, notify, total, done
            self._t0: float | None = None
            self._timed = 0
            self.step_s: float | None = None

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.done += 1
            if self._t0 is None:
                self._t0 = time.perf_counter()
            else:
                self._timed += 1
                if self._timed == self.ESTIMATE_AFTER and self.step_s is None:
                    self.step_s = (time.perf_counter() - self._t0) / self._timed
                    if self.notify:
                        remaining = self.step_s * (self.total - self.done)
                        self.notify(
                            f"estimate: {self.step_s * 1000:.0f} ms a step, about "
                            f"{remaining / 60:.1f} min of training left "
                            f"({self.total - self.done} steps)"
                        )
            if self.progress:
                self.progress("training", self.done, self.total)

    class HistoryRecorder(keras.callbacks.Callback):
        """One row per epoch in history.csv (phase, rate, train and validation metrics)."""

        def __init__(
            self,
            path: Path,
            rows: list[dict[str, Any]],
            phase: PhasePlan,
            epoch_offset: int,
            control: RunControl,
        ) -> None:
            super().__init__()
            self.path, self.rows, self.phase, self.offset = path, rows, phase, epoch_offset
            self.control = control
            self._start = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if self.control.diverged_step is not None:
                return  # a diverged epoch is not a result
            logs = logs or {}
            lr = self.model.optimizer.learning_rate
            row = {
                "epoch": self.offset + epoch + 1,
                "phase": self.phase.index,
                "lr_end": float(np.asarray(lr)),
                "seconds": round(time.perf_counter() - self._start, 2),
            }
            row.update({k: float(v) for k, v in sorted(logs.items()) if k != "learning_rate"})
            # An epoch redone after a resume replaces its row, and any row after it.
            self.rows[:] = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
            write_history(self.path, self.rows)

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
        """Commits the training state at every epoch end, every `interval_s` seconds within an
        epoch, and at the step after Ctrl-C, which then stops the run (`StopRequested`).

        The best epoch by validation macro-F1 is tracked here too, its classifier weights
        saved before the commit that refers to them.
        """

        def __init__(
            self,
            store: CheckpointStore,
            classifier: Any,
            control: RunControl,
            phase: PhasePlan,
            epoch_offset: int,
            interval_s: float,
            steps_per_epoch: int,
            created: str,
        ) -> None:
            super().__init__()
            self.store, self.classifier, self.control = store, classifier, control
            self.phase, self.offset, self.interval_s = phase, epoch_offset, interval_s
            self.steps_per_epoch = steps_per_epoch
            self.created = created
            self._last = time.monotonic()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.control.diverged_step is not None:
                return
            if self.control.stop_requested:
                self._commit(with_metrics=True)
                if self.control.diverged_step is None:
                    raise StopRequested
            if (
                self.interval_s
                and time.monotonic() - self._last >= self.interval_s
                and self.control.batch < self.steps_per_epoch  # the epoch end commits next
            ):
                self._commit(with_metrics=True)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if self.control.diverged_step is not None:
                return
            self.control.epoch, self.control.batch = epoch + 1, 0
            value = (logs or {}).get(MONITOR)
            best = self.control.best
            if value is not None and math.isfinite(value) and (best is None or value > best):
                run_epoch = self.offset + epoch + 1
                # The classifier's weights, also when a cached-feature head is being fit.
                name = self.store.save_best(run_epoch, self.classifier.get_weights())
                self.control.best, self.control.best_epoch = float(value), run_epoch
                self.control.best_file = name
            self._commit(with_metrics=False)
            if self.control.stop_requested and self.control.diverged_step is None:
                raise StopRequested

        def _commit(self, with_metrics: bool) -> None:
            control = self.control
            arrays = {
                "model": [v.numpy() for v in self.classifier.variables],
                "optimizer": [v.numpy() for v in self.model.optimizer.variables],
            }
            if not all(np.isfinite(a).all() for group in arrays.values() for a in group):
                # An update can overflow the weights a step before the loss shows it: such a
                # state is never committed, and counts as divergence at this step.
                control.diverged_step = control.step
                self.model.stop_training = True
                return
            if with_metrics:
                arrays["metrics"] = [v.numpy() for v in self.model.metrics_variables]
            control.last_commit = self.store.commit(
                Position(self.phase.index, control.epoch, control.batch, control.step),
                arrays,
                control.best,
                control.best_epoch,
                control.best_file,
                self.created,
            )
            self._last = time.monotonic()

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

    return StepProgress, HistoryRecorder, DivergenceGuard, Checkpointer, RestoreMetrics


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
    last_commit: Commit | None = None


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
    """The first Ctrl-C asks training to stop after the current step and save; a second one
    aborts at once (KeyboardInterrupt). Only the main thread can take signals."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        control.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if notify:
            notify("stopping after this step to save; Ctrl-C again aborts without saving")

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def save_weights_npz(model: Any, path: Path) -> None:
    atomic_save_npz(path, **{f"w{i:04d}": w for i, w in enumerate(model.get_weights())})


def load_weights_npz(model: Any, path: Path) -> None:
    with np.load(path, allow_pickle=False) as npz:
        model.set_weights([npz[k] for k in sorted(npz.files)])


def save_model_atomically(model: Any, path: Path) -> None:
    """model.save needs a .keras name, so write `.<name>.tmp.keras` then rename it into place."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# The phase --------------------------------------------------------------------------------
def train(
    settings: TrainSettings,
    workspace: Workspace,
    progress: Progress | None = None,
    notify: Notify | None = None,
    explicit: set[str] | None = None,
) -> TrainResult:
    """Train a classifier on scrub's split, evaluate it on the test set, apply the MVA gate.

    The result says whether the MVA gate passed; `check_gate` turns a failure into an error,
    so a run below the gate still keeps its model, metrics and predictions for `interpret`.
    With `resume`, an unfinished run continues from its last commit (see checkpoints.py)
    with its stored settings; `explicit` names the settings the user gave, which must agree
    with them (None: all of `settings` must).
    """
    from deepsight_tf.distribute import is_chief, make_strategy

    if settings.resume and not settings.run_id:
        raise ConfigError("--resume needs the --run-id of the run to continue")
    settings = resolve_settings(settings)
    run_id = settings.run_id or default_run_id(settings)
    run_dir = workspace.run_dir(run_id)
    if settings.resume and (run_dir / CONFIG_FILE).is_file():
        settings = _resumable_settings(run_dir, settings, explicit)
        if (run_dir / MANIFEST).is_file():
            # Nothing to resume: report the finished run as it is, rewriting nothing (so
            # `make all` run again does not make interpret's inputs stale).
            if notify:
                notify(f"run {run_id} is already complete; nothing to resume")
            return completed_run(workspace, run_id)
    strategy = make_strategy(settings.strategy)  # before TensorFlow builds anything
    unfreeze = parse_unfreeze(settings.unfreeze)
    data = training_data(settings, workspace)
    lock = workspace.lock(f"run-{run_id}")
    if not is_chief(strategy):
        # Other workers of a multi-worker run write to scratch; only the chief owns the run.
        run_dir = Path(tempfile.mkdtemp(prefix="deepsight-worker-")) / run_id
        lock = contextlib.nullcontext()
    control = RunControl()
    with lock:
        if (run_dir / MANIFEST).is_file() and not settings.resume:
            raise ConfigError(
                f"run {run_id} is already complete at {run_dir}; choose another --run-id"
            )
        if (run_dir / CONFIG_FILE).is_file() and not settings.resume:
            raise ConfigError(
                f"run {run_id} exists at {run_dir} (unfinished); pass --resume to continue it "
                "or choose another --run-id"
            )
        try:
            with stop_on_interrupt(control, notify), strategy.scope():
                result = _run(
                    settings,
                    unfreeze,
                    data,
                    workspace,
                    run_id,
                    run_dir,
                    progress,
                    notify,
                    strategy,
                    control,
                )
        except StopRequested:
            where = control.last_commit.position if control.last_commit else None
            raise TrainingInterrupted(
                f"interrupted at step {control.step} ({where.describe() if where else ''}); "
                f"saved in {run_dir / CHECKPOINTS_DIR}; continue with: deepsight --workspace "
                f"{workspace.root} train --run-id {run_id} --resume"
            ) from None
        if control.stop_requested:  # Ctrl-C during the final evaluation: all of it is saved
            raise TrainingInterrupted(
                f"interrupted after training; the run at {run_dir} is complete"
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


def _resumable_settings(
    run_dir: Path, settings: TrainSettings, explicit: set[str] | None
) -> TrainSettings:
    """The run's stored settings, refusing given ones that differ (those that do not change
    the result, such as how often to checkpoint, may differ)."""
    stored = read_json(run_dir / CONFIG_FILE)["settings"]
    current = asdict(settings)
    free = {"resume", "run_id", "checkpoint_minutes"}
    compare = (set(current) if explicit is None else explicit) - free
    changed = sorted(k for k in compare if k in stored and stored[k] != current[k])
    if changed:
        raise ConfigError(
            f"--resume with different settings ({', '.join(changed)}) than "
            f"{run_dir / CONFIG_FILE}; drop them or rerun with the original values"
        )
    kept = {k: v for k, v in stored.items() if k in current and k not in free}
    return replace(settings, **kept)


@dataclass
class Prepared:
    """What both training and the LR range test need: the model and its input pipelines."""

    model: Any
    normalization: Any
    precision: str
    train_dataset: Callable[..., Any]  # (first_epoch, epochs, skip_batches) -> batches
    eval_args: dict[str, Any]
    steps_per_epoch: int
    class_weights: np.ndarray | None
    distribution: dict[str, Any]


def _prepare(
    settings: TrainSettings, data: TrainingData, workspace: Workspace, strategy: Any = None
) -> Prepared:
    import keras
    import tensorflow as tf

    from deepsight_tf import models
    from deepsight_tf.distribute import describe_strategy, scale_for_replicas, shard_by_data
    from deepsight_tf.optim import apply_precision, resolve_precision
    from deepsight_tf.pipeline import class_weights_from, make_train_dataset, parse_focus_pairs

    keras.utils.set_random_seed(settings.seed)
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    precision = resolve_precision(settings.precision)
    apply_precision(precision)
    dataset = data.dataset
    class_weights = class_weights_from(
        settings.class_weights, dataset.y_train[data.train_indices], dataset.class_names
    )
    focus = parse_focus_pairs(settings.focus_pairs, dataset.class_names)
    normalization = input_normalization(settings, workspace, dataset.name)
    model = models.build_classifier(
        settings.backbone,
        num_classes=dataset.num_classes,
        image_size=settings.image_size,
        weights=settings.weights,
        stem=settings.stem,
        dropout=settings.dropout,
        width_multiplier=settings.width_multiplier,
    )
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch, lr = scale_for_replicas(settings.batch_size, settings.lr, replicas)
    distribution = {
        **describe_strategy(strategy),
        "global_batch": global_batch,
        "lr": lr,
        "lr_rule": "linear",
    }

    def train_dataset(first_epoch: int = 0, epochs: int = 1, skip_batches: int = 0) -> Any:
        return shard_by_data(
            make_train_dataset(
                dataset.x_train,
                dataset.y_train,
                data.train_indices,
                dataset.num_classes,
                batch_size=global_batch,
                image_size=settings.image_size,
                normalize=normalization,
                augment=settings.augment,
                mix=settings.mix,
                mix_alpha=settings.mix_alpha,
                label_smoothing=settings.label_smoothing,
                class_weights=class_weights,
                focus_pairs=focus or None,
                focus_factor=settings.focus_factor,
                interpolation=data.interpolation,
                seed=settings.seed,
                first_epoch=first_epoch,
                epochs=epochs,
                skip_batches=skip_batches,
            )
        )

    if len(data.train_indices) < global_batch:
        raise ConfigError(
            f"--batch-size {settings.batch_size} is larger than the {len(data.train_indices)} "
            "training images; lower it"
        )
    steps_per_epoch = int(train_dataset().cardinality())
    eval_args = {
        "batch_size": max(global_batch, 256),
        "image_size": settings.image_size,
        "normalize": normalization,
        "interpolation": data.interpolation,
    }
    return Prepared(
        model,
        normalization,
        precision,
        train_dataset,
        eval_args,
        steps_per_epoch,
        class_weights,
        distribution,
    )


def set_trainable(
    model: Any, phase: PhasePlan, settings: TrainSettings, unfreeze: tuple[int, ...] | str
) -> None:
    """Freeze for the head phase; unfreeze the chosen stages (BN frozen) for fine-tuning."""
    from deepsight_tf import models

    if phase.trainable == "head":
        models.freeze_backbone(model)
    elif settings.weights == "none" and unfreeze == "all":
        # From scratch every layer learns, BatchNorm included (batch statistics); BN is
        # kept in inference mode only to protect pretrained statistics.
        models.unfreeze_all(model)
    else:
        models.unfreeze_stages(model, unfreeze)


def phase_optimizer(settings: TrainSettings, phase: PhasePlan, learning_rate: Any) -> Any:
    from deepsight_tf.backbones import HEAD_PREFIX
    from deepsight_tf.optim import make_optimizer

    return make_optimizer(
        settings.optimizer,
        learning_rate,
        backbone_lr_mult=phase.backbone_lr_mult,
        head_prefixes=(HEAD_PREFIX,),
        weight_decay=settings.weight_decay,
    )


def _run(
    settings: TrainSettings,
    unfreeze: tuple[int, ...] | str,
    data: TrainingData,
    workspace: Workspace,
    run_id: str,
    run_dir: Path,
    progress: Progress | None,
    notify: Notify | None,
    strategy: Any,
    control: RunControl,
) -> TrainResult:
    import keras

    from deepsight_tf import models
    from deepsight_tf.distribute import shard_by_data
    from deepsight_tf.metrics import training_metrics
    from deepsight_tf.pipeline import make_eval_dataset
    from deepsight_tf.schedules import OneCycle

    started, start = now_iso(), time.perf_counter()
    dataset = data.dataset
    prepared = _prepare(settings, data, workspace, strategy)
    model, eval_args = prepared.model, prepared.eval_args
    steps_per_epoch, precision = prepared.steps_per_epoch, prepared.precision
    run_dir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(run_dir / CHECKPOINTS_DIR)
    restored = store.latest_usable(notify) if settings.resume else None
    created = (store.created() if restored else None) or started
    resumed_from = None
    if restored:
        commit, arrays = restored
        resumed_from = f"{commit.position.describe()}, step {commit.position.step}"
        assign_all(model.variables, arrays["model"], "model variables")
        control.best, control.best_epoch = commit.best, commit.best_epoch
        control.best_file, control.step = commit.best_file, commit.position.step
        control.last_commit = commit
        if notify:
            notify(f"resuming at {resumed_from} from {store.folder / commit.file}")
    atomic_write_json(
        run_dir / CONFIG_FILE,
        {
            "run_id": run_id,
            "settings": asdict(settings),
            "precision": precision,
            "interpolation": data.interpolation,
            "normalization": asdict(prepared.normalization),
            "distribution": prepared.distribution,
            "created": created,
        },
    )
    val_ds = shard_by_data(
        make_eval_dataset(
            dataset.x_train, dataset.y_train, data.val_indices, dataset.num_classes, **eval_args
        )
    )
    phases = plan_phases(replace(settings, lr=prepared.distribution["lr"]))
    total_steps = steps_per_epoch * sum(p.epochs for p in phases)
    StepProgress, HistoryRecorder, DivergenceGuard, Checkpointer, RestoreMetrics = (
        _callbacks_module()
    )
    # Rows after the commit resumed from are redone; a fresh run starts a fresh history.
    history = []
    if restored:
        done = restored[0].position
        done_epochs = sum(p.epochs for p in phases if p.index < done.phase) + done.epoch
        history = [r for r in read_history(run_dir / HISTORY_FILE) if r["epoch"] <= done_epochs]
        write_history(run_dir / HISTORY_FILE, history)
    here = restored[0].position if restored else Position(phases[0].index, 0, 0, 0)
    epoch_offset = 0
    for phase in phases:
        phase_end = run_dir / f"{CHECKPOINTS_DIR}/phase{phase.index}.end.weights.npz"
        if phase.index < here.phase or (phase.index == here.phase and here.epoch == phase.epochs):
            if phase.index == here.phase and not phase_end.is_file():
                # Killed between this phase's last commit and its end file: the restored
                # model is that phase's end.
                save_weights_npz(model, phase_end)
            epoch_offset += phase.epochs
            continue
        inside = restored is not None and phase.index == here.phase
        first_epoch, skip = (here.epoch, here.batch) if inside else (0, 0)
        set_trainable(model, phase, settings, unfreeze)
        schedule = OneCycle(
            phase.peak_lr, steps_per_epoch * phase.epochs, pct_start=settings.pct_start
        )
        optimizer = phase_optimizer(settings, phase, schedule)
        fit_model, fit_val = model, val_ds
        train_dataset = prepared.train_dataset
        if phase.trainable == "head" and can_cache_features(settings):
            cached = cached_head(
                model,
                dataset.x_train,
                dataset.y_train,
                data.train_indices,
                data.val_indices,
                dataset.num_classes,
                eval_args,
                prepared.distribution["global_batch"],
                settings.seed,
                prepared.class_weights,
                settings.label_smoothing,
            )
            fit_model, fit_val = cached.head, cached.val_ds
            train_dataset = cached.train_dataset
            if notify:
                notify("phase 1 uses cached backbone features (no pixel augmentation)")
        fit_model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=training_metrics(dataset.num_classes),
            jit_compile=False,
        )
        control.epoch, control.batch = first_epoch, skip
        callbacks = [
            DivergenceGuard(control),
            StepProgress(progress, notify, total_steps, control.step),
            HistoryRecorder(run_dir / HISTORY_FILE, history, phase, epoch_offset, control),
            Checkpointer(
                store,
                model,
                control,
                phase,
                epoch_offset,
                settings.checkpoint_minutes * 60,
                steps_per_epoch,
                created,
            ),
            keras.callbacks.TensorBoard(
                str(run_dir / "tensorboard"), write_graph=False, profile_batch=0
            ),
        ]
        if inside:
            # The optimizer's state (its step, so the one-cycle rate; momenta) as committed.
            optimizer.build(fit_model.trainable_variables)
            assign_all(optimizer.variables, restored[1]["optimizer"], "optimizer variables")
            if skip:
                # Build the metrics (one validation batch), then put back the epoch's sums.
                fit_model.evaluate(fit_val.take(1), verbose=0)
                callbacks.append(RestoreMetrics(restored[1]["metrics"]))
        if notify:
            notify(
                f"phase {phase.index}: {phase.name}, {phase.epochs} epochs of "
                f"{steps_per_epoch} steps, peak lr {phase.peak_lr:g} "
                f"(backbone x{phase.backbone_lr_mult:g})"
            )
        # One fit per epoch, each on that epoch's own batches (a pure function of the seed and
        # the epoch number), so an epoch resumed mid-way sees the rest of the same batches.
        for epoch in range(first_epoch, phase.epochs):
            fit_model.fit(
                train_dataset(
                    first_epoch=epoch_offset + epoch,
                    skip_batches=skip if epoch == first_epoch else 0,
                ),
                validation_data=fit_val,
                initial_epoch=epoch,
                epochs=epoch + 1,
                callbacks=callbacks,
                verbose=0,
                shuffle=False,
            )
            if control.diverged_step is not None:
                last = control.last_commit
                kept = (
                    f"the last good checkpoint ({last.position.describe()}, step "
                    f"{last.position.step}) is kept in {store.folder}"
                    if last
                    else "nothing was saved"
                )
                raise ConfigError(
                    f"loss became NaN or infinite at step {control.diverged_step} (phase "
                    f"{phase.index}, epoch {epoch + 1}); training stopped and "
                    f"{kept}; lower --lr and start a new run"
                )
        save_weights_npz(model, phase_end)
        epoch_offset += phase.epochs
        restored = None  # later phases start from this one's end, with fresh optimizers
    if control.last_commit is not None and control.last_commit.best_file:
        best_weights = store.best_weights(control.last_commit)
        model.set_weights(best_weights)
    test_indices = np.arange(len(dataset.y_test))
    test_ds = make_eval_dataset(
        dataset.x_test, dataset.y_test, test_indices, dataset.num_classes, **eval_args
    )
    val_probs = predict_probs(model, val_ds)
    test_probs = predict_probs(model, test_ds)
    val = classification_metrics(dataset.y_train[data.val_indices], val_probs, dataset.class_names)
    test = classification_metrics(dataset.y_test, test_probs, dataset.class_names)
    duration = time.perf_counter() - start
    passed = test["accuracy"] >= settings.mva
    save_model_atomically(model, run_dir / MODEL_FILE)
    atomic_save_npz(
        run_dir / PREDICTIONS_FILE,
        test_probs=test_probs,
        test_labels=dataset.y_test,
        test_indices=test_indices,
        val_probs=val_probs,
        val_labels=dataset.y_train[data.val_indices],
        val_indices=data.val_indices,
    )
    result = TrainResult(
        run_id=run_id,
        run_dir=str(run_dir),
        settings=asdict(settings),
        phases=phases,
        params=models.describe(model),
        precision=precision,
        interpolation=data.interpolation,
        train_images=len(data.train_indices),
        epochs_run=epoch_offset,
        duration_s=round(duration, 1),
        best_epoch=control.best_epoch,
        val=val,
        test=test,
        mva=settings.mva,
        passed=passed,
        history=history,
        resumed_from=resumed_from,
    )
    atomic_write_json(
        run_dir / METRICS_FILE,
        {
            "run_id": run_id,
            "dataset": dataset.name,
            "class_names": dataset.class_names,
            "val": val,
            "test": test,
            "mva": settings.mva,
            "passed": passed,
            "best_epoch": control.best_epoch,
            "duration_s": result.duration_s,
            "epochs_run": result.epochs_run,
            "train_images": result.train_images,
            "params": result.params,
        },
    )
    workspace.write_manifest(
        run_dir,
        Manifest(
            phase="train",
            settings=asdict(settings),
            seed=settings.seed,
            inputs=data.inputs,
            outputs={
                CONFIG_FILE: "",
                HISTORY_FILE: "",
                MODEL_FILE: "",
                METRICS_FILE: "",
                PREDICTIONS_FILE: "",
            },
            started=started,
            finished=now_iso(),
            duration_s=result.duration_s,
            extra={"dataset": dataset.name, "precision": precision},
        ),
    )
    return result


def load_run(workspace: Workspace, run_id: str) -> tuple[Path, Manifest]:
    """A finished run folder, verified against its manifest (for interpret, report, transfer)."""
    run_dir = workspace.run_dir(run_id)
    if not run_dir.is_dir():
        have = (
            sorted(p.name for p in workspace.runs_dir().glob("*"))
            if workspace.runs_dir().is_dir()
            else []
        )
        raise PrerequisiteError(
            f"no run '{run_id}' in {workspace.runs_dir()} (runs: {', '.join(have) or 'none'}); "
            "run `deepsight train` first"
        )
    return run_dir, workspace.verify(run_dir, "deepsight train")


def completed_run(workspace: Workspace, run_id: str) -> TrainResult:
    """A finished run's result as its files record it (verified against the manifest)."""
    run_dir, _ = load_run(workspace, run_id)
    config = read_json(run_dir / CONFIG_FILE)
    metrics = read_json(run_dir / METRICS_FILE)
    fields = TrainSettings.__dataclass_fields__
    settings = TrainSettings(**{k: v for k, v in config["settings"].items() if k in fields})
    phases = plan_phases(settings)
    return TrainResult(
        run_id=run_id,
        run_dir=str(run_dir),
        settings=config["settings"],
        phases=phases,
        params=metrics.get("params", {}),
        precision=config["precision"],
        interpolation=config["interpolation"],
        train_images=metrics.get("train_images", 0),
        epochs_run=metrics.get("epochs_run", sum(p.epochs for p in phases)),
        duration_s=metrics["duration_s"],
        best_epoch=metrics["best_epoch"],
        val=metrics["val"],
        test=metrics["test"],
        mva=metrics["mva"],
        passed=metrics["passed"],
        history=read_history(run_dir / HISTORY_FILE),
        resumed_from="complete",
    )


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
    """fastai's LR range test on the first training phase; writes lr_finder.json and a figure."""
    import keras

    from deepsight_tf.plots import save_figure
    from deepsight_tf.plots.training import plot_lr_finder
    from deepsight_tf.schedules import lr_range_test

    settings = resolve_settings(settings)
    unfreeze = parse_unfreeze(settings.unfreeze)
    data = training_data(settings, workspace)
    run_id = settings.run_id or f"lr-finder-{default_run_id(settings)}"
    run_dir = workspace.run_dir(run_id)
    with workspace.lock(f"run-{run_id}"):
        prepared = _prepare(settings, data, workspace)
        phase = plan_phases(settings)[0]
        set_trainable(prepared.model, phase, settings, unfreeze)
        result = lr_range_test(
            prepared.model,
            prepared.train_dataset(epochs=math.ceil(steps / prepared.steps_per_epoch)),
            keras.losses.CategoricalCrossentropy(),
            optimizer_factory=lambda schedule: phase_optimizer(settings, phase, schedule),
            steps=steps,
        )
        figure = save_figure(plot_lr_finder(result), run_dir / "lr_finder.png")
        atomic_write_json(
            run_dir / "lr_finder.json", {"settings": asdict(settings), **result.to_dict()}
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
