"""Conv2D gradients on CPU that are fast where TensorFlow's are slow, and never crash.

Two independent fixes, each applied where it was measured to help (TF 2.21, 2 cores):

- The input gradient as a forward convolution (of the zero-dilated output gradient with the
  flipped, transposed kernel). Without oneDNN (TF_ENABLE_ONEDNN_OPTS=0, or a build without
  it) TensorFlow's Conv2DBackpropInput is very slow on small maps: 0.79 s against 0.06 s for
  a 3x3 convolution on 2x2x512 maps at batch 128, and a ResNet-18 step at 64 px ran at 34
  images/s with TensorFlow's gradients against 104 with these. With oneDNN (the default on
  x86) TensorFlow's own gradient is as fast or faster (181 against 159 images/s for the same
  step), so there every convolution but the 1x1 ones keeps it.
- The kernel gradient of a 1x1 convolution as the matrix product it is. This keeps away from
  oneDNN's `jit_1x1` backward-weights kernel, which for a 1x1 stride-2 convolution with fewer
  than 16 input channels corrupts the heap on AVX-512 CPUs (exit 134 or 139; seen on AMD Zen
  4) and, capped at AVX2, silently returns a gradient 22% off. Narrow ResNets have exactly
  such shortcut convolutions, so every 1x1 convolution always gets this.

Only layer instances change (no new layer class): weights, saved files and maths are the same.
"""

from __future__ import annotations

import types
from typing import Any

import keras
import tensorflow as tf


def _dilate(dy: tf.Tensor, stride: int) -> tf.Tensor:
    """Insert stride-1 zeros between neighbouring rows and columns of dy (NHWC)."""
    if stride == 1:
        return dy
    _, h, w, c = dy.shape
    zeros = [tf.zeros_like(dy)] * (stride - 1)
    rows = tf.reshape(tf.stack([dy, *zeros], axis=2), (-1, h * stride, w, c))[
        :, : (h - 1) * stride + 1
    ]
    zeros = [tf.zeros_like(rows)] * (stride - 1)
    cols = tf.reshape(tf.stack([rows, *zeros], axis=3), (-1, rows.shape[1], w * stride, c))
    return cols[:, :, : (w - 1) * stride + 1]


def _leading_pad(size: int, out: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "VALID":
        return 0
    return max((out - 1) * stride + kernel - size, 0) // 2


def _pad_or_crop(x: tf.Tensor, axis: int, before: int, after: int) -> tf.Tensor:
    if before < 0:
        x = tf.gather(x, tf.range(-before, x.shape[axis]), axis=axis)
        before = 0
    if after < 0:
        x = tf.gather(x, tf.range(0, x.shape[axis] + after), axis=axis)
        after = 0
    paddings = [[0, 0]] * 4
    paddings[axis] = [before, after]
    return tf.pad(x, paddings)


def input_gradient(
    dy: tf.Tensor, kernel: tf.Tensor, input_shape: tuple[int, ...], stride: int, padding: str
) -> tf.Tensor:
    """d(loss)/d(input) of conv2d(x, kernel, stride, padding) as one forward convolution."""
    _, h, w, _ = input_shape
    kh, kw = kernel.shape[0], kernel.shape[1]
    ho, wo = dy.shape[1], dy.shape[2]
    dyd = _dilate(dy, stride)
    top = _leading_pad(h, ho, kh, stride, padding)
    left = _leading_pad(w, wo, kw, stride, padding)
    dyd = _pad_or_crop(dyd, 1, kh - 1 - top, h + top - (ho - 1) * stride - 1)
    dyd = _pad_or_crop(dyd, 2, kw - 1 - left, w + left - (wo - 1) * stride - 1)
    flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
    return tf.nn.conv2d(dyd, flipped, 1, "VALID")


def kernel_gradient(
    x: tf.Tensor, dy: tf.Tensor, kernel_shape: tf.TensorShape, stride: int, padding: str
) -> tf.Tensor:
    """d(loss)/d(kernel) of conv2d(x, kernel, stride, padding); a matrix product for 1x1 kernels.

    A 1x1 kernel needs no padding under either rule and reads the input at every stride-th row
    and column, so its gradient is sum over (n, h, w) of x[n, s*h, s*w, :]^T dy[n, h, w, :].
    """
    if tuple(kernel_shape[:2]) == (1, 1):
        cin, cout = kernel_shape[2], kernel_shape[3]
        strided = x[:, ::stride, ::stride, :] if stride > 1 else x
        dw = tf.matmul(tf.reshape(strided, (-1, cin)), tf.reshape(dy, (-1, cout)), transpose_a=True)
        return tf.reshape(dw, (1, 1, cin, cout))
    return tf.raw_ops.Conv2DBackpropFilter(
        input=x,
        filter_sizes=list(kernel_shape),
        out_backprop=dy,
        strides=[1, stride, stride, 1],
        padding=padding,
    )


def fast_conv2d(x: tf.Tensor, kernel: tf.Tensor, stride: int, padding: str) -> tf.Tensor:
    """tf.nn.conv2d (NHWC, square stride, no dilation) whose input gradient is fast on CPU."""
    input_shape = tuple(x.shape)
    # Read the variable outside the custom gradient, so its gradient flows through the read.
    kernel = tf.convert_to_tensor(kernel)

    @tf.custom_gradient
    def conv(x: tf.Tensor, kernel: tf.Tensor) -> Any:
        y = tf.nn.conv2d(x, kernel, stride, padding)

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            dx = input_gradient(dy, kernel, input_shape, stride, padding)
            return dx, kernel_gradient(x, dy, kernel.shape, stride, padding)

        return y, grad

    return conv(x, kernel)


def _eligible(layer: keras.layers.Layer) -> bool:
    return (
        type(layer) is keras.layers.Conv2D
        and layer.data_format == "channels_last"
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and layer.strides[0] == layer.strides[1]
        and layer.padding in ("same", "valid")
    )


def _fast_convolution_op(self: keras.layers.Conv2D, inputs: Any, kernel: Any) -> Any:
    if any(d is None for d in inputs.shape[1:]):  # the pads need static sizes
        return keras.layers.Conv2D.convolution_op(self, inputs, kernel)
    return fast_conv2d(inputs, kernel, self.strides[0], self.padding.upper())


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (TF_ENABLE_ONEDNN_OPTS)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def accelerate_convolutions(model: keras.Model, every_convolution: bool | None = None) -> int:
    """Give `model`'s plain channels-last Conv2D layers these gradients; returns how many.

    Every 1x1 convolution gets them; the others too when `every_convolution`, which by default
    is whether oneDNN is off (see the module's measurements). Call it again after loading a
    model or cloning one: clones get fresh layers.
    """
    if every_convolution is None:
        every_convolution = not onednn_enabled()
    count = 0
    for layer in model._flatten_layers(include_self=False):
        one_by_one = tuple(layer.kernel_size) == (1, 1) if _eligible(layer) else False
        if _eligible(layer) and (one_by_one or every_convolution):
            layer.convolution_op = types.MethodType(_fast_convolution_op, layer)
            count += 1
    return count
