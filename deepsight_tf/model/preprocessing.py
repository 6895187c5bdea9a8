"""What a model is fed: the resize and normalisation record that travels with a run.

As KerasHub's ImageConverter ships with a preset, a run's `Preprocessing` (input size,
interpolation, per-channel normalisation) is written into its config.json and read back by
every consumer: evaluation, interpret, predict, export and the report. `preprocess` is the one
resize-and-normalise step all of them go through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from deepsight_tf.core.settings import INTERPOLATIONS

Normalize = Callable[[tf.Tensor], tf.Tensor]


@dataclass(frozen=True)
class Normalization:
    """Per-channel (x - mean) / std on float32 0..255 NHWC images, applied by the input pipeline."""

    mean: tuple[float, float, float]  # per RGB channel, in 0..255 pixel units
    std: tuple[float, float, float]  # per RGB channel, in 0..255 pixel units
    source: str  # "imagenet" (what pretrained weights expect) or "data" (the training images)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                "mean and std need 3 channels and std > 0. "
                f"Received: mean={self.mean}, std={self.std}"
            )
        if max(self.mean) <= 1.0 and max(self.std) <= 1.0:
            # Statistics of 0..1 pixels applied to 0..255 images would silently saturate.
            raise ValueError(
                "mean and std are in 0..255 pixel units. "
                f"Received: mean={self.mean}, std={self.std}"
            )

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        images = tf.cast(images, tf.float32)
        return (images - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalization:
        return cls(mean=tuple(data["mean"]), std=tuple(data["std"]), source=str(data["source"]))


def preprocess(
    images: Any,
    image_size: int,
    normalize: Normalize,
    interpolation: str = "bicubic",
) -> tf.Tensor:
    """Resize images (uint8 or float in 0..255, HWC or NHWC) to image_size and normalise them.

    The one resize-and-normalise step: training, evaluation and prediction all go through it,
    so a model never sees inputs prepared differently from those it was trained on.
    """
    check_interpolation(interpolation)
    check_size(image_size)
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    if images.shape.rank not in (3, 4):
        raise ValueError(f"images must be HWC or NHWC. Received: shape {images.shape}")
    if tuple(images.shape[-3:-1]) != (image_size, image_size):
        images = tf.image.resize(images, (image_size, image_size), method=interpolation)
        # Bicubic (and Lanczos) kernels have negative lobes and overshoot past 0 and 255 at edges.
        images = tf.clip_by_value(images, 0.0, 255.0)
    return normalize(images)


def check_size(image_size: int) -> None:
    """A positive whole number of pixels (the flags' range is core.checks.check_image_size)."""
    if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer. Received: {image_size!r}")


def check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {INTERPOLATIONS}. Received: {interpolation!r}"
        )


@dataclass(frozen=True)
class Preprocessing:
    """A run's input preprocessing: resize to `image_size` with `interpolation`, normalise.

    `normalization` is a `Normalization` in every run; any callable on 0..255 float images
    works for building pipelines (tests use plain functions), but only a `Normalization`
    serialises.
    """

    image_size: int
    interpolation: str
    normalization: Normalize

    def __post_init__(self) -> None:
        check_size(self.image_size)
        check_interpolation(self.interpolation)

    def __call__(self, images: Any) -> tf.Tensor:
        return preprocess(images, self.image_size, self.normalization, self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        if not isinstance(self.normalization, Normalization):
            raise TypeError(f"only a Normalization serialises. Received: {self.normalization!r}")
        return {
            "image_size": self.image_size,
            "interpolation": self.interpolation,
            "normalization": self.normalization.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(data["image_size"]),
            interpolation=str(data["interpolation"]),
            normalization=Normalization.from_dict(data["normalization"]),
        )

    def describe(self) -> str:
        """The recipe in words, for consumers of an export."""
        size = self.image_size
        return (
            f"decode to RGB uint8; resize to {size}x{size} with {self.interpolation} "
            "(tf.image.resize), clip to 0..255; (x - mean) / std per channel in 0..255 units"
        )
