"""Percentile bootstrap intervals, vectorised over resamples, and verdicts read off them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from deepsight_tf.core.settings import DEFAULT_ALPHA, DEFAULT_N_BOOT

# Resampled index matrices are built this many elements at a time, so that 2,000 resamples of
# 10,000 examples stay near 40 MB of int64 indices instead of 160 MB.
_BOOT_CHUNK_ELEMENTS = 5_000_000


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


def batched_mean(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=-1)


def batched_confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """(b, n) labels and predictions -> (b, k, k) confusion counts, one bincount for all."""
    b = labels.shape[0]
    cells = np.arange(b)[:, None] * (k * k) + labels * k + predicted
    return np.bincount(cells.ravel(), minlength=b * k * k).reshape(b, k, k)


def batched_macro_f1(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 per resample, with sklearn's zero_division=0 (F1 = 2TP / (2TP + FP + FN))."""
    confusion = batched_confusion(labels, predicted, k)
    tp = np.diagonal(confusion, axis1=1, axis2=2).astype(np.float64)
    denominator = confusion.sum(axis=1) + confusion.sum(axis=2)  # (TP+FN) + (TP+FP)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(axis=1)


def verdict_from_ci(low: float, high: float) -> str:
    """'supported' when the CI lies above 0, 'contradicted' below it, else 'inconclusive'."""
    if low > 0:
        return "supported"
    if high < 0:
        return "contradicted"
    return "inconclusive"
