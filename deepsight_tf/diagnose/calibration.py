"""Calibration: reliability bins, expected calibration error, temperature scaling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deepsight_tf.diagnose.checks import check_labels_probs

DEFAULT_BINS = 15
# Log of the smallest positive float64: keeps log(0) finite for probabilities that underflowed.
TINY = np.finfo(np.float64).tiny
# log T is searched in [-4, 4] (T from 0.018 to 55): far wider than any network's miscalibration.
_LOG_T_BOUNDS = (-4.0, 4.0)


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
    labels, probs = check_labels_probs(labels, probs)
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
    labels, probs = check_labels_probs(labels, probs)
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], TINY))))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the same as dividing the logits by T, since log p = logits + const."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0. Received: {temperature}")
    probs = np.asarray(probs, dtype=np.float64)
    return np.exp(_log_softmax(np.log(np.maximum(probs, TINY)) / temperature))


def fit_temperature(val_labels: np.ndarray, val_probs: np.ndarray) -> float:
    """The temperature T minimising the validation NLL of softmax(log p / T) (Guo et al., 2017).

    The search runs over log T (bounded Brent), which keeps T positive and treats halving and
    doubling alike. T > 1 softens over-confident probabilities; T < 1 sharpens them.
    """
    from scipy.optimize import minimize_scalar

    labels, probs = check_labels_probs(val_labels, val_probs)
    log_p = np.log(np.maximum(probs, TINY))
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
