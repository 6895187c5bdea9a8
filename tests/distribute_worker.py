"""Trains a tiny classifier on one device and under a tf.distribute strategy; writes both as JSON.

Launched by tests/test_distribute.py as a subprocess, because logical CPU devices and
MultiWorkerMirroredStrategy must be configured before TensorFlow starts its runtime.
Both runs start from the same fixed weights and see the same global batches from
pipeline.make_train_dataset, compiled as training.py compiles (make_optimizer with a
OneCycle rate and a backbone multiplier, training_metrics, sample weights).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NUM_CLASSES = 4
IMAGES = 64
IMAGE_SIZE = 8
VAL_IMAGES = 21
CLASS_WEIGHTS = (1.0, 2.0, 0.5, 1.5)  # unequal, so the weighted loss reduction is exercised


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--logical-cpus", type=int, default=1)
    parser.add_argument("--logical-gpus", type=int, default=1, help="split the first GPU")
    parser.add_argument("--per-replica-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.1, help="peak rate for one replica's batch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--control", action="store_true", help="also train on per-replica batches")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import tensorflow as tf

    if args.logical_gpus > 1:
        gpu = tf.config.list_physical_devices("GPU")[0]
        tf.config.set_logical_device_configuration(
            gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=2048)] * args.logical_gpus
        )
    if args.logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus
        )
    from deepsight_tf.training.distribute import (
        describe_strategy,
        make_strategy,
        scale_for_replicas,
        shard_by_data,
    )

    devices = None
    if args.strategy == "mirrored" and args.logical_cpus > 1:
        devices = [f"/cpu:{i}" for i in range(args.logical_cpus)]
    strategy = make_strategy(args.strategy, devices)

    import keras
    import numpy as np

    from deepsight_tf.model.preprocessing import Preprocessing
    from deepsight_tf.training.metrics import training_metrics
    from deepsight_tf.training.optim import make_optimizer
    from deepsight_tf.training.pipeline import make_eval_dataset, make_train_dataset
    from deepsight_tf.training.schedules import OneCycle

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    y = np.arange(IMAGES) % NUM_CLASSES
    # Validation and prediction: an odd count, so the last batch splits unevenly.
    x_val = rng.integers(0, 256, (VAL_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    y_val = rng.permutation(np.arange(VAL_IMAGES) % NUM_CLASSES)

    def build() -> keras.Model:
        inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
        h = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
        h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
        outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="head_dense")(h)
        return keras.Model(inputs, outputs)

    # Fixed from numpy, not from Keras's initialisers, so every run and process starts equal.
    init_rng = np.random.default_rng(1)
    initial = [init_rng.normal(0, 0.3, w.shape).astype("float32") for w in build().get_weights()]

    def normalize(images: tf.Tensor) -> tf.Tensor:
        return images / 127.5 - 1.0

    def dataset_of(batch: int) -> tf.data.Dataset:
        return make_train_dataset(
            x,
            y,
            np.arange(IMAGES),
            NUM_CLASSES,
            batch_size=batch,
            preprocessing=Preprocessing(IMAGE_SIZE, "bicubic", normalize),
            augment="light",
            class_weights=np.asarray(CLASS_WEIGHTS, np.float32),
            seed=3,
        )

    def rows(batch: tuple[Any, ...]) -> list[list[float]]:
        """(label, sample weight, pixel sum) per example: enough to tell examples apart."""
        images, one_hot, weights = (np.asarray(t) for t in batch)
        return [
            [int(label), float(weight), round(float(pixels), 2)]
            for label, weight, pixels in zip(
                one_hot.argmax(1), weights, images.sum(axis=(1, 2, 3)), strict=True
            )
        ]

    def train(batch: int, lr: float) -> dict[str, Any]:
        dataset = dataset_of(batch)
        steps = IMAGES // batch
        model = build()
        model.set_weights(initial)
        model.compile(
            optimizer=make_optimizer(
                "sgd",
                OneCycle(lr, steps * args.epochs),
                backbone_lr_mult=0.5,
                head_prefixes=("head_",),
                weight_decay=5e-4,
            ),
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=training_metrics(NUM_CLASSES),
            jit_compile=False,
        )
        losses: list[float] = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda _batch, logs: losses.append(float(logs["loss"]))
        )
        start = time.perf_counter()
        val = shard_by_data(
            make_eval_dataset(
                x_val,
                y_val,
                np.arange(VAL_IMAGES),
                NUM_CLASSES,
                batch_size=batch,
                preprocessing=Preprocessing(IMAGE_SIZE, "bicubic", normalize),
            )
        )
        history = model.fit(
            shard_by_data(dataset),
            validation_data=val,
            epochs=args.epochs,
            verbose=0,
            shuffle=False,
            callbacks=[record],
        )
        probs = model.predict(val, verbose=0)
        return {
            "batch": batch,
            "lr": lr,
            "seconds": time.perf_counter() - start,
            "running_losses": losses,
            "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            "weights": [w.ravel().tolist() for w in model.get_weights()],
            "val_probs": np.asarray(probs).tolist(),
        }

    global_batch, lr = scale_for_replicas(
        args.per_replica_batch, args.lr, strategy.num_replicas_in_sync
    )
    # The first global batch, and the share of it each local replica gets, as fit distributes
    # it (Keras calls experimental_distribute_dataset): replicas must split it, not repeat it.
    distributed = next(
        iter(strategy.experimental_distribute_dataset(shard_by_data(dataset_of(global_batch))))
    )
    shares = zip(*(strategy.experimental_local_results(t) for t in distributed), strict=True)
    result = {
        "describe": describe_strategy(strategy),
        "first_batch": rows(next(iter(dataset_of(global_batch)))),
        "replica_shares": [rows(share) for share in shares],
    }
    # The reference runs outside any scope: TensorFlow's default, one-device strategy.
    result["reference"] = train(global_batch, lr)
    with strategy.scope():
        result["strategy"] = train(global_batch, lr)
    if args.control:
        result["control"] = train(args.per_replica_batch, args.lr)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
