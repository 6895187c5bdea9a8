"""What a report reads: a finished run (its record, predictions, history, interpret report) and
the obtain, scrub and explore reports of its data set, each checked to be the one it used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import PrerequisiteError, StaleArtifactError
from deepsight_tf.core.manifest import DATA_INPUT, PREDICTIONS_INPUT, SPLIT_INPUT, Manifest
from deepsight_tf.core.records import read_record
from deepsight_tf.core.workspace import (
    IMAGES_FILE,
    INTERPRET_DIR,
    MANIFEST,
    PREDICTIONS_FILE,
    REPORT_JSON,
    SPLIT_FILE,
    Workspace,
)
from deepsight_tf.data.explore_artifacts import ExploreResult
from deepsight_tf.data.obtain import ObtainResult
from deepsight_tf.data.scrub_artifacts import ScrubResult
from deepsight_tf.diagnose.evaluation import PairConfusion
from deepsight_tf.diagnose.interpret_record import InterpretResult, TestScores
from deepsight_tf.training.record import RunRecord
from deepsight_tf.training.run_config import RunConfig
from deepsight_tf.training.run_metrics import RunMetrics


def interpret_hint(run_id: str) -> str:
    return f"deepsight interpret {run_id}"


@dataclass
class RunArtifacts:
    """A finished run (verified) and its interpret report when there is a current one."""

    record: RunRecord
    predictions: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    interpret: InterpretResult | None
    interpret_manifest: Manifest | None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def run_dir(self) -> Path:
        return self.record.run_dir

    @property
    def manifest(self) -> Manifest:
        return self.record.manifest

    @property
    def config(self) -> RunConfig:
        return self.record.config

    @property
    def metrics(self) -> RunMetrics:
        return self.record.metrics

    @property
    def class_names(self) -> list[str]:
        return self.record.class_names

    @property
    def dataset(self) -> str:
        return self.record.dataset

    @property
    def interpret_dir(self) -> Path:
        return self.record.run_dir / INTERPRET_DIR


def load_run_artifacts(workspace: Workspace, run_id: str) -> RunArtifacts:
    """The run (refused when missing or tampered) and its interpret report (None when not run)."""
    record = RunRecord.load(workspace, run_id)
    interpret = interpret_manifest = None
    folder = workspace.interpret_dir(run_id)
    if (folder / MANIFEST).is_file():
        hint = interpret_hint(run_id)
        interpret_manifest = workspace.verify(folder, hint)
        workspace.check_inputs(
            interpret_manifest,
            {PREDICTIONS_INPUT: record.output_sha256(PREDICTIONS_FILE)},
            workspace.relative(folder),
            hint,
        )
        interpret = read_record(folder / REPORT_JSON, InterpretResult.from_dict, hint)
    return RunArtifacts(
        record=record,
        predictions=record.predictions(),
        history=record.history(),
        interpret=interpret,
        interpret_manifest=interpret_manifest,
    )


@dataclass
class UpstreamArtifacts:
    """What obtain, scrub and explore wrote for the run's data set (None: the phase has not run)."""

    dataset: str
    obtain: ObtainResult | None = None
    obtain_manifest: Manifest | None = None
    scrub: ScrubResult | None = None
    scrub_manifest: Manifest | None = None
    explore: ExploreResult | None = None
    explore_manifest: Manifest | None = None
    scrub_dir: Path | None = None
    explore_dir: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)


def load_upstream(workspace: Workspace, run: RunArtifacts) -> UpstreamArtifacts:
    """Obtain's, scrub's and explore's reports, checked to be the ones the run was trained on."""
    from deepsight_tf.data.explore_artifacts import load_explore_report
    from deepsight_tf.data.scrub_artifacts import load_scrub_report

    up = UpstreamArtifacts(dataset=run.dataset)
    data_dir = workspace.data_dir(run.dataset)
    if not (data_dir / MANIFEST).is_file():
        up.notes["obtain"] = f"data set {run.dataset} is no longer stored: deepsight obtain"
        return up
    up.obtain_manifest = workspace.verify(data_dir, "deepsight obtain")
    up.obtain = read_record(data_dir / REPORT_JSON, ObtainResult.from_dict, "deepsight obtain")
    images_sha = up.obtain_manifest.outputs.get(IMAGES_FILE)
    if run.manifest.inputs.get(DATA_INPUT, {}).get("sha256") != images_sha:
        raise StaleArtifactError(
            f"run {run.run_id} was trained on another copy of data set {run.dataset}; "
            "rerun `deepsight train`"
        )
    try:
        up.scrub = load_scrub_report(workspace, run.dataset)
        up.scrub_dir = workspace.scrub_dir(run.dataset)
        up.scrub_manifest = workspace.read_manifest(up.scrub_dir, "deepsight scrub")
        split_sha = run.manifest.inputs.get(SPLIT_INPUT, {}).get("sha256")
        if split_sha != up.scrub_manifest.outputs.get(SPLIT_FILE):
            raise StaleArtifactError(
                f"run {run.run_id} was trained on an older split of {run.dataset}; "
                "rerun `deepsight train`"
            )
    except PrerequisiteError:
        up.notes["scrub"] = "not run yet: deepsight scrub"
    try:
        up.explore = load_explore_report(workspace, run.dataset)
        up.explore_dir = workspace.explore_dir(run.dataset)
        up.explore_manifest = workspace.read_manifest(up.explore_dir, "deepsight explore")
    except PrerequisiteError:
        up.notes["explore"] = "not run yet: deepsight explore"
    return up


@dataclass
class Headline:
    """One run's test metrics with intervals, its gate, and where the intervals came from."""

    run_id: str
    accuracy: float
    accuracy_ci: list[float]
    macro_f1: float
    macro_f1_ci: list[float]
    ci_level: float
    n: int
    mva: float
    passed: bool
    source: str  # "interpret" (its report.json) or "report" (bootstrapped here)


@dataclass(frozen=True)
class Scored:
    """A run's test scores with intervals and its most-confused pairs, and who computed them."""

    scores: TestScores
    most_confused: list[PairConfusion]
    source: str  # "interpret" (its report.json) or "report" (bootstrapped here)


def scored_summary(run: RunArtifacts, n_boot: int, seed: int) -> Scored:
    """Test metrics with intervals: interpret's as it stored them when it ran, else
    bootstrapped here the same way (with the same per-class recall and most-confused pairs)."""
    from deepsight_tf.diagnose import evaluation

    if run.interpret is not None:
        return Scored(run.interpret.headline, run.interpret.most_confused, "interpret")
    labels, probs = run.predictions["test_labels"], run.predictions["test_probs"]
    names = run.class_names
    summary = evaluation.classification_summary(labels, probs, names, n_boot=n_boot, seed=seed)
    recalls = evaluation.per_class_recall(labels, probs, names, n_boot=n_boot, seed=seed)
    pairs = evaluation.most_confused_pairs(np.asarray(summary["confusion"]), names, top=10)
    return Scored(TestScores.from_summary(summary, recalls), pairs, "report")


def make_headline(run: RunArtifacts, scored: Scored) -> Headline:
    scores = scored.scores
    return Headline(
        run_id=run.run_id,
        accuracy=scores.accuracy,
        accuracy_ci=scores.accuracy_ci[-2:],
        macro_f1=scores.macro_f1,
        macro_f1_ci=scores.macro_f1_ci[-2:],
        ci_level=scores.ci_level,
        n=scores.n,
        mva=run.metrics.mva,
        passed=run.metrics.passed,
        source=scored.source,
    )
