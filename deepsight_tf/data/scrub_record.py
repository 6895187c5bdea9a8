"""Scrub's report.json as a typed record: what scrub found, as later phases and the report read it.

scrub.py computes and writes it; `ScrubResult.from_dict` reads it back (core/records.py), and
the command line, training (the selected interpolation), interpret (the test images that leak)
and the run report read its fields. `SCHEMA` is the layout's version, written into the file;
a file without one (version 0) has the same layout, with the quality checks, the threshold's
calibration and the split's short classes absent where that scrub predates them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from deepsight_tf.core.records import from_versioned_json
from deepsight_tf.core.storage import to_jsonable
from deepsight_tf.data.duplicates import Calibration
from deepsight_tf.data.interpolation import InterpolationStudy
from deepsight_tf.data.quality import QualitySummary

SCHEMA = 1
CATEGORIES = ("train", "test", "train-test")  # where the two images of a pair live
PLACES = {"train": "within train", "test": "within test", "train-test": "across train-test"}


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
