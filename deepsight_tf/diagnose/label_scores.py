"""Label-quality scores for ranking label issues (lower = more likely mislabelled).

From out-of-sample probabilities (cleanlab's rankings), from features (does the image's
neighbourhood among the training images carry its label?), from K-fold linear probes on
features, and mixtures of two models' probabilities. bench/label_issues.py measures each on
planted label issues; independent.py holds the evidence interpret ranks with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KNN_NEIGHBOURS = 10
_CHUNK = 1024  # query rows per similarity block (1024 x 45,000 float32 = 184 MB)


def self_confidence(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """p(given label)."""
    return probs[np.arange(len(labels)), labels]


def class_adjusted(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """probs with each class's mean self-confidence among the images labelled with it
    subtracted, shifted positive and renormalised: cleanlab's `adjust_pred_probs`, which keeps
    a class the model is unsure of throughout (cat, dog) from filling the top of a ranking."""
    probs = np.asarray(probs, np.float64)
    present = np.bincount(labels, minlength=probs.shape[1]) > 0
    thresholds = np.full(probs.shape[1], 2.0)  # cleanlab's value for a class with no image
    for k in np.flatnonzero(present):
        thresholds[k] = probs[labels == k, k].mean()
    thresholds = np.maximum(thresholds, 2e-6)
    adjusted = probs - thresholds + thresholds.max()
    return adjusted / adjusted.sum(axis=1, keepdims=True)


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
    leave_one_out: bool = False,
) -> np.ndarray:
    """(n, num_classes): for each query, the share of its k nearest reference images (cosine
    similarity) in each class. Pass disjoint sets (test images against training images), or
    the reference itself as `features` with leave_one_out=True: each image's own row is then
    no neighbour of it, so its own label casts no vote."""
    if leave_one_out and len(features) != len(reference):
        raise ValueError(
            "leave_one_out needs the reference itself as the queries. "
            f"Received: {len(features)} queries, {len(reference)} reference rows"
        )
    k = min(k, len(reference) - int(leave_one_out))
    ref = _unit(reference.astype(np.float32))
    ref_labels = np.asarray(reference_labels, dtype=np.int64)
    shares = np.zeros((len(features), num_classes))
    for start in range(0, len(features), _CHUNK):
        query = _unit(features[start : start + _CHUNK].astype(np.float32))
        similarity = query @ ref.T
        if leave_one_out:
            rows = np.arange(len(query))
            similarity[rows, start + rows] = -np.inf
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


def run_features(model: Any, preprocessing: Any, x: np.ndarray, batch_size: int = 256) -> Any:
    """The classifier's pooled features of every image in x, preprocessed as in training."""
    from deepsight_tf.training.feature_cache import backbone_features

    args = {"batch_size": batch_size, "preprocessing": preprocessing}
    return backbone_features(model, x, np.arange(len(x)), int(model.outputs[0].shape[-1]), args)


PROBE_FOLDS = 5
PROBE_C = 10.0  # inverse L2 strength of the probes' logistic regression


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
    return kfold_probes(features, labels, num_classes, folds=folds, seed=seed)[0]


def kfold_probes(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    queries: np.ndarray | None = None,
    folds: int = PROBE_FOLDS,
    seed: int = 0,
    C: float = PROBE_C,
    tol: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(out-of-fold probabilities of every example, the fold probes' mean probabilities of
    `queries`): K stratified folds, a multinomial logistic regression on the L2-normalised
    features of the other folds predicting each. The queries' labels are never read, so their
    probabilities are out of sample for them as well (test images against training images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = _unit(features.astype(np.float64))
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.zeros((len(labels), num_classes))
    query_x = None if queries is None else _unit(queries.astype(np.float64))
    query_probs = None if queries is None else np.zeros((len(queries), num_classes))
    counts = np.bincount(labels, minlength=num_classes)
    n_splits = int(min(folds, counts[counts > 0].min()))
    if n_splits < 2:
        raise ValueError("every class needs two examples at least for a K-fold probe")
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fit_rows, held_out in splitter.split(x, labels):
        probe = LogisticRegression(C=C, max_iter=300, tol=tol)
        probe.fit(x[fit_rows], labels[fit_rows])
        probs[np.ix_(held_out, probe.classes_)] = probe.predict_proba(x[held_out])
        if query_probs is not None:
            query_probs[:, probe.classes_] += probe.predict_proba(query_x) / n_splits
    return probs, query_probs


def mixture(
    first: np.ndarray, second: np.ndarray, weight: float, geometric: bool = False
) -> np.ndarray:
    """Two models' probabilities as one: weight * first + (1 - weight) * second, or with
    `geometric` the normalised first**weight * second**(1 - weight) (a product of experts,
    which doubts a label as soon as either model gives it little)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1]. Received: {weight}")
    if not geometric:
        return weight * first + (1.0 - weight) * second
    logs = weight * np.log(np.maximum(first, 1e-12)) + (1 - weight) * np.log(
        np.maximum(second, 1e-12)
    )
    logs -= logs.max(axis=1, keepdims=True)
    product = np.exp(logs)
    return product / product.sum(axis=1, keepdims=True)


MIXTURE_GRID = np.linspace(0.0, 1.0, 21)


def mixture_weight(
    labels: np.ndarray, first: np.ndarray, second: np.ndarray, geometric: bool = False
) -> float:
    """The weight of `first` in mixture(first, second) that gives held-out labels the highest
    mean log-likelihood (a grid of 0.05 steps): stacking on images neither model trained on,
    so a weak run leans on the other model and a strong one on itself."""
    rows = np.arange(len(labels))
    likelihood = [
        np.mean(np.log(np.maximum(mixture(first, second, w, geometric)[rows, labels], 1e-12)))
        for w in MIXTURE_GRID
    ]
    return float(MIXTURE_GRID[int(np.argmax(likelihood))])
