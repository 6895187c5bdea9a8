"""Label-quality scores: cleanlab's formulas, and a kNN check that finds planted flips among
well-separated clusters whatever the probabilities say."""

from __future__ import annotations

import numpy as np
import pytest
from cleanlab.rank import get_label_quality_scores

from deepsight_tf.diagnose.label_scores import (
    class_adjusted,
    knn_agreement_score,
    knn_label_agreement,
    mixture,
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


@pytest.mark.parametrize("method", ["self_confidence", "normalized_margin"])
def test_class_adjusted_scores_equal_cleanlabs_adjust_pred_probs(method: str) -> None:
    labels, probs = probabilities(300, 5, seed=2)
    labels[labels == 4] = 3  # a class no image is labelled with: cleanlab's placeholder
    ours = {"self_confidence": self_confidence, "normalized_margin": normalized_margin}[method]
    expected = get_label_quality_scores(labels, probs, method=method, adjust_pred_probs=True)
    np.testing.assert_allclose(ours(labels, class_adjusted(labels, probs)), expected, atol=1e-12)


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
    # Uninformative probabilities mixed with the neighbours' shares: still the flips first.
    uniform = np.full((len(labels), 4), 0.25)
    combined = self_confidence(noisy, mixture(uniform, shares, 0.5))
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


def test_leave_one_out_knn_ignores_the_image_itself() -> None:
    """Each training image's neighbours among the other training images: a brute-force count
    without its own row, and planted flips found among the training labels themselves."""
    rng = np.random.default_rng(5)
    reference, ref_labels = rng.normal(size=(120, 8)), rng.integers(0, 3, 120)
    shares = knn_label_agreement(reference, reference, ref_labels, 3, k=5, leave_one_out=True)
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    for i in range(len(reference)):
        similarity = unit @ unit[i]
        similarity[i] = -np.inf
        nearest = np.argsort(-similarity)[:5]
        np.testing.assert_allclose(shares[i], np.bincount(ref_labels[nearest], minlength=3) / 5)
    features, labels = clusters(30, 4, seed=3)
    noisy = labels.copy()
    flipped = np.array([2, 44, 91])
    noisy[flipped] = (labels[flipped] + 1) % 4
    own = knn_label_agreement(features, features, noisy, 4, k=10, leave_one_out=True)
    score = knn_agreement_score(noisy, own)
    assert set(np.argsort(score)[:3]) == set(flipped)
    with_self = knn_label_agreement(features, features, noisy, 4, k=10)
    assert knn_agreement_score(noisy, with_self)[flipped].min() >= 0.1  # its own vote counts
    with pytest.raises(ValueError, match="leave_one_out"):
        knn_label_agreement(features[:5], features, noisy, 4, leave_one_out=True)


def test_fold_probes_predict_queries_as_the_mean_of_the_fold_probes() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from deepsight_tf.diagnose.label_scores import kfold_probes

    features, labels = clusters(25, 3, seed=6)
    queries, query_labels = clusters(5, 3, seed=7)
    oof, predicted = kfold_probes(features, labels, 3, queries=queries, folds=4, seed=2, C=1.0)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    query_unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = np.zeros((len(queries), 3))
    splitter = StratifiedKFold(n_splits=4, shuffle=True, random_state=2)
    for fit_rows, held_out in splitter.split(unit, labels):
        probe = LogisticRegression(C=1.0, max_iter=300, tol=1e-4).fit(
            unit[fit_rows], labels[fit_rows]
        )
        np.testing.assert_allclose(oof[held_out], probe.predict_proba(unit[held_out]))
        expected += probe.predict_proba(query_unit) / 4
    np.testing.assert_allclose(predicted, expected)
    np.testing.assert_array_equal(predicted.argmax(axis=1), query_labels)


def test_mixture_weight_maximises_the_held_out_likelihood() -> None:
    """A model that knows the labels takes the whole weight from one that guesses, either way
    round; between two useful models the weight is the grid's likelihood maximum."""
    from deepsight_tf.diagnose.label_scores import MIXTURE_GRID, mixture_weight

    labels, noise = probabilities(400, 4, seed=8)
    sure = np.full((400, 4), 0.02)
    sure[np.arange(400), labels] = 0.94
    uniform = np.full((400, 4), 0.25)
    assert mixture_weight(labels, sure, uniform) == 1.0
    assert mixture_weight(labels, uniform, sure) == 0.0
    half = mixture(sure, noise, 0.5)
    weight = mixture_weight(labels, half, noise)
    likelihood = [
        np.log(mixture(half, noise, w)[np.arange(400), labels]).mean() for w in MIXTURE_GRID
    ]
    assert weight == MIXTURE_GRID[int(np.argmax(likelihood))]
    assert 0.0 < weight <= 1.0
    np.testing.assert_allclose(mixture(sure, uniform, 0.25), 0.25 * sure + 0.75 * uniform)
    product = sure**0.25 * noise**0.75
    np.testing.assert_allclose(
        mixture(sure, noise, 0.25, geometric=True), product / product.sum(1, keepdims=True)
    )
    assert mixture_weight(labels, sure, uniform, geometric=True) == 1.0
    # A product of experts doubts a label as soon as either model gives it little.
    doubted = np.full((1, 4), 0.25)
    sceptic = np.array([[0.01, 0.33, 0.33, 0.33]])
    assert (
        mixture(doubted, sceptic, 0.5, geometric=True)[0, 0] < mixture(doubted, sceptic, 0.5)[0, 0]
    )
    with pytest.raises(ValueError, match="weight"):
        mixture(sure, uniform, 1.5)
