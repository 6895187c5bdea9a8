"""A finished run folder, read once: settings, phases, class names, preprocessing, model.

Training writes runs/<id>/; interpret, predict, export, the report and transfer from a run all
read it through `RunRecord`, so each of them sees the same settings, the same preprocessing
and the same phases, checked against the run's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import PrerequisiteError, StaleArtifactError
from deepsight_tf.core.manifest import Manifest
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.storage import read_json
from deepsight_tf.core.workspace import (
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_FILE,
    Workspace,
)
from deepsight_tf.model.preprocessing import Preprocessing
from deepsight_tf.training.history import read_history
from deepsight_tf.training.plan import PhasePlan
from deepsight_tf.training.run_config import RunConfig
from deepsight_tf.training.run_metrics import RunMetrics

TRAIN_HINT = "deepsight train"


def read_preprocessing(run_dir: Path) -> Preprocessing:
    """The preprocessing a run was trained with, from its config.json."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return Preprocessing.from_dict(read_json(path)["preprocessing"])
    except FileNotFoundError as exc:
        raise PrerequisiteError(f"{path}: missing; give a finished deepsight run") from exc
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise StaleArtifactError(
            f"{path}: no readable preprocessing ({exc!r}); rerun `{TRAIN_HINT}`"
        ) from exc


@dataclass
class RunRecord:
    """What a finished run's files say, verified against its manifest."""

    run_id: str
    run_dir: Path
    manifest: Manifest
    config: RunConfig
    metrics: RunMetrics

    @classmethod
    def load(cls, workspace: Workspace, run_id: str) -> RunRecord:
        """A run in the workspace by id; PrerequisiteError when there is none by that name."""
        run_dir = workspace.run_dir(run_id)
        if not run_dir.is_dir():
            runs = workspace.runs_dir()
            have = sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []
            raise PrerequisiteError(
                f"no run '{run_id}' in {runs} (runs: {', '.join(have) or 'none'}); "
                f"run `{TRAIN_HINT}` first"
            )
        return cls.read(run_dir, workspace.verify(run_dir, TRAIN_HINT))

    @classmethod
    def at(cls, run_dir: Path) -> RunRecord:
        """A run folder anywhere (its parent is taken as the runs folder of a workspace)."""
        run_dir = Path(run_dir)
        return cls.read(run_dir, Workspace(run_dir.parent).verify(run_dir, TRAIN_HINT))

    @classmethod
    def read(cls, run_dir: Path, manifest: Manifest) -> RunRecord:
        try:
            config = RunConfig.from_dict(read_json(run_dir / CONFIG_FILE))
            metrics = RunMetrics.from_dict(read_json(run_dir / METRICS_FILE))
        except FileNotFoundError as exc:
            raise PrerequisiteError(
                f"{exc.filename}: missing; the run is unfinished, rerun `{TRAIN_HINT}`"
            ) from exc
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise StaleArtifactError(
                f"{run_dir}: {CONFIG_FILE} or {METRICS_FILE} is not what `{TRAIN_HINT}` writes "
                f"({exc!r}); rerun it"
            ) from exc
        return cls(
            run_id=config.run_id or run_dir.name,
            run_dir=run_dir,
            manifest=manifest,
            config=config,
            metrics=metrics,
        )

    @property
    def settings(self) -> TrainSettings:
        return self.config.settings

    @property
    def preprocessing(self) -> Preprocessing:
        return self.config.preprocessing

    @property
    def phases(self) -> list[PhasePlan]:
        return self.config.phases

    @property
    def class_names(self) -> list[str]:
        return list(self.metrics.class_names)

    @property
    def dataset(self) -> str:
        return self.metrics.dataset

    @property
    def model_path(self) -> Path:
        return self.run_dir / MODEL_FILE

    def history(self) -> list[dict[str, Any]]:
        return read_history(self.run_dir / HISTORY_FILE)

    def predictions(self) -> dict[str, np.ndarray]:
        """Validation and test probabilities, labels and indices (predictions.npz)."""
        with np.load(self.run_dir / PREDICTIONS_FILE, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}

    def output_sha256(self, name: str) -> str:
        return self.manifest.outputs[name]

    def load_model(self) -> Any:
        """The run's classifier (no optimizer), checked to have one output per class."""
        from deepsight_tf.model.saving import load_classifier

        try:
            model = load_classifier(self.model_path)
        except ValueError as exc:
            raise StaleArtifactError(f"{exc}; rerun `{TRAIN_HINT}`") from exc
        outputs = int(model.outputs[0].shape[-1])
        if outputs != len(self.class_names):
            raise StaleArtifactError(
                f"{self.model_path}: {outputs} outputs but {METRICS_FILE} names "
                f"{len(self.class_names)} classes; rerun `{TRAIN_HINT}`"
            )
        return model
