"""Layers deepsight's own networks are made of: fused BatchNorm and the patch-whitening stem."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="deepsight")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization computed by TensorFlow's fused kernel on NHWC maps.

    The same variables, configuration and inference-mode rule as the Keras layer (a frozen
    layer, `trainable=False`, normalises with its moving statistics even in training), but
    one fused op in place of Keras's moments, casts and element-wise arithmetic: under
    mixed_bfloat16 the batch statistics are still accumulated in float32 while the map stays
    in bfloat16. Moving variance is updated with the unbiased batch variance, as PyTorch's
    BatchNorm does. Inputs of another rank, or with a mask, take the Keras layer's path.
    """

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if mask is not None or len(inputs.shape) != 4 or self.axis not in (3, -1):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, is_training=True
            )[:3]
            keep = self.momentum
            self.moving_mean.assign(keep * self.moving_mean + (1.0 - keep) * mean)
            self.moving_variance.assign(keep * self.moving_variance + (1.0 - keep) * variance)
            return outputs
        return tf.compat.v1.nn.fused_batch_norm(
            inputs,
            scale,
            offset,
            mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon,
            is_training=False,
        )[0]


@keras.saving.register_keras_serializable(package="deepsight")
class PatchWhitening(keras.layers.Layer):
    """A fixed convolution that whitens `kernel_size` x `kernel_size` patches, then a bias.

    The kernel holds the eigenvectors of the training patches' covariance, each scaled by
    1 / sqrt(eigenvalue + eps), and their negatives (2 * channels * k * k filters), as in
    airbench (Jordan 2024, after tysam-code's hlb-CIFAR10): the first layer starts as a
    decorrelating map of the data instead of a random one. The kernel is set from data once
    (`whiten`) and never trained; the bias is trained.
    """

    def __init__(self, kernel_size: int = 2, eps: float = 5e-4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(kernel_size) != kernel_size or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive integer. Received: {kernel_size}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0. Received: {eps}")
        self.kernel_size = int(kernel_size)
        self.eps = float(eps)

    def build(self, input_shape: Any) -> None:
        channels = int(input_shape[-1])
        self.filters = 2 * channels * self.kernel_size**2
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, channels, self.filters),
            initializer="glorot_uniform",
            trainable=False,
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs: Any) -> Any:
        outputs = tf.nn.conv2d(inputs, tf.cast(self.kernel, inputs.dtype), 1, "VALID")
        return tf.nn.bias_add(outputs, tf.cast(self.bias, inputs.dtype))

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        def side(n: Any) -> Any:
            return None if n is None else n - self.kernel_size + 1

        return (input_shape[0], side(input_shape[1]), side(input_shape[2]), self.filters)

    def whiten(self, images: np.ndarray) -> None:
        """Set the kernel from normalised NHWC images (a few thousand are plenty)."""
        self.kernel.assign(whitening_kernel(images, self.kernel_size, self.eps))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kernel_size": self.kernel_size, "eps": self.eps}


def whitening_kernel(images: np.ndarray, kernel_size: int, eps: float) -> np.ndarray:
    """(k, k, C, 2 C k^2) filters: the patch covariance's eigenvectors, largest eigenvalue
    first, scaled by 1 / sqrt(eigenvalue + eps), then the same filters negated."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or min(images.shape[1:3]) < kernel_size:
        raise ValueError(
            f"images must be NHWC and at least {kernel_size} px. Received: {images.shape}"
        )
    channels = images.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(
        images, (kernel_size, kernel_size), axis=(1, 2)
    )  # N, H', W', C, k, k
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kernel_size**2 * channels)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    filters = np.concatenate([scaled, -scaled], axis=1)
    return filters.reshape(kernel_size, kernel_size, channels, -1).astype(np.float32)


@keras.saving.register_keras_serializable(package="deepsight")
class ImageResize(keras.layers.Layer):
    """Images resized to `size` x `size` by tf.image.resize with any of its methods: Keras's
    Resizing layer has no gaussian or mitchellcubic, which a run may have trained with. Images
    already at the size pass unchanged, as preprocess leaves them (a Gaussian kernel would
    blur them even at scale 1)."""

    def __init__(self, size: int, interpolation: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.interpolation = str(interpolation)

    def call(self, images: Any) -> Any:
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        return tf.cond(
            tf.logical_and(tf.equal(shape[-3], self.size), tf.equal(shape[-2], self.size)),
            lambda: images,
            lambda: tf.image.resize(images, (self.size, self.size), method=self.interpolation),
        )

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size, "interpolation": self.interpolation}
