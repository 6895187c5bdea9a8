"""Tests of differences with intervals: the registered hypotheses (group recall, confusable
pairs) and the leakage gap (test images with a train twin against the rest)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsight_tf.core.settings import DEFAULT_ALPHA, DEFAULT_N_BOOT
from deepsight_tf.diagnose.bootstrap import (
    batched_confusion,
    batched_mean,
    bootstrap_ci,
    verdict_from_ci,
)
from deepsight_tf.diagnose.checks import check_class_names, check_labels_probs, class_ids

if TYPE_CHECKING:
    from deepsight_tf.data.hypotheses import Hypotheses


@dataclass(frozen=True)
class GroupAccuracy:
    n: int
    accuracy: float | None  # None: an empty group
    ci: list[float] | None = None


@dataclass(frozen=True)
class SubsetGap:
    """Accuracy in a subset of the images against the rest, and the gap (subset minus rest)."""

    in_mask: GroupAccuracy
    rest: GroupAccuracy
    gap: float | None
    gap_ci: list[float] | None
    ci_level: float


def subset_accuracy_gap(
    labels: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> SubsetGap:
    """Accuracy of the examples in `mask` (e.g. test images with a near duplicate in train)
    against the rest, each with a CI, and the gap (in mask minus rest) with a CI from a
    bootstrap stratified by group. An empty group has n=0 and no accuracy, gap or CI."""
    labels, probs = check_labels_probs(labels, probs)
    mask = np.asarray(mask)
    if mask.shape != labels.shape or mask.dtype != bool:
        raise ValueError(
            f"mask must be a boolean array of shape {labels.shape}. "
            f"Received: {mask.dtype} {mask.shape}"
        )
    correct = probs.argmax(axis=1) == labels

    def group(hits: np.ndarray, offset: int) -> GroupAccuracy:
        if len(hits) == 0:
            return GroupAccuracy(0, None)
        point, low, high = bootstrap_ci(
            batched_mean, hits, n_boot=n_boot, alpha=alpha, seed=seed + offset
        )
        return GroupAccuracy(len(hits), float(point), [float(low), float(high)])

    in_mask, rest = group(correct[mask], 1), group(correct[~mask], 2)
    if not (mask.any() and (~mask).any()):
        return SubsetGap(in_mask, rest, None, None, 1 - alpha)

    def gap(hits: np.ndarray, in_mask: np.ndarray) -> np.ndarray:
        # Strata keep each group's size fixed, so these sums are never over zero examples.
        inside = (hits * in_mask).sum(axis=-1) / in_mask.sum(axis=-1)
        outside = (hits * ~in_mask).sum(axis=-1) / (~in_mask).sum(axis=-1)
        return inside - outside

    point, low, high = bootstrap_ci(
        gap, correct, mask, n_boot=n_boot, alpha=alpha, seed=seed, strata=mask
    )
    return SubsetGap(in_mask, rest, float(point), [float(low), float(high)], 1 - alpha)


@dataclass
class HypothesisResult:
    """A registered hypothesis put to the test: the estimate, its CI, n and the verdict.

    `estimate` is the difference the hypothesis predicts to be positive; the verdict follows
    from the CI alone (see `verdict_from_ci`).
    """

    kind: str  # "group_recall" or "confusable_pair"
    name: str
    a: str
    b: str
    estimate: float
    low: float
    high: float
    ci_level: float
    n: int
    n_boot: int
    verdict: str
    details: dict[str, Any] = field(default_factory=dict)


def _mean_recall(confusion: np.ndarray, ids: list[int]) -> np.ndarray:
    rows = confusion[:, ids, :]
    return (
        np.diagonal(confusion, axis1=1, axis2=2)[:, ids] / np.maximum(rows.sum(axis=2), 1)
    ).mean(axis=1)


def test_group_recall(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    group_a: Sequence[str],
    group_b: Sequence[str],
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    names: tuple[str, str] | None = None,
) -> HypothesisResult:
    """Hypothesis "a > b": mean per-class recall of group a minus that of group b.

    The CI resamples the examples of both groups' classes, within each class, so every class
    keeps its support and its recall stays defined. `names` labels the groups (e.g. "rigid").
    """
    labels, probs = check_labels_probs(labels, probs)
    class_names = check_class_names(class_names, probs.shape[1])
    ids_a = class_ids(group_a, class_names, "group_a")
    ids_b = class_ids(group_b, class_names, "group_b")
    if set(ids_a) & set(ids_b):
        raise ValueError(
            f"group_a and group_b must not share a class. Received: {group_a}, {group_b}"
        )
    k = len(class_names)
    chosen = np.isin(labels, ids_a + ids_b)
    empty = [class_names[c] for c in ids_a + ids_b if not np.any(labels == c)]
    if empty:
        raise ValueError(
            f"every class of both groups needs test examples. Received none for {empty}"
        )
    y = labels[chosen]
    predicted = probs.argmax(axis=1)[chosen]

    def difference(y_b: np.ndarray, p_b: np.ndarray) -> np.ndarray:
        confusion = batched_confusion(y_b, p_b, k)
        return _mean_recall(confusion, ids_a) - _mean_recall(confusion, ids_b)

    point, low, high = bootstrap_ci(
        difference, y, predicted, n_boot=n_boot, alpha=alpha, seed=seed, strata=y
    )
    confusion = batched_confusion(y[None], predicted[None], k)
    name_a, name_b = names or ("group a", "group b")
    return HypothesisResult(
        kind="group_recall",
        name=f"{name_a} > {name_b} (mean per-class recall)",
        a=name_a,
        b=name_b,
        estimate=point,
        low=low,
        high=high,
        ci_level=1 - alpha,
        n=len(y),
        n_boot=n_boot,
        verdict=verdict_from_ci(low, high),
        details={
            "recall_a": float(_mean_recall(confusion, ids_a)[0]),
            "recall_b": float(_mean_recall(confusion, ids_b)[0]),
            "classes_a": [class_names[c] for c in ids_a],
            "classes_b": [class_names[c] for c in ids_b],
        },
    )


def _pair_rates(confusion: np.ndarray) -> np.ndarray:
    """(b, k, k) counts -> (b, k, k) mutual confusion rates (C[i,j] + C[j,i]) / (n_i + n_j)."""
    support = confusion.sum(axis=2)
    mutual = confusion + np.swapaxes(confusion, 1, 2)
    both = support[:, :, None] + support[:, None, :]
    return np.divide(mutual, both, out=np.zeros(mutual.shape), where=both > 0)


def test_confusable_pair(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    a: str,
    b: str,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> HypothesisResult:
    """Hypothesis "a and b are confused more than the average pair of classes".

    The pair's mutual confusion rate is (a predicted as b + b predicted as a) / (n_a + n_b);
    the estimate is that rate minus the mean of the same rate over every other unordered pair
    of classes. The CI resamples all test examples within each class.
    """
    labels, probs = check_labels_probs(labels, probs)
    class_names = check_class_names(class_names, probs.shape[1])
    ia, ib = class_ids([a, b], class_names, "the pair")
    k = len(class_names)
    if ia == ib or k < 3:
        raise ValueError(
            f"need two different classes and at least 3 classes. Received: {a}, {b}, k={k}"
        )
    others = np.triu(np.ones((k, k), dtype=bool), 1)
    others[min(ia, ib), max(ia, ib)] = False
    predicted = probs.argmax(axis=1)

    def difference(y_b: np.ndarray, p_b: np.ndarray) -> np.ndarray:
        rates = _pair_rates(batched_confusion(y_b, p_b, k))
        return rates[:, ia, ib] - rates[:, others].mean(axis=1)

    point, low, high = bootstrap_ci(
        difference, labels, predicted, n_boot=n_boot, alpha=alpha, seed=seed, strata=labels
    )
    confusion = batched_confusion(labels[None], predicted[None], k)
    rates = _pair_rates(confusion)[0]
    return HypothesisResult(
        kind="confusable_pair",
        name=f"{a} <-> {b} confused more than the average pair",
        a=a,
        b=b,
        estimate=point,
        low=low,
        high=high,
        ci_level=1 - alpha,
        n=len(labels),
        n_boot=n_boot,
        verdict=verdict_from_ci(low, high),
        details={
            "pair_rate": float(rates[ia, ib]),
            "average_rate": float(rates[others].mean()),
            "a_as_b": int(confusion[0, ia, ib]),
            "b_as_a": int(confusion[0, ib, ia]),
            "support_a": int(confusion[0, ia].sum()),
            "support_b": int(confusion[0, ib].sum()),
        },
    )


def test_hypotheses(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    hypotheses: Hypotheses,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> list[HypothesisResult]:
    """Every registered comparison of groups, then every confusable pair, in registered order."""
    results = [
        test_group_recall(
            labels,
            probs,
            class_names,
            hypotheses.groups[a],
            hypotheses.groups[b],
            n_boot=n_boot,
            alpha=alpha,
            seed=seed,
            names=(a, b),
        )
        for a, b in hypotheses.comparisons
    ]
    results += [
        test_confusable_pair(
            labels, probs, class_names, a, b, n_boot=n_boot, alpha=alpha, seed=seed
        )
        for a, b in hypotheses.confusable_pairs
    ]
    return results


# These are library functions named after statistical tests, not pytest tests; the flag stops
# pytest from collecting them wherever a test module imports them by name.
test_group_recall.__test__ = False  # type: ignore[attr-defined]
test_confusable_pair.__test__ = False  # type: ignore[attr-defined]
test_hypotheses.__test__ = False  # type: ignore[attr-defined]
