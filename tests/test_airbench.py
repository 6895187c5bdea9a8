"""Tests of the airbench network: its layout, parameter count, whitening, Dirac start and layers."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.model.backbones import get_backbone_spec, stage_of
from deepsight_tf.model.classifier import build_classifier, describe
from deepsight_tf.model.layers import FusedBatchNormalization, whitening_kernel
from deepsight_tf.model.saving import load_classifier, save_classifier

# Every test here starts and ends under the float32 policy (conftest's float32_policy).
pytestmark = pytest.mark.usefixtures("float32_policy")


def patches_images(n: int = 200, seed: int = 0) -> np.ndarray:
    """Correlated channels and neighbouring pixels, as photos have, at unit scale."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 33, 33, 1))
    smooth = (base[:, 1:, 1:] + base[:, :-1, :-1] + base[:, 1:, :-1]) / 3
    mix = np.array([[1.0, 0.8, 0.6]])
    return (smooth * mix + 0.3 * rng.normal(size=(n, 32, 32, 3))).astype(np.float32)


def conv_parameters(widths: tuple[int, ...]) -> int:
    """airbench's trainable parameters from its description: 3x3 convolutions without bias,
    BatchNorm offsets only, the whitening bias (its 2x2 kernel is fixed), a Dense without
    bias on the last width."""
    total, channels = 24, 24  # the whitening bias; 2 * 3 * 2 * 2 filters
    for width in widths:
        total += 9 * channels * width + width + 9 * width * width + width
        channels = width
    return total + channels * 10


@pytest.mark.parametrize("name", ["airbench94", "airbench93"])
def test_layout_maps_and_parameter_count(name: str) -> None:
    spec = get_backbone_spec(name)
    model = build_classifier(name, 10, 32, dropout=0.0)
    info = describe(model)
    assert info.trainable_params == conv_parameters(spec.widths)
    frozen = 2 * 2 * 3 * 24 + 2 * 2 * sum(spec.widths)  # whitening kernel, moving statistics
    assert info.non_trainable_params == frozen
    sides = {"whiten": 31, "group1_act2": 15, "group2_act2": 7, "group3_act2": 3}
    for layer, side in sides.items():
        assert model.get_layer(layer).output.shape[1:3] == (side, side)
    assert spec.last_conv_layer == "group3_act2"
    assert stage_of("whiten") == 0 and stage_of("group2_bn1") == 2
    assert model.get_layer("head_predictions").use_bias is False


def test_airbench94_is_the_papers_two_million_parameter_network() -> None:
    assert describe(build_classifier("airbench94", 10, 32)).trainable_params == 1_971_352


def test_whitening_kernel_decorrelates_the_patches_it_was_fit_on() -> None:
    images = patches_images()
    kernel = whitening_kernel(images, 2, eps=1e-8)
    out = tf.nn.conv2d(images, kernel, 1, "VALID").numpy().reshape(-1, 24)[:, :12]
    covariance = np.cov(out, rowvar=False, bias=True)
    np.testing.assert_allclose(covariance, np.eye(12), atol=0.02)
    # The second half is the first negated, so a ReLU-like activation keeps both signs.
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])


def test_from_scratch_start_passes_each_input_channel_through() -> None:
    images = patches_images(64)
    model = build_classifier("airbench94", 10, 32, init_images=images)
    for name in ("group1_conv2", "group2_conv1", "group3_conv2"):
        kernel = model.get_layer(name).kernel.numpy()
        identity = min(kernel.shape[2:])
        np.testing.assert_array_equal(kernel[1, 1, :identity, :identity], np.eye(identity))
        assert not kernel[0, 0, :identity, :identity].any()
    fitted = whitening_kernel(images, 2, eps=5e-4)
    np.testing.assert_allclose(model.get_layer("whiten").kernel.numpy(), fitted, rtol=1e-5)


def test_airbench_has_no_residual_blocks_and_no_imagenet_weights() -> None:
    with pytest.raises(ConfigError, match="residual"):
        build_classifier("airbench94", 10, 32, zero_init_residual=True)
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_classifier("airbench94", 10, 32, weights="imagenet", stem="imagenet")


@pytest.mark.parametrize("training", [True, False])
def test_fused_batchnorm_equals_keras_batchnorm(training: bool) -> None:
    x = tf.constant(np.random.default_rng(2).normal(3.0, 2.0, (16, 5, 5, 4)), tf.float32)
    ours = FusedBatchNormalization(momentum=0.6, epsilon=1e-3, scale=False)
    keras_bn = keras.layers.BatchNormalization(momentum=0.6, epsilon=1e-3, scale=False)
    for layer in (ours, keras_bn):
        layer.build(x.shape)
        layer.beta.assign([0.1, -0.2, 0.3, 0.0])
        layer.moving_mean.assign([1.0, 2.0, 3.0, 4.0])
        layer.moving_variance.assign([1.0, 4.0, 2.0, 0.5])
    np.testing.assert_allclose(
        ours(x, training=training), keras_bn(x, training=training), atol=1e-5
    )
    np.testing.assert_allclose(ours.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-6)
    # The moving variance takes the unbiased batch variance (PyTorch's), Keras the biased one.
    n = 16 * 5 * 5
    expected = keras_bn.moving_variance.numpy()
    if training:
        batch = np.var(x.numpy().reshape(-1, 4), axis=0)
        expected = expected + 0.4 * batch * (n / (n - 1) - 1)
    np.testing.assert_allclose(ours.moving_variance.numpy(), expected, rtol=1e-5)
    # Frozen (trainable=False) it normalises with its moving statistics even in training.
    ours.trainable = False
    np.testing.assert_allclose(ours(x, training=True), ours(x, training=False), atol=1e-6)


def test_saved_airbench_reloads_in_safe_mode_and_predicts_the_same(tmp_path) -> None:
    images = patches_images(32)
    model = build_classifier("airbench93", 10, 32, init_images=images, width_multiplier=0.25)
    path = tmp_path / "model.keras"
    save_classifier(model, path)
    loaded = load_classifier(path)
    np.testing.assert_allclose(
        loaded.predict(images[:8], verbose=0), model.predict(images[:8], verbose=0), atol=1e-6
    )


def test_a_fresh_process_loads_a_saved_airbench_through_the_saving_module_alone(tmp_path) -> None:
    """Its custom layers (whitening, fused BatchNorm) are registered by importing the module
    that loads models, not by whatever the process imported before (a bench, predict)."""
    images = patches_images(16)
    model = build_classifier("airbench93", 10, 32, init_images=images, width_multiplier=0.25)
    path = tmp_path / "model.keras"
    save_classifier(model, path)
    np.save(tmp_path / "images.npy", images[:4])
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from deepsight_tf.model.saving import load_classifier\n"
        "model = load_classifier(Path(sys.argv[1]))\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n"
    )
    out = tmp_path / "probs.npy"
    args = [sys.executable, "-c", code, str(path), str(tmp_path / "images.npy"), str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), model.predict(images[:4], verbose=0), atol=1e-6)
