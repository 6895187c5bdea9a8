"""The weight average (--ema): the optimizer's moving average against TensorFlow's own, the
BatchNorm re-estimation, what a run stores and keeps, and exact resumes around it."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepsight_tf.core.storage import read_json
from deepsight_tf.core.workspace import METRICS_FILE, PREDICTIONS_FILE, Workspace
from deepsight_tf.model.classifier import build_classifier
from deepsight_tf.training.averaging import reestimate_batchnorm, reestimation_batches
from deepsight_tf.training.loop import train
from deepsight_tf.training.optim import make_optimizer

from support.planted import Crash, at_step, crash
from support.resume import assert_same_outcome, crash_after_commit, outcome
from support.separable import tiny


def test_the_average_is_tensorflows_exponential_moving_average_with_num_updates() -> None:
    """The oracle is tf.train.ExponentialMovingAverage(decay, num_updates=step): decay
    min(decay, (1 + t) / (10 + t)), the average starting at the first step's weights."""
    decay = 0.9
    optimizer = make_optimizer("sgd", 0.1, momentum=0.5, weight_decay=None, ema=decay)
    w = keras.Variable(np.array([1.0, -2.0, 0.5], np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    oracle = tf.train.ExponentialMovingAverage(decay, num_updates=step)
    shadow = tf.Variable(np.zeros(3, np.float32))
    rng = np.random.default_rng(0)
    for t in range(40):
        optimizer.apply([tf.constant(rng.normal(size=3).astype(np.float32))], [w])
        shadow.assign(w.value)  # the oracle averages a copy of the weights after each step
        step.assign(t)
        oracle.apply([shadow])  # the first call creates the average at the current weights
    want = oracle.average(shadow).numpy()
    raw = w.numpy().copy()
    assert not np.allclose(raw, want)  # 40 noisy steps: the average is not the last weights
    optimizer.apply_average([w])
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-5, atol=1e-6)


def test_fit_keeps_the_raw_weights_until_the_average_is_put_in() -> None:
    """Keras would overwrite the weights with the average at the end of every fit; deepsight
    fits once per epoch, so its optimizer does not, and training goes on from the raw weights."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=make_optimizer("sgd", 0.1, ema=0.99), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype(np.float32), rng.normal(size=(64, 2))
    model.fit(x, y.astype(np.float32), batch_size=8, epochs=1, verbose=0)
    raw = [v.numpy().copy() for v in model.trainable_variables]
    average = [v.numpy() for v in model.optimizer._model_variables_moving_average]
    assert not all(np.allclose(a, b) for a, b in zip(raw, average, strict=True))
    model.optimizer.apply_average(model.trainable_variables)
    for got, want in zip(model.trainable_variables, average, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)


def test_reestimation_batches_follow_batchnorm_momentum() -> None:
    model = build_classifier("resnet18", 3, 16, width_multiplier=1 / 16, stem="cifar")
    # KerasHub's BatchNorm momentum 0.9: 0.9^44 = 0.97% < 1% of the old statistics left.
    assert reestimation_batches(model, steps_per_epoch=1000) == 44
    assert reestimation_batches(model, steps_per_epoch=13) == 13  # never more than an epoch
    model.trainable = False  # BatchNorm in inference mode: its statistics are not re-estimated
    assert reestimation_batches(model, steps_per_epoch=1000) == 0


def test_reestimated_statistics_are_those_of_the_data_and_nothing_else_moves() -> None:
    layer = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Sequential([keras.Input((3,)), layer])
    gamma, beta = (v.numpy().copy() for v in (layer.gamma, layer.beta))
    rng = np.random.default_rng(0)
    mean, std = np.array([5.0, -3.0, 0.5]), np.array([2.0, 1.0, 0.1])
    images = (mean + std * rng.normal(size=(64 * 50, 3))).astype(np.float32)
    batches = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images)))).batch(64)
    count = reestimation_batches(model, steps_per_epoch=50)
    assert count == 44
    assert reestimate_batchnorm(model, batches, count) == 44
    # Started at mean 0 and variance 1, 44 batches leave 0.9^44 < 1% of that start; the rest
    # is sampling noise: a moving average of momentum 0.9 has sqrt(0.1 / 1.9) = 0.23 times the
    # spread of one batch's estimate (std / 8 for the mean, sqrt(2 / 63) relative for the
    # variance). Four of those spreads plus the 1% of the start left.
    shrink = np.sqrt(0.1 / 1.9)
    mean_error = np.abs(layer.moving_mean.numpy() - mean)
    assert np.all(mean_error <= 0.01 * np.abs(mean) + 4 * shrink * std / 8), mean_error
    variance = std**2
    variance_error = np.abs(layer.moving_variance.numpy() - variance)
    bound = 0.01 * np.abs(1 - variance) + 4 * shrink * np.sqrt(2 / 63) * variance
    assert np.all(variance_error <= bound), (variance_error, bound)
    np.testing.assert_array_equal(layer.gamma.numpy(), gamma)
    np.testing.assert_array_equal(layer.beta.numpy(), beta)


def averaged(**overrides: object):  # type: ignore[no-untyped-def]
    return tiny(ema=0.9, deterministic=True, checkpoint_minutes=0, **overrides)


@pytest.fixture(scope="module")
def reference(prepared: Workspace) -> Path:
    return Path(train(averaged(run_id="ema-reference"), prepared).run_dir)


def test_a_run_scores_both_candidates_and_keeps_the_better_on_validation(
    reference: Path,
) -> None:
    metrics = read_json(reference / METRICS_FILE)
    predictions = np.load(reference / PREDICTIONS_FILE)
    ema = metrics["ema"]
    assert ema["decay"] == 0.9
    val = ema["val_macro_f1"]
    assert ema["kept"] == ("average" if val["average"] > val["best_epoch"] else "best_epoch")
    kept = ema["kept"]
    np.testing.assert_array_equal(predictions["test_probs"], predictions[f"{kept}_test_probs"])
    assert ema["test"][kept] == {k: metrics["test"][k] for k in ema["test"][kept]}
    # The two candidates are different weights, so different probabilities.
    assert not np.allclose(predictions["average_test_probs"], predictions["best_epoch_test_probs"])
    labels = predictions["test_labels"]
    for name in ("average", "best_epoch"):
        accuracy = np.mean(predictions[f"{name}_test_probs"].argmax(1) == labels)
        assert ema["test"][name]["accuracy"] == pytest.approx(accuracy)


def ema_outcome(run_dir: Path) -> dict[str, object]:
    got = outcome(run_dir, final="phase1.end.weights.npz")
    predictions = np.load(run_dir / PREDICTIONS_FILE)
    for name in ("average_test_probs", "best_epoch_test_probs"):
        got[name] = predictions[name]
    got["ema"] = read_json(run_dir / METRICS_FILE)["ema"]
    return got


def assert_same_averaged(got: dict[str, object], want: dict[str, object]) -> None:
    assert_same_outcome(got, want)
    for name in ("average_test_probs", "best_epoch_test_probs"):
        np.testing.assert_array_equal(got[name], want[name])
    assert got["ema"] == want["ema"]


@pytest.mark.slow  # 21-25 s: keeps `make test` under 15 minutes; `make test-full` runs it
def test_a_resume_mid_phase_carries_the_average_exactly(
    prepared: Workspace, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed in epoch 3 (13 steps an epoch, commits at epoch ends): the average is part of
    the optimizer's committed state, so the resumed run ends with the same average."""
    at_step(30, crash, monkeypatch)
    with pytest.raises(Crash):
        train(averaged(run_id="ema-mid"), prepared)
    monkeypatch.undo()
    run = Path(train(averaged(run_id="ema-mid", resume=True), prepared).run_dir)
    assert_same_averaged(ema_outcome(run), ema_outcome(reference))


@pytest.mark.slow  # 21-25 s: keeps `make test` under 15 minutes; `make test-full` runs it
def test_a_resume_after_the_last_commit_puts_the_average_in_again(
    prepared: Workspace, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the last epoch's commit, before the average was put in: the resume finds
    the phase done and rebuilds the average from the committed optimizer state."""
    crash_after_commit(monkeypatch, 2, Crash)
    with pytest.raises(Crash):
        train(averaged(run_id="ema-end"), prepared)
    monkeypatch.undo()
    run = Path(train(averaged(run_id="ema-end", resume=True), prepared).run_dir)
    assert_same_averaged(ema_outcome(run), ema_outcome(reference))
