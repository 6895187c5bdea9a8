"""Tests of the Albumentations presets and the batch augmenter."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.training.augment import (
    AUGMENT_PRESETS,
    BatchAugmenter,
    build_augmentation,
    reflect_pad,
    seed_compose,
)

SHAPE = (16, 16, 3)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (n, *SHAPE), dtype=np.uint8)


def reflect_crops(image: np.ndarray, pad: int) -> list[np.ndarray]:
    """Every crop of the reflect-101 padded image at the original size, flipped or not."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = image.shape[:2]
    crops = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + h, dx : dx + w]
            crops.extend([crop, crop[:, ::-1]])
    return crops


def test_presets_are_the_documented_five() -> None:
    assert list(AUGMENT_PRESETS) == ["none", "light", "standard", "strong", "translate"]


def test_unknown_preset_is_a_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--augment 'heavy'.*none, light, standard, strong"):
        BatchAugmenter("heavy", SHAPE)


def test_translate_moves_each_image_by_at_most_a_sixteenth_of_its_side() -> None:
    shape = (32, 32, 3)
    batch = np.random.default_rng(3).integers(1, 256, (6, *shape), dtype=np.uint8)
    out = BatchAugmenter("translate", shape)(batch, 4)
    for image, augmented in zip(batch, out, strict=True):
        assert any(np.array_equal(augmented, crop) for crop in reflect_crops(image, 2))


def test_an_alternating_flip_leaves_the_mirror_to_the_pipeline() -> None:
    """With --flip alternate the preset translates but never mirrors: every output is one of
    the unmirrored crops, where the random flip mirrors some."""
    batch = images(16, seed=5)
    shifted = BatchAugmenter("light", SHAPE, flip="alternate")(batch, 2)
    for image, augmented in zip(batch, shifted, strict=True):
        unmirrored = reflect_crops(image, 2)[::2]
        assert any(np.array_equal(augmented, crop) for crop in unmirrored)
    mirrored_some = BatchAugmenter("light", SHAPE)(batch, 2)
    assert any(
        not any(np.array_equal(a, crop) for crop in reflect_crops(i, 2)[::2])
        for i, a in zip(batch, mirrored_some, strict=True)
    )
    with pytest.raises(ConfigError, match="--flip 'sometimes'"):
        BatchAugmenter("light", SHAPE, flip="sometimes")


def test_none_leaves_the_batch_unchanged() -> None:
    batch = images(4)
    assert build_augmentation("none", SHAPE) is None
    np.testing.assert_array_equal(BatchAugmenter("none", SHAPE)(batch, 3), batch)


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_presets_keep_shape_and_dtype(preset: str) -> None:
    out = BatchAugmenter(preset, SHAPE)(images(8), 0)
    assert out.shape == (8, *SHAPE)
    assert out.dtype == np.uint8


def test_light_is_a_random_translation_and_flip_of_each_image() -> None:
    batch = images(24)
    out = BatchAugmenter("light", SHAPE)(batch, 5)
    pad = SHAPE[0] // 8
    for source, result in zip(batch, out, strict=True):
        assert any(np.array_equal(result, crop) for crop in reflect_crops(source, pad))
    # Random, not the identity: most images moved or flipped.
    moved = sum(not np.array_equal(a, b) for a, b in zip(batch, out, strict=True))
    assert moved >= 18


def test_standard_cuts_one_quarter_side_hole_in_about_half_the_images() -> None:
    batch = np.full((200, *SHAPE), 200, np.uint8)
    out = BatchAugmenter("standard", SHAPE)(batch, 1)
    zeros = (out == 0).all(axis=-1).sum(axis=(1, 2))
    hole = (SHAPE[0] // 4) * (SHAPE[1] // 4)
    assert set(zeros.tolist()) <= {0, hole}
    assert 70 <= (zeros == hole).sum() <= 130  # p = 0.5 of 200: about 7 sigma either side


def test_strong_changes_colours() -> None:
    grey = np.full((50, *SHAPE), 128, np.uint8)
    assert (BatchAugmenter("light", SHAPE)(grey, 0) == 128).all()
    changed = (BatchAugmenter("strong", SHAPE)(grey, 0) != 128).any(axis=(1, 2, 3))
    assert changed.mean() >= 0.6  # jitter p=0.8, Cutout p=0.5


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    batch = images(16)
    augmenter = BatchAugmenter("strong", SHAPE)
    first = augmenter(batch, 42)
    np.testing.assert_array_equal(BatchAugmenter("strong", SHAPE)(batch, 42), first)
    np.testing.assert_array_equal(augmenter(batch, 42), first)
    assert not np.array_equal(augmenter(batch, 43), first)


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_batch_augmenter_equals_the_per_image_albumentations_pipeline(preset: str) -> None:
    batch = images(12)
    reference = build_augmentation(preset, SHAPE)
    seed_compose(reference, 9)
    expected = np.stack([reference(image=image)["image"] for image in batch])
    np.testing.assert_array_equal(BatchAugmenter(preset, SHAPE)(batch, 9), expected)


@pytest.mark.parametrize("pad", [1, 2, 5])
def test_reflect_pad_equals_numpy_reflect(pad: int) -> None:
    batch = images(3)[:, :, :7]  # not square
    expected = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(reflect_pad(batch, pad), expected)


def test_concurrent_calls_give_the_sequential_results() -> None:
    batch = images(32)
    augmenter = BatchAugmenter("standard", SHAPE)
    seeds = list(range(24))
    expected = [augmenter(batch, s) for s in seeds]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: augmenter(batch, s), seeds))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
