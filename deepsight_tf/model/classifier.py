"""The classifier: a registered backbone with a new head as one flat graph, and its freezing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import keras
import numpy as np

from deepsight_tf.core.checks import check_image_size
from deepsight_tf.core.errors import ConfigError
from deepsight_tf.model.backbones import (
    HEAD_PREFIX,
    Backbone,
    get_backbone_spec,
    is_head_layer,
    stage_of,
)
from deepsight_tf.model.fastconv import accelerate_convolutions
from deepsight_tf.model.weights import copy_backbone_weights, load_source_weights

HEAD_POOL = HEAD_PREFIX + "pool"
HEAD_SCALE = HEAD_PREFIX + "scale"
HEAD_DROPOUT = HEAD_PREFIX + "dropout"
HEAD_PREDICTIONS = HEAD_PREFIX + "predictions"


@dataclass
class ModelDescription:
    """Parameter counts of a classifier, for the CLI and the run's JSON."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    total_params: int
    trainable_params: int
    non_trainable_params: int
    backbone_trainable_params: int
    head_trainable_params: int


def build_classifier(
    backbone: str,
    num_classes: int,
    image_size: int,
    weights: str = "none",
    stem: str = "imagenet",
    dropout: float = 0.2,
    width_multiplier: float = 1.0,
    zero_init_residual: bool = False,
    any_size: bool = False,
    init_images: np.ndarray | None = None,
) -> keras.Model:
    """A flat functional classifier: backbone layers, then pool, dropout and a float32 softmax.

    `weights` is "imagenet", "none", a KerasHub preset folder, a backbone .weights.h5 or a
    deepsight run folder (its model.keras); pretrained backbone weights are copied layer by
    layer by name and the head always starts fresh. Everything is trainable on return, BN
    included, as training from scratch wants; fine-tuning calls freeze_backbone() first.
    `zero_init_residual` (from scratch only) starts the gamma of the BatchNorm that ends each
    residual branch at zero, so every block begins as the identity (Goyal et al. 2017;
    torchvision's `zero_init_residual`). `any_size` leaves the input's height and width open
    (progressive resizing feeds smaller images first); `image_size` is then the size the
    classifier is scored at. `init_images` (normalised training images) feed a backbone's
    data-dependent initialisation from scratch (airbench's whitening layer).
    """
    spec = get_backbone_spec(backbone)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2. Received: {num_classes}")
    check_image_size(image_size)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"the head dropout must be in [0, 1), not {dropout}")
    # Resolve and load the weights before building, so a bad --weights fails fast.
    source = load_source_weights(spec, weights, stem, width_multiplier)
    if zero_init_residual and source is not None:
        raise ConfigError(
            "--zero-init-residual starts a network from scratch; drop it or use --weights none"
        )
    if zero_init_residual and not spec.residual_end_batchnorms:
        raise ConfigError(f"--zero-init-residual needs residual blocks, which {backbone} lacks")

    side = None if any_size else image_size
    images = keras.Input(shape=(side, side, 3), name="images")
    features = spec.build_features(images, stem=stem, width_multiplier=width_multiplier)
    outputs = _head(spec, features, num_classes, dropout)
    model = keras.Model(images, outputs, name=f"{backbone}_classifier")
    if source is not None:
        copy_backbone_weights(source, model, label=weights)
    else:
        spec.initialise(model, init_images)
    if zero_init_residual:
        for name in spec.residual_end_batchnorms:
            gamma = model.get_layer(name).gamma
            gamma.assign(keras.ops.zeros_like(gamma))
    accelerate_convolutions(model)
    return model


def _head(
    spec: Backbone, features: keras.KerasTensor, num_classes: int, dropout: float
) -> keras.KerasTensor:
    """Pool, the backbone's fixed feature scale (when it has one), dropout, a softmax Dense."""
    pool = (
        keras.layers.GlobalMaxPooling2D
        if spec.head_pool == "max"
        else keras.layers.GlobalAveragePooling2D
    )
    x = pool(name=HEAD_POOL)(features)
    if spec.head_scale != 1.0:
        # A scale on the features is the same scale on the logits, but keeps the Dense layer
        # last, where Grad-CAM's linear copy swaps its softmax for logits.
        x = keras.layers.Rescaling(spec.head_scale, name=HEAD_SCALE)(x)
    x = keras.layers.Dropout(dropout, name=HEAD_DROPOUT)(x)
    # float32 even under a mixed-precision policy, so the softmax and the loss stay stable.
    return keras.layers.Dense(
        num_classes,
        activation="softmax",
        use_bias=spec.head_bias,
        kernel_initializer=spec.head_initializer,
        dtype="float32",
        name=HEAD_PREDICTIONS,
    )(x)


def freeze_backbone(model: keras.Model) -> None:
    """Only the head stays trainable (recompile before the next fit)."""
    model.trainable = True
    for layer in model.layers:
        _set_trainable(layer, is_head_layer(layer))


def unfreeze_all(model: keras.Model) -> None:
    """Every layer trainable, BatchNorm included (training from scratch; recompile after)."""
    model.trainable = True
    for layer in model.layers:
        _set_trainable(layer, True)


def unfreeze_stages(model: keras.Model, stages: Iterable[int] | str = (3, 4)) -> None:
    """Make the given stages trainable ("all": the whole backbone), each BN layer frozen.

    A stage unfreezes whole top-level layers: a ResNet's layers, an EfficientNet block with
    everything inside it. Every BatchNormalization among them, nested ones included, stays
    frozen: with trainable=False it runs in inference mode in Keras 3, so the pretrained
    moving statistics survive small fine-tuning batches. Other stages and the head keep their
    current state, so calls accumulate (4, then 3, ...). Recompile afterwards.
    """
    present = sorted({s for layer in model.layers if (s := stage_of(layer.name)) is not None})
    if stages == "all":
        chosen = set(present)
    elif isinstance(stages, str):
        raise ValueError(f'stages must be stage numbers or "all". Received: {stages!r}')
    else:
        chosen = set(stages)
        unknown = sorted(chosen - set(present))
        if unknown:
            raise ConfigError(
                f"cannot unfreeze stage(s) {unknown}: this model has stages "
                f"{present[0]} (stem) to {present[-1]}"
            )
    model.trainable = True
    for layer in model.layers:
        if stage_of(layer.name) in chosen:
            _set_trainable(layer, True)
            for sublayer in layer._flatten_layers(include_self=True):
                if isinstance(sublayer, keras.layers.BatchNormalization):
                    sublayer.trainable = False


def _set_trainable(layer: keras.layers.Layer, trainable: bool) -> None:
    """`trainable` on a layer and on every layer inside it (a KerasHub block's convolutions
    and BatchNorms), each set one by one.

    Keras's setter passes the value down to the sublayers, but on TensorFlow assigning a
    layer the value it already has skips the setter altogether (KerasAutoTrackable's
    `self.x = self.x` short cut): a block left trainable with its BatchNorms frozen inside
    would keep them frozen, and `model.trainable = True` does not reach layers frozen one by
    one. So the whole tree is visited.
    """
    for sublayer in layer._flatten_layers(include_self=True):
        sublayer.trainable = trainable


def backbone_variables(model: keras.Model) -> list[keras.Variable]:
    """Trainable variables of the backbone, in model.trainable_variables order."""
    return [
        v for layer in model.layers if not is_head_layer(layer) for v in layer.trainable_weights
    ]


def head_variables(model: keras.Model) -> list[keras.Variable]:
    """Trainable variables of the head, in model.trainable_variables order."""
    return [v for layer in model.layers if is_head_layer(layer) for v in layer.trainable_weights]


def describe(model: keras.Model) -> ModelDescription:
    """Trainable and non-trainable parameter counts, split into backbone and head."""

    def count(variables: Iterable[keras.Variable]) -> int:
        return int(sum(np.prod(v.shape) for v in variables))

    return ModelDescription(
        name=model.name,
        input_shape=tuple(int(d) for d in model.input_shape[1:]),  # type: ignore[arg-type]
        num_classes=int(model.output_shape[-1]),
        total_params=count(model.weights),
        trainable_params=count(model.trainable_weights),
        non_trainable_params=count(model.non_trainable_weights),
        backbone_trainable_params=count(backbone_variables(model)),
        head_trainable_params=count(head_variables(model)),
    )


def float32_classifier(model: keras.Model) -> keras.Model:
    """The same classifier computing in float32 throughout, with the same weights.

    A mixed-precision run (bfloat16 or float16 compute, float32 variables) is scored and
    stored as this copy: the test metrics, predict, export and every diagnostic then see one
    model, and Grad-CAM's gradients are taken at full precision. A float32 model is returned
    as it is.
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model

    def retyped(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # the input layer takes the global policy
    try:
        copy = keras.models.clone_model(model, clone_function=retyped)
    finally:
        keras.config.set_dtype_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def stored_classifier(model: keras.Model, image_size: int) -> keras.Model:
    """What a run scores and stores: the classifier in float32 (`float32_classifier`) with
    its input fixed at `image_size`, also when it trained with an open one (progressive
    resizing), so every consumer sees the same model whatever the recipe."""
    model = float32_classifier(model)
    if tuple(model.input_shape[1:3]) == (image_size, image_size):
        return model
    images = keras.Input(shape=(image_size, image_size, 3), name=model.inputs[0].name)
    copy = keras.models.clone_model(model, input_tensors=images)
    copy.set_weights(model.get_weights())
    return copy
