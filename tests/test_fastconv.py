"""The fast convolution gradient equals TensorFlow's, layer by layer and through a ResNet."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepsight_tf.model.classifier import build_classifier
from deepsight_tf.model.fastconv import accelerate_convolutions, fast_conv2d, onednn_enabled

CASES = [
    (2, 3, 1, "SAME", 8, 4),
    (6, 3, 2, "VALID", 4, 8),
    (7, 3, 2, "SAME", 3, 5),
    (8, 1, 2, "VALID", 4, 4),
    (38, 7, 2, "VALID", 3, 8),
    (9, 3, 2, "SAME", 2, 2),
    (5, 3, 1, "VALID", 3, 3),
    (8, 3, 2, "SAME", 2, 3),
]


@pytest.mark.parametrize(("size", "k", "stride", "padding", "cin", "cout"), CASES)
def test_gradients_equal_tensorflows(size, k, stride, padding, cin, cout) -> None:
    """Against TensorFlow in float64: its Eigen kernels, not oneDNN's, whose float32 kernel
    gradient of a 1x1 stride-2 convolution with < 16 input channels is wrong when capped at
    AVX2 (22% off) and crashes on AVX-512 (see fastconv.py): the reference must be neither."""
    rng = np.random.default_rng(size * 10 + k)
    x = rng.normal(size=(2, size, size, cin))
    w = rng.normal(size=(k, k, cin, cout))
    x64, w64 = tf.constant(x, tf.float64), tf.constant(w, tf.float64)
    x32, w32 = tf.constant(x, tf.float32), tf.constant(w, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x64, w64, x32, w32])
        reference = tf.reduce_sum(tf.nn.conv2d(x64, w64, stride, padding) ** 2)
        fast = tf.reduce_sum(fast_conv2d(x32, w32, stride, padding) ** 2)
    np.testing.assert_allclose(fast.numpy(), reference.numpy(), rtol=1e-5)
    for expected, got in zip(
        tape.gradient(reference, [x64, w64]), tape.gradient(fast, [x32, w32]), strict=True
    ):
        # float32 sums of terms up to max|expected| carry errors of that order times 1e-6.
        scale = float(np.abs(expected.numpy()).max())
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5 * scale)


def test_a_resnet_trains_the_same_with_fast_gradients() -> None:
    keras.utils.set_random_seed(0)
    # Width 1/4: every 1x1 stride-2 convolution has >= 16 input channels, so TensorFlow's own
    # kernel gradient (the reference) stays clear of the oneDNN bug that fastconv avoids.
    built = build_classifier("resnet18", 3, 32, width_multiplier=1 / 4, stem="cifar", dropout=0.0)
    # clone_model makes fresh layers: plain TensorFlow gradients, the same weights.
    plain = keras.models.clone_model(built)
    plain.set_weights(built.get_weights())
    fast = keras.models.clone_model(built)
    fast.set_weights(built.get_weights())
    convolutions = sum(isinstance(layer, keras.layers.Conv2D) for layer in plain.layers)
    assert accelerate_convolutions(fast, every_convolution=True) == convolutions > 10
    x = tf.random.normal((4, 32, 32, 3), seed=1)
    y = tf.one_hot([0, 1, 2, 0], 3)

    def gradients(model: keras.Model) -> list[np.ndarray]:
        with tf.GradientTape() as tape:
            loss = keras.losses.categorical_crossentropy(y, model(x, training=True))
        return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    for expected, got in zip(gradients(plain), gradients(fast), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_by_default_only_1x1_convolutions_change_where_onednn_runs() -> None:
    """With oneDNN TensorFlow's own 3x3 and 7x7 gradients are the faster ones; without it,
    every convolution takes fastconv's (the measurements in fastconv.py's docstring)."""
    model = keras.models.clone_model(build_classifier("resnet18", 3, 32, width_multiplier=1 / 4))
    convolutions = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    one_by_one = [la for la in convolutions if tuple(la.kernel_size) == (1, 1)]
    expected = len(one_by_one) if onednn_enabled() else len(convolutions)
    assert accelerate_convolutions(model) == expected
    assert 0 < len(one_by_one) < len(convolutions)
    patched = {la.name for la in convolutions if "convolution_op" in vars(la)}
    assert {la.name for la in one_by_one} <= patched
