"""EfficientNet-Lite0/1/2 in the registry: KerasHub's layers on the caller's input, stages by
block, the head conv as the CAM layer, Google's ImageNet weights installed with deepsight."""

from __future__ import annotations

from dataclasses import dataclass

import keras

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.model import efficientnet_lite
from deepsight_tf.model.backbones.base import Backbone, check_width
from deepsight_tf.model.preprocessing import Normalization

# EfficientNet has one stem, a 3x3 stride-2 convolution (the "imagenet" kind of stem: the
# input is downsampled at once); the ImageNet weights are for it alone.
STEM = "imagenet"
# The head conv (1x1 to 1280 channels) is a stage of its own after the seven stacks.
TOP_STAGE = len(efficientnet_lite.KERNEL_SIZES) + 1


@dataclass(frozen=True)
class EfficientNetLiteSpec(Backbone):
    """One EfficientNet-Lite variant, as efficientnet_lite lays it out (TensorFlow's padding)."""

    name: str  # "efficientnet-lite0"
    variant: str  # efficientnet_lite's key: "lite0"
    stems = (STEM,)
    # Stacks 4 and 5 compute at 1/16 of the input, 6, 7 and the head conv at 1/32: the stages
    # at the last two grids, as the ResNets' default stages 3 and 4 are.
    finetune_stages = (4, 5, 6, 7, TOP_STAGE)

    def __post_init__(self) -> None:
        efficientnet_lite.get_variant(self.variant)

    @property
    def stages(self) -> tuple[int, ...]:
        """0 the stem, 1..7 the stacks (KerasHub's block1* to block7*), 8 the head conv."""
        return tuple(range(TOP_STAGE + 1))

    @property
    def last_conv_layer(self) -> str:
        return efficientnet_lite.GRADCAM_LAYER

    @property
    def normalization(self) -> Normalization:
        return efficientnet_lite.NORMALIZATION

    def build_features(
        self, images: keras.KerasTensor, stem: str = STEM, width_multiplier: float = 1.0
    ) -> keras.KerasTensor:
        """KerasHub's EfficientNetBackbone layers applied to `images` themselves.

        The backbone is built with its own Input, then cloned onto `images`: every layer of
        the clone (a block of stacks 2 to 7 is one layer holding its convolutions and
        BatchNorms) is called on the caller's graph, so the classifier stays flat. Layer names
        are KerasHub's, which the converted ImageNet weights carry too.
        """
        check_width(width_multiplier)
        if stem != STEM:
            raise ConfigError(
                f"{self.name} has one stem (a 3x3 stride-2 convolution), not {stem!r}; use "
                f"--stem {STEM}"
            )
        if width_multiplier != 1.0:
            raise ConfigError(
                f"{self.name} is built at width 1.0 only (lite0, lite1 and lite2 are its "
                f"widths), not {width_multiplier:g}"
            )
        backbone = efficientnet_lite.build_backbone(self.variant)
        return keras.models.clone_model(backbone, input_tensors=images).output

    def stage_of(self, layer_name: str) -> int | None:
        """KerasHub's names: stem_*, block<stack><letter>_*, top_* (efficientnet_lite's rule)."""
        return efficientnet_lite.stage_of(layer_name)

    def randomisation_groups(self, model: keras.Model) -> tuple[str, ...]:
        """The head conv, then the blocks computing at the last grid (stacks 7 and 6, at 1/32
        of the input, as the CAM layer), top down: "block7a", "block6d", ..."""
        last_grid = (TOP_STAGE - 1, TOP_STAGE - 2)
        blocks = [
            layer.name.split("_")[0]
            for layer in model.layers
            if self.stage_of(layer.name) in last_grid
        ]
        return ("top_conv", *reversed(list(dict.fromkeys(blocks))))

    def imagenet_weights(self) -> keras.Model:
        return efficientnet_lite.imagenet_backbone(self.variant)


EFFICIENTNETS: dict[str, EfficientNetLiteSpec] = {
    f"efficientnet-{variant}": EfficientNetLiteSpec(f"efficientnet-{variant}", variant)
    for variant in efficientnet_lite.VARIANTS
}
