"""The backbone registry: every network `--backbone` names, and the family each belongs to."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.model.backbones.airbench import AIRBENCH, AirbenchSpec
from deepsight_tf.model.backbones.base import (
    HEAD_PREFIX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    check_stem,
    is_head_layer,
)
from deepsight_tf.model.backbones.efficientnet import EFFICIENTNETS, EfficientNetLiteSpec
from deepsight_tf.model.backbones.resnet import RESNETS, ResNetSpec
from deepsight_tf.model.backbones.resnet9 import RESNET9, ResNet9Spec
from deepsight_tf.model.preprocessing import Normalization

BACKBONES: dict[str, Backbone] = {**RESNETS, **RESNET9, **AIRBENCH, **EFFICIENTNETS}

__all__ = [
    "BACKBONES",
    "HEAD_PREFIX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AirbenchSpec",
    "Backbone",
    "EfficientNetLiteSpec",
    "ResNet9Spec",
    "ResNetSpec",
    "check_stem",
    "choose_normalization",
    "family_of",
    "get_backbone_spec",
    "is_head_layer",
    "randomisation_cascade",
    "stage_of",
]


def get_backbone_spec(name: str) -> Backbone:
    """The registered backbone called `name`; ConfigError naming the choices otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        choices = ", ".join(sorted(BACKBONES))
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {choices}") from None


def stage_of(layer_name: str) -> int | None:
    """The stage a backbone layer belongs to (0 = stem), from its name: each family names its
    layers apart, so the first family that recognises the name decides."""
    for spec in _ONE_PER_FAMILY:
        stage = spec.stage_of(layer_name)
        if stage is not None:
            return stage
    return None


_ONE_PER_FAMILY = tuple({type(spec): spec for spec in BACKBONES.values()}.values())


def family_of(model: keras.Model) -> Backbone | None:
    """A spec of the family whose names `model`'s layers carry (the one that recognises the
    most of them); None for a model built outside the registry."""
    counts = {
        spec: sum(spec.stage_of(layer.name) is not None for layer in model.layers)
        for spec in _ONE_PER_FAMILY
    }
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else None


def randomisation_cascade(model: keras.Model) -> tuple[str, ...]:
    """The sanity check's cascade on `model`: "head", then what its family randomises next,
    top down (the ResNets' last blocks, EfficientNet's head conv and last-grid blocks)."""
    family = family_of(model)
    return ("head", *(family.randomisation_groups(model) if family else ()))


def choose_normalization(
    backbone: str,
    weights: str,
    channel_mean: Sequence[float] | None = None,
    channel_std: Sequence[float] | None = None,
) -> Normalization:
    """The one place that decides how input images are normalised.

    Pretrained weights of any source need the statistics they were trained with; only from
    scratch (`weights == "none"`) may the data's own per-channel statistics replace them.
    Statistics are in 0..255 pixel units.
    """
    spec = get_backbone_spec(backbone)
    if weights == "none" and channel_mean is not None and channel_std is not None:
        return Normalization(
            mean=tuple(float(m) for m in channel_mean),  # type: ignore[arg-type]
            std=tuple(float(s) for s in channel_std),  # type: ignore[arg-type]
            source="data",
        )
    return spec.normalization
