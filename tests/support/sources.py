"""Tiny synthetic data sets in every source format: an npz, an image folder, CIFAR-10's
Python batches and their archive."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ["cat", "dog", "ship"]


def random_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_npz(path: Path, n_train: int = 12, n_test: int = 6, size: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=random_images(n_train, size, seed),
        y_train=np.arange(n_train) % len(CLASS_NAMES),
        x_test=random_images(n_test, size, seed + 1),
        y_test=rng.permutation(np.arange(n_test) % len(CLASS_NAMES)),
        class_names=np.asarray(CLASS_NAMES),
    )
    return path


def write_image_folder(
    root: Path,
    per_class: int = 3,
    size: int = 8,
    classes: list[str] | None = None,
    fmt: str = "png",
) -> Path:
    """train/<class>/*.png and test/<class>/*.png with random pixels."""
    classes = classes or CLASS_NAMES
    seed = 0
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed += 1
                Image.fromarray(random_images(1, size, seed)[0]).save(folder / f"{i:04d}.{fmt}")
    return root


def official_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch laid out like the official Python-2 pickles: bytes keys, (N, 3072) uint8 rows."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": rows}, protocol=3)


def write_batches(folder: Path, per_batch: int = 4, size: int = 32) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, list] = {"x_train": [], "y_train": []}
    for b in (1, 2):
        x = random_images(per_batch, size, seed=b)
        y = [(i + b) % len(CLASS_NAMES) for i in range(per_batch)]
        (folder / f"data_batch_{b}").write_bytes(official_batch(x, y))
        arrays["x_train"].append(x)
        arrays["y_train"].extend(y)
    x_test = random_images(per_batch, size, seed=9)
    y_test = [i % len(CLASS_NAMES) for i in range(per_batch)]
    (folder / "test_batch").write_bytes(official_batch(x_test, y_test))
    meta = {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=3))
    return {
        "x_train": np.concatenate(arrays["x_train"]),
        "y_train": np.asarray(arrays["y_train"]),
        "x_test": x_test,
        "y_test": np.asarray(y_test),
    }


def write_archive(path: Path, batches_dir: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(batches_dir, arcname="cifar-10-batches-py")
    return path


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
