"""Duplicates: exact groups, planted near copies found (recall), random pairs not matched, and a
threshold calibrated on each data set (photos, handwriting, greyscale textures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

from deepsight_tf.core.settings import NEAR_CEILING, NEAR_FALSE_MATCH_TAIL, ScrubSettings
from deepsight_tf.data.duplicates import (
    MIN_CALIBRATION_IMAGES,
    aligned_distances,
    band_pass,
    calibrate_threshold,
    candidate_pairs,
    exact_duplicate_groups,
    find_near_duplicates,
    nearest_distances,
    spectra,
    thumbnails,
)

from support.real_images import KINDS, plant
from support.synthetic_images import COPIES, jpeg, pink_noise_photos, view

THRESHOLD = NEAR_CEILING  # the photo level: what every pink-noise photo test below is held to
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
    found = find_near_duplicates(images, ScrubSettings().near_threshold, NEIGHBOURS)
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


def test_photos_calibrate_to_the_ceiling(planted: dict) -> None:
    """Distinct photos are far apart, so the fit lands above the level set on photos."""
    calibration = planted["found"].calibration
    assert calibration.rule == "calibrated"
    assert calibration.fitted > 2 * NEAR_CEILING
    assert calibration.threshold == NEAR_CEILING


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


# Calibration ----------------------------------------------------------------------------------
def test_the_threshold_is_the_log_normal_tail_of_the_nearest_distances() -> None:
    """Nearest-neighbour distances drawn log-normal: the fit recovers the tail quantile."""
    rng = np.random.default_rng(0)
    median, sigma = 0.15, 0.4
    nearest = np.exp(np.log(median) + sigma * rng.standard_normal(20_000))
    calibration = calibrate_threshold(nearest)
    expected = median * np.exp(norm.ppf(NEAR_FALSE_MATCH_TAIL) * sigma)
    assert calibration.rule == "calibrated"
    assert calibration.typical == pytest.approx(median, rel=0.02)
    assert calibration.log_sigma == pytest.approx(sigma, rel=0.05)
    assert calibration.threshold == pytest.approx(expected, rel=0.05)
    assert np.mean(nearest <= calibration.threshold) == pytest.approx(
        NEAR_FALSE_MATCH_TAIL, abs=5e-4
    )
    assert "calibrated on this data set" in calibration.statement()


def test_copies_among_the_images_move_the_threshold_little_and_only_down() -> None:
    """One image in twenty with an identical twin (distance 0; CIFAR-10 has about that share of
    near duplicates) lowers the fit by about a tenth: the median and quartiles still come from
    the distinct majority, and the error makes the threshold stricter, not looser."""
    rng = np.random.default_rng(1)
    nearest = np.exp(np.log(0.15) + 0.4 * rng.standard_normal(20_000))
    clean = calibrate_threshold(nearest).threshold
    with_copies = nearest.copy()
    with_copies[::20] = 0.0
    assert 0.85 * clean < calibrate_threshold(with_copies).threshold < clean


def test_the_ceiling_caps_the_fit_and_stands_in_for_too_few_images() -> None:
    far = np.full(MIN_CALIBRATION_IMAGES, 0.7) * np.linspace(0.9, 1.1, MIN_CALIBRATION_IMAGES)
    capped = calibrate_threshold(far)
    assert capped.fitted > NEAR_CEILING and capped.threshold == NEAR_CEILING
    assert "is lower and applies" in capped.statement()
    few = np.r_[far[: MIN_CALIBRATION_IMAGES - 1], np.inf, np.inf]
    fallback = calibrate_threshold(few)
    assert (fallback.rule, fallback.threshold) == ("ceiling", NEAR_CEILING)
    assert f"only {MIN_CALIBRATION_IMAGES - 1} images" in fallback.statement()


def test_nearest_distances_count_only_partners_of_the_same_class() -> None:
    pairs = np.array([[0, 1], [0, 2], [2, 3]])
    distances = np.array([0.1, 0.3, 0.5])
    labels = np.array([0, 1, 0, 0])
    assert nearest_distances(pairs, distances, labels, 5).tolist() == [
        0.3,
        np.inf,
        0.3,
        0.5,
        np.inf,
    ]
    assert nearest_distances(pairs, distances, None, 5).tolist() == [0.1, 0.1, 0.3, 0.5, np.inf]


@pytest.fixture(scope="module", params=list(KINDS))
def real_kind(request: pytest.FixtureRequest) -> dict[str, object]:
    """A kind of real image searched untouched, and with two copies of every kind planted."""
    kind = KINDS[request.param]()
    untouched = find_near_duplicates(kind.images, None, NEIGHBOURS, kind.labels)
    planted = plant(kind, per_copy=2, seed=0)
    found = find_near_duplicates(planted.images, None, NEIGHBOURS, planted.labels)
    return {"kind": kind, "untouched": untouched, "planted": planted, "found": found}


# What each kind of image must reach: recall on its planted copies, and whether the data set's
# own distinct images are close enough to pull the threshold under the photo ceiling.
KIND_RECALL = {"photos": 0.9, "handwriting": 0.6, "greyscale textures": 0.9}
KIND_BELOW_CEILING = {"photos": False, "handwriting": True, "greyscale textures": False}


def test_each_kind_flags_under_two_percent_of_its_untouched_images(real_kind: dict) -> None:
    kind, untouched = real_kind["kind"], real_kind["untouched"]
    flagged = len(np.unique(untouched.pairs)) / len(kind.images)
    assert flagged < 0.02, f"{kind.name}: {flagged:.1%} flagged; {untouched.calibration}"
    below = untouched.calibration.threshold < NEAR_CEILING
    assert below == KIND_BELOW_CEILING[kind.name], untouched.calibration.statement()


def test_each_kind_finds_its_planted_copies(real_kind: dict) -> None:
    kind, planted, found = real_kind["kind"], real_kind["planted"], real_kind["found"]
    returned = {tuple(map(int, p)) for p in found.pairs}
    hits = [tuple(map(int, pair)) in returned for pair in planted.truth]
    missed = [name for name, hit in zip(planted.copy_kinds, hits, strict=True) if not hit]
    assert np.mean(hits) >= KIND_RECALL[kind.name], f"{kind.name} missed {missed}"
    # Plain shifts, recolouring and JPEG keep every pixel's place: found in every kind.
    for name in ("shift 1 px", "darker, desaturated", "JPEG quality 40"):
        assert name not in missed, f"{kind.name} missed {missed}"
    precision = sum(hits) / len(returned)
    assert precision >= 0.8, f"{kind.name}: {len(returned) - sum(hits)} pairs not planted"


def test_handwriting_at_the_photo_level_floods() -> None:
    """Why the threshold is calibrated: at the 0.2 set on photos, most distinct handwritten
    digits have a "near duplicate" (different writers' fours correlate that well)."""
    kind = KINDS["handwriting"]()
    found = find_near_duplicates(kind.images, NEAR_CEILING, NEIGHBOURS, kind.labels)
    assert len(np.unique(found.pairs)) / len(kind.images) > 0.5


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
    labels = np.repeat(np.arange(10), 300)
    rng = np.random.default_rng(7)
    chosen = rng.choice(len(images), 100, replace=False)
    kinds = list(COPIES)
    # The copies are made from the 32 px photo itself: pad it so view() gets its margin.
    copies = [
        COPIES[kinds[k % len(kinds)]](np.pad(images[i], ((8, 8), (8, 8), (0, 0)), mode="edge"))
        for k, i in enumerate(chosen)
    ]
    pool = np.concatenate([images, np.stack(copies)])
    found = find_near_duplicates(pool, None, NEIGHBOURS, np.concatenate([labels, labels[chosen]]))
    assert found.calibration.threshold == NEAR_CEILING  # CIFAR-10 keeps the level set on photos
    found_pairs = {tuple(map(int, p)) for p in found.pairs}
    truth = {(int(i), len(images) + k) for k, i in enumerate(chosen)}
    recall = len(truth & found_pairs) / len(truth)
    assert recall >= 0.95
    pairs = rng.choice(len(images), size=(20_000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    assert np.mean(aligned_distances(band_pass(images), pairs) <= THRESHOLD) < 1e-3
