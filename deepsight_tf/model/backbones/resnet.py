"""The ResNets (v1, KerasHub layout): stacks, native stem, ImageNet presets, CAM layer."""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import keras_hub

# KerasHub's own block builders, so that every layer name, padding and epsilon is the one the
# preset weights were made for; KerasHub's ResNetBackbone constructor itself cannot be used
# because it fixes the ImageNet stem and refuses a first stack narrower than 64 filters.
from keras_hub.src.models.resnet.resnet_backbone import apply_stack

from deepsight_tf.core.errors import ConfigError, OfflineError
from deepsight_tf.model.backbones.base import Backbone, check_stem, check_width

BLOCK_TYPES = ("basic_block", "bottleneck_block")

_STAGE_OF_LAYER = re.compile(r"^stack(\d+)_")
_BLOCK = re.compile(r"^(stack\d+_block\d+)_")
_STEM_PREFIXES = ("conv1_", "pool1_")


@dataclass(frozen=True)
class ResNetSpec(Backbone):
    """One ResNet (v1, KerasHub layout): its stacks, native stem, ImageNet preset, normalisation."""

    name: str
    block_type: str  # KerasHub block: "basic_block" (ResNet-18/34) or "bottleneck_block" (50+)
    stackwise_num_filters: tuple[int, ...]
    stackwise_num_blocks: tuple[int, ...]
    stackwise_num_strides: tuple[int, ...]
    preset: str  # KerasHub preset holding its ImageNet weights
    stem_filters: int = 64
    stem_kernel_size: int = 7  # the native (ImageNet) stem: 7x7 stride-2 conv, then max-pool
    stage_pattern = _STAGE_OF_LAYER
    stem_prefixes = _STEM_PREFIXES

    def __post_init__(self) -> None:
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(
                f"block_type must be one of {BLOCK_TYPES}. Received: {self.block_type}"
            )
        lengths = {
            len(self.stackwise_num_filters),
            len(self.stackwise_num_blocks),
            len(self.stackwise_num_strides),
        }
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                "stackwise_num_filters, _blocks and _strides need the same non-zero length. "
                f"Received: {self.stackwise_num_filters}, {self.stackwise_num_blocks}, "
                f"{self.stackwise_num_strides}"
            )

    @property
    def stages(self) -> tuple[int, ...]:
        """Stage numbers: 0 is the stem, 1..n the residual stacks (torchvision's layer1..layerN)."""
        return tuple(range(len(self.stackwise_num_filters) + 1))

    @property
    def last_conv_layer(self) -> str:
        """The layer Grad-CAM reads: the output of the last residual block.

        The block output (after the shortcut add and ReLU, as pytorch-grad-cam's layer4[-1]) and
        not the last Conv2D alone, whose map would miss everything the shortcut carries.
        """
        last_stack = len(self.stackwise_num_filters) - 1
        last_block = self.stackwise_num_blocks[-1] - 1
        return f"stack{last_stack}_block{last_block}_out"

    @property
    def residual_end_batchnorms(self) -> tuple[str, ...]:
        """The BatchNorm that ends each block's residual branch, just before the shortcut add:
        KerasHub's `_2_bn` of a basic block, `_3_bn` of a bottleneck."""
        last = 2 if self.block_type == "basic_block" else 3
        return tuple(
            f"stack{stack}_block{block}_{last}_bn"
            for stack, blocks in enumerate(self.stackwise_num_blocks)
            for block in range(blocks)
        )

    def filters(self, width_multiplier: float = 1.0) -> tuple[int, tuple[int, ...]]:
        """Stem and per-stack filters at a width; both scale alike so identity shortcuts fit."""

        def scale(n: int) -> int:
            return max(1, round(n * width_multiplier))

        return scale(self.stem_filters), tuple(scale(n) for n in self.stackwise_num_filters)

    def hub_config(self) -> dict:
        """This architecture as keras_hub.models.ResNetBackbone arguments (ImageNet stem)."""
        return {
            "input_conv_filters": [self.stem_filters],
            "input_conv_kernel_sizes": [self.stem_kernel_size],
            "stackwise_num_filters": list(self.stackwise_num_filters),
            "stackwise_num_blocks": list(self.stackwise_num_blocks),
            "stackwise_num_strides": list(self.stackwise_num_strides),
            "block_type": self.block_type,
            "use_pre_activation": False,
        }

    def build_features(
        self, images: keras.KerasTensor, stem: str = "imagenet", width_multiplier: float = 1.0
    ) -> keras.KerasTensor:
        """Create the backbone's layers on `images` and return its last feature map.

        The layers are applied to the caller's tensor, not wrapped in a nested model, so the
        classifier stays one flat graph that Grad-CAM can walk.
        """
        check_stem(stem)
        check_width(width_multiplier)
        stem_filters, stack_filters = self.filters(width_multiplier)
        x = _apply_stem(images, stem, stem_filters, self.stem_kernel_size)
        for index, (filters, blocks, stride) in enumerate(
            zip(
                stack_filters,
                self.stackwise_num_blocks,
                self.stackwise_num_strides,
                strict=True,
            )
        ):
            x = apply_stack(
                x,
                filters=filters,
                blocks=blocks,
                stride=stride,
                block_type=self.block_type,
                use_pre_activation=False,
                # As KerasHub: the first basic stack keeps an identity shortcut.
                first_shortcut=self.block_type != "basic_block" or index > 0,
                name=f"stack{index}",
            )
        return x

    def stage_of(self, layer_name: str) -> int | None:
        """KerasHub's stacks count from 0: stack N is stage N + 1 (torchvision's layerN+1)."""
        stage = super().stage_of(layer_name)
        return stage + 1 if stage is not None and layer_name.startswith("stack") else stage

    def randomisation_groups(self, model: keras.Model) -> tuple[str, ...]:
        """Each block of the model's last stack, top down: "stack3_block1", "stack3_block0"."""
        blocks: dict[int, list[str]] = {}
        for layer in model.layers:
            match = _BLOCK.match(layer.name)
            if match:
                blocks.setdefault(int(self.stage_of(layer.name) or 0), []).append(match.group(1))
        if not blocks:
            return ()
        return tuple(reversed(list(dict.fromkeys(blocks[max(blocks)]))))

    def imagenet_weights(self) -> keras.Model:
        return load_preset_backbone(self.preset)


RESNETS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec(
        name="resnet18",
        block_type="basic_block",
        stackwise_num_filters=(64, 128, 256, 512),
        stackwise_num_blocks=(2, 2, 2, 2),
        stackwise_num_strides=(1, 2, 2, 2),
        preset="resnet_18_imagenet",
    ),
    "resnet50": ResNetSpec(
        name="resnet50",
        block_type="bottleneck_block",
        stackwise_num_filters=(64, 128, 256, 512),
        stackwise_num_blocks=(3, 4, 6, 3),
        stackwise_num_strides=(1, 2, 2, 2),
        preset="resnet_50_imagenet",
    ),
}


def _apply_stem(
    images: keras.KerasTensor, stem: str, filters: int, kernel_size: int
) -> keras.KerasTensor:
    """The native ImageNet stem (as KerasHub's) or a CIFAR stem; same layer names in both."""
    layers = keras.layers
    if stem == "cifar":
        # 3x3 stride 1 and no max-pool: 32 px images keep 32x32 maps into the first stack.
        x = layers.Conv2D(filters, 3, strides=1, padding="same", use_bias=False, name="conv1_conv")(
            images
        )
    else:
        x = layers.ZeroPadding2D((kernel_size - 1) // 2, name="conv1_pad")(images)
        x = layers.Conv2D(
            filters, kernel_size, strides=2, padding="valid", use_bias=False, name="conv1_conv"
        )(x)
    x = layers.BatchNormalization(axis=-1, epsilon=1e-5, momentum=0.9, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    if stem == "imagenet":
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    return x


def load_preset_backbone(preset: str) -> keras.Model:
    """A KerasHub ResNetBackbone from a preset name (downloaded, then cached) or a preset folder.

    `--weights imagenet` and `--weights <preset folder>` both come through here.
    """
    import requests  # kagglehub's transport; its connection errors mean "offline"

    try:
        return keras_hub.models.ResNetBackbone.from_preset(preset)
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise OfflineError(
            f"cannot download the ImageNet weights {preset!r} (no network: "
            f"{type(exc).__name__}); use --weights none to train from scratch, "
            "--weights PATH with a local KerasHub preset folder, or --backbone "
            "efficientnet-lite0 --weights imagenet (installed with deepsight)"
        ) from exc
    except (ValueError, FileNotFoundError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--weights {preset}: not a usable ResNet preset ({first_line})") from exc
