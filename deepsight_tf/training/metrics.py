"""A classifier's scores: accuracy and macro-F1 on held-out arrays (the one implementation that
metrics.json, interpret and the report share), and the same as stateful Keras epoch metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="deepsight")
class MacroF1(keras.metrics.Metric):
    """Macro-averaged F1 over the batches seen since the last reset, from a confusion matrix.

    Equals scikit-learn's `f1_score(y_true, y_pred, average="macro")` on the arg-maxed labels:
    each class scores `2 TP / (2 TP + FP + FN)` and the mean runs over the classes that occur
    among the true or the predicted labels (a class that never occurs in either is left out,
    as scikit-learn does when `labels` is not given). With `sample_weight` every count is a
    sum of weights, and a class only counts as occurring through positive weight.

    `y_true` may be one-hot or soft (MixUp, CutMix, label smoothing; the arg-max is taken)
    or integer labels; `y_pred` holds scores (probabilities or logits) per class.
    """

    def __init__(self, num_classes: int, name: str = "macro_f1", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(
                f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes}"
            )
        self.num_classes = int(num_classes)
        # Rows: true class, columns: predicted class; float so sample weights accumulate.
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="float32",
            name="confusion",
        )

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        predicted = ops.reshape(ops.argmax(y_pred, axis=-1), (-1,))
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] != 1:
            true = ops.argmax(y_true, axis=-1)
        else:
            true = ops.cast(y_true, "int32")
        true = ops.reshape(true, (-1,))
        true_onehot = ops.one_hot(true, self.num_classes, dtype="float32")
        if sample_weight is not None:
            weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
            true_onehot = true_onehot * weight
        predicted_onehot = ops.one_hot(predicted, self.num_classes, dtype="float32")
        # One matmul adds each sample's weight at (true, predicted); XLA-friendly, no scatter.
        self.confusion.assign_add(ops.matmul(ops.transpose(true_onehot), predicted_onehot))

    def result(self) -> Any:
        true_positives = ops.diagonal(self.confusion)
        # 2 TP + FP + FN = (row total) + (column total) for each class.
        denominator = ops.sum(self.confusion, axis=1) + ops.sum(self.confusion, axis=0)
        occurs = ops.cast(denominator > 0, "float32")
        f1 = ops.divide_no_nan(2.0 * true_positives, denominator)
        return ops.divide_no_nan(ops.sum(f1 * occurs), ops.sum(occurs))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


def training_metrics(num_classes: int, sparse_labels: bool = False) -> list[keras.metrics.Metric]:
    """Accuracy and macro-F1 for `model.compile(metrics=...)`, logged as accuracy, macro_f1.

    Keras prefixes validation values with "val_", so checkpoints can monitor
    "val_macro_f1". Use `sparse_labels=True` when the labels are integers, not one-hot.
    """
    accuracy = (
        keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        if sparse_labels
        else keras.metrics.CategoricalAccuracy(name="accuracy")
    )
    return [accuracy, MacroF1(num_classes)]


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Macro-F1 of predicted classes over all `num_classes` classes, by scikit-learn (a class
    neither present nor predicted scores 0): the one implementation for held-out arrays."""
    from sklearn.metrics import f1_score

    ids = list(range(num_classes))
    return float(f1_score(labels, predicted, labels=ids, average="macro", zero_division=0))


def classification_scores(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, the per-class table and the confusion matrix, by scikit-learn.

    Per class: precision, recall, f1 and support (scikit-learn's classification_report, with
    0 where a class is never predicted). The confusion matrix has the true class in rows.
    """
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    labels = np.asarray(labels)
    predicted = np.asarray(probs).argmax(axis=1)
    ids = list(range(len(class_names)))
    report = classification_report(
        labels,
        predicted,
        labels=ids,
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    return {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": macro_f1(labels, predicted, len(class_names)),
        "per_class": {
            name: {
                "precision": float(report[name]["precision"]),
                "recall": float(report[name]["recall"]),
                "f1": float(report[name]["f1-score"]),
                "support": int(report[name]["support"]),
            }
            for name in class_names
        },
        "confusion": confusion_matrix(labels, predicted, labels=ids).astype(np.int64),
    }
