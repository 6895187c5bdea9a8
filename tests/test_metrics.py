"""Tests for MacroF1: equal to scikit-learn's macro F1 over streamed batches, inside fit too."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.metrics import f1_score

from deepsight_tf.training.metrics import MacroF1, training_metrics

NUM_CLASSES = 5


def batches(seed: int = 0, n_batches: int = 4, size: int = 16):
    """Random (labels, scores) batches; class 4 is missing from the first batch entirely."""
    rng = np.random.default_rng(seed)
    for i in range(n_batches):
        high = 4 if i == 0 else NUM_CLASSES
        labels = rng.integers(0, high, size=size)
        scores = rng.random((size, NUM_CLASSES)).astype("float32")
        # Make predictions better than chance so per-class F1 values differ.
        scores[np.arange(size), labels] += rng.random(size).astype("float32")
        yield labels, scores


def test_macro_f1_equals_sklearn_over_several_one_hot_batches():
    metric = MacroF1(NUM_CLASSES)
    all_true, all_pred = [], []
    for labels, scores in batches():
        metric.update_state(keras.utils.to_categorical(labels, NUM_CLASSES), scores)
        all_true.append(labels)
        all_pred.append(scores.argmax(-1))
    y_true, y_pred = np.concatenate(all_true), np.concatenate(all_pred)
    expected = f1_score(y_true, y_pred, average="macro")
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)
    assert 0.0 < expected < 1.0


def test_soft_and_integer_labels_give_the_same_value_as_one_hot():
    rng = np.random.default_rng(1)
    soft_metric, int_metric, column_metric = (MacroF1(NUM_CLASSES) for _ in range(3))
    all_true, all_pred = [], []
    for labels, scores in batches(seed=1):
        one_hot = keras.utils.to_categorical(labels, NUM_CLASSES)
        # MixUp-like soft targets whose arg-max stays the original label.
        lam = rng.uniform(0.6, 1.0, size=(len(labels), 1))
        partner = keras.utils.to_categorical(rng.integers(0, NUM_CLASSES, len(labels)), 5)
        smoothed = (lam * one_hot + (1 - lam) * partner) * 0.9 + 0.1 / NUM_CLASSES
        assert (smoothed.argmax(-1) == labels).all()
        soft_metric.update_state(smoothed, scores)
        int_metric.update_state(labels, scores)
        column_metric.update_state(labels[:, None], scores)
        all_true.append(labels)
        all_pred.append(scores.argmax(-1))
    expected = f1_score(np.concatenate(all_true), np.concatenate(all_pred), average="macro")
    for metric in (soft_metric, int_metric, column_metric):
        assert float(metric.result()) == pytest.approx(expected, rel=1e-6)


def test_sample_weight_matches_sklearn():
    rng = np.random.default_rng(2)
    metric = MacroF1(NUM_CLASSES)
    all_true, all_pred, all_weights = [], [], []
    for labels, scores in batches(seed=2):
        weights = rng.uniform(0.1, 3.0, size=len(labels)).astype("float32")
        metric.update_state(labels, scores, sample_weight=weights)
        all_true.append(labels)
        all_pred.append(scores.argmax(-1))
        all_weights.append(weights)
    expected = f1_score(
        np.concatenate(all_true),
        np.concatenate(all_pred),
        average="macro",
        sample_weight=np.concatenate(all_weights),
    )
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)


def test_classes_never_seen_are_left_out_and_predicted_only_classes_count_zero():
    metric = MacroF1(6)
    y_true = np.array([0, 0, 1, 1, 2, 2, 0])
    # Class 3 is predicted but never true (F1 0, counted); classes 4, 5 never occur (left out).
    y_pred = np.array([0, 1, 1, 1, 2, 3, 0])
    metric.update_state(y_true[:4], np.eye(6)[y_pred[:4]])
    metric.update_state(y_true[4:], np.eye(6)[y_pred[4:]])
    assert float(metric.result()) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert float(metric.result()) == pytest.approx((0.8 + 0.8 + 2 / 3 + 0.0) / 4)


def test_reset_state_forgets_earlier_batches():
    metric = MacroF1(3)
    metric.update_state([0, 1, 2], np.eye(3)[[1, 2, 0]])
    assert float(metric.result()) == 0.0
    metric.reset_state()
    metric.update_state([0, 1, 2], np.eye(3))
    assert float(metric.result()) == pytest.approx(1.0)
    assert float(MacroF1(3).result()) == 0.0  # nothing seen yet


def test_config_round_trips_and_rejects_bad_class_counts():
    metric = MacroF1(10, name="f1_macro")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(restored, MacroF1)
    assert restored.get_config() == metric.get_config()
    assert (restored.name, restored.num_classes) == ("f1_macro", 10)
    with pytest.raises(ValueError, match="Received"):
        MacroF1(1)


def test_inside_fit_and_evaluate_it_equals_sklearn_on_the_predictions(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 4)).astype("float32")
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    y = keras.utils.to_categorical(labels, 3)
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, activation="softmax", name="head_dense")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "categorical_crossentropy", metrics=training_metrics(3))
    history = model.fit(
        x[:64], y[:64], validation_data=(x[64:], y[64:]), epochs=2, batch_size=16, verbose=0
    )
    assert {"accuracy", "macro_f1", "val_accuracy", "val_macro_f1"} <= set(history.history)
    # Validation metrics come from the end-of-epoch weights, so they must match sklearn on them.
    predicted = model.predict(x[64:], verbose=0).argmax(-1)
    expected = f1_score(labels[64:], predicted, average="macro")
    assert history.history["val_macro_f1"][-1] == pytest.approx(expected, rel=1e-5)
    results = model.evaluate(x, y, batch_size=10, return_dict=True, verbose=0)
    all_predicted = model.predict(x, verbose=0).argmax(-1)
    assert results["macro_f1"] == pytest.approx(
        f1_score(labels, all_predicted, average="macro"), rel=1e-5
    )
    assert results["accuracy"] == pytest.approx(np.mean(all_predicted == labels), rel=1e-6)
    # The compiled metric survives model.save / load_model(safe_mode=True).
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    again = loaded.evaluate(x, y, batch_size=10, return_dict=True, verbose=0)
    assert again["macro_f1"] == pytest.approx(results["macro_f1"], rel=1e-6)


def test_training_metrics_names():
    assert [m.name for m in training_metrics(10)] == ["accuracy", "macro_f1"]
    sparse = training_metrics(10, sparse_labels=True)
    assert isinstance(sparse[0], keras.metrics.SparseCategoricalAccuracy)
