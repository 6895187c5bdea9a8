"""Error attribution on planted probabilities: every planted cause is counted exactly, the
shares and intervals are consistent, and the claim's verdict follows the interval."""

from __future__ import annotations

import numpy as np
import pytest

from deepsight_tf.diagnose.attribution import Claim, attribute_errors, pair_mask

NAMES = ["cat", "dog", "ship", "truck"]
PAIRS = [("cat", "dog")]


def planted(n_pair: int, n_quality: int, n_twin: int, n_other: int, n_right: int, seed: int = 0):
    """Labels, one-hot-ish probabilities and the image causes of a test set made of
    n_pair cat<->dog errors, n_quality ship->truck errors on low-quality images, n_twin
    truck->ship errors on images with a conflicting train twin, n_other errors with no
    cause (ship->cat) and n_right correct images (some of them low quality)."""
    labels, predicted = [], []
    for _ in range(n_pair // 2):
        labels += [0, 1]
        predicted += [1, 0]
    labels += [2] * n_quality + [3] * n_twin + [2] * n_other + [3] * n_right
    predicted += [3] * n_quality + [2] * n_twin + [0] * n_other + [3] * n_right
    labels, predicted = np.array(labels), np.array(predicted)
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0, 0.1, (len(labels), len(NAMES)))
    probs[np.arange(len(labels)), predicted] = 1.0
    probs /= probs.sum(axis=1, keepdims=True)
    start = n_pair
    quality = np.arange(start, start + n_quality)
    twins = np.arange(start + n_quality, start + n_quality + n_twin)
    correct_low_quality = np.arange(len(labels) - 5, len(labels))  # right despite it
    causes = {
        "conflicting_twin": twins,
        "low_quality": np.concatenate([quality, correct_low_quality]),
        "label_issue": np.zeros(0, dtype=int),
    }
    return labels, probs, causes


def rows_by_cause(result):
    return {row.cause: row for row in result.rows}


def test_every_planted_cause_is_counted_and_the_rates_are_exact() -> None:
    labels, probs, causes = planted(n_pair=40, n_quality=6, n_twin=4, n_other=10, n_right=140)
    result = attribute_errors(labels, probs, NAMES, causes, PAIRS, n_boot=500)
    rows = rows_by_cause(result)
    assert result.errors == 60
    assert [rows[c].errors for c in ("confusable_pair", "low_quality", "conflicting_twin")] == [
        40,
        6,
        4,
    ]
    assert rows["none of these"].errors == 10
    assert rows["label_issue"].errors == 0
    assert rows["confusable_pair"].share == pytest.approx(40 / 60)
    # 11 low-quality images, 6 of them wrong; 54 wrong among the other 189.
    assert rows["low_quality"].images == 11
    assert rows["low_quality"].error_rate_with == pytest.approx(6 / 11)
    assert rows["low_quality"].error_rate_without == pytest.approx(54 / 189)
    assert not rows["independent_label_issue"].measured  # not planted: said, not zero
    for row in filter(lambda row: row.measured, result.rows):
        low, high = row.share_ci
        assert low <= row.share <= high


def test_the_claim_is_supported_contradicted_or_inconclusive_by_its_interval() -> None:
    def claim(*counts: int) -> Claim:
        labels, probs, causes = planted(*counts)
        return attribute_errors(labels, probs, NAMES, causes, PAIRS, n_boot=500).claim

    semantic = claim(60, 5, 5, 5, 100)
    assert semantic.verdict == "supported"
    assert semantic.difference == pytest.approx(60 / 75 - 10 / 75)
    data = claim(6, 40, 30, 5, 100)
    assert data.verdict == "contradicted"
    even = claim(10, 5, 5, 10, 100)
    assert even.difference == pytest.approx(0.0)
    assert even.verdict == "inconclusive"


def test_unmeasured_causes_are_said_and_the_claim_needs_both_sides() -> None:
    labels, probs, _ = planted(10, 2, 2, 2, 20)
    result = attribute_errors(labels, probs, NAMES, {}, [], n_boot=200)
    rows = rows_by_cause(result)
    assert not rows["low_quality"].measured and not rows["confusable_pair"].measured
    assert rows["none of these"].errors == result.errors
    assert result.claim.verdict == "not tested"


def test_pair_mask_counts_both_directions_and_only_errors() -> None:
    labels = np.array([0, 1, 0, 2, 1])
    predicted = np.array([1, 0, 0, 1, 1])
    assert pair_mask(labels, predicted, NAMES, PAIRS).tolist() == [True, True, False, False, False]


def test_label_issues_from_the_model_itself_do_not_decide_the_claim() -> None:
    """Every error flagged as a label issue (as cleanlab on the same probabilities does):
    the table shows it, but the claim weighs only evidence from outside the model."""
    labels, probs, causes = planted(60, 5, 5, 5, 100)
    causes["label_issue"] = np.flatnonzero(probs.argmax(axis=1) != labels)
    result = attribute_errors(labels, probs, NAMES, causes, PAIRS, n_boot=500)
    assert rows_by_cause(result)["label_issue"].share == pytest.approx(1.0)
    claim = result.claim
    assert claim.data_quality_causes == ["conflicting_twin", "low_quality"]
    assert claim.data_quality_share == pytest.approx(10 / 75)
    assert claim.verdict == "supported"


def test_labels_doubted_by_an_independent_model_count_as_data_quality() -> None:
    """Planted: 8 of the pair errors and 4 of the causeless errors have a label the ImageNet
    probes doubt. The row counts them, the claim's data-quality side takes them in, and the
    errors on both sides are reported."""
    labels, probs, causes = planted(40, 6, 4, 10, 140)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    pair_errors, causeless = wrong[:40], wrong[50:60]
    causes["independent_label_issue"] = np.concatenate([pair_errors[:8], causeless[:4], [199]])
    result = attribute_errors(labels, probs, NAMES, causes, PAIRS, n_boot=500)
    row = rows_by_cause(result)["independent_label_issue"]
    assert row.errors == 12 and row.images == 13
    assert row.error_rate_with == pytest.approx(12 / 13)
    claim = result.claim
    assert claim.data_quality_causes == [
        "conflicting_twin",
        "low_quality",
        "independent_label_issue",
    ]
    assert claim.data_quality_share == pytest.approx((6 + 4 + 12) / 60)
    assert claim.both_share == pytest.approx(8 / 60)
    assert claim.difference == pytest.approx(40 / 60 - 22 / 60)
    assert rows_by_cause(result)["none of these"].errors == 10 - 4


def test_the_probes_doubts_bound_data_quality_and_the_verdict_needs_both_bounds() -> None:
    """Planted as the 90.94% CIFAR-10 run showed it: a third of the errors in a confusable pair,
    almost no certain data-quality cause, and the probes doubting half of the errors. With
    the doubts counted data quality wins; without them semantic overlap does; so the claim is
    inconclusive, and says why. With the doubts on few errors it is supported again."""
    labels, probs, causes = planted(n_pair=20, n_quality=1, n_twin=1, n_other=38, n_right=140)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    pair_errors, causeless = wrong[:20], wrong[22:60]
    causes["independent_label_issue"] = np.concatenate([pair_errors[:4], causeless[:26]])
    claim = attribute_errors(labels, probs, NAMES, causes, PAIRS, n_boot=500).claim
    assert claim.certain_causes == ["conflicting_twin", "low_quality"]
    assert claim.certain_share == pytest.approx(2 / 60)
    assert claim.data_quality_share == pytest.approx((2 + 30) / 60)
    assert claim.certain_difference == pytest.approx(20 / 60 - 2 / 60)
    assert claim.certain_difference_ci[0] > 0 > claim.difference_ci[0]
    assert claim.verdict == "inconclusive" and "probes' doubts" in claim.why

    causes["independent_label_issue"] = causeless[:2]
    claim = attribute_errors(labels, probs, NAMES, causes, PAIRS, n_boot=500).claim
    assert claim.verdict == "supported" and claim.why is None
