"""Duplicates: exact groups, planted near copies found (recall), random pairs not matched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_images import COPIES, jpeg, pink_noise_photos, view

from deepsight_tf.core.settings import ScrubSettings
from deepsight_tf.data.duplicates import (
    aligned_distances,
    band_pass,
    candidate_pairs,
    exact_duplicate_groups,
    find_near_duplicates,
    spectra,
    thumbnails,
)

THRESHOLD = ScrubSettings().near_threshold
NEIGHBOURS = ScrubSettings().neighbours
CIFAR_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(aligned_distances(band_pass(np.stack([a, b])), np.array([[0, 1]]))[0])


@pytest.fixture(scope="module")
def planted() -> dict[str, object]:
    """40 photos with one planted copy each (4 of every kind) among 300 unrelated photos."""
    per_kind = 4
    photos = pink_noise_photos(len(COPIES) * per_kind + 300, seed=1)
    originals, copies, kinds = [], [], []
    for k, (kind, make) in enumerate(COPIES.items()):
        for photo in photos[k * per_kind : (k + 1) * per_kind]:
            originals.append(view(photo))
            copies.append(make(photo))
            kinds.append(kind)
    others = [view(p) for p in photos[len(kinds) :]]
    images = np.stack(originals + others + copies)
    n = len(kinds)
    truth = {(i, len(originals) + len(others) + i) for i in range(n)}
    found = find_near_duplicates(images, THRESHOLD, NEIGHBOURS)
    return {"images": images, "truth": truth, "kinds": kinds, "found": found}


def test_exact_groups_are_identical_pixels_only() -> None:
    images = pink_noise_photos(6, seed=2)[:, :32, :32].copy()
    images[4] = images[1]
    images[5] = images[1]
    almost = images[2].copy()
    almost[0, 0, 0] ^= 1  # one bit of one pixel differs: not an exact duplicate
    images = np.concatenate([images, almost[None]])
    groups = exact_duplicate_groups(images)
    assert [g.tolist() for g in groups.groups] == [[1, 4, 5]]
    assert groups.pairs().tolist() == [[1, 4], [1, 5], [4, 5]]


def test_planted_copies_are_found_with_high_recall(planted: dict) -> None:
    found = {tuple(map(int, p)) for p in planted["found"].pairs}
    hits = [pair in found for pair in sorted(planted["truth"])]
    recall = float(np.mean(hits))
    missed = [k for k, hit in zip(planted["kinds"], hits, strict=True) if not hit]
    assert recall >= 0.95, f"recall on planted copies {recall:.3f}; missed: {missed}"


def test_every_kind_of_planted_copy_is_well_below_the_threshold(planted: dict) -> None:
    images = planted["images"]
    pairs = np.array(sorted(planted["truth"]))
    d = aligned_distances(band_pass(images), pairs)
    for kind in COPIES:
        of_kind = d[[k == kind for k in planted["kinds"]]]
        assert of_kind.max() <= THRESHOLD, f"{kind}: distances {np.round(of_kind, 3)}"


def test_no_false_matches_among_unrelated_photos(planted: dict) -> None:
    found = {tuple(map(int, p)) for p in planted["found"].pairs}
    assert found - planted["truth"] == set()


def test_false_match_rate_on_random_pairs_is_below_one_in_a_thousand(planted: dict) -> None:
    images = planted["images"]
    rng = np.random.default_rng(3)
    planted_ids = {i for pair in planted["truth"] for i in pair}
    pool = np.array([i for i in range(len(images)) if i not in planted_ids])
    pairs = rng.choice(pool, size=(3000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    d = aligned_distances(band_pass(images), pairs)
    false_match_rate = float(np.mean(d <= THRESHOLD))
    assert false_match_rate < 1e-3
    # The margin: unrelated photos are far from the threshold, not just over it.
    assert np.quantile(d, 0.001) > 2 * THRESHOLD


def test_distance_ignores_brightness_and_contrast_but_not_content() -> None:
    a, b = (view(p) for p in pink_noise_photos(2, seed=4))
    affine = np.clip(a.astype(np.float32) * 0.7 + 40, 0, 255).astype(np.uint8)
    assert distance(a, a) == pytest.approx(0.0, abs=1e-5)
    assert distance(a, affine) < 0.01
    assert distance(a, jpeg(a, 50)) < 0.1
    assert distance(a, b) > 0.5


def test_a_shared_horizon_does_not_make_two_photos_match() -> None:
    """Two different photos, each mostly one straight horizon: the structure in one orientation
    agrees, in the other it does not, and the lower of the two decides."""
    rows = np.arange(32)[:, None, None]
    sky_and_sea = np.where(rows < 14, 200.0, 60.0) * np.ones((32, 32, 3))
    a, b = (
        np.clip(sky_and_sea + 0.3 * (view(p).astype(np.float32) - 128), 0, 255).astype(np.uint8)
        for p in pink_noise_photos(2, seed=5)
    )
    band = band_pass(np.stack([a, b]))
    # The band-pass images correlate strongly (the horizon dominates them) ...
    assert np.corrcoef(band[0].ravel(), band[1].ravel())[0, 1] > 0.8
    # ... but the vertical-edge channel does not, so they are not called the same photo.
    assert distance(a, b) > THRESHOLD


def test_flat_images_never_match_by_structure() -> None:
    grey = np.full((32, 32, 3), 128, np.uint8)
    lighter = np.full((32, 32, 3), 150, np.uint8)
    assert distance(grey, lighter) == pytest.approx(1.0)


def test_candidate_pairs_are_the_nearest_neighbours() -> None:
    images = np.stack([view(p) for p in pink_noise_photos(30, seed=6)])
    features = thumbnails(images)
    pairs = candidate_pairs(features, neighbours=3)
    squared = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(squared, np.inf)
    expected = {tuple(sorted((i, int(j)))) for i in range(30) for j in np.argsort(squared[i])[:3]}
    assert {tuple(map(int, p)) for p in pairs} == expected
    assert (pairs[:, 0] < pairs[:, 1]).all()


def test_the_spectrum_index_ranks_shifted_copies_first() -> None:
    """A 3 px shift moves phases, not magnitudes: the spectrum finds the original where the
    layout thumbnail often does not (the reason for the second index)."""
    photos = pink_noise_photos(200, seed=9)
    originals = np.stack([view(p) for p in photos])
    shifted = np.stack([view(p, 3, -2) for p in photos])

    def top1(features: np.ndarray, queries: np.ndarray) -> float:
        d = ((queries[:, None] - features[None]) ** 2).sum(-1)
        return float(np.mean(d.argmin(axis=1) == np.arange(len(queries))))

    by_spectrum = top1(spectra(originals), spectra(shifted))
    by_layout = top1(thumbnails(originals), thumbnails(shifted))
    assert by_spectrum >= 0.98
    assert by_spectrum > by_layout


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="Received"):
        band_pass(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="Received"):
        candidate_pairs(np.zeros((4, 64), np.float32), neighbours=0)
    with pytest.raises(ValueError, match="Received"):
        find_near_duplicates(np.zeros((4, 32, 32, 3), np.uint8), threshold=1.5, neighbours=5)


def cifar_sample(per_class: int) -> np.ndarray:
    files = []
    for folder in sorted((CIFAR_JPEG / "train").iterdir()):
        files += sorted(folder.iterdir())[:per_class]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason="needs the shared CIFAR-10 JPEG folder")
def test_planted_copies_of_real_photos_among_real_photos() -> None:
    """Real CIFAR-10 photos: copies of 100 of them hidden among 3,000 must be found, and random
    pairs of different photos must not match."""
    images = cifar_sample(300)
    rng = np.random.default_rng(7)
    chosen = rng.choice(len(images), 100, replace=False)
    kinds = list(COPIES)
    # The copies are made from the 32 px photo itself: pad it so view() gets its margin.
    copies = [
        COPIES[kinds[k % len(kinds)]](np.pad(images[i], ((8, 8), (8, 8), (0, 0)), mode="edge"))
        for k, i in enumerate(chosen)
    ]
    pool = np.concatenate([images, np.stack(copies)])
    found = find_near_duplicates(pool, THRESHOLD, NEIGHBOURS)
    found_pairs = {tuple(map(int, p)) for p in found.pairs}
    truth = {(int(i), len(images) + k) for k, i in enumerate(chosen)}
    recall = len(truth & found_pairs) / len(truth)
    assert recall >= 0.95
    pairs = rng.choice(len(images), size=(20_000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    assert np.mean(aligned_distances(band_pass(images), pairs) <= THRESHOLD) < 1e-3
