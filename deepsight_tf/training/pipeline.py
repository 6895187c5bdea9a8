"""tf.data input pipelines: augmentation, resize, normalisation, mixing and sample weights."""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from deepsight_tf.core.checks import verify_batch, verify_labels
from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.inputs import read_input_json
from deepsight_tf.core.settings import MIX_MODES
from deepsight_tf.core.workspace import METRICS_FILE
from deepsight_tf.model.preprocessing import Preprocessing
from deepsight_tf.training.augment import BatchAugmenter, check_preset, preset_flips

# A class the previous run never got right would otherwise get an infinite weight; 0.05 caps the
# ratio between the largest and the smallest weight from a recall file at 20.
MIN_RECALL = 0.05

# Streams folded into one per-batch seed so that each random draw of a batch is independent.
_SEED_BETA_A, _SEED_BETA_B, _SEED_PARTNER, _SEED_BOX_Y, _SEED_BOX_X = 1, 2, 3, 4, 5


def _stream(seed: tf.Tensor, stream: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), stream)


# --- label and batch mixing (pure TF, per example) ----------------------------------------------


def smooth_labels(one_hot: tf.Tensor, smoothing: float) -> tf.Tensor:
    """(1 - smoothing) * one_hot + smoothing / num_classes: each row still sums to 1."""
    check_label_smoothing(smoothing)
    if smoothing == 0.0:
        return one_hot
    num_classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def check_label_smoothing(smoothing: float) -> None:
    """Raise ConfigError naming --label-smoothing unless 0 <= smoothing < 1."""
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"--label-smoothing {smoothing} must be in [0, 1); 0.1 is usual")


def sample_beta(shape: Any, alpha: float, seed: tf.Tensor) -> tf.Tensor:
    """Beta(alpha, alpha) draws from two Gamma(alpha) draws: X / (X + Y), stateless in `seed`.

    `seed` is an integer tensor of shape [2]; two independent seeds are folded from it.
    """
    a = tf.random.stateless_gamma(shape, _stream(seed, _SEED_BETA_A), alpha)
    b = tf.random.stateless_gamma(shape, _stream(seed, _SEED_BETA_B), alpha)
    total = a + b
    # With a small alpha both gammas can underflow to 0; an even split is the neutral answer.
    return tf.where(total > 0.0, a / tf.maximum(total, 1e-30), 0.5)


def random_partner(batch_size: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A random permutation of range(batch_size): example i is mixed with example partner[i]."""
    keys = tf.random.stateless_uniform([batch_size], _stream(seed, _SEED_PARTNER))
    return tf.argsort(keys)


def mixup(
    images: tf.Tensor,
    one_hot: tf.Tensor,
    weights: tf.Tensor,
    lam: tf.Tensor,
    partner: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """MixUp per example: x = lam*x + (1-lam)*x[partner], same for labels and sample weights."""
    lam = tf.cast(lam, tf.float32)
    lam_image = tf.reshape(lam, [-1, 1, 1, 1])
    lam_row = lam[:, None]
    images = lam_image * images + (1.0 - lam_image) * tf.gather(images, partner)
    one_hot = lam_row * one_hot + (1.0 - lam_row) * tf.gather(one_hot, partner)
    weights = lam * weights + (1.0 - lam) * tf.gather(weights, partner)
    return images, one_hot, weights


def cutmix_boxes(height: tf.Tensor, width: tf.Tensor, lam: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Boolean (N, H, W) masks, True inside each example's pasted box.

    The box covers about 1 - lam of the image (side sqrt(1 - lam) of each side) around a uniform
    random centre and is clipped at the border, so the area actually pasted can be smaller.
    """
    lam = tf.cast(lam, tf.float32)
    n = tf.shape(lam)[0]
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    centre_y = tf.random.stateless_uniform(
        [n], _stream(seed, _SEED_BOX_Y), 0, height, dtype=tf.int32
    )
    centre_x = tf.random.stateless_uniform(
        [n], _stream(seed, _SEED_BOX_X), 0, width, dtype=tf.int32
    )
    y1 = tf.clip_by_value(centre_y - cut_h // 2, 0, height)
    y2 = tf.clip_by_value(centre_y - cut_h // 2 + cut_h, 0, height)
    x1 = tf.clip_by_value(centre_x - cut_w // 2, 0, width)
    x2 = tf.clip_by_value(centre_x - cut_w // 2 + cut_w, 0, width)
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= y1[:, None]) & (rows < y2[:, None])
    in_cols = (cols >= x1[:, None]) & (cols < x2[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def cutmix(
    images: tf.Tensor,
    one_hot: tf.Tensor,
    weights: tf.Tensor,
    lam: tf.Tensor,
    partner: tf.Tensor,
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """CutMix per example: paste a box of x[partner] into x; labels and weights mix by area.

    The label weight of the original image is recomputed from the box actually pasted (after
    clipping at the border), so the labels match the pixels exactly, not the sampled lam.
    """
    shape = tf.shape(images)
    boxes = cutmix_boxes(shape[1], shape[2], lam, seed)
    images = tf.where(boxes[..., None], tf.gather(images, partner), images)
    kept = 1.0 - tf.reduce_mean(tf.cast(boxes, tf.float32), axis=[1, 2])
    kept_row = kept[:, None]
    one_hot = kept_row * one_hot + (1.0 - kept_row) * tf.gather(one_hot, partner)
    weights = kept * weights + (1.0 - kept) * tf.gather(weights, partner)
    return images, one_hot, weights


def mix_batch(
    images: tf.Tensor,
    one_hot: tf.Tensor,
    weights: tf.Tensor,
    mode: str,
    alpha: float,
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Apply MixUp or CutMix (or nothing) with lam ~ Beta(alpha, alpha) drawn per example."""
    check_mix(mode, alpha)
    if mode == "none":
        return images, one_hot, weights
    n = tf.shape(images)[0]
    lam = sample_beta([n], alpha, seed)
    partner = random_partner(n, seed)
    if mode == "mixup":
        return mixup(images, one_hot, weights, lam, partner)
    return cutmix(images, one_hot, weights, lam, partner, seed)


def check_mix(mode: str, alpha: float) -> None:
    """Raise ConfigError naming --mix or --mix-alpha for an unknown mode or alpha <= 0."""
    if mode not in MIX_MODES:
        raise ConfigError(f"--mix {mode!r} is not a mode; use one of {', '.join(MIX_MODES)}")
    if mode != "none" and not alpha > 0.0:
        raise ConfigError(f"--mix-alpha {alpha} must be positive; 1.0 (CutMix) or 0.2 (MixUp)")


# --- class weights --------------------------------------------------------------------------------


def _normalise_to_example_mean(per_class: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    # Mean 1 over the training examples keeps the weighted loss on the scale of the unweighted
    # one, so the learning rate keeps its meaning; on balanced classes it is also mean 1 over
    # classes.
    mean = float(per_class[y_train].mean())
    return (per_class / mean).astype(np.float32)


def balanced_class_weights(y_train: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """n / (K * n_c) per class: sklearn's compute_class_weight("balanced"), mean 1 per example."""
    counts = np.bincount(np.asarray(y_train), minlength=len(class_names))
    if (counts == 0).any():
        missing = [class_names[i] for i in np.flatnonzero(counts == 0)]
        raise ConfigError(
            f"--class-weights balanced: no training examples of {', '.join(missing)}; "
            "use none or a recall file"
        )
    return (len(y_train) / (len(class_names) * counts)).astype(np.float32)


def recall_class_weights(
    recalls: dict[str, float],
    y_train: np.ndarray,
    class_names: Sequence[str],
    min_recall: float = MIN_RECALL,
) -> np.ndarray:
    """1 / max(recall, min_recall) per class, scaled to a mean weight of 1 per training example."""
    inverse = np.array([1.0 / max(float(recalls[c]), min_recall) for c in class_names])
    return _normalise_to_example_mean(inverse, np.asarray(y_train))


def _recall_of(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict) and isinstance(value.get("recall"), int | float):
        return float(value["recall"])
    return None


def _as_recall_table(node: Any, names: set[str], key: str) -> dict[str, float] | None:
    """node as {class_name: recall} if it is one (else None)."""
    if isinstance(node, dict) and names <= set(node):
        flat_ok = "recall" in key.lower()  # {name: number} counts only as a "recall" table
        table = {}
        for name in names:
            value = node[name]
            if isinstance(value, dict) or flat_ok:
                recall = _recall_of(value)
                if recall is None:
                    return None
                table[name] = recall
            else:
                return None
        return table
    if isinstance(node, list) and node and all(isinstance(row, dict) for row in node):
        table = {}
        for row in node:
            name = next(
                (row[k] for k in ("class", "class_name", "name", "label") if k in row), None
            )
            if isinstance(name, str) and isinstance(row.get("recall"), int | float):
                table[name] = float(row["recall"])
        if names <= set(table):
            return {name: table[name] for name in names}
    return None


def find_recall_table(document: Any, class_names: Sequence[str]) -> dict[str, float] | None:
    """The first per-class recall table in a JSON document, searched breadth-first.

    Recognised: the document itself as {class_name: recall}; anywhere inside it, a mapping
    {class_name: {"recall": r, ...}} (sklearn's classification_report(output_dict=True)), a
    mapping {class_name: r} under a key containing "recall", or a list of rows
    [{"class": name, "recall": r}, ...]. Tables must name every class; extra keys are ignored.
    Under keys starting with "val" it looks before others, under "test" only after all others.
    """
    names = set(class_names)
    queue: deque[tuple[str, Any]] = deque([("recall", document)])
    while queue:
        key, node = queue.popleft()
        table = _as_recall_table(node, names, key)
        if table is not None:
            return table
        if isinstance(node, dict):
            queue.extend(sorted(((str(k), v) for k, v in node.items()), key=_split_rank))
        elif isinstance(node, list):
            queue.extend((key, v) for v in node)
    return None


def _split_rank(item: tuple[str, Any]) -> int:
    # A run's metrics.json holds "val" and "test" tables. Weights tuned on test recall would
    # leak the test set into training, so validation goes first and test last.
    key = item[0].lower()
    return 0 if key.startswith("val") else 2 if key.startswith("test") else 1


def class_weights_from(
    spec: str, y_train: np.ndarray, class_names: Sequence[str]
) -> np.ndarray | None:
    """Per-class loss weights (float32, one per class) from --class-weights, or None.

    spec "none": no weighting. "balanced": n / (K * n_c), exactly sklearn's
    compute_class_weight("balanced"). A JSON FILE of recalls from an earlier run ({class: recall},
    or its metrics.json): w_c = 1 / max(recall_c, 0.05), scaled so that the mean weight over the
    training examples is 1 (on balanced classes this is also mean 1 over classes).
    """
    y_train = np.asarray(y_train)
    if spec == "none":
        return None
    if spec == "balanced":
        return balanced_class_weights(y_train, class_names)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"--class-weights {spec!r} is neither none, balanced nor an existing JSON file"
        )
    document = read_input_json(path, "--class-weights")
    recalls = find_recall_table(document, class_names)
    if recalls is None:
        raise ConfigError(
            f"--class-weights {spec}: no per-class recall for all of {', '.join(class_names)}; "
            f'expected {{"class_name": recall, ...}} or a {METRICS_FILE} with a per-class '
            "recall table"
        )
    bad = {c: r for c, r in recalls.items() if not (0.0 <= r <= 1.0 and math.isfinite(r))}
    if bad:
        raise ConfigError(
            f"--class-weights {spec}: recalls must lie in [0, 1], got {bad}; "
            "give fractions, not percentages"
        )
    return recall_class_weights(recalls, y_train, class_names)


# --- hard-example mining: oversampling confusable pairs -----------------------------------------


def parse_focus_pairs(text: str | None, class_names: Sequence[str]) -> list[tuple[int, int]]:
    """ "cat:dog,automobile:truck" -> [(3, 5), (1, 9)], with class indices into class_names."""
    if text is None or not text.strip():
        return []
    index = {name: i for i, name in enumerate(class_names)}
    pairs = []
    for item in text.replace("\n", ",").split(","):
        if not item.strip():
            continue
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"--focus-pairs: {_quote(item)} is not a pair; write class:class, comma "
                "separated, e.g. cat:dog,automobile:truck"
            )
        unknown = [p for p in parts if p not in index]
        if unknown:
            raise ConfigError(
                f"--focus-pairs: unknown class {', '.join(_quote(u) for u in unknown)}; "
                f"classes are {', '.join(class_names)}"
            )
        if parts[0] == parts[1]:
            raise ConfigError(f"--focus-pairs: {_quote(item)} pairs a class with itself")
        pairs.append((index[parts[0]], index[parts[1]]))
    return pairs


def _quote(text: str, limit: int = 60) -> str:
    """A piece of user input in an error: stripped, at most `limit` characters, one line."""
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")


def oversample(
    indices: np.ndarray,
    y: np.ndarray,
    focus_classes: Iterable[int],
    factor: float,
    seed: int,
) -> np.ndarray:
    """The indices of one epoch, where each example of a focus class appears `factor` times.

    The integer part of the factor repeats every focus example; the fractional part adds one
    more copy of a seeded random subset of that size. The other examples appear once.
    """
    if not factor >= 1.0:
        raise ConfigError(f"--focus-factor {factor} must be at least 1; 2 draws them twice")
    indices = np.asarray(indices, dtype=np.int64)
    focus = indices[np.isin(y[indices], np.fromiter(focus_classes, dtype=np.int64))]
    if focus.size == 0 or factor == 1.0:
        return indices
    whole = math.floor(factor)
    extra_count = round((factor - whole) * focus.size)
    rng = np.random.default_rng(seed)
    extra = rng.choice(focus, size=extra_count, replace=False)
    return np.concatenate([indices, *([focus] * (whole - 1)), extra])


# --- datasets -------------------------------------------------------------------------------------


def _expected_image_shape(x: np.ndarray) -> tuple[int, int, int]:
    """The channels-last shape the images should have, so a channels-first array is caught."""
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        return (int(x.shape[2]), int(x.shape[3]), int(x.shape[1]))
    # Anything that is not 4-D is refused by verify_batch before the shape is compared.
    return tuple(int(d) for d in x.shape[1:4])  # type: ignore[return-value]


def _check_source(
    x: np.ndarray, y: np.ndarray, indices: np.ndarray, num_classes: int, where: str
) -> np.ndarray:
    """Verify images and labels before any batch is built; return indices as int64."""
    verify_batch(x, _expected_image_shape(x), np.uint8, where=where)
    if len(y) != len(x):
        raise ValueError(f"x and y must have the same length. Received: {len(x)} and {len(y)}")
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be 1-D integers. Received: {indices.dtype}{indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= len(x)):
        raise ValueError(
            f"indices must lie in [0, {len(x)}). Received: {indices.min()}..{indices.max()}"
        )
    verify_labels(np.asarray(y)[indices], num_classes, where=f"{where} labels")
    return indices.astype(np.int64)


def _gather(x: np.ndarray, idx: tf.Tensor) -> tf.Tensor:
    images = tf.numpy_function(lambda i: x[i], [idx], tf.uint8, stateful=False)
    images.set_shape(idx.shape.concatenate(x.shape[1:]))
    return images


def make_train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    indices: np.ndarray,
    num_classes: int,
    *,
    batch_size: int,
    preprocessing: Preprocessing,
    augment: str = "standard",
    mix: str = "none",
    mix_alpha: float = 1.0,
    label_smoothing: float = 0.0,
    class_weights: np.ndarray | None = None,
    focus_pairs: Sequence[tuple[int, int]] | None = None,
    focus_factor: float = 2.0,
    seed: int = 0,
    drop_remainder: bool = True,
    first_epoch: int = 0,
    epochs: int = 1,
    skip_batches: int = 0,
    flip: str = "random",
) -> tf.data.Dataset:
    """Shuffled, augmented batches of (images float32, one-hot labels float32, weights float32).

    x is the uint8 NHWC store, y its integer labels, indices the training split (scrub's).
    Per batch: gather and augment with Albumentations in one numpy_function call, resize and
    normalise with `preprocessing`, mix (MixUp/CutMix), smooth labels. Sample weights are
    class_weights[label] (1 without class weights), mixed with the same lam as the labels.

    The dataset holds `epochs` epochs starting at epoch number `first_epoch`, less the first
    `skip_batches` batches. Every batch is a pure function of (seed, epoch number, batch
    number): each epoch has its own order and augmentations, iterating the dataset again
    gives the same batches, and a run resumed at epoch k, batch b sees exactly the batches
    an uninterrupted run would (see `epoch_batches`).
    `flip="alternate"` replaces the preset's random mirror (see `_alternating_flip`).
    """
    _check_recipe(augment, mix, mix_alpha, label_smoothing)
    indices = _check_batches(x, y, indices, num_classes, batch_size, preprocessing, "training")
    epoch = _epoch_examples(indices, y, focus_pairs, focus_factor, seed)
    _check_batch_fits(len(epoch), batch_size, drop_remainder)
    epoch_indices = tf.constant(epoch)
    labels = tf.constant(np.asarray(y, dtype=np.int32))
    example_weights = tf.constant(_example_weights(y, class_weights, num_classes))
    augmenter = BatchAugmenter(augment, x.shape[1:], flip)
    mirror = _alternating_flip(len(x), seed) if _alternates(flip, augment) else None

    def gather_and_augment(idx: np.ndarray, batch_seed: np.int64) -> np.ndarray:
        return augmenter(x[idx], int(batch_seed))

    def make_batch(
        positions: tf.Tensor, batch_seed: tf.Tensor, epoch: tf.Tensor
    ) -> tuple[tf.Tensor, ...]:
        idx = tf.gather(epoch_indices, positions)
        images = tf.numpy_function(gather_and_augment, [idx, batch_seed], tf.uint8, stateful=False)
        images.set_shape(idx.shape.concatenate(x.shape[1:]))
        if mirror is not None:
            images = _mirror_alternately(images, tf.gather(mirror, idx), epoch)
        images = preprocessing(images)
        one_hot = tf.one_hot(tf.gather(labels, idx), num_classes, dtype=tf.float32)
        weights = tf.gather(example_weights, idx)
        stateless_seed = tf.stack([batch_seed, tf.constant(seed, tf.int64)])
        images, one_hot, weights = mix_batch(
            images, one_hot, weights, mix, mix_alpha, stateless_seed
        )
        return images, smooth_labels(one_hot, label_smoothing), weights

    batches = epoch_batches(
        len(epoch),
        batch_size,
        seed,
        first_epoch=first_epoch,
        epochs=epochs,
        skip_batches=skip_batches,
        drop_remainder=drop_remainder,
        with_epoch=True,
    )
    return without_autotuning(
        batches.map(make_batch, num_parallel_calls=parallel_calls(), deterministic=True)
    )


# Batches made ahead of the step. The pipelines make 8,000 to 9,000 training images a second
# at 48 px here, against the step's few hundred: two batches keep the step fed.
PREFETCH_BATCHES = 2


def parallel_calls() -> int:
    """Batches a pipeline makes at once: one per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset`, prefetched, with tf.data's autotuning off.

    Autotuning's optimisation thread wakes on a doubling period (10 ms, 20 ms, ... up to a
    minute), and the end of a Keras `fit` waited for the period under way to run out before
    it returned: one fit per epoch, so epochs ended 4 to 21 s late in 6 of 8 measured here,
    each such fit returning 41.0 or 82.0 s after it began (the sums of those periods: 10 ms
    times 2**12 - 1 and 2**13 - 1), which were the stalls of 26 to 43 s seen on make all.
    With autotuning off none of 8 did, and the pipeline made as many images a second.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)


def _epoch_examples(
    indices: np.ndarray,
    y: np.ndarray,
    focus_pairs: Sequence[tuple[int, int]] | None,
    focus_factor: float,
    seed: int,
) -> np.ndarray:
    """One epoch's examples: the split's indices, the focus pairs' classes oversampled."""
    focus_seed = int(np.random.SeedSequence(seed).generate_state(3)[2] % (2**31 - 1))
    focus_classes = sorted({c for pair in focus_pairs or () for c in pair})
    return oversample(indices, np.asarray(y), focus_classes, focus_factor, focus_seed)


def _check_recipe(augment: str, mix: str, mix_alpha: float, label_smoothing: float) -> None:
    check_preset(augment)
    check_mix(mix, mix_alpha)
    check_label_smoothing(label_smoothing)


def _check_batch_fits(examples: int, batch_size: int, drop_remainder: bool) -> None:
    if drop_remainder and examples < batch_size:
        raise ConfigError(
            f"--batch-size {batch_size} exceeds the {examples} training examples; lower it"
        )


def _mirror_alternately(images: tf.Tensor, mirrored: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
    """Each image mirrored where its even-epoch draw says so, the other way in odd epochs."""
    flipped = tf.not_equal(mirrored, tf.equal(epoch % 2, 1))
    return tf.where(flipped[:, None, None, None], tf.reverse(images, [2]), images)


def _alternates(flip: str, augment: str) -> bool:
    return flip == "alternate" and preset_flips(augment)


def _alternating_flip(count: int, seed: int) -> tf.Tensor:
    """Whether each stored image is mirrored in even epochs: one fixed draw per image.

    airbench's alternating flip (Jordan 2024) in place of the preset's random mirror: each
    image is mirrored or not at random in even epochs and the other way round in odd ones,
    so every two epochs show both views of every image."""
    draws = np.random.default_rng(np.random.SeedSequence([seed, 0xF11])).random(count)
    return tf.constant(draws < 0.5)


def _check_batches(
    x: np.ndarray,
    y: np.ndarray,
    indices: np.ndarray,
    num_classes: int,
    batch_size: int,
    preprocessing: Preprocessing,
    purpose: str,
) -> np.ndarray:
    """The checks both pipelines make before building anything; returns the indices."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be positive")
    indices = _check_source(x, y, indices, num_classes, f"{purpose} images")
    # One eager call on a blank image: a bad interpolation or a broken normalize fails here,
    # with a readable traceback, rather than inside tf.data's first batch.
    preprocessing(tf.zeros([1, *x.shape[1:]], tf.uint8))
    return indices


def _example_weights(
    y: np.ndarray, class_weights: np.ndarray | None, num_classes: int
) -> np.ndarray:
    """Each example's loss weight: its class's weight, or 1 without class weights."""
    if class_weights is None:
        return np.ones(len(y), np.float32)
    class_weights = np.asarray(class_weights, dtype=np.float32)
    if class_weights.shape != (num_classes,):
        raise ValueError(
            f"class_weights must have one weight per class ({num_classes}). "
            f"Received: shape {class_weights.shape}"
        )
    return class_weights[np.asarray(y)].astype(np.float32)


def steps_per_epoch(examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches in one epoch of `examples`: the last partial batch is dropped or kept."""
    return examples // batch_size if drop_remainder else -(-examples // batch_size)


def epoch_batches(
    examples: int,
    batch_size: int,
    seed: int,
    *,
    first_epoch: int = 0,
    epochs: int = 1,
    skip_batches: int = 0,
    drop_remainder: bool = True,
    with_epoch: bool = False,
) -> tf.data.Dataset:
    """(positions int64 [batch], batch seed int64) for each batch of epochs first_epoch..,
    and the batch's epoch number (int64) after them `with_epoch`.

    Stateless: epoch e's order is a permutation drawn from (seed, e), and batch i of it gets a
    seed drawn from (seed, e, i), so nothing depends on how many iterators came before. (A
    `shuffle(reshuffle_each_iteration=True)` advances with every iterator made, so a resumed
    run, or Keras drawing a batch to build a model under a strategy, would shift the order.)
    """
    if epochs < 1 or first_epoch < 0 or skip_batches < 0:
        raise ValueError(
            f"need epochs >= 1, first_epoch >= 0, skip_batches >= 0. Received: {epochs}, "
            f"{first_epoch}, {skip_batches}"
        )
    steps = steps_per_epoch(examples, batch_size, drop_remainder)
    if skip_batches > steps * epochs:
        raise ValueError(f"skip_batches {skip_batches} exceeds the {steps * epochs} batches")
    shuffle_seed, batch_seed_base = (
        int(s) for s in np.random.SeedSequence(seed).generate_state(2) % (2**31 - 1)
    )
    positions = tf.range(examples, dtype=tf.int64)

    def one_epoch(number: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            positions, tf.stack([tf.constant(shuffle_seed, tf.int64), number])
        )
        epoch_seed = tf.stack([tf.constant(batch_seed_base, tf.int64), number])

        def with_seed(step: tf.Tensor, batch: tf.Tensor) -> tuple[tf.Tensor, ...]:
            key = tf.random.experimental.stateless_fold_in(epoch_seed, step)
            draw = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
            return (batch, draw, number) if with_epoch else (batch, draw)

        return (
            tf.data.Dataset.from_tensor_slices(order)
            .batch(batch_size, drop_remainder=drop_remainder)
            .enumerate()
            .map(with_seed)
        )

    return (
        tf.data.Dataset.range(first_epoch, first_epoch + epochs)
        .flat_map(one_epoch)
        .skip(skip_batches)
        .apply(tf.data.experimental.assert_cardinality(steps * epochs - skip_batches))
    )


def make_eval_dataset(
    x: np.ndarray,
    y: np.ndarray,
    indices: np.ndarray,
    num_classes: int,
    *,
    batch_size: int,
    preprocessing: Preprocessing,
) -> tf.data.Dataset:
    """Batches of (images float32, one-hot labels float32) in the order of `indices`.

    No augmentation, no shuffle, last batch kept: the images are exactly preprocessing(x[indices]).
    """
    indices = _check_batches(x, y, indices, num_classes, batch_size, preprocessing, "evaluation")
    labels = tf.constant(np.asarray(y, dtype=np.int32))

    def make_batch(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = preprocessing(_gather(x, idx))
        return images, tf.one_hot(tf.gather(labels, idx), num_classes, dtype=tf.float32)

    return without_autotuning(
        tf.data.Dataset.from_tensor_slices(indices)
        .batch(batch_size)
        .map(make_batch, num_parallel_calls=parallel_calls(), deterministic=True)
    )
