"""Narrow models do not crash natively: oneDNN's 1x1 stride-2 kernel gradient is kept away.

TensorFlow 2.21's oneDNN kernel for the kernel gradient of a 1x1, stride-2 convolution with
fewer than 16 input channels corrupts the heap on AVX-512 CPUs (seen on AMD Zen 4; exit 134 or
139). Narrow ResNets have such shortcut convolutions. Each check runs in a subprocess, since a
heap corruption kills the process rather than failing a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The reproduction from the issue, through deepsight's convolution: 200 gradient steps of a
# 1x1 stride-2 convolution with 1 to 8 input channels.
THROUGH_FASTCONV = """
import tensorflow as tf
from deepsight_tf.model.fastconv import fast_conv2d
for channels in (1, 3, 4, 8):
    x = tf.random.normal([9, 16, 16, channels])
    k = tf.Variable(tf.random.normal([1, 1, channels, 8]))
    for _ in range(200):
        with tf.GradientTape() as tape:
            s = tf.reduce_sum(fast_conv2d(x, k, 2, "SAME") ** 2)
        tape.gradient(s, k)
print("survived")
"""

# The narrowest classifier the CLI builds (one channel a layer) and --width-multiplier 0.125,
# at the default 64 px: training gradients, then every CAM method on a clone that has plain
# Keras layers (as a loaded model.keras has).
NARROW_MODELS = """
import numpy as np, keras, tensorflow as tf
from deepsight_tf.diagnose import explain
from deepsight_tf.model.classifier import build_classifier
for width in (0.001, 0.125):
    model = build_classifier("resnet18", 3, 64, stem="imagenet", width_multiplier=width)
    x = tf.random.normal((9, 64, 64, 3))
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        tape.gradient(loss, model.trainable_variables)
    plain = keras.models.clone_model(model)  # fresh layers: TensorFlow's own gradients
    plain.set_weights(model.get_weights())
    for method in explain.METHODS:
        maps = explain.compute_cams(
            plain, x.numpy(), np.arange(9) % 3, layer_name="stack3_block1_out", method=method
        )
        assert maps.shape == (9, 64, 64), maps.shape
print("survived")
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "code",
    [THROUGH_FASTCONV, pytest.param(NARROW_MODELS, marks=pytest.mark.slow)],
    ids=["conv", "models"],
)
def test_narrow_convolution_gradients_do_not_crash(code: str) -> None:
    done = run_python(code)
    assert done.returncode == 0 and "survived" in done.stdout, (
        f"exit {done.returncode}\n{done.stderr[-3000:]}"
    )
