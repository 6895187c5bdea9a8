"""Tests of the CAM family, deletion/insertion faithfulness, the sanity check and their figures."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from deepsight_tf.diagnose import explain
from deepsight_tf.model.backbones import get_backbone_spec
from deepsight_tf.model.classifier import build_classifier
from deepsight_tf.plots import explain as plots

from support.cam_models import (
    LOGIT_SCALE,
    SIZE,
    blob_images,
    region_images,
    region_mask,
    region_model,
    to_model_input,
    trained_blob_model,
)

NARROW = 1 / 16


@pytest.fixture(scope="module")
def border() -> tuple[keras.Model, np.ndarray, np.ndarray, np.ndarray]:
    """The border-reading model, 32 model inputs (8 per class), labels and their uint8 images."""
    images, labels = region_images(8, "border", seed=3)
    return region_model("border"), to_model_input(images), labels, images


@pytest.fixture(scope="module")
def border_cams(border) -> dict[str, np.ndarray]:
    model, x, labels, _ = border
    return explain.compute_cams_by_method(model, x, labels, layer_name="colour_cells", batch_size=8)


# --- Grad-CAM against an independent computation ----------------------------------------------


def _align_corners_resize(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Linear resize with corner pixels aligned (what scipy's zoom does), written with np.interp."""
    n, h, w = maps.shape
    rows = np.linspace(0, h - 1, height)
    cols = np.linspace(0, w - 1, width)
    along_cols = np.stack(
        [[np.interp(cols, np.arange(w), maps[i, r]) for r in range(h)] for i in range(n)]
    )
    return np.stack(
        [
            np.stack([np.interp(rows, np.arange(h), along_cols[i, :, c]) for c in range(width)], 1)
            for i in range(n)
        ]
    )


def _reference_gradcam(
    model: keras.Model, x: np.ndarray, classes: np.ndarray, layer: str
) -> np.ndarray:
    """Grad-CAM by hand: d(logit)/d(A) pooled per channel, times A, ReLU, resize, min-max."""
    dense = model.get_layer("head_predictions")
    probe = keras.Model(model.input, [model.get_layer(layer).output, dense.input])
    with tf.GradientTape() as tape:
        activations, pooled = probe(x, training=False)
        logits = tf.matmul(pooled, dense.kernel) + dense.bias
        score = tf.gather(logits, classes, batch_dims=1)
    grads = tape.gradient(score, activations).numpy()
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((activations.numpy() * weights).sum(axis=-1), 0.0)
    cam = _align_corners_resize(cam, x.shape[1], x.shape[2])
    low = cam.min(axis=(1, 2), keepdims=True)
    high = cam.max(axis=(1, 2), keepdims=True)
    return (cam - low) / (high - low + 1e-7)


def test_gradcam_equals_an_independent_gradient_tape_computation():
    keras.utils.set_random_seed(11)
    model = build_classifier("resnet18", 10, 32, stem="cifar", width_multiplier=NARROW)
    layer = get_backbone_spec("resnet18").last_conv_layer
    x = np.random.default_rng(0).normal(size=(6, 32, 32, 3)).astype(np.float32)
    classes = np.array([0, 3, 5, 9, 1, 3])

    expected = _reference_gradcam(model, x, classes, layer)
    maps = explain.compute_cams(model, x, classes, layer_name=layer, batch_size=4)

    # The maps carry information (not all-zero ReLU outputs that would match trivially).
    assert (expected.max(axis=(1, 2)) > 0.99).sum() >= 5
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    # The map is read at the block output (4 x 4 here), not at the last Conv2D inside the block.
    assert explain.feature_grid(model, layer) == (4, 4)
    # Batching changes nothing, and the caller's model keeps its softmax.
    one_batch = explain.compute_cams(model, x, classes, layer_name=layer, batch_size=6)
    np.testing.assert_allclose(one_batch, maps, atol=1e-6)
    assert model.get_layer("head_predictions").activation is keras.activations.softmax


def test_every_method_maps_the_border_cells_the_model_reads(border, border_cams):
    """For this model every method's map is proportional to the class's "colour_cells" channel.

    Only that channel is non-zero and the head is linear in it, so all four weightings are one
    positive number. Its 4 x 4 cells hold the share of frame pixels: 12/16 in a corner, 8/16 on
    an edge, 0 in the middle; upsampled and normalised, that is the expected map.
    """
    _, x, _, _ = border
    cells = np.array([[12, 8, 8, 12], [8, 0, 0, 8], [8, 0, 0, 8], [12, 8, 8, 12]]) / 12.0
    expected = _align_corners_resize(cells[None], SIZE, SIZE)[0]
    frame = region_mask("border")
    assert set(border_cams) == set(explain.METHODS)
    for method, maps in border_cams.items():
        assert maps.shape == x.shape[:3] and maps.dtype == np.float32, method
        np.testing.assert_allclose(maps, np.broadcast_to(expected, maps.shape), atol=1e-5)
        assert maps[:, frame].mean() > 2 * maps[:, ~frame].mean(), method


def test_input_errors_name_what_was_received(border):
    model, x, labels, _ = border
    with pytest.raises(ValueError, match="method must be one of"):
        explain.compute_cams(model, x, labels, layer_name="colour_cells", method="saliency")
    with pytest.raises(ValueError, match="Received: 'nope'"):
        explain.compute_cams(model, x, labels, layer_name="nope")
    with pytest.raises(ValueError, match=r"\(N, h, w, C\)"):
        explain.compute_cams(model, x, labels, layer_name="head_pool")
    with pytest.raises(ValueError, match="class_indices must be 32 integers"):
        explain.compute_cams(model, x, labels[:5], layer_name="colour_cells")
    with pytest.raises(ValueError, match=r"class_indices: label \d at index \d+ is outside 0\.\.3"):
        explain.compute_cams(model, x, labels + 4, layer_name="colour_cells")
    with pytest.raises(ValueError, match="preprocessed"):
        explain.compute_cams(model, x[:, :8], labels, layer_name="colour_cells")
    with pytest.raises(ValueError, match="cams must be one"):
        explain.deletion_insertion(model, x, labels, np.ones((32, 8, 8)))
    with pytest.raises(ValueError, match="baseline must be one of"):
        explain.baseline_images(x, "zeros")


# --- deletion and insertion ---------------------------------------------------------------------


def test_deletion_and_insertion_follow_the_pixel_count_exactly(border):
    """With the frame as the map, the class logit is LOGIT_SCALE * (frame pixels left) / 256.

    The mean baseline matches no palette colour, so a replaced frame pixel stops counting;
    ranks put all 112 frame pixels first, so step k removes min(n_k, 112) of them.
    """
    model, x, labels, _ = border
    frame = region_mask("border")
    oracle = np.broadcast_to(frame.astype(np.float32), x.shape[:3])
    steps = 8
    result = explain.deletion_insertion(model, x, labels, oracle, steps=steps, batch_size=5)

    counts = np.round(np.linspace(0, 1, steps + 1) * SIZE * SIZE)
    removed = np.minimum(counts, frame.sum())

    def probability(frame_pixels: np.ndarray) -> np.ndarray:
        logit = LOGIT_SCALE * frame_pixels / (SIZE * SIZE)
        return np.exp(logit) / (np.exp(logit) + 3.0)

    expected_deletion = probability(frame.sum() - removed)
    expected_insertion = probability(removed)
    np.testing.assert_allclose(result.deletion, np.tile(expected_deletion, (32, 1)), atol=1e-5)
    np.testing.assert_allclose(result.insertion, np.tile(expected_insertion, (32, 1)), atol=1e-5)
    np.testing.assert_allclose(result.fractions, np.linspace(0, 1, steps + 1))
    np.testing.assert_allclose(
        result.deletion_auc, np.trapezoid(result.deletion, result.fractions, axis=1)
    )
    assert result.baseline == "mean"


def test_baselines_are_what_their_names_say():
    x = np.random.default_rng(1).normal(size=(3, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(explain.baseline_images(x, "mean")[1, 5, 7], x.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(explain.baseline_images(x, (0.5, 0, -1))[2, 0, 0], [0.5, 0, -1])
    blurred = explain.baseline_images(x, "blur")
    # Blurring keeps each image's and channel's mean (reflect mode) and removes detail.
    np.testing.assert_allclose(blurred.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=0.05)
    assert blurred.std() < 0.3 * x.std()


def test_faithfulness_tells_a_faithful_map_from_an_anti_map_and_a_random_one(border, border_cams):
    model, x, labels, _ = border
    gradcam = border_cams["gradcam"]
    cams = {
        "gradcam": gradcam,
        "inverted": 1.0 - gradcam,
        "noise": explain.random_maps(len(x), (SIZE, SIZE), (4, 4), seed=99),
    }
    report = explain.faithfulness(model, x, labels, cams, random_grid=(4, 4), seed=0)

    faithful = report.methods["gradcam"]
    assert faithful.verdict == "beats random"
    assert faithful.deletion_gain_ci[0] > 0.1 and faithful.insertion_gain_ci[0] > 0.05
    assert faithful.deletion_auc < faithful.random_deletion_auc
    gains = report.curves["random"].deletion_auc - report.curves["gradcam"].deletion_auc
    assert faithful.deletion_gain == pytest.approx(gains.mean())
    assert faithful.deletion_p == pytest.approx(scipy.stats.wilcoxon(gains).pvalue)
    assert report.methods["inverted"].verdict == "worse than random"
    assert report.methods["noise"].verdict == "inconclusive"
    summary = report.summary()  # what interpret's report keeps
    assert summary.methods["gradcam"].verdict == "beats random"
    assert summary.random_grid == [4, 4] and summary.baseline == "mean"


def test_random_maps_on_a_grid_are_as_coarse_as_a_cam():
    fine = explain.random_maps(2, (16, 16), seed=1)
    coarse = explain.random_maps(2, (16, 16), grid=(2, 2), seed=1)
    assert fine.shape == coarse.shape == (2, 16, 16)
    # Linear upsampling of a 2 x 2 grid: every row is a straight line between its ends.
    rows = coarse[0]
    np.testing.assert_allclose(
        rows, np.linspace(rows[:, :1], rows[:, -1:], 16, axis=1)[..., 0], atol=1e-5
    )
    assert np.abs(np.diff(fine[0], axis=1)).mean() > 5 * np.abs(np.diff(rows, axis=1)).mean()


# --- sanity check -------------------------------------------------------------------------------


def test_spearman_per_image_matches_scipy_and_states_its_constant_cases():
    rng = np.random.default_rng(4)
    a = rng.random((5, 6, 6))
    b = a + rng.normal(0, 0.3, a.shape)
    b[1] = np.round(b[1], 1)  # ties
    expected = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(5)]
    np.testing.assert_allclose(explain.spearman_per_image(a, b), expected, atol=1e-12)
    constant = np.zeros((2, 6, 6))
    rho = explain.spearman_per_image(np.stack([a[0], constant[0]]), np.stack([constant[1], a[1]]))
    assert rho[0] == 0.0 and np.isnan(rho[1])


def test_default_cascade_is_the_head_then_the_last_stage_top_down():
    model = build_classifier("resnet18", 10, 32, stem="cifar", width_multiplier=NARROW)
    assert explain.default_randomisation(model) == ("head", "stack3_block1", "stack3_block0")
    airbench = build_classifier("airbench93", 10, 32, width_multiplier=NARROW)
    assert explain.default_randomisation(airbench) == ("head", "group3_conv2", "group3_conv1")
    # EfficientNet: the head conv, then the blocks at the last grid (stacks 7 and 6), each a
    # layer whose kernels sit inside it.
    lite = build_classifier("efficientnet-lite0", 10, 32)
    cascade = explain.default_randomisation(lite)
    assert cascade == ("head", "top_conv", "block7a", "block6d", "block6c", "block6b", "block6a")
    groups = {group: explain._group_layers(lite, group) for group in cascade}
    assert [layer.name for layer in groups["block6d"]] == ["block6d_"]
    kernels = [w for w in groups["block6d"][0].weights if w.name in ("kernel",)]
    assert len(kernels) == 3  # expand, depthwise, project
    # Outside the registry: the head alone.
    assert explain.default_randomisation(region_model("border")) == ("head",)


@pytest.fixture(scope="module")
def blob() -> tuple[keras.Model, np.ndarray, np.ndarray, np.ndarray]:
    model = trained_blob_model()
    return (model, *blob_images(32, seed=7))


def test_faster_score_cam_of_an_image_does_not_depend_on_its_batch(blob):
    """Faster-Score-CAM keeps 4 of block2's 16 channels, chosen per image, not per batch."""
    model, x, labels, masks = blob
    alone = explain.compute_cams(
        model, x[:1], labels[:1], layer_name="block2_conv", method="scorecam", score_cam_max_n=4
    )
    together = explain.compute_cams(
        model, x[:6], labels[:6], layer_name="block2_conv", method="scorecam", score_cam_max_n=4
    )
    np.testing.assert_allclose(together[0], alone[0], atol=1e-6)
    hottest = together.reshape(6, -1).argmax(axis=1)
    assert masks[:6].reshape(6, -1)[np.arange(6), hottest].mean() >= 5 / 6


def test_sanity_check_on_a_trained_model(blob):
    """Grad-CAM of a trained blob-colour classifier, randomised head, then block2, then block1.

    Asserted: the trained maps find the blob; once the convolutions are randomised the maps
    no longer rank pixels like the trained ones (mean Spearman below 0.5, not flagged). The
    head alone is flagged: every block2 channel fires on the one blob, so any re-weighting of
    the channels (a random head) still points at it: what Adebayo et al.'s test is for.
    """
    model, x, labels, masks = blob
    assert (model.predict(x, verbose=0).argmax(axis=1) == labels).mean() >= 0.9
    before = [w.copy() for w in model.get_weights()]

    result = explain.sanity_check(
        model,
        x,
        labels,
        layer_name="block2_conv",
        randomise=("head", "block2", "block1"),
        n_examples=3,
        seed=0,
    )

    trained = explain.compute_cams(model, x, labels, layer_name="block2_conv")
    hottest = trained.reshape(32, -1).argmax(axis=1)
    assert masks.reshape(32, -1)[np.arange(32), hottest].mean() >= 0.9
    assert result.groups == ["head", "block2", "block1"]
    assert result.spearman.shape == (3, 32)
    assert result.mean_spearman[0] > 0.5 and result.flagged_steps == ["head"]
    assert max(result.mean_spearman[1:]) < 0.5
    assert not result.passed
    assert result.original_maps.shape == (3, 16, 16)
    assert result.randomised_maps.shape == (3, 3, 16, 16)
    np.testing.assert_allclose(result.original_maps, trained[:3], atol=1e-6)
    # The randomisation happened on a clone.
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert result.summary().flagged_steps == ["head"] and not result.summary().passed


def test_randomise_groups_must_name_layers_with_kernels(border):
    model, x, labels, _ = border
    with pytest.raises(ValueError, match="Received: 'head_pool'"):
        explain.sanity_check(model, x, labels, layer_name="colour_cells", randomise=["head_pool"])


# --- figures ------------------------------------------------------------------------------------


def test_overlay_blends_the_image_with_viridis():
    import matplotlib

    image = np.full((4, 4, 3), 255, dtype=np.uint8)
    cam = np.zeros((2, 2))
    cam[0, 0] = 1.0
    np.testing.assert_allclose(plots.cam_overlay(image, cam, alpha=0.0), 1.0)
    heat = plots.cam_overlay(image, cam, alpha=1.0)
    viridis = matplotlib.colormaps["viridis"]
    np.testing.assert_allclose(heat[0, 0], viridis(1.0)[:3])
    np.testing.assert_allclose(heat[-1, -1], viridis(0.0)[:3])
    half = plots.cam_overlay(image, cam, alpha=0.5)
    np.testing.assert_allclose(half[0, 0], 0.5 + 0.5 * np.asarray(viridis(1.0)[:3]))


def test_figures_draw_results(border, border_cams, tmp_path):
    from deepsight_tf.plots import save_figure

    model, x, labels, images = border
    grid = plots.plot_cam_grid(images[:6], border_cams["gradcam"][:6], [f"#{i}" for i in range(6)])
    assert len([ax for ax in grid.axes if ax.images]) == 12  # 6 image/overlay pairs
    assert save_figure(grid, tmp_path / "grid.png").stat().st_size > 0

    report = explain.faithfulness(model, x[:8], labels[:8], {"gradcam": border_cams["gradcam"][:8]})
    curves = plots.plot_deletion_insertion(
        {name: vars(curve) for name, curve in report.curves.items()}, report.baseline
    )
    assert [len(ax.lines) for ax in curves.axes] == [2, 2]  # gradcam and random per panel
    save_figure(curves, tmp_path / "curves.png")

    sanity = explain.sanity_check(
        model, x[:4], labels[:4], layer_name="colour_cells", randomise=["head"], n_examples=2
    )
    figure = plots.plot_sanity_check(
        sanity.method,
        sanity.groups,
        sanity.spearman,
        sanity.mean_spearman,
        sanity.threshold,
        sanity.flagged_steps,
        sanity.original_maps,
        sanity.randomised_maps,
        images=images[:2],
    )
    assert len([ax for ax in figure.axes if ax.images]) == 2 * 3  # image, trained, + head
    save_figure(figure, tmp_path / "sanity.png")
