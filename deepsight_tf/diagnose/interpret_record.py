"""Interpret's report.json as a typed record: every diagnostic of a run, as later phases read it.

interpret.py builds it from the steps' results and writes it; `InterpretResult.from_dict`
reads it back (core/records.py), and the command line and the run report read its fields.
The parts the steps compute as dataclasses of their own (the confused pairs, the top losses,
calibration, the hypotheses, label issues, error attribution) are stored as those; the heat
maps' tests are stored as summaries without their per-image arrays (the types below).
`SCHEMA` is the layout's version; a file without one (version 0) has the same layout, the
parts an older interpret did not compute absent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deepsight_tf.core.records import from_versioned_json
from deepsight_tf.core.storage import to_jsonable
from deepsight_tf.diagnose.attribution import ErrorAttribution
from deepsight_tf.diagnose.calibration import CalibrationReport
from deepsight_tf.diagnose.evaluation import ClassRecall, PairConfusion, TopLosses
from deepsight_tf.diagnose.forensics import LabelIssue
from deepsight_tf.diagnose.hypothesis_tests import HypothesisResult, SubsetGap

SCHEMA = 1


@dataclass(frozen=True)
class TestScores:
    """Test accuracy and macro-F1 with bootstrap intervals, per-class scores, the confusion."""

    __test__ = False  # not a pytest class

    accuracy: float
    accuracy_ci: list[float]  # low, high
    macro_f1: float
    macro_f1_ci: list[float]
    ci_level: float
    n: int
    per_class: dict[str, dict[str, Any]]  # class -> precision, recall, f1, support
    per_class_recall: list[ClassRecall]
    confusion: list[list[int]]  # rows true, columns predicted
    confusion_normalized: list[list[float]]

    @classmethod
    def from_summary(cls, summary: dict[str, Any], recalls: list[ClassRecall]) -> TestScores:
        """evaluation.classification_summary's scores with evaluation.per_class_recall's."""
        return cls(
            accuracy=float(summary["accuracy"]),
            accuracy_ci=[float(v) for v in summary["accuracy_ci"]],
            macro_f1=float(summary["macro_f1"]),
            macro_f1_ci=[float(v) for v in summary["macro_f1_ci"]],
            ci_level=float(summary["ci_level"]),
            n=int(summary["n"]),
            per_class=summary["per_class"],
            per_class_recall=list(recalls),
            confusion=np.asarray(summary["confusion"]).tolist(),
            confusion_normalized=np.asarray(summary["confusion_normalized"]).tolist(),
        )


# Label issues -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranking:
    """Which probabilities label_issues.csv was ranked by."""

    probabilities: str  # in words: "the run's", "the mean of this run's and run X's", ...
    run_weight: float  # the run's share of the mixture (1: the run's alone)
    weight_from: str | None = None  # where a fitted weight came from
    ensemble_with: str | None = None  # --ensemble-with's run


@dataclass(frozen=True)
class IssueList:
    """cleanlab's flagged set on one set of images: how many, the CSV, the most doubtful."""

    count: int
    csv: str
    top: list[LabelIssue] = field(default_factory=list)
    images: int | None = None  # of how many images (training lists)


@dataclass(frozen=True)
class ProbeIssues:
    """Training-image label issues from K-fold linear probes on the run's pooled features."""

    count: int
    images: int
    csv: str
    probe_accuracy: float
    folds: int
    top: list[LabelIssue] = field(default_factory=list)


@dataclass(frozen=True)
class ImagenetIssues:
    """Labels doubted by K-fold linear probes on ImageNet features, which never saw them."""

    backbone: str
    image_size: int
    features: str  # the cached features' folder
    feature_pass_s: float | None  # None: read from the cache
    cached: bool
    folds: int
    dimensions: int
    probe_accuracy: float  # out of fold, on the training images
    features_sha256: str
    test_probe_accuracy: float
    test: IssueList
    train: IssueList


@dataclass(frozen=True)
class LabelIssues:
    count: int  # test images flagged
    csv: str
    top: list[LabelIssue]
    hard_examples: int
    focus_pairs_file: str
    ranked_by: Ranking | None = None
    train: ProbeIssues | None = None  # --train-issues
    imagenet: ImagenetIssues | None = None  # --imagenet-evidence


# The heat maps on trial ---------------------------------------------------------------------
@dataclass
class MethodFaithfulness:
    """One method's curves against the random order, paired per image."""

    method: str
    n_images: int
    deletion_auc: float  # mean over images
    random_deletion_auc: float
    deletion_gain: float  # mean of random - method deletion AUC; > 0 is better than random
    deletion_gain_ci: tuple[float, float]
    deletion_p: float  # Wilcoxon signed-rank, two-sided, on the per-image gains
    insertion_auc: float
    random_insertion_auc: float
    insertion_gain: float  # mean of method - random insertion AUC; > 0 is better than random
    insertion_gain_ci: tuple[float, float]
    insertion_p: float
    verdict: str  # "beats random", "worse than random" or "inconclusive"


@dataclass(frozen=True)
class FaithfulnessSummary:
    """Deletion and insertion against a random order, per method (no per-image curves)."""

    steps: int
    baseline: str
    random_grid: list[int] | None
    ci_level: float
    seed: int
    methods: dict[str, MethodFaithfulness]


@dataclass(frozen=True)
class SanitySummary:
    """The cascading randomisation check (no maps): mean Spearman after each step."""

    method: str
    layer_name: str
    groups: list[str]
    mean_spearman: list[float]
    threshold: float
    flagged_steps: list[str]
    flagged_images: list[int]
    passed: bool
    seed: int


@dataclass
class ClassContext:
    """One class's accuracy on clean, centre-occluded and border-occluded images, with CIs."""

    name: str
    n: int
    clean: float
    clean_ci: tuple[float, float]
    centre_occluded: float
    centre_occluded_ci: tuple[float, float]
    border_occluded: float
    border_occluded_ci: tuple[float, float]
    # centre-occluded minus border-occluded accuracy, paired over the same images:
    # > 0 means the class survives losing the object better than losing its surroundings.
    context_gap: float
    context_gap_ci: tuple[float, float]
    holds_without_object: bool  # clean - centre_occluded <= hold_margin
    above_chance_without_object: bool  # centre_occluded CI lies above chance


@dataclass
class CentreEnergy:
    """Per-class mean share of CAM mass on the centre, against a uniform map's share."""

    class_names: list[str]
    mean: list[float]  # nan for a class without maps
    ci: list[tuple[float, float]]
    n: list[int]
    uniform: float  # the centre's share of the pixels: what a map with no preference scores
    ci_level: float


@dataclass(frozen=True)
class ContextSummary:
    """The occlusion test per class and overall, and the CAMs' centre share."""

    geometry: dict[str, Any]  # occlusion.OcclusionGeometry's fields and its description
    fill: list[float]
    chance: float
    hold_margin: float
    ci_level: float
    overall: ClassContext
    classes: list[ClassContext]
    holds_without_object: list[str]
    above_chance_without_object: list[str]
    relies_on_context: list[str]
    relies_on_object: list[str]
    assumes: str | None = None
    cam_energy: CentreEnergy | None = None

    def centre_share(self, name: str) -> float | None:
        if self.cam_energy is None:
            return None
        return dict(zip(self.cam_energy.class_names, self.cam_energy.mean, strict=False)).get(name)


# The record -----------------------------------------------------------------------------------
@dataclass
class InterpretResult:
    """Interpret's report.json."""

    run_id: str
    folder: str
    dataset: str
    duration_s: float
    headline: TestScores
    most_confused: list[PairConfusion]
    top_losses: TopLosses
    calibration: CalibrationReport
    leakage: SubsetGap | None
    hypotheses: list[HypothesisResult]
    hypotheses_note: str
    label_issues: LabelIssues
    faithfulness: FaithfulnessSummary | None
    sanity: SanitySummary | None
    context: ContextSummary | None
    error_attribution: ErrorAttribution | None = None
    figures: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    schema: int = SCHEMA

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InterpretResult:
        """ValueError where the document is not interpret's report (or is newer than this)."""
        return from_versioned_json(cls, data, SCHEMA, "interpret report")

    def to_dict(self) -> dict[str, Any]:
        """The file's layout, written at SCHEMA whatever version was read."""
        return {**to_jsonable(asdict(self)), "schema": SCHEMA}
