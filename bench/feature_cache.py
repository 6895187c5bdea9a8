"""Benchmark: phase 1 (frozen backbone, head only) trained the plain way against on cached features.

Usage: .venv/bin/python bench/feature_cache.py [--workspace /tmp/ws1] [--images 4096] [--epochs 3]
Both variants train the same head for the same epochs on the same images (no pixel
augmentation) in this one run; the cached one runs the backbone once, the plain one every epoch.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from deepsight_tf.core.workspace import Workspace
from deepsight_tf.data.dataset import load_dataset
from deepsight_tf.model.backbones import choose_normalization
from deepsight_tf.model.classifier import build_classifier, freeze_backbone
from deepsight_tf.model.preprocessing import Preprocessing
from deepsight_tf.training.feature_cache import cached_head
from deepsight_tf.training.metrics import training_metrics
from deepsight_tf.training.pipeline import make_eval_dataset, make_train_dataset


def compiled(model: keras.Model, num_classes: int) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=training_metrics(num_classes),
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", default="/tmp/ws1")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    data, _ = load_dataset(Workspace(args.workspace), args.dataset)
    rng = np.random.default_rng(0)
    train = np.sort(rng.choice(len(data.y_train), args.images, replace=False))
    val = np.setdiff1d(np.arange(len(data.y_train)), train)[:1024]
    preprocessing = Preprocessing(
        args.image_size, "bicubic", choose_normalization("resnet18", "imagenet")
    )
    eval_args = {"batch_size": 256, "preprocessing": preprocessing}
    k = data.num_classes

    keras.utils.set_random_seed(0)
    model = build_classifier("resnet18", k, args.image_size)
    freeze_backbone(model)
    train_ds = make_train_dataset(
        data.x_train,
        data.y_train,
        train,
        k,
        batch_size=args.batch_size,
        preprocessing=preprocessing,
        augment="none",
        seed=0,
        epochs=args.epochs,
    )
    val_ds = make_eval_dataset(data.x_train, data.y_train, val, k, **eval_args)
    start = time.perf_counter()
    compiled(model, k).fit(
        train_ds,
        validation_data=val_ds,
        epochs=args.epochs,
        steps_per_epoch=len(train) // args.batch_size,
        verbose=0,
        shuffle=False,
    )
    plain_s = time.perf_counter() - start

    keras.utils.set_random_seed(0)
    model = build_classifier("resnet18", k, args.image_size)
    freeze_backbone(model)
    start = time.perf_counter()
    cached = cached_head(
        model, data.x_train, data.y_train, train, val, k, eval_args, args.batch_size, seed=0
    )
    compiled(cached.head, k).fit(
        cached.train_dataset(epochs=args.epochs),
        validation_data=cached.val_ds,
        epochs=args.epochs,
        steps_per_epoch=len(train) // args.batch_size,
        verbose=0,
    )
    cached_s = time.perf_counter() - start

    print(
        f"cpus: {os.cpu_count()}  images: {len(train)} train, {len(val)} val at "
        f"{args.image_size} px, resnet18, {args.epochs} head epochs"
    )
    print(f"plain (backbone every epoch): {plain_s:7.1f} s")
    print(f"cached features (once)      : {cached_s:7.1f} s")
    print(f"speed-up plain/cached       : {plain_s / cached_s:.2f}x")


if __name__ == "__main__":
    main()
