"""Label evidence that never saw the labels: the ImageNet feature cache (computed once, read
back, rebuilt when stale), the probes and neighbours on it finding planted label issues, and
the planted kinds themselves (tests/support/planted_labels.py, which bench/label_issues.py uses)."""

from __future__ import annotations

import numpy as np
import pytest

from deepsight_tf.diagnose.independent import evidence_from_features, project
from deepsight_tf.diagnose.label_scores import self_confidence

from support.planted_labels import (
    COMPOSITE_AREA,
    composites,
    confusable_flips,
    most_confused_with,
    uniform_flips,
)


# The planted kinds ---------------------------------------------------------------------------
def test_most_confused_with_reads_row_rates_not_counts() -> None:
    confusion = np.array([[90, 8, 2], [30, 60, 10], [1, 400, 599]])
    # Row 2 is large: its 400 swaps to class 1 must not decide class 0's target.
    np.testing.assert_array_equal(most_confused_with(confusion), [1, 0, 1])
    with pytest.raises(ValueError, match="square"):
        most_confused_with(np.ones((2, 3)))


def test_flips_change_exactly_the_planted_labels() -> None:
    labels = np.repeat(np.arange(5), 40)
    noisy, flipped = uniform_flips(labels, 5, 0.1, np.random.default_rng(0))
    assert len(flipped) == 20 and np.all(noisy[flipped] != labels[flipped])
    assert np.array_equal(np.flatnonzero(noisy != labels), flipped)
    targets = np.array([3, 4, 0, 1, 2])
    noisy, flipped = confusable_flips(labels, targets, 0.1, np.random.default_rng(1))
    np.testing.assert_array_equal(noisy[flipped], targets[labels[flipped]])
    assert np.array_equal(np.flatnonzero(noisy != labels), flipped)


def test_composites_paste_a_box_of_another_class_and_take_its_label() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 25)
    images = (labels[:, None, None, None] * 60 + np.zeros((1, 32, 32, 3))).astype(np.uint8)
    out, noisy, planted, areas = composites(images, labels, 0.2, rng)
    assert len(planted) == 20 and np.array_equal(np.flatnonzero(noisy != labels), planted)
    untouched = np.setdiff1d(np.arange(100), planted)
    np.testing.assert_array_equal(out[untouched], images[untouched])
    for i, area in zip(planted, areas, strict=True):
        pasted = np.all(out[i] == noisy[i] * 60, axis=-1)  # pixels of the donor's class
        assert pasted.mean() == pytest.approx(area)  # one box, the rest the image's own
        assert np.all(out[i][~pasted] == labels[i] * 60)
        assert COMPOSITE_AREA[0] - 0.05 <= area <= COMPOSITE_AREA[1] + 0.05
        assert area < 0.5  # the label names the smaller part


# Probes and neighbours on features -----------------------------------------------------------
def feature_clusters(n_per: int, k: int, seed: int, dims: int = 40) -> tuple:
    """Non-negative features (like pooled ReLU6 maps) in k separable clusters."""
    centres = np.random.default_rng(11).uniform(0, 1, (k, dims)) ** 3
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), n_per)
    features = centres[labels] + 0.08 * rng.uniform(0, 1, (len(labels), dims))
    return features.astype(np.float32), labels


def test_the_evidence_finds_planted_flips_among_training_and_test_labels() -> None:
    from deepsight_tf.diagnose.forensics import find_label_issues

    train, labels = feature_clusters(60, 4, seed=0)
    val, val_labels = feature_clusters(5, 4, seed=1)
    test, test_labels = feature_clusters(20, 4, seed=2)
    noisy = labels.copy()
    flipped = np.array([3, 70, 140, 201])
    noisy[flipped] = (labels[flipped] + 1) % 4
    found = evidence_from_features(train, noisy, val, test, 4, seed=0, neighbours=True)
    # Out of fold: a flipped training image is predicted as its true cluster.
    np.testing.assert_array_equal(found["train_probs"][flipped].argmax(axis=1), labels[flipped])
    issues = find_label_issues(noisy, found["train_probs"], ["a", "b", "c", "d"])
    assert {i.index for i in issues} == set(flipped)
    own = self_confidence(noisy, found["train_knn"])  # leave one out: its own vote is gone
    assert set(np.argsort(own)[:4]) == set(flipped)
    np.testing.assert_array_equal(found["val_probs"].argmax(axis=1), val_labels)
    test_noisy = test_labels.copy()
    test_noisy[[5, 50]] = (test_labels[[5, 50]] + 2) % 4
    test_score = self_confidence(test_noisy, found["test_probs"])
    assert set(np.argsort(test_score)[:2]) == {5, 50}
    np.testing.assert_allclose(found["test_knn"].sum(axis=1), 1.0)


def test_projection_is_fitted_on_the_training_features_alone() -> None:
    train, _ = feature_clusters(30, 3, seed=3, dims=20)
    other, _ = feature_clusters(4, 3, seed=4, dims=20)
    a, b = project(train, other)
    a2, b2 = project(train, np.concatenate([other, other * 3]))
    np.testing.assert_allclose(a, a2, rtol=1e-5, atol=1e-6)  # the queries do not move the fit
    np.testing.assert_allclose(b2[: len(other)], b2[len(other) :], atol=1e-5)  # scale-free
    assert a.shape == (90, 20) and b.shape == (12, 20)


def test_each_stage_is_normalised_on_its_own() -> None:
    """A block of columns 1000 times louder (as a wide head is to a narrow stage) changes
    nothing once the blocks are normalised apart; normalised as one, it would drown the rest."""
    from deepsight_tf.diagnose.label_scores import knn_agreement_score, knn_label_agreement

    train, labels = feature_clusters(30, 3, seed=5, dims=12)
    noise = np.random.default_rng(6).uniform(0, 1, (len(train), 30)).astype(np.float32)
    quiet = np.concatenate([train, noise], axis=1)
    loud = np.concatenate([train, 1000 * noise], axis=1)
    (a,) = project(quiet, widths=(12, 30))
    (b,) = project(loud, widths=(12, 30))
    np.testing.assert_allclose(np.abs(a), np.abs(b), rtol=1e-3, atol=1e-4)
    (drowned,) = project(loud)  # one block: the noise block is nearly all of every norm

    def nearest_agrees(x: np.ndarray) -> float:
        shares = knn_label_agreement(x, x, labels, 3, k=1, leave_one_out=True)
        return float(knn_agreement_score(labels, shares).mean())

    assert nearest_agrees(b) == 1.0 and nearest_agrees(drowned) < 0.8
    with pytest.raises(ValueError, match="widths must add up"):
        project(quiet, widths=(12, 29))


# The feature cache ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory):
    """A stored separable data set (40 + 10 images a class, 16 px), lite0 converted into a
    temporary DEEPSIGHT_CACHE."""
    from deepsight_tf.data.dataset import load_dataset
    from deepsight_tf.model import efficientnet_lite

    from support.separable import separable_workspace

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPSIGHT_CACHE", str(tmp_path_factory.mktemp("deepsight-cache")))
        efficientnet_lite.cached_dir("lite0")
        ws = separable_workspace(tmp_path_factory.mktemp("features"))
        data, manifest = load_dataset(ws, "rgb")
        yield ws, data, manifest.outputs["images.npz"]


def test_features_are_the_pooled_stages_of_the_resized_images(stored) -> None:
    """By value against the backbone's own layers: the global averages of the last blocks of
    stacks 5, 6 and 7 and of the head, side by side, on bicubic-resized (x - 127) / 128."""
    import keras
    import tensorflow as tf

    from deepsight_tf.diagnose.imagenet_features import pooled_features
    from deepsight_tf.model.efficientnet_lite import imagenet_backbone

    _, data, _ = stored
    images = data.x_test[:6]
    features, widths = pooled_features(images, image_size=32, batch_size=4)
    assert widths == (112, 192, 320, 1280) and features.shape == (6, 1904)
    backbone = imagenet_backbone("lite0")
    names = ("block5c_", "block6d_", "block7a_", "top_activation")
    stages = keras.Model(backbone.input, [backbone.get_layer(n).output for n in names])
    resized = tf.image.resize(images.astype("float32"), (32, 32), "bicubic")
    maps = stages((tf.clip_by_value(resized, 0, 255) - 127.0) / 128.0, training=False)
    expected = np.concatenate([np.mean(m, axis=(1, 2)) for m in maps], axis=1)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_the_cache_is_computed_once_read_back_and_rebuilt_when_stale(stored) -> None:
    from deepsight_tf.core.storage import read_json
    from deepsight_tf.diagnose.imagenet_features import dataset_features

    ws, data, sha = stored
    first = dataset_features(ws, data, sha, image_size=32)
    assert first.pass_s is not None and first.train.shape == (len(data.x_train), 1904)
    assert first.widths == (112, 192, 320, 1280)
    assert first.folder.endswith(f"features/rgb/lite0-32px-{sha[:12]}")
    manifest = read_json(f"{first.folder}/manifest.json")
    assert manifest["inputs"]["data set"]["sha256"] == sha
    assert manifest["settings"]["image_size"] == 32
    again = dataset_features(ws, data, sha, image_size=32)
    assert again.pass_s is None and again.sha256 == first.sha256  # read, not computed
    np.testing.assert_array_equal(again.train, first.train)
    np.testing.assert_array_equal(again.test, first.test)
    with open(f"{first.folder}/features.npz", "r+b") as handle:  # a bit flipped on disk
        handle.seek(-8, 2)
        handle.write(b"\xff" * 8)
    rebuilt = dataset_features(ws, data, sha, image_size=32)
    assert rebuilt.pass_s is not None
    np.testing.assert_array_equal(rebuilt.test, first.test)  # the same float16 values
    other = dataset_features(ws, data, "0" * 64, image_size=32)  # other images, other key
    assert other.pass_s is not None and other.folder != first.folder
