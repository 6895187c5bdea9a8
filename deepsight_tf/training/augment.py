"""Albumentations augmentation presets, applied to a whole uint8 batch per call."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.settings import FLIPS

AUGMENT_FLAG = "--augment"


@dataclass(frozen=True)
class Preset:
    """An augmentation preset: a reflect pad, then random transforms of each image.

    The pad is deterministic, so the batch augmenter applies it to a whole batch in one numpy
    operation; Albumentations' PadIfNeeded costs about 35 us of Python per image, as much as
    the crop and flip together. build_augmentation() gives the same preset as one per-image
    Albumentations pipeline (PadIfNeeded first), which is the reference the tests compare to.
    """

    pad_fraction: float  # of the shorter side, on every edge; 0: no pad
    transforms: Callable[[int, int], list[A.BasicTransform]]  # (height, width) -> transforms

    def pad(self, height: int, width: int) -> int:
        return round(min(height, width) * self.pad_fraction)


def _crop_flip(height: int, width: int) -> list[A.BasicTransform]:
    # After the pad, a random crop back to the original size is a random translation of up to
    # the pad in each direction.
    return [A.RandomCrop(height=height, width=width, p=1.0), A.HorizontalFlip(p=0.5)]


def _cutout() -> A.BasicTransform:
    # One square hole of 1/16 of the area (8 px at 32 px), as in Cutout (DeVries & Taylor,
    # 2017). Erasing draws the hole with a few Python calls; CoarseDropout, which can do the
    # same, measured 3x slower per image here.
    return A.Erasing(scale=(1 / 16, 1 / 16), ratio=(1.0, 1.0), fill=0, p=0.5)


def _strong(height: int, width: int) -> list[A.BasicTransform]:
    return [
        *_crop_flip(height, width),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
        _cutout(),
    ]


# 1/8 of the side is 4 px at 32 px, the usual CIFAR setting.
AUGMENT_PRESETS: dict[str, Preset] = {
    "none": Preset(0.0, lambda h, w: []),
    "light": Preset(1 / 8, _crop_flip),  # pad + random crop, horizontal flip
    "standard": Preset(1 / 8, lambda h, w: [*_crop_flip(h, w), _cutout()]),  # light + Cutout
    "strong": Preset(1 / 8, _strong),  # light + colour jitter (p=0.8) + Cutout (p=0.5)
    # airbench's: translations of up to 1/16 of the side (2 px at 32) and a horizontal flip.
    "translate": Preset(1 / 16, _crop_flip),
}


def _without_flip(transforms: list[A.BasicTransform], flip: str) -> list[A.BasicTransform]:
    """The preset's transforms, less its random horizontal flip when the flip alternates
    (the input pipeline then mirrors each image on every other epoch instead)."""
    if flip not in FLIPS:
        raise ConfigError(f"--flip {flip!r}: choose one of {', '.join(FLIPS)}")
    if flip == "random":
        return transforms
    return [t for t in transforms if not isinstance(t, A.HorizontalFlip)]


def preset_flips(preset: str) -> bool:
    """Whether a preset mirrors images (every one but "none" does)."""
    spec = AUGMENT_PRESETS[check_preset(preset)]
    return any(isinstance(t, A.HorizontalFlip) for t in spec.transforms(8, 8))


def check_preset(preset: str) -> str:
    """Return `preset` if it names a preset, else raise ConfigError naming the flag."""
    if preset not in AUGMENT_PRESETS:
        raise ConfigError(
            f"{AUGMENT_FLAG} {preset!r} is not a preset; use one of {', '.join(AUGMENT_PRESETS)}"
        )
    return preset


def _compose(transforms: list[A.BasicTransform]) -> A.Compose | None:
    # The pipeline verifies shapes once per source (checks.verify_batch); Compose's per-image
    # shape check would only add overhead.
    return A.Compose(transforms, is_check_shapes=False) if transforms else None


def build_augmentation(
    preset: str, image_shape: tuple[int, ...], flip: str = "random"
) -> A.Compose | None:
    """The preset as one per-image Albumentations pipeline for (H, W, C) images; None: "none"."""
    spec = AUGMENT_PRESETS[check_preset(preset)]
    height, width = int(image_shape[0]), int(image_shape[1])
    pad = spec.pad(height, width)
    padding = (
        [
            A.PadIfNeeded(
                min_height=height + 2 * pad,
                min_width=width + 2 * pad,
                border_mode=cv2.BORDER_REFLECT_101,
                p=1.0,
            )
        ]
        if pad
        else []
    )
    return _compose([*padding, *_without_flip(spec.transforms(height, width), flip)])


def reflect_pad(images: np.ndarray, pad: int) -> np.ndarray:
    """Pad the H and W axes of an NHWC batch by mirroring without repeating the edge.

    Equal to np.pad(mode="reflect") and OpenCV's BORDER_REFLECT_101, with plain slice copies,
    which are several times faster than np.pad on small images.
    """
    if pad == 0:
        return images
    n, height, width, channels = images.shape
    if pad >= min(height, width):
        raise ValueError(f"pad must be smaller than the image side. Received: {pad}")
    out = np.empty((n, height + 2 * pad, width + 2 * pad, channels), images.dtype)
    out[:, pad:-pad, pad:-pad] = images
    out[:, :pad, pad:-pad] = images[:, pad:0:-1]
    out[:, -pad:, pad:-pad] = images[:, -2 : -pad - 2 : -1]
    out[:, :, :pad] = out[:, :, 2 * pad : pad : -1]
    out[:, :, -pad:] = out[:, :, -pad - 2 : -2 * pad - 2 : -1]
    return out


class BatchAugmenter:
    """Apply a preset to every image of a uint8 NHWC batch, reproducibly from a per-batch seed.

    The result equals build_augmentation(preset) applied image after image with the random
    state seeded once per batch. tf.data calls this from several threads at once, and
    Albumentations keeps its random state on the Compose object, so each thread gets its own
    Compose; a shared one could be reseeded by one thread half-way through another's batch.
    """

    def __init__(self, preset: str, image_shape: tuple[int, ...], flip: str = "random") -> None:
        self.spec = AUGMENT_PRESETS[check_preset(preset)]
        _without_flip([], flip)
        self.flip = flip
        self.image_shape = tuple(int(d) for d in image_shape)
        height, width = self.image_shape[:2]
        self.pad = self.spec.pad(height, width)
        self._local = threading.local()

    def _compose(self) -> A.Compose | None:
        if not hasattr(self._local, "compose"):
            height, width = self.image_shape[:2]
            transforms = _without_flip(self.spec.transforms(height, width), self.flip)
            self._local.compose = _compose(transforms)
        return self._local.compose

    def __call__(self, images: np.ndarray, seed: int) -> np.ndarray:
        """Augmented copy of `images`; the same images and seed give the same result."""
        compose = self._compose()
        if compose is None:
            return images
        padded = reflect_pad(images, self.pad)
        seed_compose(compose, seed)
        # Compose.__call__ per image, less its bookkeeping (target preprocessing, applied-
        # parameter tracking, post-transform checks: 5 us of the 14 us "light" costs an image,
        # and nothing for an image alone). Compose draws once for its own p (1 here) before
        # its transforms, so that draw stays: the random stream, and so every result, is the
        # Compose's (test_batch_augmenter_equals_the_per_image_albumentations_pipeline).
        transforms, compose_draw = compose.transforms, compose.py_random.random
        out = np.empty_like(images)
        for i in range(len(images)):
            compose_draw()
            data = {"image": padded[i]}
            for transform in transforms:
                data = transform(**data)
            out[i] = data["image"]
        return out


def seed_compose(compose: A.Compose, seed: int) -> None:
    """Seed all transforms of `compose` from ONE generator pair.

    Compose.set_random_seed would give each transform its own generator with the same seed,
    so their draws (flip or not, erase or not) would be correlated.
    """
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
