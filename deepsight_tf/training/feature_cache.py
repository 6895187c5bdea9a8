"""Phase-1 shortcut: a frozen backbone without pixel augmentation is run once, not per epoch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepsight_tf.core.settings import TrainSettings


@dataclass
class CachedHead:
    """A head-only model sharing the classifier's head layers, and its feature datasets.

    `train_dataset(first_epoch, epochs, skip_batches)` gives epochs of feature batches drawn
    as `pipeline.epoch_batches` draws pixel batches: a pure function of (seed, epoch, batch).
    """

    head: Any
    train_dataset: Callable[..., Any]
    val_ds: Any


def can_cache_features(settings: TrainSettings) -> bool:
    """Only when every epoch would feed the frozen backbone the very same pixels."""
    return (
        settings.augment == "none"
        and settings.mix == "none"
        and not settings.focus_pairs
        and settings.progressive_resize is None  # other sizes, other pixels
    )


def backbone_features(
    model: Any, x: np.ndarray, indices: np.ndarray, num_classes: int, eval_args: dict[str, Any]
) -> np.ndarray:
    """Pooled backbone features of x[indices], through the same preprocessing as training."""
    import keras

    from deepsight_tf.model.classifier import HEAD_POOL
    from deepsight_tf.training.pipeline import make_eval_dataset

    extractor = keras.Model(model.inputs, model.get_layer(HEAD_POOL).output)
    labels = np.zeros(len(x), dtype=np.int64)  # labels are not needed for features
    dataset = make_eval_dataset(x, labels, indices, num_classes, **eval_args)
    return np.asarray(extractor.predict(dataset.map(lambda images, _: images), verbose=0))


def cached_head(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    train_indices: np.ndarray,
    val_indices: np.ndarray,
    num_classes: int,
    eval_args: dict[str, Any],
    batch_size: int,
    seed: int,
    class_weights: np.ndarray | None = None,
    label_smoothing: float = 0.0,
) -> CachedHead:
    """The head trained on cached features; its layers are the classifier's own, so training
    it trains the classifier. Batches match the pipeline's: a stateless shuffle per epoch, one-hot
    (smoothed) labels, per-example class weights, the last partial batch dropped."""
    import keras
    import tensorflow as tf

    from deepsight_tf.model.classifier import HEAD_DROPOUT, HEAD_PREDICTIONS
    from deepsight_tf.training.pipeline import epoch_batches, smooth_labels, without_autotuning

    train_features = backbone_features(model, x, train_indices, num_classes, eval_args)
    val_features = backbone_features(model, x, val_indices, num_classes, eval_args)
    inputs = keras.Input(shape=train_features.shape[1:], name="features")
    outputs = model.get_layer(HEAD_PREDICTIONS)(model.get_layer(HEAD_DROPOUT)(inputs))
    head = keras.Model(inputs, outputs, name="cached_head")

    train_labels = y[train_indices]
    one_hot = tf.one_hot(train_labels, num_classes)
    one_hot = smooth_labels(one_hot, label_smoothing) if label_smoothing else one_hot
    weights = (
        class_weights[train_labels] if class_weights is not None else np.ones(len(train_labels))
    ).astype(np.float32)
    features, one_hot, weights = (
        tf.constant(a) for a in (train_features, np.asarray(one_hot, np.float32), weights)
    )

    def train_dataset(first_epoch: int = 0, epochs: int = 1, skip_batches: int = 0) -> Any:
        def gather(positions: tf.Tensor, _seed: tf.Tensor) -> tuple[tf.Tensor, ...]:
            return tuple(tf.gather(t, positions) for t in (features, one_hot, weights))

        return (
            epoch_batches(
                len(train_labels),
                batch_size,
                seed,
                first_epoch=first_epoch,
                epochs=epochs,
                skip_batches=skip_batches,
            )
            .map(gather)
            .apply(without_autotuning)
        )

    val_ds = tf.data.Dataset.from_tensor_slices(
        (val_features, tf.one_hot(y[val_indices], num_classes))
    ).batch(eval_args["batch_size"])
    return CachedHead(head, train_dataset, val_ds)
