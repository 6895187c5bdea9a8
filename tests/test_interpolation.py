"""The interpolation study: each measure on cases with a known answer, and the selection rule."""

from __future__ import annotations

import numpy as np
import pytest

from deepsight_tf.data.interpolation import (
    CANDIDATES,
    METHODS,
    NO_UPSAMPLING_RULE,
    high_band_energy,
    interpolation_study,
    overshoot_fraction,
    resize,
)

from support.synthetic_images import pink_noise_photos, view


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return np.stack([view(p) for p in pink_noise_photos(24, seed=8)])


@pytest.fixture(scope="module")
def study(photos: np.ndarray):
    return interpolation_study(photos, image_size=64, sample=16, seed=0)


def test_nearest_and_area_round_trip_exactly_at_an_integer_factor(study) -> None:
    """Pixel replication followed by 2x2 averaging gives the source back: error 0."""
    rows = {r.method: r for r in study.rows}
    assert rows["nearest"].round_trip_rmse == pytest.approx(0.0, abs=1e-3)
    assert rows["area"].round_trip_rmse == pytest.approx(0.0, abs=1e-3)
    assert rows["bilinear"].round_trip_rmse > 1.0  # blurring loses source detail


def test_only_the_cubic_and_lanczos_kernels_overshoot(study) -> None:
    rows = {r.method: r for r in study.rows}
    for method in ("bilinear", "nearest", "area"):
        assert rows[method].overshoot_pct == 0.0
    assert rows["bicubic"].overshoot_pct > 0.0
    assert rows["lanczos3"].overshoot_pct > rows["bicubic"].overshoot_pct


def test_bicubic_keeps_more_high_frequencies_and_reconstructs_better_than_bilinear(study) -> None:
    rows = {r.method: r for r in study.rows}
    assert rows["bicubic"].high_freq_retained > rows["bilinear"].high_freq_retained
    assert rows["bicubic"].reconstruction_rmse < rows["bilinear"].reconstruction_rmse


def test_selection_follows_the_stated_rule(study) -> None:
    assert [r.method for r in study.rows] == list(METHODS)
    best = min((r for r in study.rows if r.candidate), key=lambda r: r.reconstruction_rmse)
    assert study.selected == best.method and best.selected
    assert sum(r.selected for r in study.rows) == 1
    assert {r.method for r in study.rows if r.candidate} == set(CANDIDATES)
    assert study.protocol_size == [16, 16]


def test_no_upsampling_selects_area(photos: np.ndarray) -> None:
    study = interpolation_study(photos, image_size=32, sample=4)
    assert (study.selected, study.rule, study.rows) == ("area", NO_UPSAMPLING_RULE, [])


def test_overshoot_is_measured_against_the_neighbouring_source_pixels() -> None:
    step = np.zeros((1, 8, 8, 3), np.float32)
    step[:, :, 4:] = 255.0
    assert overshoot_fraction(step, resize(step, (16, 16), "bilinear")) == 0.0
    ringing = overshoot_fraction(step, resize(step, (16, 16), "bicubic"))
    assert 0.0 < ringing < 0.5  # only next to the edge


def test_high_band_energy_is_zero_for_a_flat_image_and_kept_by_nearest() -> None:
    flat = np.full((2, 16, 16, 3), 100.0, np.float32)
    assert high_band_energy(flat, (16, 16)) == pytest.approx(0.0, abs=1e-9)
    checker = (np.indices((16, 16)).sum(axis=0) % 2 * 255.0)[None, :, :, None].repeat(3, -1)
    source = high_band_energy(checker, (16, 16))
    assert source > 0
    # A checkerboard sits at the source's Nyquist frequency: bilinear upsampling flattens it.
    blurred = high_band_energy(resize(checker, (32, 32), "bilinear"), (16, 16))
    assert blurred < 0.6 * source


def test_bad_arguments_are_refused(photos: np.ndarray) -> None:
    with pytest.raises(ValueError, match="Received"):
        resize(photos[:1], (64, 64), "cubic")
    with pytest.raises(ValueError, match="Received"):
        interpolation_study(photos, image_size=64, sample=0)
