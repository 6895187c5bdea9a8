"""David Page's ResNet-9 ("How to train your ResNet", 2018) in Keras: the fast residual member.

prep: conv 3x3 (64) -> BatchNorm -> ReLU at the input's size; then three layers, each conv 3x3
-> max-pool 2 -> BatchNorm -> ReLU (128, 256, 512 channels), the first and the last followed by
a residual block of two conv-BatchNorm-ReLU (x + f(x)). At 32 px its maps are 32, 16, 8 and 4
pixels a side: like airbench's, wide enough to fill a CPU's matrix units, with skips as the
ResNets have them. The head (classifier.py) max-pools, scales the features by 1/8 and applies
a Dense layer without bias, as Page's network does. It reached 94% on CIFAR-10 in 24 epochs
on a GPU (DAWNBench), at about three times airbench94's arithmetic per image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras

from deepsight_tf.model.backbones.airbench import TORCH_UNIFORM
from deepsight_tf.model.backbones.base import Backbone, check_width
from deepsight_tf.model.layers import FusedBatchNormalization

PREP = "prep"


@dataclass(frozen=True)
class ResNet9Spec(Backbone):
    """Page's ResNet-9: the prep width, each layer's width and which layers have a residual."""

    name: str
    prep_width: int = 64
    widths: tuple[int, int, int] = (128, 256, 512)
    residual: tuple[bool, bool, bool] = (True, False, True)
    batchnorm_momentum: float = 0.9  # PyTorch's 0.1 in Keras's convention
    batchnorm_epsilon: float = 1e-5
    head_pool = "max"
    head_bias = False
    head_scale = 0.125
    head_initializer = TORCH_UNIFORM
    stage_pattern = re.compile(r"^layer(\d+)_")
    stem_prefixes = (PREP,)

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(range(len(self.widths) + 1))

    @property
    def last_conv_layer(self) -> str:
        last = len(self.widths)
        return f"layer{last}_res_add" if self.residual[-1] else f"layer{last}_act"

    @property
    def residual_end_batchnorms(self) -> tuple[str, ...]:
        return tuple(
            f"layer{index}_res_bn2" for index, has in enumerate(self.residual, start=1) if has
        )

    def randomisation_groups(self, model: keras.Model) -> tuple[str, ...]:
        """The last layer's residual block, then its convolution, top down."""
        last = len(self.widths)
        return (f"layer{last}_res", f"layer{last}_conv") if self.residual[-1] else ()

    def build_features(
        self, images: keras.KerasTensor, stem: str = "cifar", width_multiplier: float = 1.0
    ) -> keras.KerasTensor:
        # One stem (prep, at the input's size) at any input size; `stem` is ignored.
        check_width(width_multiplier)
        layers = keras.layers

        def width(channels: int) -> int:
            return max(1, round(channels * width_multiplier))

        x = self._conv_bn_relu(images, width(self.prep_width), PREP)
        for index, (channels, residual) in enumerate(
            zip(self.widths, self.residual, strict=True), start=1
        ):
            name = f"layer{index}"
            x = self._conv(width(channels), f"{name}_conv")(x)
            x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
            x = self._norm(f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_act")(x)
            if residual:
                branch = self._conv_bn_relu(x, width(channels), f"{name}_res", 1)
                branch = self._conv_bn_relu(branch, width(channels), f"{name}_res", 2)
                x = layers.Add(name=f"{name}_res_add")([x, branch])
        return x

    def _conv_bn_relu(
        self, x: keras.KerasTensor, filters: int, name: str, index: int | None = None
    ) -> keras.KerasTensor:
        suffix = "" if index is None else str(index)
        x = self._conv(filters, f"{name}_conv{suffix}")(x)
        x = self._norm(f"{name}_bn{suffix}")(x)
        return keras.layers.ReLU(name=f"{name}_act{suffix}")(x)

    def _conv(self, filters: int, name: str) -> keras.layers.Layer:
        return keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer=TORCH_UNIFORM, name=name
        )

    def _norm(self, name: str) -> keras.layers.Layer:
        return FusedBatchNormalization(
            momentum=self.batchnorm_momentum, epsilon=self.batchnorm_epsilon, name=name
        )


RESNET9: dict[str, ResNet9Spec] = {"resnet9": ResNet9Spec(name="resnet9")}
