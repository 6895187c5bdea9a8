"""The separable data set (each class brightens one colour channel) and the tiny training
settings that learn it in a few steps on a CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepsight_tf.core.settings import ObtainSettings, ScrubSettings, TrainSettings
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.data.obtain import obtain
from deepsight_tf.data.scrub import scrub

CLASSES = ["red", "green", "blue"]
DATASET = "rgb"


def separable_npz(
    path: Path, per_class: int = 40, test_per_class: int = 10, size: int = 16
) -> Path:
    """Each class brightens one colour channel: learnable in a few steps by a tiny network."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(len(CLASSES)), n)
        images = rng.integers(0, 100, (len(labels), size, size, 3))
        images[np.arange(len(labels)), :, :, labels] += 150
        return images.astype(np.uint8), labels

    x_train, y_train = make(per_class)
    x_test, y_test = make(test_per_class)
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=np.asarray(CLASSES),
    )
    return path


def separable_workspace(root: Path) -> Workspace:
    """A workspace with the separable data set obtained and scrubbed, ready to train."""
    ws = Workspace(root / "ws")
    obtain(ObtainSettings(source=str(separable_npz(root / "rgb.npz")), name=DATASET), ws)
    scrub(ScrubSettings(image_size=16, interp_sample=16), ws)
    return ws


def tiny(**overrides: object) -> TrainSettings:
    # 13 steps an epoch for 3 epochs: BatchNorm's moving statistics (momentum 0.9) need a few
    # dozen steps before inference-mode predictions match training-mode ones.
    base = dict(
        backbone="resnet18",
        weights="none",
        image_size=16,
        width_multiplier=1 / 16,
        batch_size=8,
        epochs=3,
        lr=0.05,
        augment="none",
        seed=1,
        keep_checkpoints=True,  # tests read the phase-end weights
        estimate=False,  # a probe traces a step of its own: seconds per run (test_usability)
        precision="float32",  # auto is bfloat16 on some CPUs only: the same maths everywhere
        # The gate is not what these runs test (test_gate_failure_exits_8 is): how well a
        # 13-step tiny network learns depends on the CPU's floating-point path.
        mva=0.0,
    )
    base.update(overrides)
    return TrainSettings(**base)  # type: ignore[arg-type]
