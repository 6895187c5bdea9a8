"""What a run trains on: the stored data set, scrub's split, and the preprocessing it is fed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import DataError, PrerequisiteError
from deepsight_tf.core.inputs import read_input_csv
from deepsight_tf.core.manifest import DATA_INPUT, DROPPED_INPUT, SPLIT_INPUT
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.storage import sha256_file
from deepsight_tf.core.workspace import (
    IMAGES_FILE,
    SPLIT_FILE,
    TRAIN_LABEL_ISSUES_FILE,
    Workspace,
)
from deepsight_tf.data.dataset import Dataset, load_dataset
from deepsight_tf.model.preprocessing import Normalization, Preprocessing

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    dataset: Dataset
    train_indices: np.ndarray
    val_indices: np.ndarray
    interpolation: str  # scrub's choice unless --interpolation overrides it
    inputs: dict[str, dict[str, Any]]  # for the run's manifest


def training_data(settings: TrainSettings, workspace: Workspace) -> TrainingData:
    """The stored data set and scrub's split (both verified), optionally subsampled."""
    from deepsight_tf.data.scrub_artifacts import load_scrub_report, load_split

    data, data_manifest = load_dataset(workspace, settings.dataset)
    if data.num_classes < 2:
        raise DataError(
            f"data set {data.name} has {data.num_classes} class; a classifier needs at least 2 "
            "(obtain refuses such a source now: rerun `deepsight obtain`)"
        )
    split = load_split(workspace, data.name)
    report = load_scrub_report(workspace, data.name)
    interpolation = settings.interpolation or report.interpolation.selected
    train = np.asarray(split.train)
    if settings.drop_train is not None:
        train = _without(train, settings, len(data.y_train))
    if settings.max_train_images is not None and settings.max_train_images < len(train):
        train = stratified_subset(
            train, data.y_train[train], settings.max_train_images, settings.seed
        )
    scrub_manifest = workspace.read_manifest(workspace.scrub_dir(data.name), "deepsight scrub")
    inputs = {
        DATA_INPUT: workspace.input_record(
            workspace.images_path(data.name), data_manifest.outputs[IMAGES_FILE]
        ),
        SPLIT_INPUT: workspace.input_record(
            workspace.split_path(data.name), scrub_manifest.outputs.get(SPLIT_FILE)
        ),
    }
    if settings.drop_train is not None:
        inputs[DROPPED_INPUT] = workspace.input_record(
            Path(settings.drop_train), sha256_file(Path(settings.drop_train))
        )
    return TrainingData(data, train, np.asarray(split.val), interpolation, inputs)


def dropped_indices(path: Path, top: int | None, n_images: int) -> np.ndarray:
    """The `index` column of a ranked CSV (interpret's train_label_issues.csv), first `top`
    rows: indices into the stored training images."""
    columns, rows = read_input_csv(path, "--drop-train", DataError, max_rows=top)
    if "index" not in columns:
        raise DataError(
            f"{path}: no 'index' column; give a CSV of training-image indices such as "
            f"interpret's {TRAIN_LABEL_ISSUES_FILE}"
        )
    try:
        indices = np.asarray([int(row["index"]) for row in rows], dtype=np.int64)
    except (ValueError, TypeError):  # TypeError: a row shorter than the header
        raise DataError(f"{path}: the 'index' column holds a non-integer") from None
    if len(indices) and (indices.min() < 0 or indices.max() >= n_images):
        raise DataError(
            f"{path}: index {int(indices.max() if indices.max() >= n_images else indices.min())} "
            f"is outside the {n_images} stored training images (a CSV of another data set?)"
        )
    return np.unique(indices)


def _without(train: np.ndarray, settings: TrainSettings, n_images: int) -> np.ndarray:
    """Scrub's training split without --drop-train's images (validation is never touched)."""
    dropped = dropped_indices(Path(settings.drop_train or ""), settings.drop_top, n_images)
    kept = train[~np.isin(train, dropped)]
    log.info("--drop-train: %d of %d training images left out", len(train) - len(kept), len(train))
    return kept


def stratified_subset(indices: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(indices, train_size=n, stratify=labels, random_state=seed)
    return np.sort(keep)


def training_preprocessing(
    settings: TrainSettings, workspace: Workspace, data: TrainingData
) -> Preprocessing:
    """Size and interpolation from the settings and scrub; the normalisation the weights need.

    Pretrained weights need the statistics they were trained with (ImageNet's, or the source
    run's own); from scratch, explore's statistics of the training images when explore ran.
    """
    from deepsight_tf.data.explore_artifacts import load_pixel_stats
    from deepsight_tf.model.backbones import choose_normalization
    from deepsight_tf.model.weights import weights_kind
    from deepsight_tf.training.record import read_preprocessing

    def sized(normalization: Normalization) -> Preprocessing:
        return Preprocessing(settings.image_size, data.interpolation, normalization)

    if weights_kind(settings.weights) == "run":
        return sized(read_preprocessing(Path(settings.weights)).normalization)
    mean = std = None
    if settings.weights == "none":
        try:
            stats = load_pixel_stats(workspace, data.dataset.name)
            mean, std = stats.mean, stats.std
        except PrerequisiteError:
            log.info("explore has not run; normalising with ImageNet statistics")
    return sized(choose_normalization(settings.backbone, settings.weights, mean, std))
