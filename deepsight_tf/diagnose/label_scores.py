"""Label-quality scores for ranking label issues (lower = more likely mislabelled).

From the model's out-of-sample probabilities alone (cleanlab's rankings), from the model's
features (does the image's neighbourhood among the training images carry its label?), and
both combined. bench/label_issues.py measures each on planted flips; interpret ranks with
the winner (RANKING).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

KNN_NEIGHBOURS = 10
_CHUNK = 1024  # query rows per similarity block (1024 x 45,000 float32 = 184 MB)


def self_confidence(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """p(given label)."""
    return probs[np.arange(len(labels)), labels]


def normalized_margin(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(p(given) - max p(other) + 1) / 2, in [0, 1] (cleanlab's normalized_margin)."""
    given = self_confidence(labels, probs)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return (given - others.max(axis=1) + 1) / 2


def knn_label_agreement(
    features: np.ndarray,
    reference: np.ndarray,
    reference_labels: np.ndarray,
    num_classes: int,
    k: int = KNN_NEIGHBOURS,
) -> np.ndarray:
    """(n, num_classes): for each query, the share of its k nearest reference images (cosine
    similarity) in each class. A query that is itself in `reference` should not be: pass
    disjoint sets (test images against training images)."""
    k = min(k, len(reference))
    ref = _unit(reference.astype(np.float32))
    ref_labels = np.asarray(reference_labels, dtype=np.int64)
    shares = np.zeros((len(features), num_classes))
    for start in range(0, len(features), _CHUNK):
        query = _unit(features[start : start + _CHUNK].astype(np.float32))
        similarity = query @ ref.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        votes = ref_labels[nearest]
        rows = np.arange(len(query))[:, None]
        np.add.at(shares[start : start + len(query)], (rows, votes), 1.0)
    return shares / k


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_agreement_score(labels: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """The share of the neighbours that carry the given label."""
    return shares[np.arange(len(labels)), labels]


ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
LABEL_SCORES: dict[str, ScoreFn] = {
    "self-confidence": lambda y, p, s: self_confidence(y, p),
    "normalized margin": lambda y, p, s: normalized_margin(y, p),
    "kNN agreement": lambda y, p, s: knn_agreement_score(y, s),
    "combined": lambda y, p, s: (self_confidence(y, p) + knn_agreement_score(y, s)) / 2,
}


def run_features(model: Any, preprocessing: Any, x: np.ndarray, batch_size: int = 256) -> Any:
    """The classifier's pooled features of every image in x, preprocessed as in training."""
    from deepsight_tf.training.feature_cache import backbone_features

    args = {"batch_size": batch_size, "preprocessing": preprocessing}
    return backbone_features(model, x, np.arange(len(x)), int(model.outputs[0].shape[-1]), args)


PROBE_FOLDS = 5


def kfold_probe_probs(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int = PROBE_FOLDS,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-sample class probabilities for every example: a multinomial logistic regression
    on the (L2-normalised) features of the other folds predicts each stratified fold.

    On a run's own training images the features were learned with these labels, so the
    probabilities are out of sample for the probe, not for the backbone: a wrong label the
    backbone memorised can still look right. cleanlab's intended use all the same.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = _unit(features.astype(np.float64))
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.zeros((len(labels), num_classes))
    counts = np.bincount(labels, minlength=num_classes)
    n_splits = int(min(folds, counts[counts > 0].min()))
    if n_splits < 2:
        raise ValueError("every class needs two examples at least for a K-fold probe")
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fit_rows, held_out in splitter.split(x, labels):
        probe = LogisticRegression(C=10.0, max_iter=300, tol=1e-4)
        probe.fit(x[fit_rows], labels[fit_rows])
        probs[np.ix_(held_out, probe.classes_)] = probe.predict_proba(x[held_out])
    return probs
