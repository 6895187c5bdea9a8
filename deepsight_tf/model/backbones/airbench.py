"""airbench's CIFAR network (Jordan 2024) in Keras: whitening stem, three conv groups, no skip.

The layout of airbench94: a fixed 2x2 patch-whitening convolution (24 filters) and GELU, then
three groups of conv 3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv 3x3 -> BatchNorm -> GELU
(widths 64, 256, 256), BatchNorm without a learned scale. At 32 px its maps are 31, 15, 7
and 3 pixels a side with 64 to 256 channels: wide enough to fill a CPU's matrix units, where
a ResNet-18 at 48 px works on 12x12 down to 2x2 maps. The head (classifier.py) max-pools,
scales the features by 1/9 and applies a Dense layer without bias, as airbench does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import numpy as np

from deepsight_tf.model.backbones.base import Backbone, check_width
from deepsight_tf.model.layers import FusedBatchNormalization, PatchWhitening

# PyTorch's default Conv2d / Linear initializer, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
TORCH_UNIFORM = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
WHITEN = "whiten"


@dataclass(frozen=True)
class AirbenchSpec(Backbone):
    """One airbench network: the widths of its three groups and its BatchNorm settings."""

    name: str
    widths: tuple[int, int, int]
    batchnorm_momentum: float = 0.6  # Keras's convention: the moving average keeps 0.6
    batchnorm_epsilon: float = 1e-12
    activation: str = "gelu"
    whiten_kernel_size: int = 2
    head_pool = "max"
    head_bias = False
    head_scale = 1.0 / 9.0
    head_initializer = TORCH_UNIFORM
    stage_pattern = re.compile(r"^group(\d+)_")
    stem_prefixes = (WHITEN,)

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(range(len(self.widths) + 1))

    @property
    def last_conv_layer(self) -> str:
        return f"group{len(self.widths)}_act2"

    def randomisation_groups(self, model: keras.Model) -> tuple[str, ...]:
        """The last group's convolutions, top down: "group3_conv2", "group3_conv1"."""
        groups = [self.stage_of(layer.name) or 0 for layer in model.layers]
        last = max(groups, default=0)
        return (f"group{last}_conv2", f"group{last}_conv1") if last else ()

    def build_features(
        self, images: keras.KerasTensor, stem: str = "cifar", width_multiplier: float = 1.0
    ) -> keras.KerasTensor:
        # airbench has one stem (its whitening layer) at any input size; `stem` is ignored.
        check_width(width_multiplier)
        layers = keras.layers
        x = PatchWhitening(self.whiten_kernel_size, name=WHITEN)(images)
        x = layers.Activation(self.activation, name=f"{WHITEN}_act")(x)
        for index, width in enumerate(self.widths, start=1):
            filters = max(1, round(width * width_multiplier))
            name = f"group{index}"
            x = self._conv(filters, f"{name}_conv1")(x)
            x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
            x = self._norm(f"{name}_bn1")(x)
            x = layers.Activation(self.activation, name=f"{name}_act1")(x)
            x = self._conv(filters, f"{name}_conv2")(x)
            x = self._norm(f"{name}_bn2")(x)
            x = layers.Activation(self.activation, name=f"{name}_act2")(x)
        return x

    def _conv(self, filters: int, name: str) -> keras.layers.Layer:
        return keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer=TORCH_UNIFORM, name=name
        )

    def _norm(self, name: str) -> keras.layers.Layer:
        return FusedBatchNormalization(
            momentum=self.batchnorm_momentum,
            epsilon=self.batchnorm_epsilon,
            scale=False,
            name=name,
        )

    def initialise(self, model: keras.Model, images: np.ndarray | None) -> None:
        """Each 3x3 convolution passes its input through on its first channels (a Dirac
        kernel, as airbench's), and the whitening layer learns the data's patches."""
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2D) and self.stage_of(layer.name):
                kernel = np.array(layer.kernel.numpy())
                size, _, channels_in, channels_out = kernel.shape
                identity = min(channels_in, channels_out)
                kernel[..., :identity] = 0.0
                kernel[size // 2, size // 2, np.arange(identity), np.arange(identity)] = 1.0
                layer.kernel.assign(kernel)
        if images is not None:
            model.get_layer(WHITEN).whiten(images)


# airbench94's widths (the paper's 94% network) and airbench93's (93% at about half the
# arithmetic per image).
AIRBENCH: dict[str, AirbenchSpec] = {
    "airbench94": AirbenchSpec(name="airbench94", widths=(64, 256, 256)),
    "airbench93": AirbenchSpec(name="airbench93", widths=(64, 128, 128)),
}
