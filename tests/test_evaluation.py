"""Tests of evaluation.py (against scikit-learn and hand-computed values) and its figures."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
)

from deepsight_tf.data.hypotheses import Hypotheses
from deepsight_tf.diagnose import bootstrap as bs
from deepsight_tf.diagnose import calibration as cal
from deepsight_tf.diagnose import evaluation as ev
from deepsight_tf.diagnose import hypothesis_tests as ht
from deepsight_tf.plots import evaluation as figs
from deepsight_tf.plots import save_figure

NAMES = ["cat", "dog", "ship", "truck"]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def noisy_predictions(n: int, k: int, strength: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += strength
    return labels, softmax(logits)


def planted(recall: dict[int, float], per_class: int, k: int, wrong_to=None) -> tuple:
    """Probabilities where class c is right on exactly round(recall[c] * per_class) examples;
    the wrong ones go to `wrong_to[c]` (default: the next class)."""
    labels, predicted = [], []
    for c, r in recall.items():
        hits = round(r * per_class)
        target = (c + 1) % k if wrong_to is None else wrong_to[c]
        labels += [c] * per_class
        predicted += [c] * hits + [target] * (per_class - hits)
    labels, predicted = np.array(labels), np.array(predicted)
    probs = np.full((len(labels), k), 0.1 / (k - 1))
    probs[np.arange(len(labels)), predicted] = 0.9
    return labels, probs


# Metrics and confusion -----------------------------------------------------------------------
def test_classification_summary_equals_sklearn() -> None:
    labels, probs = noisy_predictions(600, 4, 1.5, seed=1)
    predicted = probs.argmax(axis=1)
    summary = ev.classification_summary(labels, probs, NAMES, n_boot=200)
    report = classification_report(labels, predicted, target_names=NAMES, output_dict=True)
    assert summary["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert summary["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    for name in NAMES:
        row = summary["per_class"][name]
        assert row["precision"] == pytest.approx(report[name]["precision"])
        assert row["recall"] == pytest.approx(report[name]["recall"])
        assert row["f1"] == pytest.approx(report[name]["f1-score"])
        assert row["support"] == report[name]["support"]
    np.testing.assert_array_equal(summary["confusion"], confusion_matrix(labels, predicted))
    np.testing.assert_allclose(
        summary["confusion_normalized"], confusion_matrix(labels, predicted, normalize="true")
    )
    low, high = summary["accuracy_ci"]
    assert low < summary["accuracy"] < high and high - low < 0.12
    low, high = summary["macro_f1_ci"]
    assert low < summary["macro_f1"] < high


def test_batched_macro_f1_equals_sklearn_with_absent_classes() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (5, 40))  # class 3 never true
    predicted = rng.integers(0, 5, (5, 40))  # class 4 never true, sometimes predicted
    expected = [
        f1_score(y, p, labels=range(5), average="macro", zero_division=0)
        for y, p in zip(labels, predicted, strict=True)
    ]
    np.testing.assert_allclose(bs.batched_macro_f1(labels, predicted, 5), expected)


def test_most_confused_ranks_off_diagonal_cells() -> None:
    confusion = np.array([[50, 7, 0, 3], [9, 40, 1, 0], [0, 2, 60, 0], [3, 0, 5, 44]])
    ranked = ev.most_confused(confusion, NAMES, top=3)
    assert [(p.true, p.predicted, p.count) for p in ranked] == [
        ("dog", "cat", 9),
        ("cat", "dog", 7),
        ("truck", "ship", 5),
    ]
    assert ranked[0].rate == pytest.approx(9 / 50)
    everything = ev.most_confused(confusion, NAMES, top=100)
    assert len(everything) == np.count_nonzero(confusion - np.diag(np.diag(confusion)))
    pairs = ev.most_confused_pairs(confusion, NAMES, top=2)
    assert [(p.a, p.b, p.a_as_b, p.b_as_a, p.count) for p in pairs] == [
        ("cat", "dog", 7, 9, 16),
        ("cat", "truck", 3, 3, 6),
    ]
    assert pairs[0].rate == pytest.approx(16 / (60 + 50))
    with pytest.raises(ValueError, match="Received"):
        ev.most_confused(confusion[:3], NAMES)


def test_top_losses_are_the_confidently_wrong_in_order() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # right
            [0.70, 0.20, 0.10],  # wrong, p(true)=0.20
            [0.02, 0.97, 0.01],  # wrong, p(true)=0.01: top loss
            [0.40, 0.35, 0.25],  # right, uncertain
            [0.10, 0.45, 0.45],  # right (argmax takes the first of ties)
            [0.50, 0.45, 0.05],  # wrong, p(true)=0.05
        ]
    )
    result = ev.top_losses(labels, probs, k=5)
    np.testing.assert_array_equal(result.indices, [2, 5, 1])
    np.testing.assert_array_equal(result.predicted, [1, 0, 0])
    np.testing.assert_allclose(result.probability, [0.97, 0.50, 0.70])
    per_example = [log_loss([labels[i]], probs[i : i + 1], labels=[0, 1, 2]) for i in (2, 5, 1)]
    np.testing.assert_allclose(result.loss, per_example)
    assert len(ev.top_losses(labels, probs, k=1).indices) == 1


# Calibration ---------------------------------------------------------------------------------
def test_ece_equals_hand_computed_value() -> None:
    # Confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.55 (right) in 5 bins of width 0.2.
    # Right-closed bins: 0.8 falls in (0.6, 0.8], 0.6 and 0.55 in (0.4, 0.6]:
    # ECE = 1/4 * |1 - 0.9| + 1/4 * |0 - 0.8| + 2/4 * |1 - 0.575| = 0.4375.
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.45, 0.55]])
    assert cal.expected_calibration_error(labels, probs, bins=5) == pytest.approx(0.4375)
    table = cal.reliability_bins(labels, probs, bins=5)
    assert table.count == [2, 1, 1]
    assert table.lower == pytest.approx([0.4, 0.6, 0.8])
    assert table.accuracy == pytest.approx([1.0, 0.0, 1.0])
    assert table.confidence == pytest.approx([0.575, 0.8, 0.9])


def test_nll_equals_sklearn_log_loss() -> None:
    labels, probs = noisy_predictions(300, 4, 1.0, seed=2)
    assert cal.negative_log_likelihood(labels, probs) == pytest.approx(log_loss(labels, probs))


def test_temperature_undoes_over_confidence() -> None:
    # Labels are drawn from softmax(logits), so those probabilities are calibrated; the model
    # reports softmax(3 * logits), over-confident by a temperature of 3.
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=1.5, size=(8000, 5))
    calibrated = softmax(logits)
    labels = (calibrated.cumsum(axis=1) < rng.random((8000, 1))).sum(axis=1)
    overconfident = softmax(3.0 * logits)
    val, test = slice(0, 4000), slice(4000, None)
    temperature = cal.fit_temperature(labels[val], overconfident[val])
    assert temperature > 1 and temperature == pytest.approx(3.0, rel=0.1)
    np.testing.assert_allclose(
        cal.apply_temperature(overconfident, 3.0), calibrated, rtol=1e-6, atol=1e-9
    )
    report = cal.calibration_report(
        labels[val], overconfident[val], labels[test], overconfident[test]
    )
    assert report.temperature == pytest.approx(temperature)
    assert report.nll_after < report.nll_before
    assert report.ece_after < report.ece_before / 2
    assert report.n_test == 4000 and sum(report.reliability_after.count) == 4000


def test_apply_temperature_one_is_identity_and_keeps_argmax() -> None:
    _, probs = noisy_predictions(50, 4, 1.0, seed=5)
    np.testing.assert_allclose(cal.apply_temperature(probs, 1.0), probs, rtol=1e-12)
    np.testing.assert_array_equal(cal.apply_temperature(probs, 0.3).argmax(1), probs.argmax(1))
    with pytest.raises(ValueError, match="Received"):
        cal.apply_temperature(probs, 0.0)


# Bootstrap -----------------------------------------------------------------------------------
def test_bootstrap_ci_covers_truth_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(6)
    p = 0.3
    covered, widths = 0, {}
    for trial in range(40):
        sample = rng.random(1000) < p
        point, low, high = bs.bootstrap_ci(bs.batched_mean, sample, n_boot=400, seed=trial)
        assert point == pytest.approx(sample.mean())
        covered += low <= p <= high
    assert covered >= 33  # nominal 95% of 40 is 38; 33 is about 2.7 sd below it
    for n in (1000, 4000):
        _, low, high = bs.bootstrap_ci(bs.batched_mean, rng.random(n) < p, n_boot=1000, seed=1)
        widths[n] = high - low
        assert widths[n] == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / n), rel=0.2)
    assert widths[4000] < 0.65 * widths[1000]


def test_bootstrap_vectorized_equals_loop_and_strata_fix_group_sizes() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=300)
    fast = bs.bootstrap_ci(bs.batched_mean, values, n_boot=300, seed=3)
    slow = bs.bootstrap_ci(np.mean, values, n_boot=300, seed=3, vectorized=False)
    assert fast == pytest.approx(slow)
    strata = np.arange(300) < 30
    sizes = [
        int(idx_group.sum())
        for idx in bs._resample_chunks(300, 50, np.random.default_rng(0), strata)
        for idx_group in strata[idx]
    ]
    assert sizes == [30] * 50


def test_bootstrap_chunks_cover_all_resamples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bs, "_BOOT_CHUNK_ELEMENTS", 1000)  # 10 resamples of 100 per chunk
    calls = []

    def count(values: np.ndarray) -> np.ndarray:
        calls.append(len(values))
        return values.mean(axis=-1)

    bs.bootstrap_ci(count, np.arange(100.0), n_boot=35)
    assert calls == [1, 10, 10, 10, 5]


# Leakage -------------------------------------------------------------------------------------
def test_subset_accuracy_gap_on_constructed_groups() -> None:
    # 400 duplicated examples at 95% accuracy, 1,600 others at 70%.
    correct = np.r_[np.arange(400) < 380, np.arange(1600) < 1120]
    mask = np.r_[np.ones(400, bool), np.zeros(1600, bool)]
    labels = np.zeros(2000, dtype=int)
    probs = np.where(correct[:, None], [[0.8, 0.2]], [[0.2, 0.8]])
    gap = ht.subset_accuracy_gap(labels, probs, mask, n_boot=1000)
    assert gap.in_mask.n == 400 and gap.rest.n == 1600
    assert gap.in_mask.accuracy == pytest.approx(0.95)
    assert gap.rest.accuracy == pytest.approx(0.70)
    assert gap.gap == pytest.approx(0.25)
    low, high = gap.gap_ci
    assert 0.2 < low < 0.25 < high < 0.3
    low, high = gap.in_mask.ci
    assert low < 0.95 < high


def test_subset_accuracy_gap_with_an_empty_group() -> None:
    labels, probs = noisy_predictions(100, 3, 2.0, seed=8)
    gap = ht.subset_accuracy_gap(labels, probs, np.zeros(100, bool), n_boot=100)
    assert gap.in_mask == ht.GroupAccuracy(0, None, None)
    assert gap.rest.n == 100
    assert gap.rest.accuracy == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert gap.gap is None and gap.gap_ci is None
    with pytest.raises(ValueError, match="Received"):
        ht.subset_accuracy_gap(labels, probs, np.zeros(99, bool))


# Hypothesis tests ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("recall_a", "recall_b", "verdict"),
    [(0.9, 0.6, "supported"), (0.6, 0.9, "contradicted"), (0.75, 0.75, "inconclusive")],
)
def test_group_recall_verdicts(recall_a: float, recall_b: float, verdict: str) -> None:
    recall = {0: recall_a, 1: recall_a, 2: recall_b, 3: recall_b}
    labels, probs = planted(recall, per_class=200, k=4)
    result = ht.test_group_recall(
        labels, probs, NAMES, ["cat", "dog"], ["ship", "truck"], n_boot=500, names=("a", "b")
    )
    assert result.estimate == pytest.approx(recall_a - recall_b)
    assert result.details["recall_a"] == pytest.approx(recall_a)
    assert result.low <= result.estimate <= result.high
    assert result.n == 800 and result.verdict == verdict
    assert result.name.startswith("a > b")


def test_group_recall_rejects_overlapping_groups() -> None:
    labels, probs = planted(dict.fromkeys(range(4), 0.8), 10, 4)
    with pytest.raises(ValueError, match="share"):
        ht.test_group_recall(labels, probs, NAMES, ["cat", "dog"], ["dog", "ship"])
    with pytest.raises(ValueError, match="Received"):
        ht.test_group_recall(labels, probs, NAMES, ["cat", "horse"], ["ship"])


def test_confusable_pair_verdicts() -> None:
    # 5 classes at 80% recall; cat and dog send their errors to each other, the others spread
    # theirs over two classes so no other pair is as confused.
    k, names = 5, [*NAMES, "frog"]
    wrong_to = {0: 1, 1: 0, 2: 3, 3: 4, 4: 2}
    labels, probs = planted(dict.fromkeys(range(k), 0.8), 300, k, wrong_to)
    confused = ht.test_confusable_pair(labels, probs, names, "cat", "dog", n_boot=500)
    # cat<->dog: 120 errors over 600 = 0.2; the other 9 pairs hold 180 errors: 60 each in
    # ship-truck, truck-frog, ship-frog (0.1), none in the 6 pairs with cat or dog.
    assert confused.details["pair_rate"] == pytest.approx(0.2)
    assert confused.details["average_rate"] == pytest.approx(3 * 0.1 / 9)
    assert confused.estimate == pytest.approx(0.2 - 0.1 / 3)
    assert confused.verdict == "supported"
    never = ht.test_confusable_pair(labels, probs, names, "cat", "ship", n_boot=500)
    assert never.details["pair_rate"] == 0 and never.verdict == "contradicted"
    average = ht.test_confusable_pair(labels, probs, names, "ship", "truck", n_boot=500)
    # 0.1 against the mean of the other pairs (0.2 + 0.1 + 0.1) / 9: above it.
    assert average.estimate == pytest.approx(0.1 - 0.4 / 9)


def test_confusable_pair_inconclusive_when_pair_is_typical() -> None:
    labels, probs = noisy_predictions(1000, 4, 1.0, seed=9)  # errors spread uniformly
    result = ht.test_confusable_pair(labels, probs, NAMES, "cat", "dog", n_boot=500)
    assert result.low <= 0 <= result.high and result.verdict == "inconclusive"


def test_hypotheses_driver_runs_every_comparison_and_pair() -> None:
    labels, probs = planted({0: 0.9, 1: 0.9, 2: 0.5, 3: 0.5}, 100, 4)
    hypotheses = Hypotheses(
        groups={"animals": ["cat", "dog"], "vehicles": ["ship", "truck"]},
        comparisons=[("animals", "vehicles"), ("vehicles", "animals")],
        confusable_pairs=[("ship", "truck")],
    )
    results = ht.test_hypotheses(labels, probs, NAMES, hypotheses, n_boot=200)
    assert [(r.kind, r.a, r.b, r.verdict) for r in results] == [
        ("group_recall", "animals", "vehicles", "supported"),
        ("group_recall", "vehicles", "animals", "contradicted"),
        ("confusable_pair", "ship", "truck", "supported"),
    ]
    assert ht.test_hypotheses(labels, probs, NAMES, Hypotheses()) == []


def test_verdict_from_ci() -> None:
    assert bs.verdict_from_ci(0.01, 0.2) == "supported"
    assert bs.verdict_from_ci(-0.2, -0.01) == "contradicted"
    assert bs.verdict_from_ci(-0.01, 0.2) == "inconclusive"


def test_per_class_recall_ci() -> None:
    labels, probs = planted({0: 0.9, 1: 0.5, 2: 0.7, 3: 0.7}, 200, 4)
    recalls = ev.per_class_recall(labels, probs, NAMES, n_boot=500)
    assert [r.recall for r in recalls] == pytest.approx([0.9, 0.5, 0.7, 0.7])
    assert all(r.low < r.recall < r.high and r.support == 200 for r in recalls)
    # Binomial: the CI of 0.5 is wider than that of 0.9.
    assert recalls[1].high - recalls[1].low > recalls[0].high - recalls[0].low


def test_input_checks_name_what_was_received() -> None:
    labels, probs = noisy_predictions(10, 3, 1.0, seed=0)
    with pytest.raises(ValueError, match="Received"):
        ev.classification_summary(labels, probs, ["a", "b"])
    with pytest.raises(ValueError, match=r"labels: label \d at index \d+ is outside 0\.\.2"):
        cal.expected_calibration_error(labels + 3, probs)
    with pytest.raises(ValueError, match="Received"):
        ev.top_losses(labels[:5], probs)


# Figures -------------------------------------------------------------------------------------
def check_png(path: Path, fig_ratio: float) -> None:
    """The PNG decodes, is not blank, and keeps roughly the figure's aspect ratio (the tight
    bounding box trims margins, so the tolerance is loose)."""
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5
    ratio = pixels.shape[1] / pixels.shape[0]
    assert fig_ratio / 1.5 < ratio < fig_ratio * 1.5


def test_figures_save_and_decode(tmp_path: Path) -> None:
    labels, probs = noisy_predictions(400, 4, 1.5, seed=10)
    summary = ev.classification_summary(labels, probs, NAMES, n_boot=50)
    report = cal.calibration_report(labels[:200], probs[:200] ** 3, labels[200:], probs[200:] ** 3)
    losses = ev.top_losses(labels, probs, k=10)
    images = np.random.default_rng(0).integers(0, 256, (len(losses.indices), 16, 16, 3), np.uint8)
    hypotheses = [
        ht.test_group_recall(labels, probs, NAMES, ["cat"], ["dog"], n_boot=50),
        ht.test_confusable_pair(labels, probs, NAMES, "cat", "dog", n_boot=50),
    ]
    recalls = ev.per_class_recall(labels, probs, NAMES, n_boot=50)
    confused = [
        (p.true, p.predicted, p.count, p.rate)
        for p in ev.most_confused(summary["confusion"], NAMES)
    ]
    made = {
        "confusion": figs.plot_confusion_matrix(summary["confusion"], NAMES),
        "reliability": figs.plot_reliability_diagram(
            report.reliability_before.bins,
            asdict(report.reliability_before),
            asdict(report.reliability_after),
            report.ece_before,
            report.ece_after,
            report.temperature,
        ),
        "recall": figs.plot_per_class_recall(
            NAMES,
            [r.recall for r in recalls],
            [r.low for r in recalls],
            [r.high for r in recalls],
            [r.support for r in recalls],
            ci_level=0.95,
        ),
        "confused": figs.plot_most_confused(confused),
        "top_losses": figs.plot_top_losses(
            images, losses.labels, losses.predicted, losses.probability, NAMES
        ),
        "hypotheses": figs.plot_hypotheses(
            [h.name for h in hypotheses],
            [h.estimate for h in hypotheses],
            [h.low for h in hypotheses],
            [h.high for h in hypotheses],
            [h.n for h in hypotheses],
            [h.verdict for h in hypotheses],
            ci_level=0.95,
        ),
    }
    for name, fig in made.items():
        width, height = fig.get_size_inches()
        path = save_figure(fig, tmp_path / f"{name}.png")
        check_png(path, width / height)
    with pytest.raises(ValueError, match="Received"):
        figs.plot_top_losses(
            images.astype(np.float32), losses.labels, losses.predicted, losses.probability, NAMES
        )
