"""Image quality checks: each score equals its textbook formula, planted defects are found
with their issue, clean photos are not flagged, and scrub lists the flags."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from deepsight_tf.core.settings import ObtainSettings, ScrubSettings
from deepsight_tf.core.workspace import QUALITY_FILE, Workspace
from deepsight_tf.data.obtain import obtain
from deepsight_tf.data.quality import (
    CHECKS,
    ISSUES,
    assess_quality,
    luminance,
    quality_scores,
    size_scores,
)
from deepsight_tf.data.scrub import scrub

from support.synthetic_images import DEFECTS, pink_noise_photos, view


def photos(n: int, seed: int) -> np.ndarray:
    return np.stack([view(p) for p in pink_noise_photos(n, seed=seed)])


def test_scores_are_the_textbook_formulas() -> None:
    x = photos(6, seed=3)
    scores = quality_scores(x)
    for i, image in enumerate(x):
        lum = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        np.testing.assert_allclose(lum, luminance(image[None])[0], rtol=1e-5)
        assert scores["brightest"][i] == pytest.approx(np.percentile(lum, 99), abs=1e-3)
        assert scores["darkest"][i] == pytest.approx(np.percentile(lum, 1), abs=1e-3)
        assert scores["contrast"][i] == pytest.approx(lum.std(), rel=1e-4)
        # Grey levels from the float32 luminance checked above (float64 may round a .5 apart).
        levels = np.rint(luminance(image[None])[0]).astype(int).ravel()
        histogram = np.bincount(levels, minlength=256)
        assert scores["entropy"][i] == pytest.approx(scipy.stats.entropy(histogram, base=2))
        laplace = scipy.ndimage.laplace(lum)[1:-1, 1:-1]
        assert scores["sharpness"][i] == pytest.approx(laplace.std() / lum.std(), rel=1e-4)


def test_every_planted_defect_is_flagged_with_its_issue_and_clean_photos_are_not() -> None:
    clean = photos(200, seed=0)
    scores = quality_scores(clean)
    for check in CHECKS:
        assert not check.flags(scores[check.score]).any(), check.issue
    for issue, plant in DEFECTS.items():
        planted = np.stack([plant(image, i) for i, image in enumerate(clean[:40])])
        flagged = {c.issue: c.flags(quality_scores(planted)[c.score]) for c in CHECKS}
        assert flagged[issue].all(), issue
        # dark, light and blurry photos keep their information; only the flattening defects
        # may also read as each other.
        if issue in ("dark", "light", "blurry"):
            others = [c.issue for c in CHECKS if c.issue != issue]
            assert not any(flagged[o].any() for o in others), issue


def test_scrub_lists_the_planted_defects_in_quality_csv(tmp_path) -> None:
    y_train, y_test = np.repeat(np.arange(2), 30), np.repeat(np.arange(2), 10)
    x = photos(80, seed=5)
    x_train, x_test = x[:60].copy(), x[60:].copy()
    planted = {("train", 4): "dark", ("train", 31): "blurry", ("test", 2): "low_information"}
    for (split, index), issue in planted.items():
        target = x_train if split == "train" else x_test
        target[index] = DEFECTS[issue](target[index], index)
    source = tmp_path / "planted.npz"
    np.savez(
        source,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=np.asarray(["a", "b"]),
    )
    ws = Workspace(tmp_path / "ws")
    obtain(ObtainSettings(source=str(source), name="q"), ws)
    result = scrub(ScrubSettings(val_size=0.2, image_size=32, interp_sample=8), ws)
    with open(ws.scrub_dir("q") / QUALITY_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["split"], int(r["index"])): r["issue"] for r in rows} == planted
    by_key = {(r["split"], int(r["index"])): r for r in rows}
    assert by_key[("train", 4)]["label"] == "a" and by_key[("train", 31)]["label"] == "b"
    assert by_key[("train", 4)]["path"] == "x_train[4]"
    assert result.quality.counts["train"] == {
        "dark": 1,
        "light": 0,
        "near_constant": 0,
        "low_information": 0,
        "blurry": 1,
        "odd_size": 0,  # an npz: every image came in at the stored size
        "odd_aspect": 0,
        "any": 2,
    }
    assert result.quality.counts["test"]["any"] == 1
    assert "set for photos such as CIFAR-10's" in result.quality.assumes  # stated in the report


def test_flags_are_ordered_most_extreme_first() -> None:
    x = photos(3, seed=9)
    x[0], x[2] = DEFECTS["dark"](x[0], 0), np.rint(x[2] * 0.05).astype(np.uint8)
    _, flags = assess_quality(
        {"train": x}, {"train": np.zeros(3, int)}, {"train": ["a", "b", "c"]}, ["k"]
    )
    assert [(f.index, f.issue) for f in flags if f.issue == "dark"] == [(2, "dark"), (0, "dark")]


def test_size_and_aspect_are_judged_against_the_median_at_the_source() -> None:
    sizes = np.array([[32, 32], [16, 16], [15, 15], [32, 64], [32, 65], [64, 64], [70, 70]])
    scores = size_scores(sizes, np.tile([32, 32], (100, 1)))
    np.testing.assert_allclose(
        scores["size_factor"],
        [1, 2, 32 / 15, np.sqrt(32 * 64) / 32, np.sqrt(32 * 65) / 32, 2, 70 / 32],
    )
    np.testing.assert_allclose(scores["aspect_factor"], [1, 1, 1, 2, 65 / 32, 1, 1])
    flagged = {c.issue for c in CHECKS} ^ set(ISSUES)
    assert flagged == {"odd_size", "odd_aspect"}


def test_obtain_keeps_source_sizes_and_scrub_flags_the_odd_ones(tmp_path) -> None:
    """A folder of 32 px photos with a 12 px thumbnail, a 32x80 panorama and a 44 px photo
    (1.4x: not odd), stored at 32 px by obtain --resize; scrub flags the first two by their
    source sizes, which images.npz keeps."""
    from PIL import Image

    x = photos(23, seed=4)
    root = tmp_path / "tree"
    odd = {("train", "a", 0): (12, 12), ("train", "b", 3): (80, 32), ("test", "a", 1): (44, 44)}
    for i, image in enumerate(x):
        split, cls, k = ("train", "a", i) if i < 10 else ("train", "b", i - 10)
        if i >= 18:
            split, cls, k = "test", "ab"[i % 2], (i - 18) // 2
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        if (split, cls, k) in odd:
            picture = picture.resize(odd[(split, cls, k)], Image.BICUBIC)
        picture.save(folder / f"{k:02d}.png")
    ws = Workspace(tmp_path / "ws")
    obtain(ObtainSettings(source=str(root), name="sizes", resize=32), ws)
    result = scrub(ScrubSettings(val_size=0.2, image_size=32, interp_sample=8), ws)
    with open(ws.scrub_dir("sizes") / QUALITY_FILE, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["issue"] in ("odd_size", "odd_aspect")]
    assert {(r["path"], r["issue"]) for r in rows} == {
        ("train/a/00.png", "odd_size"),
        ("train/b/03.png", "odd_aspect"),
    }
    factor = {r["issue"]: float(r["score"]) for r in rows}
    assert factor == pytest.approx({"odd_size": 32 / 12, "odd_aspect": 80 / 32}, abs=1e-3)
    assert result.quality.counts["test"]["odd_size"] == 0  # 44 px: 1.4x, under 2x
