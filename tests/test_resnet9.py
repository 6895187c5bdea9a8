"""Page's ResNet-9: its layout and parameter count, identity residuals, exact resume, the chain."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import keras
import numpy as np
import pytest

from deepsight_tf.core.errors import TrainingInterrupted
from deepsight_tf.core.settings import InterpretSettings, TrainSettings
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.model.backbones import (
    family_of,
    get_backbone_spec,
    randomisation_cascade,
    stage_of,
)
from deepsight_tf.model.classifier import build_classifier, describe
from deepsight_tf.training.loop import train

from support.planted import at_step
from support.resume import assert_same_outcome, outcome, two_phases

# Every test here starts and ends under the float32 policy (conftest's float32_policy).
pytestmark = pytest.mark.usefixtures("float32_policy")


def resnet9_parameters(classes: int) -> int:
    """Trainable parameters from Page's description: 3x3 convolutions without bias, each with
    a BatchNorm (scale and offset); prep 64, layers 128, 256, 512, residual blocks of two
    convolutions after the first and the last; a Dense without bias on 512 features."""
    convs = [(3, 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 512)]
    convs += [(512, 512), (512, 512)]
    return sum(9 * cin * cout + 2 * cout for cin, cout in convs) + 512 * classes


def test_layout_maps_and_parameter_count() -> None:
    model = build_classifier("resnet9", 10, 32, dropout=0.0)
    info = describe(model)
    assert info.trainable_params == resnet9_parameters(10) == 6_573_120
    sides = {"prep_act": 32, "layer1_res_add": 16, "layer2_act": 8, "layer3_res_add": 4}
    for layer, side in sides.items():
        assert model.get_layer(layer).output.shape[1:3] == (side, side)
    spec = get_backbone_spec("resnet9")
    assert spec.last_conv_layer == "layer3_res_add" and spec.stages == (0, 1, 2, 3)
    assert stage_of("prep_bn") == 0 and stage_of("layer3_res_bn2") == 3
    assert family_of(model) is spec
    # The sanity check's cascade: the head, the last residual block, the layer's convolution.
    assert randomisation_cascade(model) == ("head", "layer3_res", "layer3_conv")
    head = model.get_layer("head_predictions")
    assert head.use_bias is False and head.kernel.shape == (512, 10)


def test_zero_init_residual_makes_each_residual_block_the_identity() -> None:
    model = build_classifier("resnet9", 3, 32, width_multiplier=1 / 8, zero_init_residual=True)
    assert get_backbone_spec("resnet9").residual_end_batchnorms == (
        "layer1_res_bn2",
        "layer3_res_bn2",
    )
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    for layer in ("layer1", "layer3"):
        probe = keras.Model(
            model.inputs,
            [model.get_layer(f"{layer}_act").output, model.get_layer(f"{layer}_res_add").output],
        )
        block_in, block_out = probe(x, training=False)
        np.testing.assert_array_equal(block_out.numpy(), block_in.numpy())


def resnet9_run(**overrides: object) -> TrainSettings:
    return two_phases(backbone="resnet9", width_multiplier=1 / 16, **overrides)


def test_ctrl_c_mid_run_resumes_to_the_uninterrupted_run_exactly(
    prepared: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = outcome(Path(train(resnet9_run(run_id="r9-reference"), prepared).run_dir))
    at_step(20, lambda: os.kill(os.getpid(), signal.SIGINT), monkeypatch)
    with pytest.raises(TrainingInterrupted):
        train(resnet9_run(run_id="r9-resumed"), prepared)
    monkeypatch.undo()
    train(resnet9_run(run_id="r9-resumed", resume=True), prepared)
    assert_same_outcome(outcome(prepared.run_dir("r9-resumed")), want)


@pytest.mark.slow  # about a minute: a run, its interpretation and its model file
def test_the_chain_runs_on_it(prepared: Workspace) -> None:
    from deepsight_tf.diagnose.interpret import interpret
    from deepsight_tf.serve.predict import load_model

    run = train(resnet9_run(run_id="r9-chain"), prepared)
    result = interpret(
        InterpretSettings(
            run_id=run.run_id,
            methods="gradcam",
            max_images=4,
            context_images=30,
            sanity_images=2,
            grid_per_class=1,
            n_boot=100,
        ),
        prepared,
    )
    # Grad-CAM on its last residual output (the spec's last_conv_layer), on trial.
    assert result.faithfulness is not None and set(result.faithfulness.methods) == {"gradcam"}
    assert result.sanity is not None
    data = np.load(prepared.data_dir("rgb") / "images.npz")
    stored = np.load(Path(run.run_dir) / "predictions.npz")["test_probs"]
    probs = load_model(run.run_dir).predict(data["x_test"], verbose=0)
    np.testing.assert_allclose(probs, stored, atol=1e-5)
