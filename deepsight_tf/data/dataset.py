"""The stored data set: images.npz in the workspace, and the one way to load it back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepsight_tf.core.errors import DataError
from deepsight_tf.core.manifest import Manifest
from deepsight_tf.core.storage import atomic_save_npz
from deepsight_tf.core.workspace import IMAGES_FILE, Workspace
from deepsight_tf.data.quality import stored_sizes

SPLITS = ("train", "test")


@dataclass
class Dataset:
    """Images as uint8 NHWC with integer labels, class names and each image's provenance."""

    name: str
    class_names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_paths: list[str]
    test_paths: list[str]
    # (N, 2) height and width of each image at its source, before any resizing (obtain); None:
    # every image was stored at the size it came in (a batches folder, an npz, a uniform tree).
    train_sizes: np.ndarray | None = None
    test_sizes: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}. Received: {split!r}")
        return (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)

    def paths(self, split: str) -> list[str]:
        return self.train_paths if split == "train" else self.test_paths

    def source_sizes(self, split: str) -> np.ndarray:
        """(N, 2) height and width of the split's images at their source."""
        x, _ = self.split(split)
        stored = self.train_sizes if split == "train" else self.test_sizes
        if stored is not None:
            return stored
        return stored_sizes(x)

    def counts(self, split: str) -> dict[str, int]:
        _, y = self.split(split)
        per_class = np.bincount(y, minlength=self.num_classes)
        return {name: int(n) for name, n in zip(self.class_names, per_class, strict=True)}


def save_dataset(path: Path, data: Dataset) -> None:
    atomic_save_npz(
        path,
        x_train=data.x_train,
        y_train=data.y_train.astype(np.int64),
        x_test=data.x_test,
        y_test=data.y_test.astype(np.int64),
        class_names=np.asarray(data.class_names, dtype=str),
        train_paths=np.asarray(data.train_paths, dtype=str),
        test_paths=np.asarray(data.test_paths, dtype=str),
        train_sizes=data.source_sizes("train").astype(np.int64),
        test_sizes=data.source_sizes("test").astype(np.int64),
    )


def read_dataset(path: Path, name: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return Dataset(
                name=name,
                class_names=[str(c) for c in npz["class_names"].tolist()],
                x_train=npz["x_train"],
                y_train=npz["y_train"],
                x_test=npz["x_test"],
                y_test=npz["y_test"],
                train_paths=[str(p) for p in npz["train_paths"].tolist()],
                test_paths=[str(p) for p in npz["test_paths"].tolist()],
                # stores written before obtain kept source sizes: the stored size
                train_sizes=npz["train_sizes"] if "train_sizes" in npz.files else None,
                test_sizes=npz["test_sizes"] if "test_sizes" in npz.files else None,
            )
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: unreadable data set ({exc}); rerun `deepsight obtain`") from exc


def load_dataset(workspace: Workspace, name: str | None = None) -> tuple[Dataset, Manifest]:
    """Load a stored data set after checking it against its manifest's SHA-256."""
    name = workspace.resolve_dataset(name)
    folder = workspace.data_dir(name)
    manifest = workspace.verify(folder, "deepsight obtain")
    return read_dataset(folder / IMAGES_FILE, name), manifest


def dataset_sha256(workspace: Workspace, name: str) -> str:
    """The recorded hash of a stored data set: what downstream manifests cite as their input."""
    manifest = workspace.read_manifest(workspace.data_dir(name), "deepsight obtain")
    return manifest.outputs[IMAGES_FILE]
