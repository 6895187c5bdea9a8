"""Label-quality scores: cleanlab's formulas, and a kNN check that finds planted flips among
well-separated clusters whatever the probabilities say."""

from __future__ import annotations

import numpy as np
import pytest
from cleanlab.rank import get_label_quality_scores

from deepsight_tf.diagnose.label_scores import (
    LABEL_SCORES,
    knn_agreement_score,
    knn_label_agreement,
    normalized_margin,
    self_confidence,
)


def probabilities(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k), size=n)
    return rng.integers(0, k, n), probs


@pytest.mark.parametrize("method", ["self_confidence", "normalized_margin"])
def test_probability_scores_equal_cleanlab(method: str) -> None:
    labels, probs = probabilities(300, 5, seed=1)
    ours = {"self_confidence": self_confidence, "normalized_margin": normalized_margin}[method]
    np.testing.assert_allclose(
        ours(labels, probs), get_label_quality_scores(labels, probs, method=method), atol=1e-12
    )


def clusters(n_per: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k tight clusters on the unit sphere of 16 dimensions, one per class."""
    centres = np.linalg.qr(np.random.default_rng(99).normal(size=(16, 16)))[0][:k]
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), n_per)
    return centres[labels] + 0.05 * rng.normal(size=(len(labels), 16)), labels


def test_knn_agreement_counts_neighbour_labels_and_finds_planted_flips() -> None:
    reference, reference_labels = clusters(50, 4, seed=0)
    queries, labels = clusters(10, 4, seed=1)
    shares = knn_label_agreement(queries, reference, reference_labels, 4, k=10)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    np.testing.assert_array_equal(shares.argmax(axis=1), labels)  # tight clusters: unanimous
    noisy = labels.copy()
    flipped = np.array([3, 17, 25])
    noisy[flipped] = (labels[flipped] + 1) % 4
    score = knn_agreement_score(noisy, shares)
    assert set(np.argsort(score)[:3]) == set(flipped)
    assert score[flipped].max() == 0.0 and np.delete(score, flipped).min() == 1.0
    # Uninformative probabilities: the combined score still ranks the flips first.
    uniform = np.full((len(labels), 4), 0.25)
    combined = LABEL_SCORES["combined"](noisy, uniform, shares)
    assert set(np.argsort(combined)[:3]) == set(flipped)


def test_knn_matches_a_brute_force_count() -> None:
    rng = np.random.default_rng(4)
    reference, ref_labels = rng.normal(size=(200, 8)), rng.integers(0, 3, 200)
    queries = rng.normal(size=(30, 8))
    shares = knn_label_agreement(queries, reference, ref_labels, 3, k=7)
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    for i, q in enumerate(queries):
        nearest = np.argsort(-(unit @ (q / np.linalg.norm(q))))[:7]
        np.testing.assert_allclose(shares[i], np.bincount(ref_labels[nearest], minlength=3) / 7)


def test_kfold_probe_finds_planted_flips_in_training_labels() -> None:
    from deepsight_tf.diagnose.forensics import find_label_issues
    from deepsight_tf.diagnose.label_scores import kfold_probe_probs

    features, labels = clusters(60, 4, seed=2)
    noisy = labels.copy()
    flipped = np.array([5, 70, 130, 200])
    noisy[flipped] = (labels[flipped] + 2) % 4
    probs = kfold_probe_probs(features, noisy, 4, folds=5, seed=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # Out of sample: a flipped image is predicted as its true cluster, not its given label.
    np.testing.assert_array_equal(probs[flipped].argmax(axis=1), labels[flipped])
    issues = find_label_issues(noisy, probs, ["a", "b", "c", "d"])
    assert {i.index for i in issues} == set(flipped)
