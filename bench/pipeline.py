"""Benchmark: the training input pipeline against two baselines, in images per second.

Usage: TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python bench/pipeline.py [--workspace /tmp/ws1]
       [--images 8192] [--batches 40] [--rounds 3] [--augment light]

All three read the first --images training images of the stored data set, shuffle, augment,
batch, bicubic-resize to --image-size and normalise to [-1, 1]; they differ only in how the
augmentation runs:
  deepsight   make_train_dataset: Albumentations over a whole batch per numpy_function call
  per-image   the same Albumentations preset, one numpy_function call per image
  native TF   pad + random crop + horizontal flip as TF ops (no Python, no GIL)
It prints images/s for each and the ratios of deepsight to each baseline. The machines are
shared, so the three run in turn for --rounds rounds and the median of each is compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from deepsight_tf.core.workspace import Workspace
from deepsight_tf.data.dataset import load_dataset
from deepsight_tf.model.preprocessing import Preprocessing, preprocess
from deepsight_tf.training.augment import build_augmentation
from deepsight_tf.training.pipeline import make_train_dataset


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """Stand-in for a backbone's normalisation: the same cheap affine map in all three."""
    return images / 127.5 - 1.0


def per_image_albumentations(
    x: np.ndarray, batch_size: int, image_size: int, preset: str
) -> tf.data.Dataset:
    compose = build_augmentation(preset, x.shape[1:])

    def augment_one(i: np.int64) -> np.ndarray:
        return compose(image=x[i])["image"]

    def load(i: tf.Tensor) -> tf.Tensor:
        image = tf.numpy_function(augment_one, [i], tf.uint8, stateful=True)
        image.set_shape(x.shape[1:])
        return image

    return (
        tf.data.Dataset.range(len(x))
        .shuffle(len(x), seed=0)
        .map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .map(
            lambda b: preprocess(b, image_size, to_unit_range), num_parallel_calls=tf.data.AUTOTUNE
        )
        .prefetch(tf.data.AUTOTUNE)
    )


def native_tf(x: np.ndarray, batch_size: int, image_size: int) -> tf.data.Dataset:
    """Pad + random crop + flip as vectorised TF ops on whole batches: the fastest honest way."""
    height, width, _ = x.shape[1:]
    pad = max(1, min(height, width) // 8)  # as in augment.py's pad + crop
    source = tf.constant(x)

    def crop_flip(idx: tf.Tensor) -> tf.Tensor:
        n = tf.shape(idx)[0]
        # TF's REFLECT leaves the edge out, like OpenCV's BORDER_REFLECT_101 in augment.py.
        padded = tf.pad(tf.gather(source, idx), [[0, 0], [pad, pad], [pad, pad], [0, 0]], "REFLECT")
        top = tf.random.uniform([n], 0, 2 * pad + 1, tf.int32)
        left = tf.random.uniform([n], 0, 2 * pad + 1, tf.int32)
        rows = top[:, None] + tf.range(height)[None, :]
        cols = left[:, None] + tf.range(width)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
        return preprocess(tf.image.random_flip_left_right(images), image_size, to_unit_range)

    return (
        tf.data.Dataset.range(len(x))
        .shuffle(len(x), seed=0)
        .batch(batch_size, drop_remainder=True)
        .map(crop_flip, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def images_per_second(dataset: tf.data.Dataset, batches: int, batch_size: int) -> float:
    iterator = iter(dataset.repeat())
    for _ in range(3):  # warm-up: tracing, thread pools, AUTOTUNE's first guesses
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    del iterator  # stop its prefetch threads before the next pipeline is timed
    return batches * batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/ws1"))
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--images", type=int, default=8192, help="first N training images")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per pipeline")
    parser.add_argument("--rounds", type=int, default=3, help="each pipeline timed this often")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--augment", default="light", help="preset of deepsight and per-image")
    args = parser.parse_args()

    data, _ = load_dataset(Workspace(args.workspace), args.dataset)
    x, y = data.x_train[: args.images], data.y_train[: args.images]
    pipelines = {
        "deepsight (batch)": make_train_dataset(
            x,
            y,
            np.arange(len(x)),
            data.num_classes,
            batch_size=args.batch_size,
            preprocessing=Preprocessing(args.image_size, "bicubic", to_unit_range),
            augment=args.augment,
        ),
        "per-image albument.": per_image_albumentations(
            x, args.batch_size, args.image_size, args.augment
        ),
        "native TF ops": native_tf(x, args.batch_size, args.image_size),
    }
    print(
        f"cpus: {os.cpu_count()}  images: {len(x)} {x.shape[1]}px -> {args.image_size}px bicubic"
        f"  batches: {args.batches} x {args.batch_size}  augment: {args.augment}"
    )
    rounds: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.rounds):
        for name, dataset in pipelines.items():
            rounds[name].append(images_per_second(dataset, args.batches, args.batch_size))
    rates = {name: statistics.median(r) for name, r in rounds.items()}
    for name, rate in rates.items():
        each = " ".join(f"{r:.0f}" for r in rounds[name])
        print(f"{name:20s}: {rate:8.0f} images/s  (median of {each})")
    ours = rates["deepsight (batch)"]
    print(f"ratio deepsight / per-image: {ours / rates['per-image albument.']:.2f}")
    print(f"ratio deepsight / native TF: {ours / rates['native TF ops']:.2f}")


if __name__ == "__main__":
    main()
