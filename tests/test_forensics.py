"""Tests of forensics.py: planted label flips are recovered; hard examples; focus-pair files."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
from cleanlab.rank import get_label_quality_scores
from PIL import Image
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from deepsight_tf.diagnose import forensics as fo
from deepsight_tf.plots import evaluation as figs
from deepsight_tf.plots import save_figure

NAMES = ["airplane", "automobile", "bird", "cat"]
FLIP_SHARE = 0.05


def make_flipped_problem(cluster_std: float) -> dict:
    """Four Gaussian blobs, 5% of labels flipped to another class, and out-of-sample
    probabilities from 5-fold cross-validated logistic regression."""
    n = 2000
    x, clean = make_blobs(n_samples=n, centers=4, cluster_std=cluster_std, random_state=0)
    rng = np.random.default_rng(0)
    flipped = rng.choice(n, size=int(FLIP_SHARE * n), replace=False)
    labels = clean.copy()
    labels[flipped] = (clean[flipped] + rng.integers(1, 4, len(flipped))) % 4
    probs = cross_val_predict(
        LogisticRegression(max_iter=1000), x, labels, cv=5, method="predict_proba"
    )
    return {"labels": labels, "clean": clean, "probs": probs, "flipped": flipped, "n": n}


@pytest.fixture(scope="module")
def flipped_problem() -> dict:
    """Blobs a classifier separates at about 93% (the clean labels), like a good CIFAR model."""
    return make_flipped_problem(cluster_std=1.0)


def test_planted_flips_are_recovered_well_above_chance(flipped_problem: dict) -> None:
    p = flipped_problem
    paths = [f"test/{i:05d}.png" for i in range(p["n"])]
    issues = fo.find_label_issues(p["labels"], p["probs"], NAMES, paths)
    recovery = fo.label_issue_recovery(p["flipped"], issues, p["n"])
    assert recovery["chance_precision"] == pytest.approx(FLIP_SHARE)
    # A random pick of the same size would be 5% precise; cleanlab on these blobs is far better.
    assert recovery["precision"] > 0.6
    assert recovery["recall"] > 0.8
    assert recovery["lift"] > 10
    assert recovery["precision_at_flips"] > 0.75
    assert recovery["n_flagged"] == len(issues)
    # Each issue: the suggestion is the model's top class, which for a recovered flip is
    # usually the clean label.
    hits = [i for i in issues if i.index in set(p["flipped"].tolist())]
    agree = np.mean([i.suggested == p["clean"][i.index] for i in hits])
    assert agree > 0.8
    first = issues[0]
    assert first.path == paths[first.index] and first.given == p["labels"][first.index]
    assert first.given_label == NAMES[first.given]
    assert first.suggested == int(p["probs"][first.index].argmax())


def test_flips_are_found_above_chance_by_a_weaker_model() -> None:
    # Overlapping blobs (about 78% separable): honest mistakes crowd the flagged set, so
    # precision drops, yet it stays several times chance and most flips are still flagged.
    p = make_flipped_problem(cluster_std=1.6)
    recovery = fo.label_issue_recovery(
        p["flipped"], fo.find_label_issues(p["labels"], p["probs"], NAMES), p["n"]
    )
    assert recovery["lift"] > 3
    assert recovery["recall"] > 0.7
    assert recovery["precision_at_flips"] > 0.5


def test_issues_are_ranked_by_cleanlab_self_confidence(flipped_problem: dict) -> None:
    p = flipped_problem
    issues = fo.find_label_issues(p["labels"], p["probs"], NAMES)
    scores = get_label_quality_scores(p["labels"], p["probs"], method="self_confidence")
    assert [i.rank for i in issues] == list(range(len(issues)))
    assert [i.score for i in issues] == pytest.approx([scores[i.index] for i in issues])
    assert all(a.score <= b.score for a, b in itertools.pairwise(issues))
    assert all(i.path is None for i in issues)


def test_clean_labels_give_few_issues() -> None:
    x, labels = make_blobs(n_samples=1000, centers=4, cluster_std=0.5, random_state=1)
    probs = cross_val_predict(
        LogisticRegression(max_iter=1000), x, labels, cv=5, method="predict_proba"
    )
    assert len(fo.find_label_issues(labels, probs, NAMES)) <= 5


def test_recovery_counts() -> None:
    issues = [
        fo.LabelIssue(r, i, None, 0, "a", 1, "b", 0.9, 0.1) for r, i in enumerate([7, 3, 5, 9])
    ]
    recovery = fo.label_issue_recovery([3, 9, 11], issues, n_examples=100)
    assert recovery["n_flagged_flipped"] == 2
    assert recovery["precision"] == pytest.approx(2 / 4)
    assert recovery["recall"] == pytest.approx(2 / 3)
    assert recovery["precision_at_flips"] == pytest.approx(1 / 3)  # top 3: 7, 3, 5
    assert recovery["lift"] == pytest.approx(0.5 / 0.03)
    empty = fo.label_issue_recovery([3], [], n_examples=100)
    assert empty["precision"] is None and empty["recall"] == 0
    with pytest.raises(ValueError, match="Received"):
        fo.label_issue_recovery([100], issues, n_examples=100)


def test_label_issues_csv_round_trip(tmp_path: Path, flipped_problem: dict) -> None:
    p = flipped_problem
    issues = fo.find_label_issues(p["labels"], p["probs"], NAMES)[:5]
    path = fo.write_label_issues_csv(tmp_path / "interpret" / "label_issues.csv", issues)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == [i.index for i in issues]
    assert [float(r["score"]) for r in rows] == pytest.approx([i.score for i in issues])
    assert rows[0]["given_label"] == issues[0].given_label and rows[0]["path"] == ""
    assert not list(path.parent.glob(".*.tmp"))


def test_hard_examples_of_confused_pairs() -> None:
    labels = np.array([0, 0, 1, 1, 2, 3, 0])
    probs = np.array(
        [
            [0.2, 0.7, 0.05, 0.05],  # airplane -> automobile (0.7)
            [0.9, 0.05, 0.03, 0.02],  # right
            [0.6, 0.3, 0.05, 0.05],  # automobile -> airplane (0.6)
            [0.1, 0.1, 0.1, 0.7],  # automobile -> cat: not in the pair
            [0.1, 0.1, 0.1, 0.7],  # bird -> cat
            [0.05, 0.05, 0.8, 0.1],  # cat -> bird
            [0.05, 0.9, 0.03, 0.02],  # airplane -> automobile (0.9)
        ]
    )
    paths = [f"img{i}.png" for i in range(7)]
    found = fo.hard_examples(
        labels, probs, NAMES, [("airplane", "automobile"), ("bird", "cat")], paths
    )
    assert [(h.pair, h.index, h.true_label, h.predicted_label) for h in found] == [
        ("airplane:automobile", 6, "airplane", "automobile"),
        ("airplane:automobile", 0, "airplane", "automobile"),
        ("airplane:automobile", 2, "automobile", "airplane"),
        ("bird:cat", 5, "cat", "bird"),
        ("bird:cat", 4, "bird", "cat"),
    ]
    assert found[0].probability == pytest.approx(0.9) and found[0].path == "img6.png"
    with pytest.raises(ValueError, match="Received"):
        fo.hard_examples(labels, probs, NAMES, [("airplane", "horse")])


def test_focus_pairs_file_is_what_train_parses(tmp_path: Path) -> None:
    from deepsight_tf.training.pipeline import parse_focus_pairs

    path = fo.write_focus_pairs(
        tmp_path / "focus_pairs.txt", [("cat", "bird"), ("airplane", "automobile")]
    )
    text = path.read_text()
    assert text == "cat:bird,airplane:automobile\n"
    assert parse_focus_pairs(text, NAMES) == [(3, 2), (0, 1)]
    with pytest.raises(ValueError, match="Received"):
        fo.format_focus_pairs([("a:b", "c")])


def test_label_issue_grid_saves(tmp_path: Path) -> None:
    issues = [fo.LabelIssue(r, r, None, 0, "cat", 1, "dog", 0.8, 0.05 * r) for r in range(11)]
    images = np.random.default_rng(0).integers(0, 256, (11, 32, 32, 3), np.uint8)
    fig = figs.plot_label_issues(
        images,
        [i.given_label for i in issues],
        [i.suggested_label for i in issues],
        [i.score for i in issues],
    )
    width, height = fig.get_size_inches()
    path = save_figure(fig, tmp_path / "label_issues.png")
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5
    assert width / height / 1.5 < pixels.shape[1] / pixels.shape[0] < width / height * 1.5
