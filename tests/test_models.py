"""Tests of the backbone registry, weight loading, the flat classifier and its freezing."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import keras_hub
import numpy as np
import pytest
import requests

from deepsight_tf.core.errors import ConfigError, OfflineError
from deepsight_tf.model import backbones
from deepsight_tf.model.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResNetSpec,
    choose_normalization,
    get_backbone_spec,
    resnet,
)
from deepsight_tf.model.classifier import (
    backbone_variables,
    build_classifier,
    describe,
    freeze_backbone,
    head_variables,
    unfreeze_all,
    unfreeze_stages,
)

NARROW = 1 / 16  # resnet18 at 4..32 filters: ~45k parameters, a fit step in well under a second

# Two-stack specs small enough for KerasHub's ResNetBackbone (whose first stack must be 64 wide).
TINY_SPECS = {
    "tiny_basic": dict(
        block_type="basic_block",
        stackwise_num_filters=(64, 16),
        stackwise_num_blocks=(1, 1),
        stackwise_num_strides=(1, 2),
    ),
    "tiny_bottleneck": dict(
        block_type="bottleneck_block",
        stackwise_num_filters=(64, 8),
        stackwise_num_blocks=(1, 1),
        stackwise_num_strides=(1, 2),
    ),
}


def images(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def backbone_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: layer.get_weights()
        for layer in model.layers
        if layer.weights and not layer.name.startswith("head_")
    }


def randomise(model: keras.Model, seed: int) -> None:
    """Random values everywhere, BN moving statistics included, so copies are told apart."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        value = rng.normal(0, 0.1, v.shape)
        if "moving_variance" in v.path:
            value = np.abs(value) + 0.5
        v.assign(value.astype("float32"))


@pytest.fixture(scope="module", params=sorted(TINY_SPECS))
def hub_preset(request, tmp_path_factory):
    """A randomly initialised KerasHub ResNetBackbone saved as a preset folder (offline)."""
    name = request.param
    spec = ResNetSpec(name=name, preset="unused", **TINY_SPECS[name])
    keras.utils.set_random_seed(1)
    hub = keras_hub.models.ResNetBackbone(**spec.hub_config())
    randomise(hub, seed=2)
    folder = tmp_path_factory.mktemp(name) / "preset"
    hub.save_to_preset(str(folder))
    return spec, hub, folder


@pytest.fixture
def tiny_registered(hub_preset, monkeypatch):
    """The tiny spec registered with its preset folder as its 'ImageNet' preset."""
    spec, hub, folder = hub_preset
    spec = ResNetSpec(
        name=spec.name,
        preset=str(folder),
        **TINY_SPECS[spec.name],
    )
    monkeypatch.setitem(BACKBONES, spec.name, spec)
    return spec, hub, folder


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ConfigError, match="resnet18, resnet50") as err:
        get_backbone_spec("vgg")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_full_width_backbones_have_the_preset_parameter_count(name):
    spec = BACKBONES[name]
    model = build_classifier(name, num_classes=10, image_size=32)
    info = describe(model)
    head = 10 * spec.filters()[1][-1] * (4 if spec.block_type == "bottleneck_block" else 1) + 10
    preset_params = keras_hub.models.ResNetBackbone.presets[spec.preset]["metadata"]["params"]
    assert info.total_params - head == preset_params
    assert info.head_trainable_params == head
    assert info.trainable_params + info.non_trainable_params == model.count_params()


def test_preset_folder_loads_through_the_imagenet_loader(tiny_registered, monkeypatch):
    """The acceptance test: a saved preset comes back, weight for weight, into the flat graph."""
    spec, hub, folder = tiny_registered
    loaded_from = []
    real_loader = resnet.load_preset_backbone

    def spy(preset: str) -> keras.Model:
        loaded_from.append(preset)
        return real_loader(preset)

    monkeypatch.setattr(resnet, "load_preset_backbone", spy)
    by_folder = build_classifier(spec.name, num_classes=3, image_size=32, weights=str(folder))
    by_imagenet = build_classifier(spec.name, num_classes=3, image_size=32, weights="imagenet")
    assert loaded_from == [str(folder), str(folder)]

    expected = backbone_weights(hub)
    for model in (by_folder, by_imagenet):
        got = backbone_weights(model)
        assert got.keys() == expected.keys()
        for name, values in expected.items():
            for want, have in zip(values, got[name], strict=True):
                np.testing.assert_array_equal(have, want)
    # Same layers, same padding: the flat graph computes what KerasHub's backbone computes.
    x = images()
    features = keras.Model(by_folder.input, by_folder.get_layer(spec.last_conv_layer).output)
    np.testing.assert_allclose(features(x), hub(x), rtol=1e-4, atol=1e-4)


def test_backbone_weights_file_loads_by_layer(hub_preset, monkeypatch, tmp_path):
    spec, hub, _ = hub_preset
    monkeypatch.setitem(BACKBONES, spec.name, spec)
    path = tmp_path / "backbone.weights.h5"
    hub.save_weights(str(path))
    model = build_classifier(spec.name, num_classes=3, image_size=32, weights=str(path))
    for name, values in backbone_weights(hub).items():
        for want, have in zip(values, model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(have, want)
    with pytest.raises(ConfigError, match=r"does not hold tiny_.* 0 missing, 0 extra\)$"):
        build_classifier(spec.name, 3, 32, weights=str(path), width_multiplier=0.5)
    # Keras alone would load a deeper network's file into this one without a word.
    deeper = keras_hub.models.ResNetBackbone(
        **{**spec.hub_config(), "stackwise_num_blocks": [2, 1]}
    )
    deeper.save_weights(str(path))
    with pytest.raises(ConfigError, match=r"missing, [1-9]\d* extra\)$"):
        build_classifier(spec.name, 3, 32, weights=str(path))


def test_imagenet_offline_names_the_fix(monkeypatch):
    asked = []

    def offline(preset: str, **kwargs: object) -> keras.Model:
        asked.append(preset)
        # What kagglehub's HTTP client raises when api.kaggle.com cannot be resolved.
        raise requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded"
        )

    monkeypatch.setattr(keras_hub.models.ResNetBackbone, "from_preset", offline)
    with pytest.raises(OfflineError) as err:
        build_classifier("resnet18", num_classes=10, image_size=32, weights="imagenet")
    assert asked == ["resnet_18_imagenet"]
    message = str(err.value)
    assert "\n" not in message
    assert "--weights none" in message and "preset folder" in message
    # The ImageNet weights that do work offline: installed with deepsight.
    assert "--backbone efficientnet-lite0 --weights imagenet" in message


@pytest.mark.slow
def test_imagenet_download_fails_offline_for_real():
    """On a machine without internet, unpatched: what the download really raises is mapped."""
    with pytest.raises(OfflineError, match="--weights none"):
        build_classifier("resnet18", num_classes=10, image_size=32, weights="imagenet")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(weights="imagenet", stem="cifar"), "imagenet stem"),
        (dict(weights="imagenet", width_multiplier=0.5), "width 1.0"),
        (dict(weights="/no/such/folder"), "no such file"),
        (dict(stem="tiny"), "unknown stem"),
        (dict(dropout=1.0), "dropout"),
        (dict(width_multiplier=0.0), "width multiplier"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_classifier("resnet18", num_classes=10, image_size=32, **kwargs)


def test_weights_folder_that_is_neither_preset_nor_run(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not imagenet, none"):
        build_classifier("resnet18", 10, 32, weights=str(tmp_path))


def test_transfer_from_a_previous_run_skips_the_head(tmp_path):
    keras.utils.set_random_seed(3)
    first = build_classifier("resnet18", 3, 32, stem="cifar", width_multiplier=NARROW)
    randomise(first, seed=4)
    run = tmp_path / "run-1"
    run.mkdir()
    first.save(run / "model.keras")

    second = build_classifier(
        "resnet18", 5, 32, weights=str(run), stem="cifar", width_multiplier=NARROW
    )
    expected = backbone_weights(first)
    for name, values in backbone_weights(second).items():
        for want, have in zip(expected[name], values, strict=True):
            np.testing.assert_array_equal(have, want)
    assert second.get_layer("head_predictions").get_weights()[0].shape[1] == 5

    with pytest.raises(ConfigError, match="architecture differs: shapes differ at conv1_conv"):
        build_classifier("resnet18", 5, 32, weights=str(run), width_multiplier=NARROW)
    with pytest.raises(ConfigError, match="architecture differs"):
        build_classifier("resnet50", 5, 32, weights=str(run), stem="cifar", width_multiplier=NARROW)


@pytest.mark.parametrize(("name", "blocks"), [("resnet18", 8), ("resnet50", 16)])
def test_zero_init_residual_starts_every_block_as_the_identity(name, blocks, tmp_path):
    model = build_classifier(
        name, 3, 32, stem="cifar", width_multiplier=NARROW, zero_init_residual=True
    )
    ends = set(get_backbone_spec(name).residual_end_batchnorms)
    assert len(ends) == blocks
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma = layer.gamma.numpy()
            np.testing.assert_array_equal(gamma, 0.0 if layer.name in ends else 1.0)
    # A block whose shortcut is the identity passes its (post-ReLU) input through unchanged.
    block_in = model.get_layer("stack0_block0_1_conv").input
    probe = keras.Model(model.inputs, [block_in, model.get_layer("stack0_block0_out").output])
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    inputs, outputs = probe(x, training=False)
    if name == "resnet18":  # ResNet-50's first block has a projection shortcut
        np.testing.assert_array_equal(outputs.numpy(), inputs.numpy())
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    with pytest.raises(ConfigError, match="from scratch"):
        build_classifier(
            name,
            3,
            32,
            weights=str(run),
            stem="cifar",
            width_multiplier=NARROW,
            zero_init_residual=True,
        )


def test_saves_and_loads_in_safe_mode(tmp_path):
    model = build_classifier("resnet18", 4, 32, stem="cifar", width_multiplier=NARROW)
    x = images()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize(("stem", "side"), [("cifar", 4), ("imagenet", 1)])
def test_grad_cam_layer_is_the_last_block_of_a_flat_graph(stem, side):
    spec = BACKBONES["resnet18"]
    model = build_classifier("resnet18", 10, 32, stem=stem, width_multiplier=NARROW)
    layer = model.get_layer(spec.last_conv_layer)
    # 32 px over a total stride of 8 (CIFAR stem) or 32 (ImageNet stem), 512 * NARROW channels.
    assert tuple(layer.output.shape) == (None, side, side, 32)
    # Flat: every backbone layer is a layer of the classifier itself, no nested model.
    assert not any(isinstance(sub, keras.Model) for sub in model.layers)
    assert len(spec.stage_layers(model, 4)) > 0 and len(spec.stage_layers(model, 0)) > 0


def test_head_is_float32_softmax_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier("resnet18", 7, 32, stem="cifar", width_multiplier=NARROW)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer(backbones.BACKBONES["resnet18"].last_conv_layer).compute_dtype == (
        "float16"
    )
    probabilities = model(images(3), training=False)
    assert probabilities.dtype == "float32"
    assert probabilities.shape == (3, 7)
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, atol=1e-5)


def test_gradcam_reaches_the_last_block():
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    spec = BACKBONES["resnet18"]
    model = build_classifier("resnet18", 10, 32, stem="cifar", width_multiplier=NARROW)
    # tf-keras-vis on the classifier itself (clone=False): a clone would have plain Keras
    # convolutions, whose TensorFlow gradient crashes oneDNN at this width (fastconv.py).
    cam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=False)
    maps = cam(CategoricalScore(3), images(2), penultimate_layer=spec.last_conv_layer)
    assert maps.shape == (2, 32, 32)
    assert np.all(np.isfinite(maps))
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    assert model.layers[-1].activation is keras.activations.linear  # ReplaceToLinear ran on it


def test_unfreezing_trains_convs_but_never_bn_statistics():
    keras.utils.set_random_seed(5)
    model = build_classifier("resnet18", 3, 32, stem="cifar", width_multiplier=NARROW)
    spec = BACKBONES["resnet18"]
    x, y = images(8), np.arange(8) % 3
    bn_layers = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]

    def bn_stats() -> list[np.ndarray]:
        return [w.numpy().copy() for la in bn_layers for w in (la.moving_mean, la.moving_variance)]

    def kernels(stage: int) -> list[np.ndarray]:
        return [
            la.kernel.numpy().copy()
            for la in spec.stage_layers(model, stage)
            if isinstance(la, keras.layers.Conv2D)
        ]

    def fit_one_step() -> None:
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)

    # From scratch everything trains, and BN statistics do move: the check below can fail.
    before = bn_stats()
    fit_one_step()
    assert any(not np.array_equal(a, b) for a, b in zip(before, bn_stats(), strict=True))

    freeze_backbone(model)
    head_only = describe(model)
    assert head_only.backbone_trainable_params == 0
    assert head_only.trainable_params == head_only.head_trainable_params == 32 * 3 + 3

    unfreeze_stages(model, (4,))
    assert all(not la.trainable for la in bn_layers)
    stats, stage4, stage1 = bn_stats(), kernels(4), kernels(1)
    head = model.get_layer("head_predictions").kernel.numpy().copy()
    fit_one_step()
    for a, b in zip(stats, bn_stats(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, b) for a, b in zip(stage4, kernels(4), strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(stage1, kernels(1), strict=True))
    assert not np.array_equal(head, model.get_layer("head_predictions").kernel.numpy())


def test_variable_groups_partition_the_trainable_variables():
    model = build_classifier("resnet18", 3, 32, stem="cifar", width_multiplier=NARROW)
    freeze_backbone(model)
    unfreeze_stages(model, (3, 4))
    backbone, head = backbone_variables(model), head_variables(model)
    assert [v.path for v in backbone + head] == [v.path for v in model.trainable_variables]
    assert [v.path for v in head] == ["head_predictions/kernel", "head_predictions/bias"]
    assert {v.path.split("_")[0] for v in backbone} == {"stack2", "stack3"}
    assert not any("_bn/" in v.path for v in backbone)

    unfreeze_stages(model, "all")
    assert {v.path.split("_")[0] for v in backbone_variables(model)} == {
        "conv1",
        "stack0",
        "stack1",
        "stack2",
        "stack3",
    }
    with pytest.raises(ConfigError, match="stages 0 \\(stem\\) to 4"):
        unfreeze_stages(model, (5,))


def test_normalisation_is_the_preset_converters_scale_and_offset():
    spec = BACKBONES["resnet18"]
    x = images(2)
    # KerasHub's timm converter: scale = 1 / (255 std), offset = -mean / std.
    scale = 1.0 / (255.0 * np.array(IMAGENET_STD))
    offset = -np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(spec.normalization(x), x * scale + offset, rtol=1e-5, atol=1e-5)

    assert choose_normalization("resnet18", "imagenet", [125, 123, 114], [63, 62, 66]) == (
        spec.normalization
    )
    from_data = choose_normalization("resnet18", "none", [125.0, 123.0, 114.0], [63.0, 62.0, 66.0])
    assert from_data.source == "data"
    np.testing.assert_allclose(from_data(np.array([[[[125.0, 185.0, 48.0]]]])), [[[[0, 1, -1]]]])
    with pytest.raises(ValueError, match=r"0\.\.255 pixel units"):
        choose_normalization("resnet18", "none", [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])


def test_a_fine_tuning_phase_trains_the_same_layers_fresh_or_after_the_head_phase():
    """Stages it does not name stay frozen on a freshly built model too (--frozen-epochs 0, a
    resume into the phase, the step probes), as after a head phase: only stage 4 and the head
    learn, every BatchNorm in inference mode."""
    from deepsight_tf.core.settings import TrainSettings
    from deepsight_tf.model.backbones import stage_of
    from deepsight_tf.training.plan import parse_unfreeze, plan_phases, resolve_settings
    from deepsight_tf.training.prepare import set_trainable

    settings = resolve_settings(
        TrainSettings(backbone="resnet18", weights="imagenet", unfreeze="4", image_size=32)
    )
    head, finetune = plan_phases(settings)
    unfreeze = parse_unfreeze(settings.unfreeze, settings.backbone)

    def trained(model: keras.Model) -> list[str]:
        return [v.path for v in model.trainable_variables]

    fresh = build_classifier("resnet18", 3, 32, stem="cifar", width_multiplier=NARROW)
    set_trainable(fresh, finetune, settings, unfreeze)
    staged = build_classifier("resnet18", 3, 32, stem="cifar", width_multiplier=NARROW)
    set_trainable(staged, head, settings, unfreeze)
    set_trainable(staged, finetune, settings, unfreeze)
    assert trained(fresh) == trained(staged)
    layers = {la.name: la for la in fresh.layers}
    assert {stage_of(la.name) for la in fresh.layers if la.trainable_weights} == {4, None}
    assert not any(
        la.trainable for la in layers.values() if isinstance(la, keras.layers.BatchNormalization)
    )


@pytest.mark.slow  # ~1 min; staged unfreezing is tested fast above on a narrow model
def test_unfreeze_all_after_a_frozen_head_phase_trains_every_layer():
    """`model.trainable = True` alone leaves layers frozen one by one still frozen."""
    model = build_classifier("resnet18", 3, 32, stem="cifar", width_multiplier=NARROW)
    everything = len(model.trainable_variables)
    freeze_backbone(model)
    model.trainable = True
    assert len(model.trainable_variables) == 2  # the pitfall unfreeze_all exists for
    unfreeze_all(model)
    assert len(model.trainable_variables) == everything
    bn = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bn and all(la.trainable for la in bn)


# --- EfficientNet-Lite -------------------------------------------------------------------------

LITE0 = "efficientnet-lite0"


@pytest.fixture(scope="module")
def lite0(lite0_cache):
    """A 3-class EfficientNet-Lite0 classifier at 64 px with the ImageNet weights, and the
    converted backbone they came from."""
    from deepsight_tf.model.efficientnet_lite import imagenet_backbone

    keras.utils.set_random_seed(7)
    return build_classifier(LITE0, 3, 64, weights="imagenet"), imagenet_backbone("lite0")


def test_efficientnet_lite_is_registered_with_its_layout_and_inputs():
    from deepsight_tf.core.settings import BACKBONES as VOCABULARY
    from deepsight_tf.model import efficientnet_lite

    assert [n for n in VOCABULARY if n.startswith("efficientnet")] == [
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
    ]
    spec = get_backbone_spec(LITE0)
    assert spec.stages == tuple(range(9))
    assert spec.last_conv_layer == efficientnet_lite.GRADCAM_LAYER == "top_activation"
    # (x - 127) / 128 whatever the data's statistics: the checkpoints were trained so.
    for weights in ("imagenet", "none"):
        norm = choose_normalization(LITE0, weights)
        np.testing.assert_allclose(
            norm(np.array([[[[0.0, 127.0, 255.0]]]])), [[[[-127 / 128, 0, 1]]]]
        )
    assert choose_normalization(LITE0, "imagenet", [125, 123, 114], [63, 62, 66]).source == (
        "imagenet"
    )


def test_efficientnet_is_built_flat_on_the_classifier_input_with_every_imagenet_weight(lite0):
    model, source = lite0
    spec = get_backbone_spec(LITE0)
    # Flat: no nested model, and the stem is applied to the classifier's own input tensor.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.get_layer("stem_conv").input is model.inputs[0]
    assert tuple(model.get_layer(spec.last_conv_layer).output.shape) == (None, 2, 2, 1280)
    # Every variable of the converted backbone, nested ones included (45 of its 49 BatchNorm
    # layers sit inside KerasHub's block layers), is in the classifier, value for value.
    nested_bn = [
        sub
        for layer in model.layers
        for sub in layer._flatten_layers(include_self=False)
        if isinstance(sub, keras.layers.BatchNormalization)
    ]
    assert len(nested_bn) == 45
    expected = {v.path: v.numpy() for v in source.weights}
    got = {v.path: v.numpy() for v in model.weights if not v.path.startswith("head_")}
    assert got.keys() == expected.keys() and len(got) == 245
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    features = keras.Model(model.input, model.get_layer(spec.last_conv_layer).output)
    np.testing.assert_allclose(features(x), source(x), rtol=0, atol=1e-5)
    # Every backbone layer has a stage; stacks 2 to 7 are one layer per block.
    stages = {layer.name: spec.stage_of(layer.name) for layer in model.layers[1:]}
    backbone = {name: stage for name, stage in stages.items() if not name.startswith("head_")}
    assert set(backbone.values()) == set(range(9))
    assert [n for n, s in backbone.items() if s == 6] == [f"block6{c}_" for c in "abcd"]


def test_efficientnet_saves_and_loads_in_safe_mode(lite0, tmp_path):
    model, _ = lite0
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    x = images(2, 64)
    np.testing.assert_allclose(loaded(x), model(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(weights="imagenet", stem="cifar"), "imagenet stem"),
        (dict(stem="cifar"), "one stem"),
        (dict(width_multiplier=0.5), "width 1.0 only"),
        (dict(weights="imagenet", width_multiplier=0.5), "width 1.0"),
    ],
)
def test_efficientnet_has_one_stem_and_one_width(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_classifier(LITE0, num_classes=3, image_size=32, **kwargs)
    assert "\n" not in str(err.value)


def test_efficientnet_defaults_keep_its_stem_and_fine_tune_its_last_grids():
    from deepsight_tf.core.settings import TrainSettings
    from deepsight_tf.training.plan import resolve_settings

    scratch = resolve_settings(TrainSettings(backbone=LITE0, weights="none", image_size=32))
    assert scratch.stem == "imagenet" and scratch.unfreeze == "all"
    pretrained = resolve_settings(TrainSettings(backbone=LITE0, weights="imagenet"))
    assert pretrained.unfreeze == "4,5,6,7,8"
    resnet = resolve_settings(TrainSettings(backbone="resnet18", weights="none", image_size=32))
    assert resnet.stem == "cifar"
    airbench = resolve_settings(TrainSettings(backbone="airbench94", weights="imagenet"))
    assert airbench.unfreeze == "2,3"


def test_efficientnet_unfreezes_whole_blocks_and_never_a_batchnorm(lite0):
    """Stages 7 and 8: exactly block 7a's convolutions, the head conv and the head train; a
    step leaves every other weight and every BatchNorm statistic, nested or not, as it was."""
    model, _ = lite0
    weights = model.get_weights()
    x, y = images(8, 64, seed=1), np.arange(8) % 3

    def fit_one_step() -> None:
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)

    def batchnorm_statistics() -> dict[str, np.ndarray]:
        return {v.path: v.numpy() for v in model.weights if "moving_" in v.path}

    try:
        # Everything trainable (as built, from scratch): nested statistics do move, so the
        # check below can fail.
        unfreeze_all(model)
        before = batchnorm_statistics()
        fit_one_step()
        moved = [p for p, v in batchnorm_statistics().items() if not np.array_equal(v, before[p])]
        assert len(moved) == 2 * 49
        model.set_weights(weights)

        freeze_backbone(model)
        unfreeze_stages(model, (7, 8))
        trainable = {v.path for v in model.trainable_variables}
        assert trainable == {
            "block7a_/block7a_expand_conv/kernel",
            "block7a_/block7a_dwconv2/kernel",
            "block7a_/block7a_project_conv/kernel",
            "top_conv/kernel",
            "head_predictions/kernel",
            "head_predictions/bias",
        }
        assert [v.path for v in backbone_variables(model) + head_variables(model)] == [
            v.path for v in model.trainable_variables
        ]
        bn = [
            sub
            for sub in model._flatten_layers(include_self=False)
            if isinstance(sub, keras.layers.BatchNormalization)
        ]
        assert len(bn) == 49 and not any(layer.trainable for layer in bn)

        before = {v.path: v.numpy() for v in model.weights}
        fit_one_step()
        after = {v.path: v.numpy() for v in model.weights}
        changed = {p for p in before if not np.array_equal(before[p], after[p])}
        assert changed == trainable  # frozen stages and BatchNorm statistics bit-identical

        unfreeze_all(model)  # from scratch again: every BatchNorm, nested too, trains
        assert all(layer.trainable for layer in bn)
        assert len(model.trainable_variables) == len(model.weights) - 2 * 49
    finally:
        unfreeze_all(model)
        model.set_weights(weights)
