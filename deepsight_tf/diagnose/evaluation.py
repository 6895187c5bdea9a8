"""Scores of a classifier's test predictions: accuracy and macro-F1 with intervals, the
confusion matrix and its most-confused pairs, per-class recall, top losses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepsight_tf.core.settings import DEFAULT_ALPHA, DEFAULT_N_BOOT
from deepsight_tf.diagnose.bootstrap import (
    batched_macro_f1,
    batched_mean,
    bootstrap_ci,
)
from deepsight_tf.diagnose.calibration import TINY
from deepsight_tf.diagnose.checks import check_class_names, check_labels_probs


def classification_summary(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy and macro-F1 (with bootstrap CIs), the per-class table and the confusion matrix.

    The per-class precision, recall, F1 and support are scikit-learn's classification_report;
    the confusion matrix is sklearn's, as counts and normalised by row (the true class), so a
    row of the normalised matrix sums to 1 and its diagonal is that class's recall.
    """
    from deepsight_tf.training.metrics import classification_scores

    labels, probs = check_labels_probs(labels, probs)
    class_names = check_class_names(class_names, probs.shape[1])
    k = len(class_names)
    scores = classification_scores(labels, probs, class_names)
    predicted = probs.argmax(axis=1)
    counts = scores["confusion"]
    support = counts.sum(axis=1, keepdims=True)
    # A class absent from the test set has an all-zero row; leave it at 0 rather than 0/0.
    normalized = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    accuracy_ci = bootstrap_ci(
        batched_mean, predicted == labels, n_boot=n_boot, alpha=alpha, seed=seed
    )
    macro_f1_ci = bootstrap_ci(
        lambda y, p: batched_macro_f1(y, p, k),
        labels,
        predicted,
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
    )
    return {
        "n": scores["n"],
        "accuracy": scores["accuracy"],
        "accuracy_ci": [accuracy_ci[1], accuracy_ci[2]],
        "macro_f1": scores["macro_f1"],
        "macro_f1_ci": [macro_f1_ci[1], macro_f1_ci[2]],
        "ci_level": 1 - alpha,
        "per_class": scores["per_class"],
        "class_names": class_names,
        "confusion": counts,
        "confusion_normalized": normalized,
    }


@dataclass
class ConfusedPair:
    """One off-diagonal cell: `count` images of `true` predicted as `predicted`."""

    true: str
    predicted: str
    count: int
    rate: float  # count over the support of the true class


@dataclass
class PairConfusion:
    """Both directions of a pair of classes: a predicted as b plus b predicted as a."""

    a: str
    b: str
    a_as_b: int
    b_as_a: int
    count: int
    rate: float  # count over the support of a and b together


def _check_confusion(confusion: Any, class_names: Sequence[str]) -> np.ndarray:
    confusion = np.asarray(confusion)
    k = len(class_names)
    if confusion.shape != (k, k):
        raise ValueError(
            f"confusion must be ({k}, {k}) for {k} class names. Received: shape {confusion.shape}"
        )
    return confusion


def most_confused(
    confusion: np.ndarray, class_names: Sequence[str], top: int = 10
) -> list[ConfusedPair]:
    """The `top` largest off-diagonal cells of a count matrix (rows true), largest first.

    Cells with a count of 0 are left out; ties keep row-major order.
    """
    confusion = _check_confusion(confusion, class_names)
    support = confusion.sum(axis=1)
    cells = [
        (int(confusion[i, j]), i, j)
        for i in range(len(class_names))
        for j in range(len(class_names))
        if i != j and confusion[i, j] > 0
    ]
    cells.sort(key=lambda cell: -cell[0])  # stable: ties stay in row-major order
    return [
        ConfusedPair(class_names[i], class_names[j], count, count / support[i])
        for count, i, j in cells[:top]
    ]


def most_confused_pairs(
    confusion: np.ndarray, class_names: Sequence[str], top: int = 10
) -> list[PairConfusion]:
    """The `top` unordered pairs {a, b} by a→b plus b→a confusions, largest first (0 left out)."""
    confusion = _check_confusion(confusion, class_names)
    support = confusion.sum(axis=1)
    k = len(class_names)
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            count = int(confusion[i, j] + confusion[j, i])
            if count > 0:
                rate = count / (support[i] + support[j])
                pairs.append(
                    PairConfusion(
                        class_names[i],
                        class_names[j],
                        int(confusion[i, j]),
                        int(confusion[j, i]),
                        count,
                        float(rate),
                    )
                )
    pairs.sort(key=lambda pair: -pair.count)
    return pairs[:top]


@dataclass
class TopLosses:
    """The most confidently wrong examples, highest cross-entropy first (parallel arrays)."""

    indices: np.ndarray  # into the arrays given (the test set's order)
    labels: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray  # of the predicted class
    true_probability: np.ndarray
    loss: np.ndarray  # -log p(true class)


def top_losses(labels: np.ndarray, probs: np.ndarray, k: int = 16) -> TopLosses:
    """The `k` misclassified examples with the highest cross-entropy -log p(true class).

    Only wrong predictions are listed: an example can carry a high loss and still be right
    when no class is confident, and such an example says little about what the model got wrong.
    """
    labels, probs = check_labels_probs(labels, probs)
    if k < 0:
        raise ValueError(f"k must be >= 0. Received: {k}")
    predicted = probs.argmax(axis=1)
    true_probability = probs[np.arange(len(labels)), labels]
    loss = -np.log(np.maximum(true_probability, TINY))
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-loss[wrong], kind="stable")][:k]
    return TopLosses(
        indices=order,
        labels=labels[order],
        predicted=predicted[order],
        probability=probs[order, predicted[order]],
        true_probability=true_probability[order],
        loss=loss[order],
    )


@dataclass
class ClassRecall:
    """One class's recall with its bootstrap CI (resampling that class's test examples)."""

    name: str
    recall: float
    low: float | None
    high: float | None
    support: int


def per_class_recall(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> list[ClassRecall]:
    """Recall of every class with a percentile-bootstrap CI; a class with no examples gets none."""
    labels, probs = check_labels_probs(labels, probs)
    class_names = check_class_names(class_names, probs.shape[1])
    correct = probs.argmax(axis=1) == labels
    result = []
    for c, name in enumerate(class_names):
        hits = correct[labels == c]
        if len(hits) == 0:
            result.append(ClassRecall(name, 0.0, None, None, 0))
            continue
        point, low, high = bootstrap_ci(
            batched_mean, hits, n_boot=n_boot, alpha=alpha, seed=seed + c
        )
        result.append(ClassRecall(name, point, low, high, len(hits)))
    return result
