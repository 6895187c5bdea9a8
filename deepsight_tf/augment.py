"""Albumentations augmentation presets, applied to a whole uint8 batch per call."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

from deepsight_tf.errors import ConfigError

AUGMENT_FLAG = "--augment"


def _pad_crop_flip(height: int, width: int) -> list[A.BasicTransform]:
    # Pad by 1/8 of the side (4 px at 32 px, the usual CIFAR setting) and crop back: a random
    # translation of up to +-1/8 that keeps the image size. Reflection avoids black borders
    # that the network could learn to look for.
    pad = max(1, min(height, width) // 8)
    return [
        A.PadIfNeeded(
            min_height=height + 2 * pad,
            min_width=width + 2 * pad,
            border_mode=cv2.BORDER_REFLECT_101,
            p=1.0,
        ),
        A.RandomCrop(height=height, width=width, p=1.0),
        A.HorizontalFlip(p=0.5),
    ]


def _cutout(height: int, width: int) -> A.BasicTransform:
    # One hole of a quarter of the side (8 px at 32 px), as in Cutout (DeVries & Taylor, 2017).
    hole_h, hole_w = max(1, height // 4), max(1, width // 4)
    return A.CoarseDropout(
        num_holes_range=(1, 1),
        hole_height_range=(hole_h, hole_h),
        hole_width_range=(hole_w, hole_w),
        fill=0,
        p=0.5,
    )


def _none(height: int, width: int) -> list[A.BasicTransform]:
    return []


def _light(height: int, width: int) -> list[A.BasicTransform]:
    return _pad_crop_flip(height, width)


def _standard(height: int, width: int) -> list[A.BasicTransform]:
    return [*_pad_crop_flip(height, width), _cutout(height, width)]


def _strong(height: int, width: int) -> list[A.BasicTransform]:
    return [
        *_pad_crop_flip(height, width),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
        _cutout(height, width),
    ]


# name -> builder(height, width) of the transforms; the builders take the source size because
# padding and hole sizes are fractions of it.
AUGMENT_PRESETS: dict[str, Callable[[int, int], list[A.BasicTransform]]] = {
    "none": _none,
    "light": _light,  # pad + random crop, horizontal flip
    "standard": _standard,  # light + one Cutout hole (p=0.5)
    "strong": _strong,  # light + colour jitter (p=0.8) + one Cutout hole (p=0.5)
}


def check_preset(preset: str) -> str:
    """Return `preset` if it names a preset, else raise ConfigError naming the flag."""
    if preset not in AUGMENT_PRESETS:
        raise ConfigError(
            f"{AUGMENT_FLAG} {preset!r} is not a preset; use one of {', '.join(AUGMENT_PRESETS)}"
        )
    return preset


def build_augmentation(preset: str, image_shape: tuple[int, ...]) -> A.Compose | None:
    """The preset's transforms for images of `image_shape` (H, W, C); None for "none"."""
    check_preset(preset)
    height, width = int(image_shape[0]), int(image_shape[1])
    transforms = AUGMENT_PRESETS[preset](height, width)
    if not transforms:
        return None
    # The pipeline verifies shapes once per batch (checks.verify_batch); the per-image shape
    # check of Compose would only add overhead.
    return A.Compose(transforms, is_check_shapes=False)


class BatchAugmenter:
    """Apply a preset to every image of a uint8 NHWC batch, reproducibly from a per-batch seed.

    tf.data calls this from several threads at once. Albumentations keeps its random state on
    the Compose object, so each thread gets its own Compose; otherwise one thread could reseed
    the transforms while another is half-way through a batch and results would depend on timing.
    """

    def __init__(self, preset: str, image_shape: tuple[int, ...]) -> None:
        check_preset(preset)
        self.preset = preset
        self.image_shape = tuple(int(d) for d in image_shape)
        self._local = threading.local()

    def _compose(self) -> A.Compose | None:
        if not hasattr(self._local, "compose"):
            self._local.compose = build_augmentation(self.preset, self.image_shape)
        return self._local.compose

    def __call__(self, images: np.ndarray, seed: int) -> np.ndarray:
        """Augmented copy of `images`; the same images and seed give the same result."""
        compose = self._compose()
        if compose is None:
            return images
        # set_random_state shares ONE generator among the transforms; Compose.set_random_seed
        # would give each transform its own generator with the same seed, so their draws
        # (flip or not, drop or not) would be correlated.
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = np.empty_like(images)
        for i in range(len(images)):
            out[i] = compose(image=images[i])["image"]
        return out
