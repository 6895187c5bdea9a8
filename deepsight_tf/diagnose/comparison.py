"""Paired comparison of runs scored on the same test images: differences in accuracy,
macro-F1, per-class recall and confusable-pair confusion, each with a paired bootstrap
interval, and a verdict judged against the run-to-run noise of the baseline's seeds.

Paired: every resample draws the same test images for both runs, so the interval is of the
difference itself (much narrower than two separate intervals when the runs agree on most
images).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from deepsight_tf.core.settings import DEFAULT_ALPHA, DEFAULT_N_BOOT
from deepsight_tf.diagnose.bootstrap import (
    batched_macro_f1,
    bootstrap_ci,
)


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
) -> dict[str, Any]:
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
    result: dict[str, Any] = {
        "n": len(labels),
        "ci_level": 1 - alpha,
        "noise": {
            "seeds": len(seeds),
            "macro_f1": noise["macro_f1"],
            "accuracy": noise["accuracy"],
            "runs": [_summary(run, noise, class_names, pairs, pair_ids) for run in noise_runs],
        },
        "arms": {},
    }
    for offset, (name, predicted) in enumerate(arms.items(), start=1):
        diffs = paired_differences(
            labels, baseline, predicted, k, pair_ids, n_boot, alpha, seed + 100 * offset
        )
        result["arms"][name] = _summary(diffs, noise, class_names, pairs, pair_ids)
    return result


def _summary(
    diffs: Mapping[str, tuple[float, float, float]],
    noise: Mapping[str, float],
    class_names: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    pair_ids: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    def entry(key: str, better: str = "higher") -> dict[str, Any]:
        point, low, high = diffs[key]
        return {
            "change": point,
            "ci": [low, high],
            "verdict": verdict(low, high, point, noise[key], better),
        }

    named_pairs = [p for p in pairs if p[0] in class_names and p[1] in class_names]
    return {
        "accuracy": entry("accuracy"),
        "macro_f1": entry("macro_f1"),
        "verdict": entry("macro_f1")["verdict"],
        "recall": {name: entry(f"recall:{c}") for c, name in enumerate(class_names)},
        "pairs": {
            f"{a}/{b}": entry(f"pair:{ia}:{ib}", better="lower")
            for (a, b), (ia, ib) in zip(named_pairs, pair_ids, strict=True)
        },
    }
