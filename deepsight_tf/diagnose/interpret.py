"""The interpret phase: a trained run's metrics, calibration, Grad-CAM and forensic tests.

Each step reads the run's stored test predictions (and for the explanations its model) and
adds numbers and figures to one report.json in runs/<id>/interpret/, which the report page
reads as it is.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import PrerequisiteError
from deepsight_tf.core.manifest import (
    DATA_INPUT,
    ENSEMBLE_INPUT,
    FEATURES_INPUT,
    MODEL_INPUT,
    PREDICTIONS_INPUT,
    Manifest,
    now_iso,
)
from deepsight_tf.core.progress import Progress
from deepsight_tf.core.settings import InterpretSettings
from deepsight_tf.core.storage import atomic_write_json
from deepsight_tf.core.workspace import (
    CONFUSION_FIGURE,
    FEATURES_FILE,
    FOCUS_PAIRS_FILE,
    HYPOTHESES_FIGURE,
    IMAGENET_ISSUES_FILE,
    IMAGENET_TRAIN_ISSUES_FILE,
    IMAGES_FILE,
    LABEL_ISSUES_FIGURE,
    LABEL_ISSUES_FILE,
    MODEL_FILE,
    MOST_CONFUSED_FIGURE,
    PER_CLASS_RECALL_FIGURE,
    PREDICTIONS_FILE,
    RELIABILITY_FIGURE,
    REPORT_JSON,
    TOP_LOSSES_FIGURE,
    TRAIN_LABEL_ISSUES_FILE,
    Workspace,
)
from deepsight_tf.data.dataset import load_dataset
from deepsight_tf.diagnose import evaluation, forensics
from deepsight_tf.diagnose.attribution import ErrorAttribution, attribute_errors
from deepsight_tf.diagnose.calibration import CalibrationReport, calibration_report
from deepsight_tf.diagnose.explain_run import explain_run
from deepsight_tf.diagnose.hypothesis_tests import (
    HypothesisResult,
    SubsetGap,
    subset_accuracy_gap,
    test_hypotheses,
)
from deepsight_tf.diagnose.interpret_record import (
    ImagenetIssues,
    InterpretResult,
    IssueList,
    LabelIssues,
    ProbeIssues,
    Ranking,
    TestScores,
)
from deepsight_tf.diagnose.study import Study
from deepsight_tf.training.record import RunRecord

HARD_PAIRS = 3  # most-confused pairs written for `deepsight train --focus-pairs @FILE`
TOP_LOSSES = 16  # the most confidently wrong test images, shown and stored
LABEL_ISSUES_SHOWN = 16


def interpret(
    settings: InterpretSettings, workspace: Workspace, progress: Progress | None = None
) -> InterpretResult:
    """Every diagnostic of one run, written to runs/<id>/interpret/ (report.json, figures)."""
    from deepsight_tf.core.errors import ConfigError

    if not settings.run_id:
        raise ConfigError("name the run to interpret: deepsight interpret RUN_ID")
    record = RunRecord.load(workspace, settings.run_id)
    data, data_manifest = load_dataset(workspace, record.dataset)
    data_sha = data_manifest.outputs[IMAGES_FILE]
    workspace.check_inputs(
        record.manifest, {DATA_INPUT: data_sha}, f"run {settings.run_id}", "deepsight train"
    )
    predictions = record.predictions()
    other = _ensemble_run(settings, workspace, record, predictions["test_labels"])
    out = workspace.interpret_dir(settings.run_id)
    model = record.load_model()  # a model file safe_mode refuses stops here, before any write
    with workspace.lock(f"run-{settings.run_id}-interpret"):
        started, start = now_iso(), time.perf_counter()
        study = Study(settings, workspace, record, model, data, predictions, out, progress)
        if other is not None:
            study.ensemble = (other[0].run_id, other[1])
        result = diagnose(study)
        result.duration_s = round(time.perf_counter() - start, 1)
        atomic_write_json(out / REPORT_JSON, result.to_dict())
        outputs = {REPORT_JSON: "", LABEL_ISSUES_FILE: "", FOCUS_PAIRS_FILE: ""}
        if result.label_issues.train is not None:
            outputs[TRAIN_LABEL_ISSUES_FILE] = ""
        imagenet = result.label_issues.imagenet
        if imagenet is not None:
            outputs.update({IMAGENET_ISSUES_FILE: "", IMAGENET_TRAIN_ISSUES_FILE: ""})
        outputs.update({str(Path(f).relative_to(out)): "" for f in result.figures})
        run_dir = record.run_dir
        inputs = {
            MODEL_INPUT: workspace.input_record(
                run_dir / MODEL_FILE, record.output_sha256(MODEL_FILE)
            ),
            PREDICTIONS_INPUT: workspace.input_record(
                run_dir / PREDICTIONS_FILE, record.output_sha256(PREDICTIONS_FILE)
            ),
            DATA_INPUT: workspace.input_record(workspace.images_path(data.name), data_sha),
        }
        if other is not None:
            inputs[ENSEMBLE_INPUT] = workspace.input_record(
                other[0].run_dir / PREDICTIONS_FILE, other[0].output_sha256(PREDICTIONS_FILE)
            )
        if imagenet is not None:
            features = Path(imagenet.features) / FEATURES_FILE
            inputs[FEATURES_INPUT] = workspace.input_record(features, imagenet.features_sha256)
        workspace.write_manifest(
            out,
            Manifest(
                phase="interpret",
                settings=asdict(settings),
                seed=settings.seed,
                inputs=inputs,
                outputs=outputs,
                started=started,
                finished=now_iso(),
                duration_s=result.duration_s,
            ),
        )
    return result


def _ensemble_run(
    settings: InterpretSettings, workspace: Workspace, record: RunRecord, labels: np.ndarray
) -> tuple[RunRecord, dict[str, np.ndarray]] | None:
    """--ensemble-with's run and its predictions, checked to have scored the same test images
    with the same `labels` and classes as the run being interpreted."""
    from deepsight_tf.core.errors import ConfigError

    if not settings.ensemble_with:
        return None
    other = RunRecord.load(workspace, settings.ensemble_with)
    predictions = other.predictions()
    same = other.dataset == record.dataset and np.array_equal(predictions["test_labels"], labels)
    if not same or other.class_names != record.class_names:
        raise ConfigError(
            f"--ensemble-with {other.run_id}: it was tested on {other.dataset}'s test images "
            f"with other labels or classes than run {record.run_id} ({record.dataset}); name "
            "a run trained on the same data set"
        )
    return other, predictions


def diagnose(study: Study) -> InterpretResult:
    """The steps in order: scores, calibration, leakage, hypotheses, forensics, explanations."""
    scores = _scores(study)
    calibration = _calibration(study)
    leakage = _leakage(study)
    hypotheses, note = _hypotheses(study)
    evidence = _independent(study) if study.settings.imagenet_evidence else None
    issues, hard, ranked = _forensics(study, scores.pairs, evidence)
    train_issues = _train_label_issues(study) if study.settings.train_issues else None
    imagenet, doubted = _imagenet_issues(study, evidence) if evidence else (None, None)
    attribution = study.timed("error_attribution", lambda: _attribution(study, issues, doubted))
    explained = explain_run(study, scores.losses, scores.pairs[:HARD_PAIRS])
    return InterpretResult(
        run_id=study.settings.run_id,
        folder=str(study.out),
        dataset=study.data.name,
        duration_s=0.0,
        headline=scores.headline,
        most_confused=scores.pairs,
        top_losses=scores.losses,
        calibration=calibration,
        leakage=leakage,
        hypotheses=hypotheses,
        hypotheses_note=note,
        label_issues=LabelIssues(
            count=len(issues),
            csv=str(study.out / LABEL_ISSUES_FILE),
            top=issues[:20],
            hard_examples=len(hard),
            focus_pairs_file=str(study.out / FOCUS_PAIRS_FILE),
            ranked_by=ranked,
            train=train_issues,
            imagenet=imagenet,
        ),
        faithfulness=explained.faithfulness,
        sanity=explained.sanity,
        context=explained.context,
        error_attribution=attribution,
        figures=study.figures,
        timings=study.timings,
    )


@dataclass(frozen=True)
class _Scores:
    headline: TestScores
    pairs: list[evaluation.PairConfusion]
    losses: evaluation.TopLosses


def _scores(study: Study) -> _Scores:
    """Accuracy and macro-F1 with intervals, confusion, recall per class, top losses."""
    from deepsight_tf.plots import evaluation as eval_plots

    labels, probs, names = study.labels, study.probs, study.names
    summary = study.timed(
        "metrics", lambda: evaluation.classification_summary(labels, probs, names, **study.boot)
    )
    confusion = np.asarray(summary["confusion"])
    confused = evaluation.most_confused(confusion, names, top=10)
    pairs = evaluation.most_confused_pairs(confusion, names, top=10)
    recalls = evaluation.per_class_recall(labels, probs, names, **study.boot)
    losses = evaluation.top_losses(labels, probs, k=TOP_LOSSES)
    study.figure(eval_plots.plot_confusion_matrix(confusion, names), CONFUSION_FIGURE)
    study.figure(
        eval_plots.plot_per_class_recall(
            [r.name for r in recalls],
            [r.recall for r in recalls],
            [r.low for r in recalls],
            [r.high for r in recalls],
            [r.support for r in recalls],
            ci_level=summary["ci_level"],
        ),
        PER_CLASS_RECALL_FIGURE,
    )
    study.figure(
        eval_plots.plot_most_confused([(p.true, p.predicted, p.count, p.rate) for p in confused]),
        MOST_CONFUSED_FIGURE,
    )
    study.figure(
        eval_plots.plot_top_losses(
            study.data.x_test[losses.indices],
            losses.labels,
            losses.predicted,
            losses.probability,
            names,
        ),
        TOP_LOSSES_FIGURE,
    )
    headline = TestScores.from_summary(summary, recalls)
    return _Scores(headline, pairs, losses)


def _calibration(study: Study) -> CalibrationReport:
    """ECE and the reliability diagram before and after a temperature fitted on validation."""
    from deepsight_tf.plots import evaluation as eval_plots

    predictions = study.predictions
    calibration = study.timed(
        "calibration",
        lambda: calibration_report(
            predictions["val_labels"], predictions["val_probs"], study.labels, study.probs
        ),
    )
    study.figure(
        eval_plots.plot_reliability_diagram(
            calibration.reliability_before.bins,
            asdict(calibration.reliability_before),
            asdict(calibration.reliability_after),
            ece_before=calibration.ece_before,
            ece_after=calibration.ece_after,
            temperature=calibration.temperature,
        ),
        RELIABILITY_FIGURE,
    )
    return calibration


def _leakage(study: Study) -> SubsetGap | None:
    """Accuracy on test images with a near duplicate in train against the rest (scrub's list)."""
    from deepsight_tf.data.scrub_artifacts import load_scrub_report

    try:
        report = load_scrub_report(study.workspace, study.data.name)
    except PrerequisiteError:
        return None
    twins = report.leakage.test_indices_with_train_twin
    mask = np.zeros(len(study.labels), dtype=bool)
    mask[np.asarray(twins, dtype=np.int64)] = True
    return subset_accuracy_gap(study.labels, study.probs, mask, **study.boot)


def _hypotheses(study: Study) -> tuple[list[HypothesisResult], str]:
    """The hypotheses explore registered, each with its verdict; or why there are none."""
    from deepsight_tf.data.explore_artifacts import load_hypotheses
    from deepsight_tf.plots import evaluation as eval_plots

    try:
        registered = load_hypotheses(study.workspace, study.data.name)
    except PrerequisiteError as exc:
        return [], f"no hypotheses: {exc}"
    note = registered.note or registered.description
    if not registered.registered:
        return [], note
    results = test_hypotheses(study.labels, study.probs, study.names, registered, **study.boot)
    study.figure(
        eval_plots.plot_hypotheses(
            [r.name for r in results],
            [r.estimate for r in results],
            [r.low for r in results],
            [r.high for r in results],
            [r.n for r in results],
            [r.verdict for r in results],
            ci_level=results[0].ci_level,
        ),
        HYPOTHESES_FIGURE,
    )
    return results, note


def _forensics(
    study: Study, pairs: list[Any], evidence: Any | None
) -> tuple[list[Any], list[Any], Ranking]:
    """Label issues (cleanlab) with their figure, the hard pairs for --focus-pairs, and what
    the label issues were ranked by."""
    from deepsight_tf.plots import evaluation as eval_plots

    data = study.data
    probs, ranked = _ranking_probs(study, evidence)
    issues = study.timed(
        "label_issues",
        lambda: forensics.find_label_issues(
            study.labels, probs, study.names, paths=data.test_paths
        ),
    )
    forensics.write_label_issues_csv(study.out / LABEL_ISSUES_FILE, issues)
    shown = issues[:LABEL_ISSUES_SHOWN]
    if shown:
        study.figure(
            eval_plots.plot_label_issues(
                data.x_test[[i.index for i in shown]],
                [i.given_label for i in shown],
                [i.suggested_label for i in shown],
                [i.score for i in shown],
            ),
            LABEL_ISSUES_FIGURE,
        )
    hard_pairs = [(p.a, p.b) for p in pairs[:HARD_PAIRS]]
    hard = forensics.hard_examples(
        study.labels, study.probs, study.names, hard_pairs, paths=data.test_paths
    )
    forensics.write_focus_pairs(study.out / FOCUS_PAIRS_FILE, hard_pairs)
    return issues, hard, ranked


def _ranking_probs(study: Study, evidence: Any | None) -> tuple[np.ndarray, Ranking]:
    """The probabilities label_issues.csv is ranked by. With --ensemble-with, the equal mean
    of the two runs' probabilities (no weight fitted): on label flips planted in CIFAR-10 it
    found more than either run alone or mixed with the ImageNet probes (bench/label_issues.py,
    docs/results.md). Otherwise the normalised geometric mean of the run's test probabilities
    and the ImageNet probes' (a product of experts), the run's weight stacked on the
    validation images, which neither model trained on; the run's alone without the ImageNet
    evidence."""
    from deepsight_tf.diagnose.label_scores import mixture, mixture_weight

    if study.ensemble is not None:
        other, predictions = study.ensemble
        probs = mixture(_normalised(study.probs), _normalised(predictions["test_probs"]), 0.5)
        return probs, Ranking(
            f"the mean of this run's and run {other}'s", run_weight=0.5, ensemble_with=other
        )
    if evidence is None:
        return study.probs, Ranking("the run's", run_weight=1.0)
    predictions = study.predictions
    position = {int(i): row for row, i in enumerate(evidence.val_indices)}
    rows = np.asarray([position[int(i)] for i in predictions["val_indices"]], dtype=np.int64)
    run_val = _normalised(predictions["val_probs"])
    weight = mixture_weight(
        predictions["val_labels"], run_val, evidence.val_probs[rows], geometric=True
    )
    probs = mixture(_normalised(study.probs), evidence.test_probs, weight, geometric=True)
    return probs, Ranking(
        "the run's and the ImageNet probes' geometric mean",
        run_weight=float(weight),
        weight_from=f"validation log-likelihood ({len(rows):,} images)",
    )


def _normalised(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def _attribution(study: Study, issues: list[Any], doubted: np.ndarray | None) -> ErrorAttribution:
    """Each test error's likely causes: label issue, a label the ImageNet probes doubt (when
    measured), conflicting train twin, low quality (scrub's lists, when scrub ran),
    confusable pair (explore's, when it ran)."""
    from deepsight_tf.data.explore_artifacts import load_hypotheses
    from deepsight_tf.data.scrub_artifacts import load_conflicting_test_twins, load_quality_flags

    causes: dict[str, np.ndarray] = {"label_issue": np.array([i.index for i in issues], int)}
    if doubted is not None:
        causes["independent_label_issue"] = doubted
    try:
        causes["conflicting_twin"] = load_conflicting_test_twins(study.workspace, study.data.name)
        flags = load_quality_flags(study.workspace, study.data.name, "test")
    except PrerequisiteError:
        flags = None
    if flags is not None:
        causes["low_quality"] = np.unique(np.concatenate([np.zeros(0, int), *flags.values()]))
    try:
        pairs = load_hypotheses(study.workspace, study.data.name).confusable_pairs
    except PrerequisiteError:
        pairs = []
    return attribute_errors(study.labels, study.probs, study.names, causes, pairs, **study.boot)


def _independent(study: Study) -> Any:
    """Out-of-sample probabilities and kNN shares from ImageNet features (cached features)."""
    from deepsight_tf.data.dataset import dataset_sha256
    from deepsight_tf.data.scrub_artifacts import load_split
    from deepsight_tf.diagnose.independent import independent_evidence

    workspace, data = study.workspace, study.data
    split = load_split(workspace, data.name)
    return study.timed(
        "imagenet_evidence",
        lambda: independent_evidence(
            workspace,
            data,
            dataset_sha256(workspace, data.name),
            split,
            seed=study.settings.seed,
            progress=study.progress,
        ),
    )


def _imagenet_issues(study: Study, evidence: Any) -> tuple[ImagenetIssues, np.ndarray]:
    """cleanlab's flagged sets on the ImageNet probes' probabilities, for the test images
    (label_issues_imagenet.csv; the attribution's independent_label_issue, returned as
    indices) and the training images (train_label_issues_imagenet.csv, indices into x_train;
    clean-labels-imagenet)."""
    data = study.data
    test = forensics.find_label_issues(
        study.labels, evidence.test_probs, study.names, paths=data.test_paths
    )
    forensics.write_label_issues_csv(study.out / IMAGENET_ISSUES_FILE, test)
    indices = evidence.train_indices
    labels = data.y_train[indices]
    paths = [data.train_paths[i] for i in indices]
    train = forensics.find_label_issues(labels, evidence.train_probs, study.names, paths=paths)
    for issue in train:  # positions in the split -> indices into x_train
        issue.index = int(indices[issue.index])
    forensics.write_label_issues_csv(study.out / IMAGENET_TRAIN_ISSUES_FILE, train)
    test_accuracy = float((evidence.test_probs.argmax(axis=1) == study.labels).mean())
    report = ImagenetIssues(
        **evidence.summary(),
        features_sha256=evidence.features_sha256,
        test_probe_accuracy=test_accuracy,
        test=IssueList(len(test), str(study.out / IMAGENET_ISSUES_FILE), test[:20]),
        train=IssueList(
            len(train), str(study.out / IMAGENET_TRAIN_ISSUES_FILE), train[:20], len(indices)
        ),
    )
    return report, np.array([i.index for i in test], dtype=np.int64)


def _train_label_issues(study: Study) -> ProbeIssues:
    """Label issues among the training images: cleanlab on K-fold linear-probe probabilities
    from the run's pooled features (train_label_issues.csv, indices into x_train)."""
    from deepsight_tf.data.scrub_artifacts import load_split
    from deepsight_tf.diagnose.label_scores import PROBE_FOLDS, kfold_probe_probs, run_features

    data = study.data
    indices = load_split(study.workspace, data.name).train
    features = study.timed(
        "train_features",
        lambda: run_features(study.model, study.record.preprocessing, data.x_train[indices]),
    )
    labels = data.y_train[indices]
    probs = study.timed(
        "train_probes",
        lambda: kfold_probe_probs(features, labels, data.num_classes, seed=study.settings.seed),
    )
    paths = [data.train_paths[i] for i in indices]
    found = forensics.find_label_issues(labels, probs, study.names, paths=paths)
    for issue in found:  # positions in the split -> indices into x_train
        issue.index = int(indices[issue.index])
    forensics.write_label_issues_csv(study.out / TRAIN_LABEL_ISSUES_FILE, found)
    return ProbeIssues(
        count=len(found),
        images=len(indices),
        csv=str(study.out / TRAIN_LABEL_ISSUES_FILE),
        probe_accuracy=float((probs.argmax(axis=1) == labels).mean()),
        folds=PROBE_FOLDS,
        top=found[:20],
    )
