"""Readers: official batches, archives, npz and image folders, including hostile input."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsight_tf.core.errors import DataError
from deepsight_tf.data.image_folder import read_image_folder
from deepsight_tf.data.sources import read_archive, read_batches, read_npz, read_source, source_kind

from support.sources import (
    CLASS_NAMES,
    add_tar_member,
    official_batch,
    write_archive,
    write_batches,
    write_image_folder,
    write_npz,
)


def test_batches_folder_round_trips_pixels_labels_and_names(tmp_path: Path) -> None:
    expected = write_batches(tmp_path / "cifar-10-batches-py")
    data = read_batches(tmp_path / "cifar-10-batches-py")
    np.testing.assert_array_equal(data.x_train, expected["x_train"])
    np.testing.assert_array_equal(data.y_train, expected["y_train"])
    np.testing.assert_array_equal(data.x_test, expected["x_test"])
    assert data.class_names == CLASS_NAMES
    assert data.train_paths[5] == "data_batch_2:1"


def test_official_archive_is_read(tmp_path: Path) -> None:
    expected = write_batches(tmp_path / "b")
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", tmp_path / "b")
    assert source_kind(archive) == "archive"
    data = read_archive(archive)
    np.testing.assert_array_equal(data.x_test, expected["x_test"])
    np.testing.assert_array_equal(data.y_test, expected["y_test"])
    assert data.kind == "archive"


class Payload:
    """Unpickling this would call os.system: the classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_a_forbidden_global_is_refused_and_not_executed(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(marker)}, protocol=3))
    with pytest.raises(DataError, match=r"refused to unpickle.*posix\.system|os\.system"):
        read_batches(folder)
    assert not marker.exists()


def test_archive_with_path_traversal_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_tar_member(tar, "cifar-10-batches-py/batches.meta", b"x")
        add_tar_member(tar, "../../escaped.txt", b"owned")
    with pytest.raises(DataError, match="outside"):
        read_archive(archive)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_truncated_batch_is_a_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="test_batch"):
        read_batches(folder)


def test_npz_converts_floats_and_channels_first(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=[0, 1, 0, 1], x_test=x[:2], y_test=[[1], [0]])
    data = read_npz(tmp_path / "d.npz")
    assert data.x_train.shape == (4, 8, 8, 3) and data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(
        data.x_train, np.rint(x.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    )
    assert data.y_test.tolist() == [1, 0]
    assert data.class_names == ["0", "1"]
    assert "channels-first to channels-last" in data.conversions


def test_npz_missing_arrays_names_them(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"missing arrays \['y_train', 'x_test', 'y_test'\]"):
        read_npz(tmp_path / "d.npz")


def test_npz_with_nan_is_refused(tmp_path: Path) -> None:
    x = np.full((2, 8, 8, 3), np.nan, np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=[0, 1], x_test=x, y_test=[0, 1])
    with pytest.raises(DataError, match="NaN"):
        read_npz(tmp_path / "d.npz")


def test_image_folder_reads_classes_from_folder_names(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=2, classes=["zebra", "apple"])
    data = read_source(root)
    assert data.kind == "image-folder"
    assert data.class_names == ["apple", "zebra"]
    assert data.x_train.shape == (4, 8, 8, 3)
    assert data.train_paths[0] == "train/apple/0000.png"
    pixels = np.asarray(Image.open(root / "train" / "apple" / "0000.png"))
    np.testing.assert_array_equal(data.x_train[0], pixels)


def test_grayscale_and_rgba_are_converted_and_counted(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(root / "train/cat/gray.png")
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8), "RGBA").save(root / "train/dog/rgba.png")
    data = read_image_folder(root)
    assert data.conversions == {"L to RGB": 1, "RGBA to RGB": 1}
    gray = data.x_train[data.train_paths.index("train/cat/gray.png")]
    assert gray.shape == (8, 8, 3) and (gray == 77).all()


def test_corrupt_and_non_image_files_are_skipped_and_listed(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    (root / "train/cat/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (root / "train/dog/0000.png").read_bytes()
    (root / "train/dog/truncated.png").write_bytes(good[: len(good) // 2])
    (root / "test/ship/notes.txt").write_text("hello")
    data = read_image_folder(root)
    skipped = {s.path: s.reason for s in data.skipped}
    assert set(skipped) == {
        "train/cat/broken.jpg",
        "train/dog/truncated.png",
        "test/ship/notes.txt",
    }
    assert skipped["test/ship/notes.txt"] == "not an image file"
    assert len(data.x_train) == 6


def test_mixed_sizes_are_refused_unless_resized(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(root / "train/cat/big.png")
    with pytest.raises(DataError, match=r"big\.png: image is 10x12 but most are 8x8.*--resize"):
        read_image_folder(root)
    data = read_image_folder(root, resize=16)
    assert data.x_train.shape[1:] == (16, 16, 3)
    assert data.conversions["resized to 16x16"] == len(data.x_train) + len(data.x_test)


def test_empty_class_folder_is_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"train/empty: class folder holds no images"):
        read_image_folder(root)


def test_class_in_test_but_not_train_is_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    write_image_folder(tmp_path / "other", per_class=1, classes=["horse"])
    (tmp_path / "other/test/horse").rename(root / "test/horse")
    with pytest.raises(DataError, match="class 'horse' is in test/ but not in train/"):
        read_image_folder(root)


def test_unknown_source_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(DataError, match="not a source deepsight reads"):
        source_kind(tmp_path / "data.csv")
    write_npz(tmp_path / "ok.npz")
    assert source_kind(tmp_path / "ok.npz") == "npz"


def test_official_batch_helper_matches_keras_layout(tmp_path: Path) -> None:
    # The helper must produce what Keras' own loader reads, or the tests above prove nothing.
    from keras.src.datasets.cifar import load_batch

    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "b").write_bytes(official_batch(images, [1, 2]))
    data, labels = load_batch(str(tmp_path / "b"))
    np.testing.assert_array_equal(data.transpose(0, 2, 3, 1), images)
    assert list(labels) == [1, 2]
