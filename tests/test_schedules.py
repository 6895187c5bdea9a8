"""Tests for OneCycle (against its closed form), the LR range test and their figures."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.plots import save_figure
from deepsight_tf.plots.training import plot_history, plot_lr_finder, plot_schedule
from deepsight_tf.training.lr_finder import LRFinderResult, lr_range_test, suggest_lr
from deepsight_tf.training.optim import make_optimizer
from deepsight_tf.training.schedules import OneCycle, phase_schedule


def one_cycle_reference(step, peak, total, pct=0.25, div=25.0, final_div=1e4, lo=0.85, hi=0.95):
    """PyTorch OneCycleLR's phase loop (cos anneal, two phases), written out in Python."""
    initial = peak / div
    floor = initial / final_div
    phases = [
        (pct * total - 1, initial, peak, hi, lo),
        (total - 1, peak, floor, lo, hi),
    ]
    start = 0.0
    for i, (end, lr_a, lr_b, m_a, m_b) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            p = (step - start) / (end - start)
            cos = math.cos(math.pi * p) + 1
            return lr_b + (lr_a - lr_b) / 2 * cos, m_b + (m_a - m_b) / 2 * cos
        start = end
    raise AssertionError("unreachable")


def test_one_cycle_matches_closed_form_at_key_and_sampled_steps():
    schedule = OneCycle(peak_lr=0.4, total_steps=100)
    assert float(schedule(0)) == pytest.approx(0.4 / 25, rel=1e-6)
    assert float(schedule(24)) == pytest.approx(0.4, rel=1e-6)  # peak at 0.25 * 100 - 1
    assert float(schedule(99)) == pytest.approx(0.4 / 25 / 1e4, rel=1e-4)
    for step in [0, 1, 7, 12, 23, 24, 25, 40, 61, 88, 98, 99]:
        lr, momentum = one_cycle_reference(step, 0.4, 100)
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-5, abs=1e-9)
        assert float(schedule.momentum(step)) == pytest.approx(momentum, rel=1e-6)


def test_one_cycle_non_integer_peak_and_other_factors():
    schedule = OneCycle(
        0.1,
        37,
        pct_start=0.3,
        div_factor=10,
        final_div_factor=100,
        base_momentum=0.8,
        max_momentum=0.9,
    )
    steps, lrs, momenta = schedule.curve()
    expected = [one_cycle_reference(s, 0.1, 37, 0.3, 10, 100, 0.8, 0.9) for s in steps]
    np.testing.assert_allclose(lrs, [e[0] for e in expected], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(momenta, [e[1] for e in expected], rtol=1e-6)


def test_linear_anneal_is_airbench_s_triangle():
    """airbench94: 0.2 of the peak at step 0, the peak after 23% of the steps, 0.07 of it at
    the last, straight lines between."""
    schedule = OneCycle(
        1.5, 101, pct_start=0.23, div_factor=5.0, final_div_factor=0.2 / 0.07, anneal="linear"
    )
    peak_step = 0.23 * 101 - 1
    for step in [0, 5, 10, 20]:
        expected = 0.3 + (1.5 - 0.3) * step / peak_step
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
    for step in [30, 60, 100]:
        expected = 1.5 + (0.105 - 1.5) * (step - peak_step) / (100 - peak_step)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
    assert OneCycle.from_config(schedule.get_config()).anneal == "linear"
    with pytest.raises(ValueError, match="anneal"):
        OneCycle(1.0, 10, anneal="step")


def test_a_constant_momentum_is_a_cycle_with_equal_ends():
    settings = TrainSettings(momentum=0.85, anneal="linear", div_factor=5, final_div_factor=3)
    schedule = phase_schedule(settings, 2.0, 50)
    _, lrs, momenta = schedule.curve()
    np.testing.assert_allclose(momenta, 0.85, rtol=1e-6)
    assert lrs[0] == pytest.approx(0.4, rel=1e-6)
    assert lrs[-1] == pytest.approx(0.4 / 3, rel=1e-5)
    cycled = phase_schedule(TrainSettings(backbone="resnet18"), 2.0, 50).curve()[2]
    assert cycled.min() == pytest.approx(0.85, rel=1e-3) and cycled[0] == pytest.approx(0.95)


def test_momentum_is_high_where_the_rate_is_low():
    _, lrs, momenta = OneCycle(1.0, 50).curve()
    assert momenta[0] == pytest.approx(0.95) and momenta[-1] == pytest.approx(0.95)
    assert momenta[np.argmax(lrs)] == pytest.approx(0.85, abs=1e-3)
    # Every step the two move in opposite directions.
    assert np.all(np.sign(np.diff(lrs)) == -np.sign(np.diff(momenta)))


def test_steps_past_the_end_keep_the_final_values():
    schedule = OneCycle(0.4, 20)
    assert float(schedule(500)) == pytest.approx(float(schedule(19)))
    assert float(schedule.momentum(500)) == pytest.approx(0.95)


def test_one_cycle_config_round_trips_through_keras_serialization():
    schedule = OneCycle(0.3, 64, pct_start=0.4, div_factor=20, final_div_factor=1e3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, OneCycle)
    assert restored.get_config() == schedule.get_config()
    assert OneCycle.from_config(schedule.get_config()).get_config() == schedule.get_config()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"peak_lr": 0.0, "total_steps": 10},
        {"peak_lr": 0.1, "total_steps": 1},
        {"peak_lr": 0.1, "total_steps": 10, "pct_start": 1.0},
        {"peak_lr": 0.1, "total_steps": 4, "pct_start": 0.25},  # no warm-up step left
        {"peak_lr": 0.1, "total_steps": 10, "base_momentum": 0.99},
    ],
)
def test_one_cycle_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="Received"):
        OneCycle(**kwargs)


def _tiny_problem(seed: int = 0) -> tuple[keras.Model, tf.data.Dataset]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(3, 4))
    labels = rng.integers(0, 3, size=256)
    x = (centres[labels] + rng.normal(0, 1, size=(256, 4))).astype("float32")
    y = keras.utils.to_categorical(labels, 3)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="body_dense")(inputs)
    hidden = keras.layers.BatchNormalization(name="body_bn")(hidden)
    outputs = keras.layers.Dense(3, activation="softmax", name="head_dense")(hidden)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    return keras.Model(inputs, outputs), dataset


def test_lr_range_test_suggests_a_rate_inside_the_bounds_and_restores_weights():
    model, dataset = _tiny_problem()
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    compiled_optimizer = model.optimizer
    before = [w.copy() for w in model.get_weights()]
    result = lr_range_test(
        model, dataset, "categorical_crossentropy", min_lr=1e-4, max_lr=10.0, steps=60
    )
    assert 1e-4 <= result.suggestion <= 10.0
    assert result.method == "steepest"
    # Weights, BatchNorm statistics included, are exactly the ones before; compile untouched.
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert model.optimizer is compiled_optimizer
    n = len(result.lrs)
    np.testing.assert_allclose(result.lrs, 1e-4 * (1e5 ** (np.arange(n) / 59)), rtol=1e-5)
    # The smoothed curve is the bias-corrected exponential average of the raw losses.
    average = 0.0
    for i, loss in enumerate(result.losses):
        average = 0.98 * average + 0.02 * loss
        assert result.smoothed[i] == pytest.approx(average / (1 - 0.98 ** (i + 1)), rel=1e-6)
    # The loss did fall somewhere in the sweep: the test trained for real.
    assert result.smoothed.min() < result.smoothed[0]


def test_lr_range_test_stops_when_the_loss_diverges():
    model, dataset = _tiny_problem(seed=1)
    result = lr_range_test(
        model,
        dataset,
        "categorical_crossentropy",
        optimizer_factory=lambda s: make_optimizer("sgd", s, weight_decay=None),
        min_lr=1e-3,
        max_lr=1e4,
        steps=80,
    )
    assert result.stopped_early
    assert len(result.lrs) < 80
    last = result.smoothed[-1]
    assert not np.isfinite(last) or last > 4.0 * np.min(result.smoothed[:-1])
    assert 1e-3 <= result.suggestion <= 1e4


def test_lr_range_test_under_mixed_float16_uses_loss_scaling():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model, dataset = _tiny_problem(seed=2)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.layers[1].compute_dtype == "float16"
    before = [w.copy() for w in model.get_weights()]
    seen = []

    def factory(schedule):
        seen.append(make_optimizer("sgd", schedule, backbone_lr_mult=0.1))
        return seen[-1]

    result = lr_range_test(
        model,
        dataset,
        keras.losses.CategoricalCrossentropy(),
        optimizer_factory=factory,
        min_lr=1e-4,
        max_lr=1.0,
        steps=20,
    )
    assert np.isfinite(result.losses).all() and len(result.losses) == 20
    # Loss scaling starts at 2**15 and halves on overflow; a skipped step does not advance
    # the inner optimizer, so its rate is recorded again: the rates sit on the sweep's grid
    # at step counts that rise by 0 or 1 and end at the number of applied steps.
    applied = int(seen[0].iterations.numpy())
    k = np.log(result.lrs / 1e-4) / np.log(1e4) * 19
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    assert set(np.diff(np.round(k))) <= {0.0, 1.0}
    assert 0 < applied <= 20 and np.round(k[-1]) in (applied - 1, applied)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_suggest_lr_picks_the_steepest_fall_or_min_over_ten():
    lrs = np.logspace(-5, 0, 50)
    # Loss falls fastest (per unit of log lr) around lrs[30].
    smoothed = 2.0 - np.tanh((np.arange(50) - 30) / 3.0)
    lr, method = suggest_lr(lrs, smoothed, stopped_early=False)
    assert method == "steepest"
    assert lr == pytest.approx(lrs[29]) or lr == pytest.approx(lrs[30])
    lr, method = suggest_lr(lrs[:3], np.array([3.0, 1.0, 2.0]), stopped_early=True)
    assert (lr, method) == (pytest.approx(lrs[1] / 10), "min/10")


def test_figures_draw_the_result_values(tmp_path):
    result = LRFinderResult(
        lrs=np.logspace(-4, 0, 20),
        losses=np.linspace(2.0, 0.5, 20),
        smoothed=np.linspace(2.0, 0.6, 20),
        suggestion=1e-2,
        method="steepest",
        min_loss_lr=1.0,
        stopped_early=False,
    )
    fig = plot_lr_finder(
        result.lrs, result.losses, result.smoothed, result.suggestion, result.method
    )
    lines = fig.axes[0].get_lines()
    np.testing.assert_array_equal(lines[1].get_xdata(), result.lrs)
    np.testing.assert_array_equal(lines[1].get_ydata(), result.smoothed)
    assert lines[2].get_xdata()[0] == pytest.approx(1e-2)
    assert save_figure(fig, tmp_path / "lr_finder.png").stat().st_size > 0

    steps, lrs, momenta = OneCycle(0.4, 30).curve()
    fig = plot_schedule(steps, lrs, momenta)
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_ydata(), lrs)
    np.testing.assert_array_equal(fig.axes[1].get_lines()[0].get_ydata(), momenta)

    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "val_macro_f1": [0.3, 0.6]}
    fig = plot_history(history)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "macro_f1"]
    np.testing.assert_array_equal(fig.axes[1].get_lines()[0].get_ydata(), [0.3, 0.6])
    with pytest.raises(ValueError, match="Received"):
        plot_history({"auc": [0.5]})


def test_a_new_length_reaches_a_traced_function_without_a_new_trace():
    """set_total_steps (a --budget re-sized in flight): a step function traced on the old
    length computes the new cycle's rate and momentum, traced once."""
    import tensorflow as tf

    cycle, traces = OneCycle(0.4, 100, pct_start=0.25), []

    @tf.function
    def rate(step):
        traces.append(1)
        return cycle(step), cycle.momentum(step)

    rate(tf.constant(10))
    cycle.set_total_steps(60)
    want = OneCycle(0.4, 60, pct_start=0.25)
    for step in (10, 14, 30, 59, 80):
        lr, momentum = rate(tf.constant(step))
        np.testing.assert_allclose(float(lr), float(want(step)), rtol=1e-6)
        np.testing.assert_allclose(float(momentum), float(want.momentum(step)), rtol=1e-6)
    assert len(traces) == 1 and cycle.get_config()["total_steps"] == 60
    with pytest.raises(ValueError, match="warm-up step"):
        cycle.set_total_steps(4)  # 0.25 * 4 = 1: no warm-up step
