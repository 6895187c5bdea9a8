"""What every backbone in the registry answers: its layers, stages, head, inputs and CAM layer."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

import keras
import numpy as np

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.settings import STEMS
from deepsight_tf.model.preprocessing import Normalization

HEAD_PREFIX = "head_"  # every head layer's name starts with this; everything else is backbone

# timm's IMAGENET_DEFAULT_MEAN / _STD on 0..1 pixels: KerasHub's timm converter turns them into
# the ResNet presets' image converter (scale = 1 / (255 std), offset = -mean / std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(ABC):
    """A feature extractor deepsight can put a head on, train, unfreeze by stage and explain.

    Each family (ResNet, airbench, EfficientNet-Lite) names its layers so that `stage_of`
    can tell a layer's stage from its name alone; the registry (backbones/__init__.py) asks
    every family in turn.
    """

    name: str
    # The head the classifier puts on the features: pooling ("avg" or "max"), whether its
    # Dense has a bias, a fixed scale on the pooled features (airbench's 1/9 on the logits),
    # and its kernel's initializer.
    head_pool: str = "avg"
    head_bias: bool = True
    head_scale: float = 1.0
    head_initializer: Any = "glorot_uniform"
    stage_pattern: re.Pattern[str]  # a layer of stage N (N >= 1): group 1 of the match is N
    stem_prefixes: tuple[str, ...]  # layers of stage 0
    stems: tuple[str, ...] = STEMS  # the `--stem` values it builds (or, airbench, ignores)

    @abstractmethod
    def build_features(
        self, images: keras.KerasTensor, stem: str = "imagenet", width_multiplier: float = 1.0
    ) -> keras.KerasTensor:
        """Create the backbone's layers on `images` (flat, not a nested model, so Grad-CAM
        can walk the graph) and return its last feature map."""

    @property
    @abstractmethod
    def stages(self) -> tuple[int, ...]:
        """Stage numbers: 0 is the stem, then the stacks from the input up."""

    @property
    @abstractmethod
    def last_conv_layer(self) -> str:
        """The layer Grad-CAM and its family read: the last feature map, block output."""

    @property
    def normalization(self) -> Normalization:
        """What this backbone's pretrained weights expect of their inputs: ImageNet's mean and
        std unless a family says otherwise (also the fallback from scratch without explore's
        statistics of the data)."""
        return Normalization(
            mean=tuple(255.0 * m for m in IMAGENET_MEAN),  # type: ignore[arg-type]
            std=tuple(255.0 * s for s in IMAGENET_STD),  # type: ignore[arg-type]
            source="imagenet",
        )

    @property
    def finetune_stages(self) -> tuple[int, ...]:
        """The stages pretrained weights fine-tune unless --unfreeze says otherwise: the last
        two (the ResNets' 3 and 4)."""
        return self.stages[-2:]

    @property
    def residual_end_batchnorms(self) -> tuple[str, ...]:
        """The BatchNorm ending each residual branch (--zero-init-residual); none by default."""
        return ()

    def imagenet_weights(self) -> keras.Model:
        """A model holding this backbone's ImageNet weights, layer names as build_features'."""
        raise ConfigError(f"{self.name} has no ImageNet weights; use --weights none")

    def initialise(self, model: keras.Model, images: np.ndarray | None) -> None:
        """Initialisation beyond each layer's initializer (from scratch only): `images` are
        normalised training images for a data-dependent start, when the backbone wants one.
        Nothing by default: the layers' own initializers are the start."""
        return

    def randomisation_groups(self, model: keras.Model) -> tuple[str, ...]:
        """What the sanity check randomises after the head, top down, as layer names or name
        prefixes of `model` (explain.sanity_check's groups); none by default."""
        return ()

    def stage_of(self, layer_name: str) -> int | None:
        match = self.stage_pattern.match(layer_name)
        if match:
            return int(match.group(1))
        if layer_name.startswith(self.stem_prefixes):
            return 0
        return None

    def stage_layers(self, model: keras.Model, stage: int) -> list[keras.layers.Layer]:
        """The layers of one stage (0 = stem) in `model`, in graph order."""
        if stage not in self.stages:
            raise ConfigError(
                f"{self.name} has stages {self.stages[0]} (stem) to {self.stages[-1]}, not {stage}"
            )
        return [layer for layer in model.layers if self.stage_of(layer.name) == stage]


def check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ConfigError(f"unknown stem {stem!r}; choose one of: {', '.join(STEMS)}")


def check_width(width_multiplier: float) -> None:
    if width_multiplier <= 0:
        raise ConfigError(f"the width multiplier must be > 0, not {width_multiplier}")


def is_head_layer(layer: keras.layers.Layer) -> bool:
    return layer.name.startswith(HEAD_PREFIX)
