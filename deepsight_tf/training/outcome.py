"""What a training run produces, as records: its result, config.json, metrics.json.

loop.py fills them at the end of a run; a finished run is read back into the same result
(`completed_run`), so `--resume` on a complete run reports it as it stands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.model.preprocessing import Preprocessing
from deepsight_tf.training.averaging import Average
from deepsight_tf.training.data import TrainingData
from deepsight_tf.training.metrics import classification_scores
from deepsight_tf.training.optim import PrecisionChoice
from deepsight_tf.training.plan import PhasePlan
from deepsight_tf.training.record import RunRecord
from deepsight_tf.training.run_config import RunConfig
from deepsight_tf.training.run_metrics import AverageScores, HeldOut, RunMetrics, WithoutViews


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


def run_config(
    run_id: str,
    settings: TrainSettings,
    precision: str,
    preprocessing: Preprocessing,
    phases: list[PhasePlan],
    distribution: dict[str, Any],
    created: str,
    precision_choice: PrecisionChoice | None = None,
) -> RunConfig:
    """config.json: what the run is (resolved settings, the float policy and what decided it,
    preprocessing, phases, distribution)."""
    return RunConfig(
        run_id=run_id,
        settings=settings,
        precision=precision,
        preprocessing=preprocessing,
        phases=list(phases),
        distribution=distribution,
        created=created,
        precision_choice=precision_choice,
    )


@dataclass
class Evaluation:
    val_probs: np.ndarray
    test_probs: np.ndarray
    val: dict[str, Any]
    test: dict[str, Any]
    test_probs_plain: np.ndarray | None = None  # without test-time augmentation, when used
    plain: dict[str, Any] | None = None
    # With --ema: the test probabilities of the weight average and of the best epoch, and
    # metrics.json's "ema" section (which was kept, each one's validation and test scores).
    candidates: dict[str, np.ndarray] = field(default_factory=dict)
    ema: AverageScores | None = None

    def add_average(
        self,
        average: Average,
        kept: bool,
        other: np.ndarray | None,
        best_val: float | None,
        data: TrainingData,
    ) -> None:
        dataset = data.dataset
        probs = {"average": self.test_probs if kept else other}
        probs["best_epoch"] = other if kept else self.test_probs
        self.candidates = {f"{k}_test_probs": v for k, v in probs.items() if v is not None}
        self.ema = AverageScores(
            decay=average.decay,
            kept="average" if kept else "best_epoch",
            val_macro_f1={"average": average.val_macro_f1, "best_epoch": best_val},
            test={
                name: HeldOut.from_dict(
                    held_out(classification_scores(dataset.y_test, p, dataset.class_names))
                )
                for name, p in probs.items()
                if p is not None
            },
        )


def held_out(scores: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's view of classification_scores: the confusion matrix stays in interpret."""
    return {k: v for k, v in scores.items() if k != "confusion"}


def run_metrics(
    result: TrainResult, dataset: str, class_names: list[str], scores: Evaluation, tta: str
) -> RunMetrics:
    """metrics.json: the held-out scores, the gate and the run's size."""
    plain = None if scores.plain is None else WithoutViews(tta, HeldOut.from_dict(scores.plain))
    return RunMetrics(
        run_id=result.run_id,
        dataset=dataset,
        class_names=list(class_names),
        val=HeldOut.from_dict(result.val),
        test=HeldOut.from_dict(result.test),
        mva=result.mva,
        passed=result.passed,
        best_epoch=result.best_epoch,
        duration_s=result.duration_s,
        epochs_run=result.epochs_run,
        train_images=result.train_images,
        params=dict(result.params),
        tta=plain,
        ema=scores.ema,
    )


def completed_run(workspace: Workspace, run_id: str) -> TrainResult:
    """A finished run's result as its files record it (verified against the manifest)."""
    record = RunRecord.load(workspace, run_id)
    metrics = record.metrics
    epochs = metrics.epochs_run
    return TrainResult(
        run_id=record.run_id,
        run_dir=str(record.run_dir),
        settings=asdict(record.settings),
        phases=record.phases,
        params=metrics.params,
        precision=record.config.precision,
        interpolation=record.preprocessing.interpolation,
        train_images=metrics.train_images or 0,
        epochs_run=sum(p.epochs for p in record.phases) if epochs is None else epochs,
        duration_s=metrics.duration_s,
        best_epoch=metrics.best_epoch,
        val=metrics.val.to_dict(),
        test=metrics.test.to_dict(),
        mva=metrics.mva,
        passed=metrics.passed,
        history=record.history(),
        resumed_from="complete",
    )
