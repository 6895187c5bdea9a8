"""deepsight interpret on a tiny trained run: report numbers agree with the stored predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.settings import InterpretSettings
from deepsight_tf.core.storage import read_json, to_jsonable
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.diagnose.interpret import interpret
from deepsight_tf.diagnose.interpret_record import SCHEMA as INTERPRET_SCHEMA
from deepsight_tf.diagnose.interpret_record import InterpretResult, Ranking
from deepsight_tf.diagnose.study import stratified_sample
from deepsight_tf.training.loop import train
from deepsight_tf.training.pipeline import parse_focus_pairs

from support.chain import INTERPRETED_RUN, Interpreted
from support.separable import CLASSES, tiny


def test_headline_equals_the_stored_predictions(interpreted: Interpreted) -> None:
    ws, result = interpreted.workspace, interpreted.result
    predictions = np.load(ws.run_dir(INTERPRETED_RUN) / "predictions.npz")
    accuracy = float((predictions["test_probs"].argmax(1) == predictions["test_labels"]).mean())
    assert result.headline.accuracy == pytest.approx(accuracy)
    low, high = result.headline.accuracy_ci
    assert low <= accuracy <= high
    report = read_json(Path(result.folder) / "report.json")
    assert report["headline"]["accuracy"] == pytest.approx(accuracy)
    ws.verify(Path(result.folder), "deepsight interpret")


def test_the_report_file_reads_back_as_the_result_it_was_written_from(
    interpreted: Interpreted,
) -> None:
    """Every field, nested records included (arrays compared as the JSON holds them); a file
    without a version reads as version 0; a newer one, or a wrong field, is refused."""
    result = interpreted.result
    stored = read_json(Path(result.folder) / "report.json")
    back = InterpretResult.from_dict(stored)
    assert stored["schema"] == INTERPRET_SCHEMA == back.schema
    text = [json.dumps(to_jsonable(r), sort_keys=True) for r in (back, result, stored)]
    assert text[0] == text[1] == text[2]  # as text: a NaN equals itself there
    assert back.label_issues.train is not None and back.error_attribution is not None
    assert isinstance(back.top_losses.indices, np.ndarray)
    old = {k: v for k, v in stored.items() if k not in ("schema", "error_attribution")}
    assert InterpretResult.from_dict(old).error_attribution is None
    with pytest.raises(ValueError, match="schema 2 is newer"):
        InterpretResult.from_dict({**stored, "schema": 2})
    with pytest.raises(ValueError, match=r"report\.headline\.n: expected int, found str"):
        InterpretResult.from_dict({**stored, "headline": {**stored["headline"], "n": "10"}})


def test_hypotheses_from_explore_get_verdicts(interpreted: Interpreted) -> None:
    result = interpreted.result
    names = {h.name for h in result.hypotheses}
    assert len(result.hypotheses) == 2, names
    assert {h.verdict for h in result.hypotheses} <= {
        "supported",
        "contradicted",
        "inconclusive",
    }
    for h in result.hypotheses:
        assert h.low <= h.estimate <= h.high


def test_forensic_files_are_usable(interpreted: Interpreted) -> None:
    ws, result = interpreted.workspace, interpreted.result
    folder = Path(result.folder)
    pairs = parse_focus_pairs((folder / "focus_pairs.txt").read_text().strip(), CLASSES)
    # By value: the most-confused pairs of the stored test predictions, at most three (none if
    # the tiny model happened to make no mistake: what it learns depends on the CPU).
    predictions = np.load(ws.run_dir(INTERPRETED_RUN) / "predictions.npz")
    confusion = confusion_matrix(
        predictions["test_labels"], predictions["test_probs"].argmax(1), labels=range(3)
    )
    swapped = {
        (a, b): int(confusion[a, b] + confusion[b, a]) for a in range(3) for b in range(a + 1, 3)
    }
    assert len(pairs) == min(3, sum(n > 0 for n in swapped.values()))
    counts = [swapped[tuple(sorted(pair))] for pair in pairs]
    assert counts == sorted(swapped.values(), reverse=True)[: len(pairs)]
    with open(folder / "label_issues.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == result.label_issues.count
    with open(folder / "train_label_issues.csv", newline="") as handle:
        train_rows = list(csv.DictReader(handle))
    train = result.label_issues.train
    assert train is not None and len(train_rows) == train.count and train.images > 0
    data = np.load(ws.images_path("rgb"))
    for row in train_rows:  # indices into x_train, with the stored label
        assert CLASSES[int(data["y_train"][int(row["index"])])] == row["given_label"]
    assert result.leakage is not None and result.leakage.in_mask.n == 0


def test_error_attribution_counts_the_stored_errors(interpreted: Interpreted) -> None:
    """By value, whatever the tiny model got wrong: the error count, the label-issue row from
    label_issues.csv, the confusable-pair row from the registered green/blue pair."""
    ws, result = interpreted.workspace, interpreted.result
    predictions = np.load(ws.run_dir(INTERPRETED_RUN) / "predictions.npz")
    labels, predicted = predictions["test_labels"], predictions["test_probs"].argmax(1)
    wrong = predicted != labels
    attribution = read_json(Path(result.folder) / "report.json")["error_attribution"]
    assert attribution["errors"] == int(wrong.sum())
    rows = {row["cause"]: row for row in attribution["rows"]}
    assert all(rows[c]["measured"] for c in rows)
    with open(Path(result.folder) / "label_issues.csv", newline="") as handle:
        flagged = {int(r["index"]) for r in csv.DictReader(handle)}
    assert rows["label_issue"]["errors"] == sum(wrong[i] for i in flagged)
    green, blue = CLASSES.index("green"), CLASSES.index("blue")
    swapped = {(green, blue), (blue, green)}
    in_pair = [(int(t), int(p)) in swapped for t, p in zip(labels, predicted, strict=True)]
    assert rows["confusable_pair"]["errors"] == sum(in_pair)
    assert rows["conflicting_twin"]["errors"] == 0  # the separable data set has no duplicates


def test_explanations_are_measured(interpreted: Interpreted) -> None:
    result = interpreted.result
    assert result.faithfulness and result.sanity and result.context
    assert set(result.faithfulness.methods) == {"gradcam", "layercam"}
    for method in result.faithfulness.methods.values():
        assert method.verdict in {"beats random", "worse than random", "inconclusive"}
        assert method.n_images == 9
    assert len(result.sanity.mean_spearman) >= 1
    assert result.context.overall.n == 30
    assert all(Path(f).is_file() for f in result.figures)


@pytest.fixture(scope="module")
def efficientnet_run(prepared: Workspace, lite0_cache) -> tuple:
    """EfficientNet-Lite0 from its ImageNet weights at 64 px: a head epoch, then stages 4-8
    fine-tuned (the defaults), on the separable data set; then interpreted."""
    ws = prepared
    trained = train(
        tiny(
            run_id="lite0",
            backbone="efficientnet-lite0",
            weights="imagenet",
            image_size=64,
            width_multiplier=1.0,
            frozen_epochs=1,
            epochs=1,
            batch_size=16,  # 6 steps a phase
        ),
        ws,
    )
    settings = InterpretSettings(
        run_id="lite0",
        methods="gradcam,gradcam++",
        max_images=9,
        context_images=12,
        sanity_images=3,
        grid_per_class=1,
        n_boot=200,
        train_issues=False,
    )
    return ws, trained, interpret(settings, ws)


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_explanations_run_on_an_efficientnet_run(efficientnet_run) -> None:
    """Grad-CAMs read at EfficientNet's head conv (2 x 2 at 64 px) are maps of the input's
    size in [0, 1]; faithfulness, the sanity cascade and the occlusion test run on them."""
    from deepsight_tf.diagnose import explain
    from deepsight_tf.model.saving import load_classifier
    from deepsight_tf.training.record import RunRecord

    ws, trained, result = efficientnet_run
    assert [phase.trainable for phase in trained.phases] == ["head", "4,5,6,7,8"]
    record = RunRecord.load(ws, "lite0")
    model = load_classifier(record.model_path)
    data = np.load(ws.data_dir("rgb") / "images.npz")
    x = np.asarray(record.preprocessing(data["x_test"][:6]))
    classes = model.predict(x, verbose=0).argmax(axis=1)
    assert explain.feature_grid(model, "top_activation") == (2, 2)
    for method in ("gradcam", "gradcam++", "layercam"):
        maps = explain.compute_cams(model, x, classes, layer_name="top_activation", method=method)
        assert maps.shape == (6, 64, 64) and np.all(np.isfinite(maps))
        assert maps.min() >= 0.0 and maps.max() <= 1.0
        assert (maps.max(axis=(1, 2)) - maps.min(axis=(1, 2)) > 0.5).sum() >= 3  # not flat

    assert result.faithfulness and result.sanity and result.context
    assert result.sanity.layer_name == "top_activation"
    assert result.sanity.groups == [
        "head",
        "top_conv",
        "block7a",
        "block6d",
        "block6c",
        "block6b",
        "block6a",
    ]
    assert len(result.sanity.mean_spearman) == 7
    assert set(result.faithfulness.methods) == {"gradcam", "gradcam++"}
    assert result.faithfulness.random_grid == [2, 2]
    for scores in result.faithfulness.methods.values():
        assert scores.n_images == 9
        assert 0.0 <= scores.deletion_auc <= 1.0 and 0.0 <= scores.insertion_auc <= 1.0
    assert result.context.overall.n == 12
    assert all(Path(f).is_file() for f in result.figures)


def test_stratified_sample_balances_classes() -> None:
    labels = np.repeat([0, 1, 2], [50, 5, 50])
    chosen = stratified_sample(labels, 30, seed=0)
    assert len(chosen) == len(set(chosen)) == 30
    counts = np.bincount(labels[chosen])
    assert counts[1] == 5 and sorted([counts[0], counts[2]]) == [12, 13]


def test_bad_settings_and_missing_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--methods"):
        interpret(InterpretSettings(run_id="x", methods="gradcam,magic"), Workspace(tmp_path))
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path), "interpret", "nope"])
    assert result.exit_code == 4 and "run `deepsight train` first" in result.stderr


def test_label_evidence_from_imagenet_features(interpreted: Interpreted) -> None:
    """The ImageNet probes' lists are cleanlab on their probabilities (recomputed here from the
    cached features), the ranking of label_issues.csv is the stacked geometric mixture, the
    attribution counts the doubted errors, and the manifest cites the features it read."""
    from deepsight_tf.data.dataset import dataset_sha256, load_dataset
    from deepsight_tf.data.scrub_artifacts import load_split
    from deepsight_tf.diagnose.forensics import find_label_issues
    from deepsight_tf.diagnose.independent import independent_evidence
    from deepsight_tf.diagnose.label_scores import mixture, mixture_weight

    ws, result = interpreted.workspace, interpreted.result
    folder = Path(result.folder)
    imagenet = result.label_issues.imagenet
    assert imagenet is not None
    data, _ = load_dataset(ws, "rgb")
    evidence = independent_evidence(ws, data, dataset_sha256(ws, "rgb"), load_split(ws, "rgb"))
    assert evidence.pass_s is None  # interpret cached the features
    predictions = np.load(ws.run_dir(INTERPRETED_RUN) / "predictions.npz")
    labels = predictions["test_labels"]

    def indices(name: str) -> list[int]:
        with open(folder / name, newline="") as handle:
            return [int(row["index"]) for row in csv.DictReader(handle)]

    doubted = indices("label_issues_imagenet.csv")
    expected = find_label_issues(labels, evidence.test_probs, CLASSES)
    assert doubted == [i.index for i in expected] and len(doubted) == imagenet.test.count
    train_found = find_label_issues(
        data.y_train[evidence.train_indices], evidence.train_probs, CLASSES
    )
    train_indices = [int(evidence.train_indices[i.index]) for i in train_found]
    assert indices("train_label_issues_imagenet.csv") == train_indices
    val_probs = predictions["val_probs"] / predictions["val_probs"].sum(1, keepdims=True)
    weight = mixture_weight(predictions["val_labels"], val_probs, evidence.val_probs, True)
    assert result.label_issues.ranked_by and result.label_issues.ranked_by.run_weight == weight
    test_probs = predictions["test_probs"] / predictions["test_probs"].sum(1, keepdims=True)
    mixed = mixture(test_probs, evidence.test_probs, weight, geometric=True)
    ranked = find_label_issues(labels, mixed, CLASSES)
    assert indices("label_issues.csv") == [i.index for i in ranked]
    wrong = predictions["test_probs"].argmax(1) != labels
    assert result.error_attribution is not None
    rows = {row.cause: row for row in result.error_attribution.rows}
    assert rows["independent_label_issue"].errors == sum(wrong[i] for i in doubted)
    claim = result.error_attribution.claim
    if claim.verdict != "not tested":  # a tiny model may make no error at all
        assert "independent_label_issue" in claim.data_quality_causes
    manifest = read_json(folder / "manifest.json")
    cited = manifest["inputs"]["imagenet features"]
    assert (
        cited["sha256"]
        == read_json(Path(imagenet.features) / "manifest.json")["outputs"]["features.npz"]
    )
    assert {"label_issues_imagenet.csv", "train_label_issues_imagenet.csv"} <= set(
        manifest["outputs"]
    )


def test_label_issues_ranked_by_an_ensemble_of_two_runs(
    interpreted: Interpreted, tmp_path: Path
) -> None:
    """--ensemble-with: label_issues.csv is cleanlab on the equal mean of the two runs' test
    probabilities, the report says so and the manifest cites the other run's predictions; the
    run itself or a run that is not there is refused before anything is written."""
    from deepsight_tf.core.errors import PrerequisiteError
    from deepsight_tf.core.manifest import ENSEMBLE_INPUT
    from deepsight_tf.diagnose.forensics import find_label_issues
    from deepsight_tf.diagnose.label_scores import mixture

    from support.workspaces import copy_workspace

    ws = copy_workspace(interpreted.workspace, tmp_path)
    train(tiny(run_id="other", epochs=1, lr=0.02), ws)  # a different model of the same images
    cheap = dict(methods="gradcam", max_images=4, context_images=10, sanity_images=2)
    settings = InterpretSettings(
        run_id=INTERPRETED_RUN,
        ensemble_with="other",
        imagenet_evidence=False,
        train_issues=False,
        grid_per_class=1,
        n_boot=200,
        **cheap,  # type: ignore[arg-type]
    )
    result = interpret(settings, ws)
    a = np.load(ws.run_dir(INTERPRETED_RUN) / "predictions.npz")
    b = np.load(ws.run_dir("other") / "predictions.npz")
    mean = mixture(
        a["test_probs"] / a["test_probs"].sum(1, keepdims=True),
        b["test_probs"] / b["test_probs"].sum(1, keepdims=True),
        0.5,
    )
    expected = [i.index for i in find_label_issues(a["test_labels"], mean, CLASSES)]
    with open(Path(result.folder) / "label_issues.csv", newline="") as handle:
        found = [int(row["index"]) for row in csv.DictReader(handle)]
    assert found == expected
    assert result.label_issues.ranked_by and result.label_issues.ranked_by.ensemble_with == "other"
    manifest = read_json(Path(result.folder) / "manifest.json")
    assert ENSEMBLE_INPUT in manifest["inputs"]
    with pytest.raises(ConfigError, match="--ensemble-with a: that is the run"):
        InterpretSettings(run_id="a", ensemble_with="a")
    with pytest.raises(PrerequisiteError, match="no run 'gone'"):
        interpret(InterpretSettings(run_id=INTERPRETED_RUN, ensemble_with="gone"), ws)


def test_the_ensemble_ranks_by_the_equal_mean_of_the_two_runs() -> None:
    """Planted probabilities: each run's rows normalised, then averaged with equal weight; an
    image one run is sure of and the other doubts lands half way."""
    from types import SimpleNamespace

    from deepsight_tf.diagnose.interpret import _ranking_probs

    run = np.array([[0.9, 0.1, 0.0], [0.2, 0.2, 0.2]])  # the second row sums to 0.6
    other = np.array([[0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])
    study = SimpleNamespace(probs=run, ensemble=("b", {"test_probs": other}))
    probs, ranked = _ranking_probs(study, None)  # type: ignore[arg-type]
    np.testing.assert_allclose(probs, [[0.5, 0.5, 0.0], [1 / 6, 1 / 6, 2 / 3]])
    assert ranked == Ranking("the mean of this run's and run b's", 0.5, ensemble_with="b")
