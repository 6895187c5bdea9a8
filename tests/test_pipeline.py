"""Tests of the tf.data pipelines: preprocessing, mixing, class weights, oversampling, checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from deepsight_tf.core.errors import ConfigError, DataError
from deepsight_tf.model.preprocessing import Preprocessing, preprocess
from deepsight_tf.training.pipeline import (
    class_weights_from,
    cutmix,
    make_eval_dataset,
    make_train_dataset,
    mix_batch,
    mixup,
    oversample,
    parse_focus_pairs,
    random_partner,
    sample_beta,
    smooth_labels,
)

CLASSES = ["cat", "dog", "ship", "truck"]
K = len(CLASSES)


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    return images / 127.5 - 1.0


def source(n: int = 40, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % K


def train(x: np.ndarray, y: np.ndarray, **kwargs) -> tf.data.Dataset:
    size = kwargs.pop("image_size", 12)
    normalize = kwargs.pop("normalize", to_unit_range)
    interpolation = kwargs.pop("interpolation", "bicubic")
    settings = {"batch_size": 8, **kwargs}
    preprocessing = Preprocessing(size, interpolation, normalize)
    return make_train_dataset(x, y, np.arange(len(x)), K, preprocessing=preprocessing, **settings)


def first_batch(dataset: tf.data.Dataset) -> list[np.ndarray]:
    return [t.numpy() for t in next(iter(dataset))]


# --- preprocessing -------------------------------------------------------------------------------


def test_train_batch_shapes_dtypes_and_range() -> None:
    x, y = source()
    images, labels, weights = first_batch(train(x, y))
    assert images.shape == (8, 12, 12, 3) and images.dtype == np.float32
    assert labels.shape == (8, K) and labels.dtype == np.float32
    assert weights.shape == (8,) and weights.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() < -0.9 and images.max() > 0.9  # random pixels reach both ends
    np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
    assert set(np.unique(labels)) == {0.0, 1.0}
    np.testing.assert_array_equal(weights, 1.0)


def test_preprocess_is_tf_bicubic_resize_clipped_then_normalised() -> None:
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    batch = np.repeat(checker[None, :, :, None], 3, axis=-1)
    raw = tf.image.resize(batch.astype(np.float32), (12, 12), method="bicubic").numpy()
    assert raw.min() < 0.0 and raw.max() > 255.0  # bicubic overshoots on hard edges
    out = preprocess(batch, 12, to_unit_range).numpy()
    np.testing.assert_allclose(out, np.clip(raw, 0, 255) / 127.5 - 1.0, atol=1e-6)


def test_preprocess_takes_the_interpolation_and_skips_resizing_at_the_same_size() -> None:
    x, _ = source(2, size=4)
    nearest = preprocess(x, 8, lambda t: t, interpolation="nearest").numpy()
    np.testing.assert_array_equal(nearest, x.repeat(2, axis=1).repeat(2, axis=2))
    same = preprocess(x, 4, to_unit_range).numpy()
    np.testing.assert_array_equal(same, x.astype(np.float32) / 127.5 - 1.0)
    with pytest.raises(ValueError, match="Received: 'cubic'"):
        preprocess(x, 8, to_unit_range, interpolation="cubic")


def test_eval_dataset_keeps_order_and_equals_preprocess() -> None:
    x, y = source()
    indices = np.array([7, 3, 30, 0, 12, 5, 21, 39, 2, 18, 11])
    dataset = make_eval_dataset(
        x, y, indices, K, batch_size=4, preprocessing=Preprocessing(12, "bicubic", to_unit_range)
    )
    batches = list(dataset)
    assert [len(b[0]) for b in batches] == [4, 4, 3]  # last batch kept
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(labels.argmax(axis=1), y[indices])
    np.testing.assert_array_equal(images, preprocess(x[indices], 12, to_unit_range).numpy())
    # A second pass gives the same batches: nothing random in evaluation.
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in dataset]), images)


def test_training_and_evaluation_pipelines_run_without_tf_data_autotuning() -> None:
    """Autotuning's optimisation thread made each epoch's `fit` return up to a minute late
    (pipeline.without_autotuning): both pipelines run with it off."""
    x, y = source()
    preprocessing = Preprocessing(8, "bicubic", to_unit_range)
    evaluation = make_eval_dataset(x, y, np.arange(8), K, batch_size=4, preprocessing=preprocessing)
    for dataset in (train(x, y), evaluation):
        assert dataset.options().autotune.enabled is False
        assert len(list(dataset)) == (5 if dataset is not evaluation else 2)


# --- reproducibility ------------------------------------------------------------------------------


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    x, y = source()
    settings = {"augment": "strong", "mix": "cutmix", "seed": 7}
    first = first_batch(train(x, y, **settings))
    for a, b in zip(first, first_batch(train(x, y, **settings)), strict=True):
        np.testing.assert_array_equal(a, b)
    other = first_batch(train(x, y, **{**settings, "seed": 8}))
    assert not np.array_equal(first[0], other[0])


def test_each_epoch_reshuffles_and_reaugments_and_covers_every_example() -> None:
    x, y = source()
    dataset = train(x, y, augment="none", image_size=8, normalize=lambda t: t, epochs=2)
    batches = [b[0].numpy() for b in dataset]
    assert len(batches) == 10 == int(dataset.cardinality())  # 2 epochs of 40 examples / 8
    epochs = batches[:5], batches[5:]
    assert not np.array_equal(epochs[0][0], epochs[1][0])
    for epoch in epochs:
        seen = np.concatenate(epoch).reshape(40, -1)
        assert sorted(map(bytes, seen.astype(np.uint8))) == sorted(map(bytes, x.reshape(40, -1)))


def test_batches_are_a_function_of_seed_epoch_and_batch_number() -> None:
    """What exact resume rests on: iterating again, or starting at epoch 1 batch 2, gives the
    very batches an uninterrupted stream has there (augmentation and CutMix included)."""
    x, y = source()
    settings = {"augment": "strong", "mix": "cutmix", "seed": 3}
    full = [[t.numpy() for t in b] for b in train(x, y, epochs=3, **settings)]
    again = [[t.numpy() for t in b] for b in train(x, y, epochs=3, **settings)]
    resumed = [
        [t.numpy() for t in b]
        for b in train(x, y, first_epoch=1, epochs=2, skip_batches=2, **settings)
    ]
    assert len(resumed) == len(full) - 7
    for a, b in zip(full + full[7:], again + resumed, strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)


def test_drop_remainder_false_keeps_the_last_partial_batch() -> None:
    x, y = source(20)
    sizes = [len(b[0]) for b in train(x, y, drop_remainder=False)]
    assert sizes == [8, 8, 4]


# --- MixUp, CutMix, label smoothing --------------------------------------------------------------


def test_sample_beta_has_the_beta_mean_and_variance() -> None:
    for alpha in (1.0, 0.2):
        draws = sample_beta([40000], alpha, tf.constant([3, 4], tf.int64)).numpy()
        assert draws.min() >= 0.0 and draws.max() <= 1.0
        assert abs(draws.mean() - 0.5) < 0.01
        assert abs(draws.var() - 1.0 / (4.0 * (2.0 * alpha + 1.0))) < 0.005


def test_mixup_is_lambda_weighted_sum_of_images_labels_and_weights() -> None:
    x, y = source(6)
    one_hot = np.eye(K, dtype=np.float32)[y]
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], np.float32)
    lam = np.array([0.1, 0.5, 0.9, 0.3, 1.0, 0.0], np.float32)
    partner = np.array([1, 2, 0, 5, 3, 4])
    mixed, labels, mixed_w = (
        t.numpy() for t in mixup(tf.constant(x, tf.float32), one_hot, weights, lam, partner)
    )
    lam_image = lam[:, None, None, None]
    np.testing.assert_allclose(mixed, lam_image * x + (1 - lam_image) * x[partner], atol=1e-4)
    np.testing.assert_allclose(
        labels, lam[:, None] * one_hot + (1 - lam[:, None]) * one_hot[partner], atol=1e-6
    )
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(mixed_w, lam * weights + (1 - lam) * weights[partner], rtol=1e-6)


def test_mix_batch_mixup_uses_its_sampled_lambda_and_partner() -> None:
    x, y = source(8)
    seed = tf.constant([11, 12], tf.int64)
    images, one_hot = tf.constant(x, tf.float32), tf.one_hot(y[:8], K)
    mixed, labels, _ = mix_batch(images, one_hot, tf.ones([8]), "mixup", 0.4, seed)
    lam = sample_beta([8], 0.4, seed).numpy()[:, None, None, None]
    partner = random_partner(8, seed).numpy()
    np.testing.assert_allclose(mixed.numpy(), lam * x + (1 - lam) * x[partner], atol=1e-3)
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, atol=1e-6)


def test_cutmix_label_lambda_equals_the_pasted_area_exactly() -> None:
    n, size = 64, 10
    # Image i is the constant i + 1, so each pixel tells which image it came from.
    images = tf.constant(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None]) * tf.ones(
        [n, size, size, 3]
    )
    one_hot = tf.one_hot(np.arange(n) % K, K)
    lam = sample_beta([n], 1.0, tf.constant([5, 6], tf.int64))
    partner = tf.constant(np.roll(np.arange(n), 1))  # never itself
    mixed, labels, weights = cutmix(
        images, one_hot, tf.ones([n]), lam, partner, tf.constant([1, 2], tf.int64)
    )
    mixed, labels = mixed.numpy()[..., 0], labels.numpy()
    pasted = mixed == (partner.numpy() + 1)[:, None, None]
    kept = mixed == np.arange(1, n + 1)[:, None, None]
    assert (pasted | kept).all()
    own, other = np.arange(n) % K, partner.numpy() % K
    for i in range(n):
        fraction = pasted[i].mean()
        if own[i] != other[i]:
            assert labels[i, own[i]] == pytest.approx(1 - fraction, abs=1e-6)
            assert labels[i, other[i]] == pytest.approx(fraction, abs=1e-6)
        rows, cols = np.nonzero(pasted[i])
        if rows.size:  # the pasted region is one rectangle
            assert rows.size == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    # Boxes are clipped at the border, so the pasted area is at most 1 - lam, not always equal.
    assert (pasted.mean(axis=(1, 2)) <= 1 - lam.numpy() + 1e-6).all()
    assert 0.25 < pasted.mean() < 0.5  # E[1 - lam] = 0.5 before clipping
    np.testing.assert_allclose(weights.numpy(), 1.0)


def test_label_smoothing_values() -> None:
    smoothed = smooth_labels(tf.one_hot([0, 2], K), 0.1).numpy()
    np.testing.assert_allclose(smoothed[0], [0.925, 0.025, 0.025, 0.025], rtol=1e-6)
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0, rtol=1e-6)
    x, y = source()
    labels = first_batch(train(x, y, label_smoothing=0.2))[1]
    np.testing.assert_allclose(np.unique(labels), [0.05, 0.85], rtol=1e-6)


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixed_sample_weight_is_the_label_weighted_class_weight(mix: str) -> None:
    x, y = source(64)
    class_weights = np.array([0.5, 1.0, 2.0, 4.0], np.float32)
    _, labels, weights = first_batch(
        train(x, y, batch_size=32, mix=mix, mix_alpha=1.0, class_weights=class_weights)
    )
    assert ((labels > 0).sum(axis=1) == 2).sum() > 10  # most examples are really mixed
    np.testing.assert_allclose(weights, labels @ class_weights, rtol=1e-5)


def test_bad_mix_settings_are_config_errors() -> None:
    x, y = source()
    with pytest.raises(ConfigError, match="--mix 'blend'"):
        train(x, y, mix="blend")
    with pytest.raises(ConfigError, match="--mix-alpha 0"):
        train(x, y, mix="mixup", mix_alpha=0)
    with pytest.raises(ConfigError, match="--label-smoothing"):
        train(x, y, label_smoothing=1.0)
    with pytest.raises(ConfigError, match="--augment"):
        train(x, y, augment="heavy")


# --- class weights --------------------------------------------------------------------------------


def test_balanced_weights_equal_sklearn() -> None:
    y = np.array([0] * 50 + [1] * 25 + [2] * 15 + [3] * 10)
    weights = class_weights_from("balanced", y, CLASSES)
    expected = compute_class_weight("balanced", classes=np.arange(K), y=y)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert weights[y].mean() == pytest.approx(1.0)  # the documented normalisation
    assert class_weights_from("none", y, CLASSES) is None


def test_balanced_weights_refuse_a_class_without_examples() -> None:
    with pytest.raises(ConfigError, match="no training examples of truck"):
        class_weights_from("balanced", np.array([0, 1, 2, 2]), CLASSES)


def recall_weights(recalls: list[float], y: np.ndarray) -> np.ndarray:
    inverse = 1.0 / np.maximum(recalls, 0.05)
    return inverse / inverse[y].mean()


@pytest.mark.parametrize(
    "layout",
    [
        lambda r: dict(zip(CLASSES, r, strict=True)),
        # sklearn classification_report(output_dict=True), nested in a metrics.json
        lambda r: {
            "accuracy": 0.7,
            "test": {
                "report": {
                    **{c: {"precision": 0.9, "recall": v} for c, v in zip(CLASSES, r, strict=True)},
                    "macro avg": {"precision": 0.9, "recall": 0.5},
                }
            },
        },
        # a precision table first must not be taken for recall
        lambda r: {
            "per_class_precision": dict.fromkeys(CLASSES, 0.9),
            "per_class_recall": dict(zip(CLASSES, r, strict=True)),
        },
        lambda r: {
            "per_class": [{"class": c, "recall": v} for c, v in zip(CLASSES, r, strict=True)]
        },
        # training.py's metrics.json: the validation table is used, never the test one
        lambda r: {
            "class_names": CLASSES,
            "test": {"per_class": {c: {"recall": 0.9, "support": 5} for c in CLASSES}},
            "val": {
                "accuracy": 0.5,
                "per_class": {
                    c: {"recall": v, "support": 5} for c, v in zip(CLASSES, r, strict=True)
                },
            },
        },
    ],
)
def test_recall_file_weights(tmp_path: Path, layout) -> None:
    recalls = [0.5, 1.0, 0.25, 0.0]
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(layout(recalls)))
    y = np.array([0, 1, 2, 3] * 5 + [0] * 10)
    weights = class_weights_from(str(path), y, CLASSES)
    np.testing.assert_allclose(weights, recall_weights(recalls, y), rtol=1e-6)
    assert weights[y].mean() == pytest.approx(1.0)
    assert weights[3] / weights[1] == pytest.approx(20.0)  # recall 0 is floored at 0.05


def test_bad_class_weight_specs_are_config_errors(tmp_path: Path) -> None:
    y = np.arange(8) % K
    with pytest.raises(ConfigError, match=r"--class-weights 'nope\.json' is neither"):
        class_weights_from("nope.json", y, CLASSES)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"--class-weights .*broken.json: not valid JSON"):
        class_weights_from(str(broken), y, CLASSES)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"cat": 0.5, "dog": 0.4}))
    with pytest.raises(ConfigError, match="no per-class recall for all of cat, dog, ship, truck"):
        class_weights_from(str(partial), y, CLASSES)
    percent = tmp_path / "percent.json"
    percent.write_text(json.dumps(dict.fromkeys(CLASSES, 80)))
    with pytest.raises(ConfigError, match="not percentages"):
        class_weights_from(str(percent), y, CLASSES)


# --- focus pairs ----------------------------------------------------------------------------------


def test_parse_focus_pairs_resolves_names() -> None:
    assert parse_focus_pairs("cat:dog, ship : truck", CLASSES) == [(0, 1), (2, 3)]
    assert parse_focus_pairs("", CLASSES) == []
    with pytest.raises(ConfigError, match="--focus-pairs: unknown class 'horse'; classes are cat"):
        parse_focus_pairs("cat:horse", CLASSES)
    with pytest.raises(ConfigError, match="--focus-pairs: 'cat-dog' is not a pair"):
        parse_focus_pairs("cat-dog", CLASSES)
    with pytest.raises(ConfigError, match="pairs a class with itself"):
        parse_focus_pairs("cat:cat", CLASSES)


def test_oversample_repeats_focus_examples_by_the_factor() -> None:
    y = np.arange(100) % K
    indices = np.arange(100)
    twice = oversample(indices, y, [0, 1], 2.0, seed=0)
    counts = np.bincount(twice, minlength=100)
    np.testing.assert_array_equal(counts, np.where(np.isin(y, [0, 1]), 2, 1))
    one_and_half = np.bincount(oversample(indices, y, [0, 1], 1.5, seed=0), minlength=100)
    assert one_and_half[np.isin(y, [0, 1])].sum() == 75  # 50 focus examples * 1.5
    assert (one_and_half[~np.isin(y, [0, 1])] == 1).all()
    with pytest.raises(ConfigError, match=r"--focus-factor 0\.5 must be at least 1"):
        oversample(indices, y, [0], 0.5, seed=0)


def test_focus_pairs_raise_the_draw_rate_of_their_classes_by_the_factor() -> None:
    x, y = source(400, size=4)
    dataset = train(
        x,
        y,
        batch_size=32,
        image_size=4,
        augment="none",
        focus_pairs=[(0, 1)],
        focus_factor=2.0,
    )
    drawn = np.concatenate([b[1].numpy().argmax(axis=1) for b in dataset])
    # 600 draws in 18 full batches (576 kept); per example, focus classes twice as often.
    per_example = np.bincount(drawn, minlength=K) / np.bincount(y, minlength=K)
    rate = per_example[:2].mean() / per_example[2:].mean()
    assert len(drawn) == 576
    assert 1.8 < rate < 2.2  # only the 24 dropped draws can move it off 2.0


# --- verification ---------------------------------------------------------------------------------


def test_source_arrays_are_verified_before_batching() -> None:
    x, y = source()
    with pytest.raises(DataError, match="images are float64, expected uint8"):
        train(x.astype(np.float64), y)
    channels_first = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    with pytest.raises(DataError, match=r"image 0 has shape \(3, 8, 8\).*channels-first"):
        train(channels_first, y)
    bad_labels = y.copy()
    bad_labels[5] = K
    with pytest.raises(DataError, match="label 4 at index 5"):
        make_eval_dataset(
            x,
            bad_labels,
            np.arange(40),
            K,
            batch_size=4,
            preprocessing=Preprocessing(8, "bicubic", to_unit_range),
        )
    with pytest.raises(ConfigError, match="--batch-size 64 exceeds the 40 training examples"):
        train(x, y, batch_size=64)


def test_alternating_flip_mirrors_each_image_on_every_other_epoch() -> None:
    """Images black on the left half and white on the right (red channel): a shift of up to
    1 px keeps column 2 black unless the image is mirrored; the green channel holds each
    image's number. Each image is mirrored in exactly one of epochs 0 and 1, the same one in
    epochs 0 and 2, and about half are in epoch 0."""
    n, size = 64, 16
    x = np.zeros((n, size, size, 3), np.uint8)
    x[:, :, size // 2 :, 0] = 255
    x[:, :, :, 1] = np.arange(n)[:, None, None]
    y = np.arange(n) % K
    identity = Preprocessing(size, "bicubic", lambda images: images)

    def mirrored(epoch: int) -> dict[int, bool]:
        batches = make_train_dataset(
            x,
            y,
            np.arange(n),
            K,
            batch_size=n,
            preprocessing=identity,
            augment="translate",
            seed=7,
            first_epoch=epoch,
            flip="alternate",
        )
        images, _, _ = next(iter(batches))
        images = images.numpy()
        return dict(
            zip(images[:, 0, 0, 1].astype(int), images[:, size // 2, 2, 0] > 127, strict=True)
        )

    first, second, third = mirrored(0), mirrored(1), mirrored(2)
    assert all(first[i] != second[i] for i in range(n))
    assert first == third
    assert 16 <= sum(first.values()) <= 48
