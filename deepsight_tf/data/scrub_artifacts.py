"""What scrub stores, written and read here: report.json as a typed record, split.json,
duplicates.csv and quality.csv.

scrub.py computes; this module holds each file's layout. Later phases read scrub's work only
through the loaders below, which first check the folder against its manifest and the data set
it was made from: training (the split, the selected interpolation), interpret (the test images
that leak, those whose train twin has another label, the quality flags) and the run report
(the report's fields). `SCHEMA` is report.json's layout version, written into the file; a file
without one (version 0) has the same layout, with the quality checks, the threshold's
calibration and the split's short classes absent where that scrub predates them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.manifest import DATA_INPUT, Manifest
from deepsight_tf.core.records import from_versioned_json, read_record
from deepsight_tf.core.storage import atomic_write_json, atomic_write_text, read_json, to_jsonable
from deepsight_tf.core.workspace import (
    DUPLICATES_FILE,
    QUALITY_FILE,
    REPORT_JSON,
    SPLIT_FILE,
    Workspace,
)
from deepsight_tf.data.dataset import dataset_sha256
from deepsight_tf.data.duplicates import Calibration
from deepsight_tf.data.interpolation import InterpolationStudy
from deepsight_tf.data.quality import QUALITY_COLUMNS, QualityFlag, QualitySummary

PHASE_HINT = "deepsight scrub"
SCHEMA = 1
CATEGORIES = ("train", "test", "train-test")  # where the two images of a pair live
PLACES = {"train": "within train", "test": "within test", "train-test": "across train-test"}
CSV_COLUMNS = (
    "kind",
    "split_a",
    "index_a",
    "path_a",
    "label_a",
    "split_b",
    "index_b",
    "path_b",
    "label_b",
    "distance",
    "same_label",
)


@dataclass(frozen=True)
class DuplicatePair:
    """One row of duplicates.csv: image a and image b, by split and index within the split."""

    kind: str  # exact | near
    split_a: str
    index_a: int
    path_a: str
    label_a: str
    split_b: str
    index_b: int
    path_b: str
    label_b: str
    distance: float  # 0 for exact; 1 - aligned structure correlation for near

    @property
    def same_label(self) -> bool:
        return self.label_a == self.label_b

    @property
    def category(self) -> str:
        return self.split_a if self.split_a == self.split_b else "train-test"


@dataclass(frozen=True)
class SplitIntegrity:
    """One split's images: how many, their pixel range, and the one-colour ones."""

    images: int
    pixel_range: list[int]
    labels_in_range: bool
    constant_images: list[int]  # indices within the split


@dataclass(frozen=True)
class Integrity:
    image_shape: list[int]
    dtype: str
    train: SplitIntegrity
    test: SplitIntegrity

    @property
    def constant_images(self) -> int:
        return len(self.train.constant_images) + len(self.test.constant_images)


@dataclass(frozen=True)
class PairCounts:
    """Duplicate pairs of one kind in one place, the images they involve, and label conflicts."""

    pairs: int
    images: int
    label_conflicts: int


@dataclass(frozen=True)
class DuplicateSummary:
    exact: dict[str, PairCounts]  # category (CATEGORIES) -> counts
    near: dict[str, PairCounts]
    candidates_verified: int
    threshold: float
    method: str = ""
    neighbours: int | None = None
    calibration: Calibration | None = None  # None: a version-0 file that did not store it

    def label_conflicts(self, category: str) -> int:
        return self.exact[category].label_conflicts + self.near[category].label_conflicts


@dataclass(frozen=True)
class Leakage:
    """Test images with a twin in train (exact or near), and the train images they twin."""

    test_indices_with_train_twin: list[int]
    train_indices_with_test_twin: list[int]
    test_images_with_train_twin: int
    exact: int  # of those test images, how many have an identical twin


@dataclass(frozen=True)
class ShortClass:
    """A class whose validation share shrank: the rest of it is in duplicate groups."""

    drawn: int
    placed: int


@dataclass(frozen=True)
class SplitSummary:
    """Sizes, class counts per part, and the overlaps that prove the parts are apart."""

    seed: int
    val_size: float
    sizes: dict[str, int]  # part (train, val, test, dropped) -> images
    class_counts: dict[str, dict[str, int]]  # part -> class -> images
    index_overlap: dict[str, int]  # "train-val", "train-dropped", "val-dropped", "unassigned"
    duplicate_overlap: dict[str, dict[str, int]]  # kind -> "part-part" -> pairs
    short: dict[str, ShortClass] = field(default_factory=dict)


@dataclass
class ScrubResult:
    """Scrub's report.json."""

    dataset: str
    folder: str
    images_sha256: str
    duration_s: float
    integrity: Integrity
    duplicates: DuplicateSummary
    leakage: Leakage
    split: SplitSummary
    interpolation: InterpolationStudy
    quality: QualitySummary = field(default_factory=QualitySummary)
    class_names: list[str] = field(default_factory=list)
    top_pairs: list[DuplicatePair] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    schema: int = SCHEMA

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScrubResult:
        """ValueError where the document is not scrub's report (or is newer than this code)."""
        return from_versioned_json(cls, data, SCHEMA, "scrub report")

    def to_dict(self) -> dict[str, Any]:
        """The file's layout (written at SCHEMA, whatever version was read), with the derived
        values a reader of the JSON wants beside the stored ones."""
        document: dict[str, Any] = to_jsonable(asdict(self))
        document["schema"] = SCHEMA
        document["top_pairs"] = [
            {**asdict(pair), "same_label": pair.same_label} for pair in self.top_pairs
        ]
        if self.duplicates.calibration is not None:
            statement = self.duplicates.calibration.statement()
            document["duplicates"]["calibration"]["statement"] = statement
        return document


@dataclass
class Split:
    """Indices into x_train: the training and validation parts, and any dropped leaks."""

    train: np.ndarray
    val: np.ndarray
    seed: int
    val_size: float
    dropped: np.ndarray
    # Classes whose validation share shrank: too few of their images are free of duplicates.
    short: dict[str, dict[str, int]] = field(default_factory=dict)


# Writing -----------------------------------------------------------------------------------
def write_duplicates_csv(path: Path, pairs: list[DuplicatePair]) -> None:
    rows = [{**asdict(p), "same_label": int(p.same_label)} for p in pairs]
    _write_csv(path, CSV_COLUMNS, rows)


def write_quality_csv(path: Path, flags: list[QualityFlag]) -> None:
    _write_csv(path, QUALITY_COLUMNS, [asdict(flag) for flag in flags])


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """A CSV with `columns` as its header, one line per row, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([row[c] for c in columns] for row in rows)
    atomic_write_text(path, buffer.getvalue())


def write_split(path: Path, dataset: str, sha: str, split: Split, drop_leaks: bool) -> None:
    """split.json: the indices of each part, and what they were drawn from."""
    document = {
        "dataset": dataset,
        "images_sha256": sha,
        "seed": split.seed,
        "val_size": split.val_size,
        "drop_leaks": drop_leaks,
        "train": split.train,
        "val": split.val,
        "dropped": split.dropped,
        "short": split.short,
    }
    atomic_write_json(path, document)


# Loaders for later phases -------------------------------------------------------------------
def _verified_manifest(workspace: Workspace, dataset: str) -> Manifest:
    folder = workspace.scrub_dir(dataset)
    manifest = workspace.verify(folder, PHASE_HINT)
    workspace.check_inputs(
        manifest,
        {DATA_INPUT: dataset_sha256(workspace, dataset)},
        workspace.relative(folder),
        PHASE_HINT,
    )
    return manifest


def load_split(workspace: Workspace, dataset: str) -> Split:
    """Scrub's split, refused (StaleArtifactError) if it or the stored data set has changed."""
    _verified_manifest(workspace, dataset)
    data = read_json(workspace.scrub_dir(dataset) / SPLIT_FILE)
    return Split(
        train=np.asarray(data["train"], dtype=np.int64),
        val=np.asarray(data["val"], dtype=np.int64),
        seed=int(data["seed"]),
        val_size=float(data["val_size"]),
        dropped=np.asarray(data["dropped"], dtype=np.int64),
        short=data.get("short", {}),
    )


def load_scrub_report(workspace: Workspace, dataset: str) -> ScrubResult:
    """Scrub's report.json, verified like load_split."""
    _verified_manifest(workspace, dataset)
    path = workspace.scrub_dir(dataset) / REPORT_JSON
    return read_record(path, ScrubResult.from_dict, PHASE_HINT)


def load_test_twins(workspace: Workspace, dataset: str) -> np.ndarray:
    """Indices into x_test of the test images with an exact or near duplicate in train."""
    report = load_scrub_report(workspace, dataset)
    return np.asarray(report.leakage.test_indices_with_train_twin, dtype=np.int64)


def load_conflicting_test_twins(workspace: Workspace, dataset: str) -> np.ndarray:
    """Indices into x_test of the test images whose exact or near duplicate in train carries a
    different label (from duplicates.csv)."""
    _verified_manifest(workspace, dataset)
    with open(workspace.scrub_dir(dataset) / DUPLICATES_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    found = {
        int(row["index_b"] if row["split_b"] == "test" else row["index_a"])
        for row in rows
        if {row["split_a"], row["split_b"]} == {"train", "test"} and row["same_label"] == "0"
    }
    return np.asarray(sorted(found), dtype=np.int64)


def load_quality_flags(
    workspace: Workspace, dataset: str, split: str
) -> dict[str, np.ndarray] | None:
    """For each quality issue, the indices of the split's images scrub flagged (quality.csv;
    None when that scrub predates the quality checks)."""
    _verified_manifest(workspace, dataset)
    path = workspace.scrub_dir(dataset) / QUALITY_FILE
    if not path.is_file():
        return None
    flagged: dict[str, list[int]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == split:
                flagged.setdefault(row["issue"], []).append(int(row["index"]))
    return {issue: np.asarray(sorted(v), dtype=np.int64) for issue, v in flagged.items()}
