"""Tests of the context-reliance occlusion test and CAM centre energy, with the acceptance test."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from deepsight_tf.diagnose import explain, occlusion
from deepsight_tf.diagnose.explain_run import context_figure
from deepsight_tf.plots import save_figure

from support.cam_models import (
    COLOUR_CLASSES,
    SIZE,
    region_images,
    region_mask,
    region_model,
    to_model_input,
)


def test_geometry_hides_about_the_same_area_in_the_centre_and_the_border():
    g = occlusion.occlusion_geometry(32, 32, 0.5)
    assert g.centre == (4, 4, 27, 27) and g.centre_pixels == 23 * 23 == 529
    assert g.kept == (5, 5, 27, 27) and g.border_pixels == 1024 - 22 * 22 == 540
    assert g.centre_mask().sum() == g.centre_pixels
    assert g.border_mask().sum() == g.border_pixels
    assert (
        g.describe() == "centre 23x23 (529 px); border outside the central 22x22 (540 px) of 32x32"
    )
    small = occlusion.occlusion_geometry(SIZE, SIZE, 0.5)
    # At 16 px the border is the 2 px frame the test models paint and read.
    np.testing.assert_array_equal(small.border_mask(), region_mask("border"))
    assert small.centre_pixels == 121 and small.border_pixels == 112
    # A larger centre share leaves a thinner frame of the same count.
    wide = occlusion.occlusion_geometry(64, 64, 0.75)
    assert abs(wide.centre_pixels - wide.border_pixels) <= 64
    with pytest.raises(ValueError, match=r"Received: 1\.0"):
        occlusion.occlusion_geometry(32, 32, 1.0)


def test_occlude_sets_exactly_the_masked_pixels():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 1:6] = True
    out = occlusion.occlude(images, mask, (10.4, 200.6, 0))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, mask], np.broadcast_to([10, 201, 0], (3, 10, 3)))
    np.testing.assert_array_equal(out[:, ~mask], images[:, ~mask])


def test_cam_energy_is_the_share_of_mass_on_the_centre():
    geometry = occlusion.occlusion_geometry(16, 16, 0.5)
    uniform = np.ones((1, 16, 16))
    centre_only = geometry.centre_mask()[None].astype(float)
    lopsided = uniform.copy()
    lopsided[0][geometry.centre_mask()] = 3.0  # 3 * 121 / (3 * 121 + 135)
    maps = np.concatenate([uniform, centre_only, lopsided, np.zeros((1, 16, 16))])
    energy = occlusion.cam_energy(maps)
    np.testing.assert_allclose(energy[:3], [121 / 256, 1.0, 363 / 498])
    assert np.isnan(energy[3])
    with pytest.raises(ValueError, match="non-negative"):
        occlusion.cam_energy(-uniform)

    by_class = occlusion.centre_energy_by_class(
        maps[:3], np.array([0, 1, 1]), ["a", "b", "c"], n_boot=200
    )
    assert by_class.uniform == pytest.approx(121 / 256)
    assert by_class.mean[0] == pytest.approx(121 / 256)
    assert by_class.mean[1] == pytest.approx((1.0 + 363 / 498) / 2)
    assert by_class.ci[1][0] == pytest.approx(363 / 498) and by_class.ci[1][1] == pytest.approx(1)
    assert by_class.n == [1, 2, 0] and np.isnan(by_class.mean[2])


def test_input_errors_name_what_was_received():
    model = region_model("border")
    images, labels = region_images(1, "border")
    with pytest.raises(ValueError, match="uint8 NHWC"):
        occlusion.context_reliance(model, images / 255.0, labels, to_model_input, COLOUR_CLASSES)
    with pytest.raises(ValueError, match=r"labels: label 4 at index 3 is outside 0\.\.3"):
        occlusion.context_reliance(model, images, labels + 1, to_model_input, COLOUR_CLASSES)


@pytest.fixture(scope="module")
def border_run():
    """The acceptance setting: a model that reads only the border, on 64 images."""
    images, labels = region_images(16, "border", seed=5)
    model = region_model("border")
    context = occlusion.context_reliance(
        model, images, labels, to_model_input, COLOUR_CLASSES, n_boot=1000, seed=0
    )
    return model, images, labels, context


def test_acceptance_a_border_model_relies_on_the_border(border_run):
    """The context test and the deletion curve both say "border" for a border-only model.

    Seeing no border, the model's logits tie and argmax says red (class 0), so red alone keeps
    its accuracy with the border hidden; every other class falls to 0.
    """
    model, images, labels, context = border_run
    assert context.chance == 0.25
    assert context.fill == tuple(float(v) for v in np.round(images.mean(axis=(0, 1, 2))))
    overall = context.overall
    assert overall.clean == 1.0 and overall.centre_occluded == 1.0
    assert overall.border_occluded == 0.25  # exactly chance: only red survives
    assert overall.context_gap == 0.75 and overall.context_gap_ci[0] > 0.5
    accuracy = {c.name: (c.clean, c.centre_occluded, c.border_occluded) for c in context.classes}
    assert accuracy == {
        "red": (1.0, 1.0, 1.0),
        "green": (1.0, 1.0, 0.0),
        "blue": (1.0, 1.0, 0.0),
        "yellow": (1.0, 1.0, 0.0),
    }
    assert context.relies_on_context == ["green", "blue", "yellow"]
    assert context.relies_on_object == []
    assert context.holds_without_object == list(COLOUR_CLASSES)
    assert context.above_chance_without_object == list(COLOUR_CLASSES)

    # Deletion in Grad-CAM order destroys the prediction faster than a random order.
    x = to_model_input(images)
    cams = explain.compute_cams(model, x, labels, layer_name="colour_cells")
    report = explain.faithfulness(model, x, labels, {"gradcam": cams}, random_grid=(4, 4))
    gradcam = report.methods["gradcam"]
    assert gradcam.deletion_gain_ci[0] > 0.1 and gradcam.deletion_p < 1e-6
    assert gradcam.verdict == "beats random"
    cam_order = report.curves["gradcam"].deletion.mean(axis=0)
    random_order = report.curves["random"].deletion.mean(axis=0)
    assert np.all(cam_order[1:-1] < random_order[1:-1])

    # And the maps put less of their mass on the centre than a uniform map would.
    energy = occlusion.centre_energy_by_class(cams, labels, COLOUR_CLASSES, n_boot=500)
    assert all(high < energy.uniform for _, high in energy.ci)


def test_a_centre_model_relies_on_the_object():
    """The control: a model reading only the central 8 x 8 loses everything with the centre."""
    images, labels = region_images(16, "centre", seed=6)
    context = occlusion.context_reliance(
        region_model("centre"), images, labels, to_model_input, COLOUR_CLASSES, n_boot=500
    )
    assert context.overall.clean == 1.0 and context.overall.border_occluded == 1.0
    assert context.overall.centre_occluded == 0.25
    assert context.relies_on_object == ["green", "blue", "yellow"]
    assert context.relies_on_context == []
    assert context.holds_without_object == ["red"]  # the blind model's argmax
    assert context.above_chance_without_object == ["red"]


def test_context_figure_and_json(border_run, tmp_path):
    model, images, labels, context = border_run
    cams = explain.compute_cams(
        model, to_model_input(images[:8]), labels[:8], layer_name="colour_cells"
    )
    energy = occlusion.centre_energy_by_class(cams, labels[:8], COLOUR_CLASSES, n_boot=100)
    figure = context_figure(context, energy)
    bars = [len(ax.patches) for ax in figure.axes]
    assert bars == [3 * 4, 4]  # clean/centre/border per class; one energy bar per class
    assert save_figure(figure, tmp_path / "context.png").stat().st_size > 0
    summary = context.summary(energy)  # what interpret's report keeps
    assert summary.geometry["description"].startswith("centre 11x11 (121 px)")
    assert summary.classes[1].border_occluded == 0.0
    assert "object-centred photos such as CIFAR-10's" in (summary.assumes or "")
    assert summary.centre_share(COLOUR_CLASSES[0]) == pytest.approx(energy.mean[0], nan_ok=True)
