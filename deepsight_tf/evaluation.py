"""Quantitative diagnostics from predicted probabilities: metrics, confusion, calibration, tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from deepsight_tf.hypotheses import Hypotheses

DEFAULT_BINS = 15
DEFAULT_N_BOOT = 2000
DEFAULT_ALPHA = 0.05
# Resampled index matrices are built this many elements at a time, so that 2,000 resamples of
# 10,000 examples stay near 40 MB of int64 indices instead of 160 MB.
_BOOT_CHUNK_ELEMENTS = 5_000_000
# Log of the smallest positive float64: keeps log(0) finite for probabilities that underflowed.
_TINY = np.finfo(np.float64).tiny
# log T is searched in [-4, 4] (T from 0.018 to 55): far wider than any network's miscalibration.
_LOG_T_BOUNDS = (-4.0, 4.0)

VERDICTS = ("supported", "contradicted", "inconclusive")


# Checks --------------------------------------------------------------------------------------
def _check_labels_probs(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (n, classes). Received: shape {probs.shape}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(
            f"labels must be (n,) matching probs {probs.shape}. Received: shape {labels.shape}"
        )
    if len(labels) == 0:
        raise ValueError("labels and probs must hold at least one example. Received: n=0")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids. Received: dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {probs.shape[1]}). "
            f"Received: min {labels.min()}, max {labels.max()}"
        )
    return labels.astype(np.int64), probs


def _check_class_names(class_names: Sequence[str], k: int) -> list[str]:
    if len(class_names) != k:
        raise ValueError(
            f"class_names must name the {k} columns of probs. Received: {len(class_names)} names"
        )
    return list(class_names)


def _class_ids(names: Sequence[str], class_names: Sequence[str], what: str) -> list[int]:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [n for n in names if n not in index]
    if unknown or not names:
        raise ValueError(
            f"{what} must be a non-empty list of known class names. Received: {list(names)}"
        )
    return [index[n] for n in names]


# Metrics and confusion -----------------------------------------------------------------------
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
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        f1_score,
    )

    labels, probs = _check_labels_probs(labels, probs)
    class_names = _check_class_names(class_names, probs.shape[1])
    k = len(class_names)
    ids = list(range(k))
    predicted = probs.argmax(axis=1)
    report = classification_report(
        labels, predicted, labels=ids, target_names=class_names, output_dict=True, zero_division=0
    )
    counts = confusion_matrix(labels, predicted, labels=ids)
    support = counts.sum(axis=1, keepdims=True)
    # A class absent from the test set has an all-zero row; leave it at 0 rather than 0/0.
    normalized = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    accuracy_ci = bootstrap_ci(
        _batched_mean, predicted == labels, n_boot=n_boot, alpha=alpha, seed=seed
    )
    macro_f1_ci = bootstrap_ci(
        lambda y, p: _batched_macro_f1(y, p, k),
        labels,
        predicted,
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
    )
    return {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, predicted)),
        "accuracy_ci": [accuracy_ci[1], accuracy_ci[2]],
        "macro_f1": float(
            f1_score(labels, predicted, labels=ids, average="macro", zero_division=0)
        ),
        "macro_f1_ci": [macro_f1_ci[1], macro_f1_ci[2]],
        "ci_level": 1 - alpha,
        "per_class": {
            name: {
                "precision": float(report[name]["precision"]),
                "recall": float(report[name]["recall"]),
                "f1": float(report[name]["f1-score"]),
                "support": int(report[name]["support"]),
            }
            for name in class_names
        },
        "class_names": class_names,
        "confusion": counts.astype(np.int64),
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
    labels, probs = _check_labels_probs(labels, probs)
    if k < 0:
        raise ValueError(f"k must be >= 0. Received: {k}")
    predicted = probs.argmax(axis=1)
    true_probability = probs[np.arange(len(labels)), labels]
    loss = -np.log(np.maximum(true_probability, _TINY))
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
    labels, probs = _check_labels_probs(labels, probs)
    class_names = _check_class_names(class_names, probs.shape[1])
    correct = probs.argmax(axis=1) == labels
    result = []
    for c, name in enumerate(class_names):
        hits = correct[labels == c]
        if len(hits) == 0:
            result.append(ClassRecall(name, 0.0, None, None, 0))
            continue
        point, low, high = bootstrap_ci(
            _batched_mean, hits, n_boot=n_boot, alpha=alpha, seed=seed + c
        )
        result.append(ClassRecall(name, point, low, high, len(hits)))
    return result


# Calibration ---------------------------------------------------------------------------------
@dataclass
class ReliabilityBins:
    """Reliability-diagram data: the non-empty equal-width confidence bins (lower, upper]."""

    lower: list[float]
    upper: list[float]
    confidence: list[float]  # mean top-class probability in the bin
    accuracy: list[float]  # share of the bin's examples whose top class is right
    count: list[int]
    bins: int


def _bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    if bins < 1:
        raise ValueError(f"bins must be >= 1. Received: {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are right-closed, ((m-1)/M, m/M], as in Guo et al. (2017): a confidence of exactly
    # m/M belongs to bin m. Inner edges only, so 0 falls in the first bin and 1 in the last.
    return np.searchsorted(edges[1:-1], confidence, side="left")


def reliability_bins(
    labels: np.ndarray, probs: np.ndarray, bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """Mean confidence, accuracy and count per equal-width bin of top-class probability."""
    labels, probs = _check_labels_probs(labels, probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    which = _bin_of(confidence, bins)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    correct_sum = np.bincount(which, weights=correct, minlength=bins)
    full = np.flatnonzero(count)
    return ReliabilityBins(
        lower=[m / bins for m in full.tolist()],
        upper=[(m + 1) / bins for m in full.tolist()],
        confidence=(conf_sum[full] / count[full]).tolist(),
        accuracy=(correct_sum[full] / count[full]).tolist(),
        count=count[full].tolist(),
        bins=bins,
    )


def expected_calibration_error(
    labels: np.ndarray, probs: np.ndarray, bins: int = DEFAULT_BINS
) -> float:
    """ECE = sum over bins b of (n_b / n) * |accuracy_b - confidence_b|.

    Confidence is the top-class probability; bins are `bins` equal-width intervals
    ((m-1)/M, m/M] of confidence; accuracy_b is the share of bin b whose top class is the label
    and confidence_b its mean confidence. Empty bins add nothing.
    """
    table = reliability_bins(labels, probs, bins)
    n = sum(table.count)
    gaps = np.abs(np.asarray(table.accuracy) - np.asarray(table.confidence))
    return float(np.sum(np.asarray(table.count) / n * gaps))


def negative_log_likelihood(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean -log p(true class), in nats."""
    labels, probs = _check_labels_probs(labels, probs)
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], _TINY))))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the same as dividing the logits by T, since log p = logits + const."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0. Received: {temperature}")
    probs = np.asarray(probs, dtype=np.float64)
    return np.exp(_log_softmax(np.log(np.maximum(probs, _TINY)) / temperature))


def fit_temperature(val_labels: np.ndarray, val_probs: np.ndarray) -> float:
    """The temperature T minimising the validation NLL of softmax(log p / T) (Guo et al., 2017).

    The search runs over log T (bounded Brent), which keeps T positive and treats halving and
    doubling alike. T > 1 softens over-confident probabilities; T < 1 sharpens them.
    """
    from scipy.optimize import minimize_scalar

    labels, probs = _check_labels_probs(val_labels, val_probs)
    log_p = np.log(np.maximum(probs, _TINY))
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-np.mean(_log_softmax(log_p / math.exp(log_t))[rows, labels]))

    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded")
    return float(math.exp(result.x))


@dataclass
class CalibrationReport:
    """Temperature fitted on validation; ECE, NLL and reliability on test before and after."""

    temperature: float
    bins: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    reliability_before: ReliabilityBins
    reliability_after: ReliabilityBins
    n_val: int
    n_test: int


def calibration_report(
    val_labels: np.ndarray,
    val_probs: np.ndarray,
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    bins: int = DEFAULT_BINS,
) -> CalibrationReport:
    """Fit T on validation, apply it to test and measure both; test never informs T."""
    temperature = fit_temperature(val_labels, val_probs)
    scaled = apply_temperature(test_probs, temperature)
    return CalibrationReport(
        temperature=temperature,
        bins=bins,
        ece_before=expected_calibration_error(test_labels, test_probs, bins),
        ece_after=expected_calibration_error(test_labels, scaled, bins),
        nll_before=negative_log_likelihood(test_labels, test_probs),
        nll_after=negative_log_likelihood(test_labels, scaled),
        reliability_before=reliability_bins(test_labels, test_probs, bins),
        reliability_after=reliability_bins(test_labels, scaled, bins),
        n_val=len(val_labels),
        n_test=len(test_labels),
    )


# Bootstrap -----------------------------------------------------------------------------------
def _resample_chunks(
    n: int, n_boot: int, rng: np.random.Generator, strata: np.ndarray | None
) -> Any:
    """Yield (chunk, n) index matrices; with strata, each stratum is resampled within itself."""
    per_chunk = max(1, _BOOT_CHUNK_ELEMENTS // max(n, 1))
    groups = None
    if strata is not None:
        groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    done = 0
    while done < n_boot:
        b = min(per_chunk, n_boot - done)
        if groups is None:
            yield rng.integers(0, n, size=(b, n))
        else:
            yield np.concatenate(
                [g[rng.integers(0, len(g), size=(b, len(g)))] for g in groups], axis=1
            )
        done += b


def bootstrap_ci(
    stat_fn: Callable[..., Any],
    *arrays: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    strata: np.ndarray | None = None,
    vectorized: bool = True,
) -> tuple[float, float, float]:
    """Percentile bootstrap: (statistic on the data, alpha/2 quantile, 1 - alpha/2 quantile).

    Examples (the first axis of every array, resampled together) are drawn with replacement
    `n_boot` times; with `strata`, each stratum is resampled within itself so its size stays
    fixed (per-group or per-class statistics stay defined in every resample).
    With `vectorized`, `stat_fn` takes arrays with a leading resample axis, (b, n, ...), and
    returns (b,) values; it is called on (1, n, ...) for the point estimate. Otherwise it takes
    (n, ...) arrays and returns a float, once per resample.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array. Received: none")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(
            "arrays must be non-empty and share their first axis. "
            f"Received: lengths {[len(a) for a in arrays]}"
        )
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1. Received: {n_boot}, {alpha}")
    if strata is not None:
        strata = np.asarray(strata)
        if strata.shape != (n,):
            raise ValueError(f"strata must be ({n},). Received: shape {strata.shape}")
    rng = np.random.default_rng(seed)
    if vectorized:
        point = float(np.asarray(stat_fn(*(a[None] for a in arrays))).reshape(-1)[0])
        stats = np.concatenate(
            [
                np.asarray(stat_fn(*(a[idx] for a in arrays)), dtype=np.float64).reshape(-1)
                for idx in _resample_chunks(n, n_boot, rng, strata)
            ]
        )
    else:
        point = float(stat_fn(*arrays))
        stats = np.array(
            [
                float(stat_fn(*(a[row] for a in arrays)))
                for idx in _resample_chunks(n, n_boot, rng, strata)
                for row in idx
            ]
        )
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return point, float(low), float(high)


def _batched_mean(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=-1)


def _batched_confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """(b, n) labels and predictions -> (b, k, k) confusion counts, one bincount for all."""
    b = labels.shape[0]
    cells = np.arange(b)[:, None] * (k * k) + labels * k + predicted
    return np.bincount(cells.ravel(), minlength=b * k * k).reshape(b, k, k)


def _batched_macro_f1(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 per resample, with sklearn's zero_division=0 (F1 = 2TP / (2TP + FP + FN))."""
    confusion = _batched_confusion(labels, predicted, k)
    tp = np.diagonal(confusion, axis1=1, axis2=2).astype(np.float64)
    denominator = confusion.sum(axis=1) + confusion.sum(axis=2)  # (TP+FN) + (TP+FP)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(axis=1)


# Leakage -------------------------------------------------------------------------------------
def subset_accuracy_gap(
    labels: np.ndarray,
    probs: np.ndarray,
    mask: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy of the examples in `mask` (e.g. test images with a near duplicate in train)
    against the rest, each with a CI, and the gap (in mask minus rest) with a CI from a
    bootstrap stratified by group. An empty group has n=0 and no accuracy, gap or CI."""
    labels, probs = _check_labels_probs(labels, probs)
    mask = np.asarray(mask)
    if mask.shape != labels.shape or mask.dtype != bool:
        raise ValueError(
            f"mask must be a boolean array of shape {labels.shape}. "
            f"Received: {mask.dtype} {mask.shape}"
        )
    correct = probs.argmax(axis=1) == labels

    def group(hits: np.ndarray, offset: int) -> dict[str, Any]:
        if len(hits) == 0:
            return {"n": 0, "accuracy": None, "ci": None}
        point, low, high = bootstrap_ci(
            _batched_mean, hits, n_boot=n_boot, alpha=alpha, seed=seed + offset
        )
        return {"n": len(hits), "accuracy": point, "ci": [low, high]}

    result = {
        "in_mask": group(correct[mask], 1),
        "rest": group(correct[~mask], 2),
        "gap": None,
        "gap_ci": None,
        "ci_level": 1 - alpha,
    }
    if mask.any() and (~mask).any():

        def gap(hits: np.ndarray, in_mask: np.ndarray) -> np.ndarray:
            # Strata keep each group's size fixed, so these sums are never over zero examples.
            inside = (hits * in_mask).sum(axis=-1) / in_mask.sum(axis=-1)
            outside = (hits * ~in_mask).sum(axis=-1) / (~in_mask).sum(axis=-1)
            return inside - outside

        point, low, high = bootstrap_ci(
            gap, correct, mask, n_boot=n_boot, alpha=alpha, seed=seed, strata=mask
        )
        result["gap"] = point
        result["gap_ci"] = [low, high]
    return result


# Hypothesis tests ----------------------------------------------------------------------------
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


def verdict_from_ci(low: float, high: float) -> str:
    """'supported' when the CI lies above 0, 'contradicted' below it, else 'inconclusive'."""
    if low > 0:
        return "supported"
    if high < 0:
        return "contradicted"
    return "inconclusive"


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
    labels, probs = _check_labels_probs(labels, probs)
    class_names = _check_class_names(class_names, probs.shape[1])
    ids_a = _class_ids(group_a, class_names, "group_a")
    ids_b = _class_ids(group_b, class_names, "group_b")
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
        confusion = _batched_confusion(y_b, p_b, k)
        return _mean_recall(confusion, ids_a) - _mean_recall(confusion, ids_b)

    point, low, high = bootstrap_ci(
        difference, y, predicted, n_boot=n_boot, alpha=alpha, seed=seed, strata=y
    )
    confusion = _batched_confusion(y[None], predicted[None], k)
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
    labels, probs = _check_labels_probs(labels, probs)
    class_names = _check_class_names(class_names, probs.shape[1])
    ia, ib = _class_ids([a, b], class_names, "the pair")
    k = len(class_names)
    if ia == ib or k < 3:
        raise ValueError(
            f"need two different classes and at least 3 classes. Received: {a}, {b}, k={k}"
        )
    others = np.triu(np.ones((k, k), dtype=bool), 1)
    others[min(ia, ib), max(ia, ib)] = False
    predicted = probs.argmax(axis=1)

    def difference(y_b: np.ndarray, p_b: np.ndarray) -> np.ndarray:
        rates = _pair_rates(_batched_confusion(y_b, p_b, k))
        return rates[:, ia, ib] - rates[:, others].mean(axis=1)

    point, low, high = bootstrap_ci(
        difference, labels, predicted, n_boot=n_boot, alpha=alpha, seed=seed, strata=labels
    )
    confusion = _batched_confusion(labels[None], predicted[None], k)
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
