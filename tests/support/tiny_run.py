"""A tiny finished run folder for the predict and export tests, as training.py lays one out."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from deepsight_tf.core.manifest import Manifest
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.storage import atomic_save_npz, atomic_write_json
from deepsight_tf.core.workspace import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_FILE,
    Workspace,
)
from deepsight_tf.model import classifier as models
from deepsight_tf.model.preprocessing import Normalization, Preprocessing, preprocess
from deepsight_tf.model.saving import save_classifier
from deepsight_tf.training.metrics import classification_scores, training_metrics
from deepsight_tf.training.optim import make_optimizer
from deepsight_tf.training.outcome import run_config
from deepsight_tf.training.pipeline import make_eval_dataset
from deepsight_tf.training.plan import plan_phases, resolve_settings
from deepsight_tf.training.schedules import OneCycle
from deepsight_tf.training.tta import predict_probs

CLASS_NAMES = ["cat", "dog", "ship"]
IMAGE_SIZE = 16  # the network's input size
SOURCE_SIZE = 12  # the stored images' size, so that every prediction goes through a resize
RUN_ID = "tiny"
NORMALIZATION = Normalization(mean=(120.0, 110.0, 100.0), std=(60.0, 55.0, 50.0), source="data")
PREPROCESSING = Preprocessing(IMAGE_SIZE, "bicubic", NORMALIZATION)


@dataclass
class TinyRun:
    workspace: Workspace
    run_dir: Path
    test_paths: list[Path]  # the test images as PNG files, in test_indices order
    x_test: np.ndarray


def make_tiny_run(
    root: Path, n_test: int = 10, seed: int = 3, *, older_model_file: bool = False
) -> TinyRun:
    """An untrained narrow ResNet-18 saved as a finished run, with test predictions made by the
    training pipeline's own evaluation dataset and the test images written as lossless PNGs.

    Built directly rather than by `deepsight train`: obtain, scrub and a training that learns
    something cost 30-50 s on two cores, too slow for a fixture of the fast tests. The files
    are those training.py writes; the slow test in test_predict.py runs the real chain.
    `older_model_file` saves the network alone, as runs did before model.keras held its
    preprocessing.
    """
    keras.utils.set_random_seed(seed)
    ws = Workspace(root / "ws")
    run_dir = ws.run_dir(RUN_ID)
    run_dir.mkdir(parents=True)
    model = models.build_classifier(
        "resnet18", len(CLASS_NAMES), IMAGE_SIZE, width_multiplier=1 / 16, stem="cifar"
    )
    rng = np.random.default_rng(seed)
    x_test = rng.integers(0, 256, (n_test, SOURCE_SIZE, SOURCE_SIZE, 3), dtype=np.uint8)
    y_test = np.arange(n_test) % len(CLASS_NAMES)
    test_indices = np.arange(n_test)
    # An untrained network calls every image the same class. A head solved by least squares to
    # give each test image about its label (cheaper than training) makes the predictions differ,
    # so comparisons of them say something.
    features = keras.Model(model.inputs, model.get_layer(models.HEAD_POOL).output)
    pooled = features.predict(preprocess(x_test, IMAGE_SIZE, NORMALIZATION, "bicubic"), verbose=0)
    pooled = np.concatenate([pooled, np.ones((n_test, 1), np.float32)], axis=1)
    # Noise on the target logits keeps probabilities (and so the top-k order) free of ties.
    targets = 3.0 * np.eye(len(CLASS_NAMES))[y_test] + rng.normal(0, 1, (n_test, len(CLASS_NAMES)))
    solved = np.linalg.lstsq(pooled, targets, rcond=None)[0].astype(np.float32)
    model.get_layer(models.HEAD_PREDICTIONS).set_weights([solved[:-1], solved[-1]])
    # Compiled with deepsight's own optimizer, schedule and metrics, built, as a trained model is.
    model.compile(
        optimizer=make_optimizer("sgd", OneCycle(0.1, 10)),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=training_metrics(len(CLASS_NAMES)),
    )
    model.optimizer.build(model.trainable_variables)
    eval_ds = make_eval_dataset(
        x_test, y_test, test_indices, len(CLASS_NAMES), batch_size=4, preprocessing=PREPROCESSING
    )
    test_probs = predict_probs(model, eval_ds)
    save_classifier(model, run_dir / MODEL_FILE, None if older_model_file else PREPROCESSING)
    settings = resolve_settings(
        TrainSettings(
            run_id=RUN_ID, backbone="resnet18", image_size=IMAGE_SIZE, width_multiplier=1 / 16
        )
    )
    config = run_config(
        RUN_ID, settings, "float32", PREPROCESSING, plan_phases(settings), {}, "2026-01-01"
    )
    atomic_write_json(run_dir / CONFIG_FILE, config)
    scores = {
        k: v
        for k, v in classification_scores(y_test, test_probs, CLASS_NAMES).items()
        if k != "confusion"
    }
    metrics = {"run_id": RUN_ID, "dataset": "tiny", "class_names": CLASS_NAMES, "val": scores}
    metrics.update(test=scores, mva=0.0, passed=True, best_epoch=None, duration_s=0.0)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    atomic_save_npz(
        run_dir / PREDICTIONS_FILE,
        test_probs=test_probs,
        test_labels=y_test,
        test_indices=test_indices,
    )
    ws.write_manifest(
        run_dir,
        Manifest(
            phase="train",
            settings=asdict(settings),
            outputs={CONFIG_FILE: "", MODEL_FILE: "", METRICS_FILE: "", PREDICTIONS_FILE: ""},
        ),
    )
    folder = root / "test_images"
    test_paths = []
    for i, image in enumerate(x_test):
        path = folder / CLASS_NAMES[y_test[i]] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        test_paths.append(path)
    return TinyRun(ws, run_dir, test_paths, x_test)
