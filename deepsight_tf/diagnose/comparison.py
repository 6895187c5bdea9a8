"""Paired comparison of runs scored on the same test images: differences in accuracy,
macro-F1, per-class recall and confusable-pair confusion, each with a paired bootstrap
interval. An experiment judges each arm against the run-to-run noise of the baseline's seeds
(compare_arms); the report's comparison page puts one run against another (compare_runs).

Paired: every resample draws the same test images for both runs, so the interval is of the
difference itself (much narrower than two separate intervals when the runs agree on most
images).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.manifest import DATA_INPUT
from deepsight_tf.core.settings import DEFAULT_ALPHA, DEFAULT_N_BOOT
from deepsight_tf.diagnose.bootstrap import batched_macro_f1, bootstrap_ci, verdict_from_ci
from deepsight_tf.training.metrics import macro_f1
from deepsight_tf.training.record import RunRecord

TOP_CHANGES = 8  # confusion cells listed as got better / got worse
# Run against run: verdicts from the interval of B - A (verdict_from_ci's words, renamed).
CHANGE_WORDS = {"supported": "better", "contradicted": "worse", "inconclusive": "no clear change"}


def pair_confusion(labels: np.ndarray, predicted: np.ndarray, a: int, b: int) -> np.ndarray:
    """Over (..., n) arrays: of the images labelled a or b, the share predicted as the other."""
    in_pair = (labels == a) | (labels == b)
    swapped = ((labels == a) & (predicted == b)) | ((labels == b) & (predicted == a))
    total = in_pair.sum(axis=-1)
    return np.divide(swapped.sum(axis=-1), total, out=np.zeros(total.shape), where=total > 0)


def _recall(labels: np.ndarray, predicted: np.ndarray, c: int) -> np.ndarray:
    of_class = labels == c
    total = of_class.sum(axis=-1)
    hits = (of_class & (predicted == c)).sum(axis=-1)
    return np.divide(hits, total, out=np.zeros(total.shape), where=total > 0)


def metric_functions(
    k: int, pairs: Sequence[tuple[int, int]]
) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Every compared metric by name, each a function of (..., n) labels and predictions
    returning (...) values: accuracy, macro_f1, recall:<class>, pair:<a>:<b> (confusion)."""
    out: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "accuracy": lambda y, p: (y == p).mean(axis=-1),
        "macro_f1": lambda y, p: batched_macro_f1(y, p, k),
    }
    for c in range(k):
        out[f"recall:{c}"] = functools.partial(_recall, c=c)
    for a, b in pairs:
        out[f"pair:{a}:{b}"] = functools.partial(pair_confusion, a=a, b=b)
    return out


def metrics(labels: np.ndarray, predicted: np.ndarray, k: int, pairs: Sequence[tuple[int, int]]):
    """Every compared metric of (b, n) arrays as (b,) arrays, by name."""
    return {name: fn(labels, predicted) for name, fn in metric_functions(k, pairs).items()}


def paired_differences(
    labels: np.ndarray,
    base: np.ndarray,
    other: np.ndarray,
    k: int,
    pairs: Sequence[tuple[int, int]],
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """(other - base, low, high) for every metric, from one paired bootstrap of the images:
    every metric sees the same resamples (one seed), so their intervals are of one experiment."""
    out = {}
    for name, fn in metric_functions(k, pairs).items():

        def difference(y: np.ndarray, p0: np.ndarray, p1: np.ndarray, fn=fn) -> np.ndarray:
            return fn(y, p1) - fn(y, p0)

        out[name] = bootstrap_ci(
            difference, labels, base, other, n_boot=n_boot, alpha=alpha, seed=seed
        )
    return out


def verdict(low: float, high: float, point: float, noise: float, better: str = "higher") -> str:
    """helps / hurts when the paired interval excludes 0 and the change is larger than the
    baseline's own seed-to-seed change (noise); else inconclusive."""
    if better == "lower":  # a confusion rate: a drop is the improvement
        low, high, point = -high, -low, -point
    if low > 0 and point > noise:
        return "helps"
    if high < 0 and point < -noise:
        return "hurts"
    return "inconclusive"


@dataclass(frozen=True)
class Change:
    """An arm's change on one metric against the baseline, its paired interval, the verdict."""

    change: float
    ci: list[float]
    verdict: str  # helps | hurts | inconclusive


@dataclass(frozen=True)
class ArmChange:
    """One arm (or one baseline seed) against the baseline, metric by metric."""

    accuracy: Change
    macro_f1: Change
    verdict: str  # macro-F1's: the arm's verdict
    recall: dict[str, Change]  # class -> change in its recall
    pairs: dict[str, Change] = field(default_factory=dict)  # "a/b" -> change in confusion


@dataclass(frozen=True)
class SeedNoise:
    """The largest change the baseline's reruns with other seeds show: what a verdict beats."""

    seeds: int
    macro_f1: float
    accuracy: float
    runs: list[ArmChange] = field(default_factory=list)


@dataclass(frozen=True)
class ArmComparison:
    n: int  # test images
    ci_level: float
    noise: SeedNoise
    arms: dict[str, ArmChange]


def compare_arms(
    labels: np.ndarray,
    baseline: np.ndarray,
    arms: Mapping[str, np.ndarray],
    seeds: Sequence[np.ndarray],
    class_names: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> ArmComparison:
    """Each arm against the baseline, from predicted classes on the same test images.

    `seeds` are the baseline's reruns with other seeds: the largest change any of them shows
    on a metric is that metric's noise, which an arm's change must exceed to count.
    """
    k = len(class_names)
    index = {name: i for i, name in enumerate(class_names)}
    pair_ids = [(index[a], index[b]) for a, b in pairs if a in index and b in index]
    noise_runs = [
        paired_differences(labels, baseline, other, k, pair_ids, n_boot, alpha, seed)
        for other in seeds
    ]
    noise = {
        name: max((abs(run[name][0]) for run in noise_runs), default=0.0)
        for name in metrics(labels[None], baseline[None], k, pair_ids)
    }
    changes: dict[str, ArmChange] = {}
    for offset, (name, predicted) in enumerate(arms.items(), start=1):
        diffs = paired_differences(
            labels, baseline, predicted, k, pair_ids, n_boot, alpha, seed + 100 * offset
        )
        changes[name] = _summary(diffs, noise, class_names, pairs, pair_ids)
    return ArmComparison(
        n=len(labels),
        ci_level=1 - alpha,
        noise=SeedNoise(
            seeds=len(seeds),
            macro_f1=float(noise["macro_f1"]),
            accuracy=float(noise["accuracy"]),
            runs=[_summary(run, noise, class_names, pairs, pair_ids) for run in noise_runs],
        ),
        arms=changes,
    )


def _summary(
    diffs: Mapping[str, tuple[float, float, float]],
    noise: Mapping[str, float],
    class_names: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    pair_ids: Sequence[tuple[int, int]],
) -> ArmChange:
    def entry(key: str, better: str = "higher") -> Change:
        point, low, high = diffs[key]
        verdict_ = verdict(low, high, point, noise[key], better)
        return Change(float(point), [float(low), float(high)], verdict_)

    named_pairs = [p for p in pairs if p[0] in class_names and p[1] in class_names]
    f1 = entry("macro_f1")
    return ArmChange(
        accuracy=entry("accuracy"),
        macro_f1=f1,
        verdict=f1.verdict,
        recall={name: entry(f"recall:{c}") for c, name in enumerate(class_names)},
        pairs={
            f"{a}/{b}": entry(f"pair:{ia}:{ib}", better="lower")
            for (a, b), (ia, ib) in zip(named_pairs, pair_ids, strict=True)
        },
    )


# --- one run against another (the report's comparison page) ---------------------------------


@dataclass
class Delta:
    """B - A for one metric, with a paired bootstrap interval when both scored the same images."""

    name: str
    a: float
    b: float
    delta: float
    low: float | None
    high: float | None
    verdict: str  # better, worse, no clear change, or "not paired"


@dataclass
class ConfusionChange:
    """One off-diagonal cell of the confusion matrix in both runs (counts of test images)."""

    true: str
    predicted: str
    a: int
    b: int
    delta: int


@dataclass
class RunComparison:
    """Run B against run A on the test set."""

    a: str
    b: str
    paired: bool
    pairing: str  # why the intervals are paired, or why they are not
    n: int
    accuracy: Delta
    macro_f1: Delta
    recall: list[Delta]
    worse: list[ConfusionChange]  # cells that grew, largest first
    better: list[ConfusionChange]  # cells that shrank, largest first
    ci_level: float
    duration_a: float | None
    duration_b: float | None


def _change(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "not paired"
    return CHANGE_WORDS[verdict_from_ci(low, high)]


def compare_predictions(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    class_names: Sequence[str],
    *,
    paired: bool = True,
    labels_b: np.ndarray | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> dict[str, Any]:
    """B - A in accuracy, macro-F1 and each class's recall, and the confusion cells that moved.

    With `paired` both runs scored the same test images (in the same order): the intervals come
    from resampling those images once for both runs (a paired bootstrap), which removes the
    variation the two share. Otherwise (`labels_b` gives B's labels) only the differences of the
    point estimates are given.
    """
    from sklearn.metrics import confusion_matrix

    labels_a = np.asarray(labels)
    labels_b = labels_a if labels_b is None else np.asarray(labels_b)
    if paired and not np.array_equal(labels_a, labels_b):
        raise ValueError("paired comparison needs the same test labels in the same order")
    k, ids = len(class_names), list(range(len(class_names)))
    pred_a, pred_b = np.asarray(probs_a).argmax(1), np.asarray(probs_b).argmax(1)
    hits_a, hits_b = pred_a == labels_a, pred_b == labels_b
    cis = paired_differences(labels_a, pred_a, pred_b, k, (), n_boot, alpha, seed) if paired else {}

    def delta(name: str, a: float, b: float, ci: tuple[float, float, float] | None) -> Delta:
        low, high = (ci[1], ci[2]) if ci is not None else (None, None)
        return Delta(name, a, b, b - a, low, high, _change(low, high))

    accuracy_a, accuracy_b = float(hits_a.mean()), float(hits_b.mean())
    f1_a, f1_b = macro_f1(labels_a, pred_a, k), macro_f1(labels_b, pred_b, k)
    recall = []
    for c, name in enumerate(class_names):
        in_a, in_b = labels_a == c, labels_b == c
        if not in_a.any() or not in_b.any():
            continue
        a, b = float(hits_a[in_a].mean()), float(hits_b[in_b].mean())
        recall.append(delta(name, a, b, cis.get(f"recall:{c}")))
    conf_a = confusion_matrix(labels_a, pred_a, labels=ids)
    conf_b = confusion_matrix(labels_b, pred_b, labels=ids)
    cells = [
        ConfusionChange(class_names[i], class_names[j], int(conf_a[i, j]), int(conf_b[i, j]), d)
        for (i, j), d in np.ndenumerate(conf_b - conf_a)
        if i != j and d != 0
    ]
    return {
        "n": len(labels_a),
        "accuracy": delta("accuracy", accuracy_a, accuracy_b, cis.get("accuracy")),
        "macro_f1": delta("macro-F1", f1_a, f1_b, cis.get("macro_f1")),
        "recall": recall,
        "worse": sorted((c for c in cells if c.delta > 0), key=lambda c: -c.delta)[:TOP_CHANGES],
        "better": sorted((c for c in cells if c.delta < 0), key=lambda c: c.delta)[:TOP_CHANGES],
        "ci_level": 1 - alpha,
    }


def same_test_set(
    a: RunRecord,
    predictions_a: Mapping[str, np.ndarray],
    b: RunRecord,
    predictions_b: Mapping[str, np.ndarray],
) -> tuple[bool, str]:
    """Whether a paired comparison is valid: the same stored data set and the same test images."""
    sha_a = a.manifest.inputs.get(DATA_INPUT, {}).get("sha256")
    sha_b = b.manifest.inputs.get(DATA_INPUT, {}).get("sha256")
    if a.class_names != b.class_names:
        return False, "the runs have different classes"
    if sha_a is None or sha_a != sha_b:
        return False, "the runs were trained on different copies of the data set"
    for key in ("test_indices", "test_labels"):
        if not np.array_equal(predictions_a[key], predictions_b[key]):
            return False, "the runs scored different test images"
    n = len(predictions_a["test_labels"])
    return True, f"paired bootstrap over the {n:,} test images both runs scored"


def compare_runs(
    a: RunRecord,
    predictions_a: Mapping[str, np.ndarray],
    b: RunRecord,
    predictions_b: Mapping[str, np.ndarray],
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> RunComparison:
    """Run b against run a on their stored test predictions: paired intervals when both scored
    the same images of the same data set, differences without intervals otherwise."""
    if a.class_names != b.class_names:
        raise ConfigError(
            f"runs {a.run_id} and {b.run_id} have different classes; compare runs of one data set"
        )
    paired, why = same_test_set(a, predictions_a, b, predictions_b)
    found = compare_predictions(
        predictions_a["test_labels"],
        predictions_a["test_probs"],
        predictions_b["test_probs"],
        a.class_names,
        paired=paired,
        labels_b=predictions_b["test_labels"],
        n_boot=n_boot,
        seed=seed,
    )
    return RunComparison(
        a=a.run_id,
        b=b.run_id,
        paired=paired,
        pairing=why if paired else f"not paired: {why}; differences without intervals",
        duration_a=a.metrics.duration_s,
        duration_b=b.metrics.duration_s,
        **found,
    )
