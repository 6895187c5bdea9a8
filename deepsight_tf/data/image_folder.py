"""Image-folder sources (train/<class>/*, test/<class>/*) and the one decoder of image files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deepsight_tf.core.errors import DataError
from deepsight_tf.core.progress import Progress
from deepsight_tf.data.dataset import SPLITS
from deepsight_tf.data.raw import RawDataset, SkippedFile, first_line, stack_images

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


class UnreadableImageError(Exception):
    """An image file that cannot be decoded; the message says why."""


def decode_image(path: Path) -> tuple[np.ndarray, str]:
    """RGB uint8 HWC pixels and the file's original mode; the one decoder of image files.

    Obtain reads image folders with it and predict reads new images with it, so a file gives
    the same pixels in a data set as at prediction time.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8), mode
    except Image.DecompressionBombError as exc:
        # PIL refuses images past ~179 megapixels (a decompression bomb, or just huge).
        raise UnreadableImageError(f"image too large to decode safely ({first_line(exc)})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"corrupt or truncated image ({first_line(exc)})") from exc


def _class_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image_folder(
    root: Path, resize: int | None = None, progress: Progress | None = None
) -> RawDataset:
    """`root/train/<class>/*` and `root/test/<class>/*`; class names are the folder names.

    Decisions per bad input, recorded in the result: grayscale, palette and RGBA images are
    converted to RGB; corrupt, truncated and non-image files are skipped and listed; an
    empty class folder, a test class unknown to train, or mixed image sizes (without
    `resize`) are refused.
    """
    train_classes, test_classes, warnings = _classes(root)
    index = {name: i for i, name in enumerate(train_classes)}
    skipped: list[SkippedFile] = []
    listing = {
        "train": _list_files(root, "train", train_classes, index, skipped),
        "test": _list_files(root, "test", test_classes, index, skipped),
    }
    conversions: Counter[str] = Counter()
    decoded = _decode_all(root, listing, skipped, conversions, progress)
    for split, expected in (("train", train_classes), ("test", test_classes)):
        present = set(decoded[split][1])
        for name in expected:
            if index[name] not in present:
                raise DataError(
                    f"{root / split / name}: every image in this class folder is unreadable; "
                    "replace the files or remove the folder"
                )
    arrays = {split: stack_images(decoded[split], root, resize, conversions) for split in SPLITS}
    return RawDataset(
        x_train=arrays["train"],
        y_train=np.asarray(decoded["train"][1], dtype=np.int64),
        x_test=arrays["test"],
        y_test=np.asarray(decoded["test"][1], dtype=np.int64),
        class_names=train_classes,
        train_paths=decoded["train"][2],
        test_paths=decoded["test"][2],
        kind="image-folder",
        skipped=skipped,
        conversions=dict(conversions),
        warnings=warnings,
    )


def _classes(root: Path) -> tuple[list[str], list[str], list[str]]:
    """Train and test class names (folder names), and warnings about classes without test."""
    if not (root / "test").is_dir():
        raise DataError(
            f"{root}: no test/ folder; an image-folder source needs train/<class>/ "
            "and test/<class>/"
        )
    train_classes = [p.name for p in _class_folders(root / "train")]
    test_classes = [p.name for p in _class_folders(root / "test")]
    if not train_classes:
        raise DataError(f"{root / 'train'}: no class folders; put images in train/<class>/")
    unknown = sorted(set(test_classes) - set(train_classes))
    if unknown:
        raise DataError(
            f"{root / 'test' / unknown[0]}: class '{unknown[0]}' is in test/ but not in train/; "
            "add its training images or remove it from test/"
        )
    warnings = [
        f"class '{c}' has no test/ folder; its test accuracy cannot be measured"
        for c in train_classes
        if c not in test_classes
    ]
    return train_classes, test_classes, warnings


def _list_files(
    root: Path, split: str, classes: list[str], index: dict[str, int], skipped: list[SkippedFile]
) -> list[tuple[Path, int]]:
    """(image file, label) of one split, sorted; other files are listed as skipped."""
    files = []
    for name in classes:
        folder = root / split / name
        images = []
        for entry in sorted(folder.iterdir()):
            if not entry.is_file():
                continue
            if entry.suffix.lower() in IMAGE_EXTENSIONS:
                images.append((entry, index[name]))
            else:
                skipped.append(SkippedFile(entry.relative_to(root).as_posix(), "not an image file"))
        if not images:
            raise DataError(
                f"{folder}: class folder holds no images; add images or remove the folder"
            )
        files.extend(images)
    return files


def _decode_all(
    root: Path,
    listing: dict[str, list[tuple[Path, int]]],
    skipped: list[SkippedFile],
    conversions: Counter[str],
    progress: Progress | None,
) -> dict[str, tuple[list[np.ndarray], list[int], list[str]]]:
    """Per split: decoded images, their labels and paths (unreadable files are skipped)."""
    total = sum(len(v) for v in listing.values())
    done = 0
    decoded = {}
    for split, files in listing.items():
        images, labels, paths = [], [], []
        for path, label in files:
            rel = path.relative_to(root).as_posix()
            try:
                array, mode = decode_image(path)
            except UnreadableImageError as exc:
                skipped.append(SkippedFile(rel, str(exc)))
            else:
                if mode != "RGB":
                    conversions[f"{mode} to RGB"] += 1
                images.append(array)
                labels.append(label)
                paths.append(rel)
            done += 1
            if progress is not None and (done % 500 == 0 or done == total):
                progress("reading images", done, total)
        decoded[split] = (images, labels, paths)
    return decoded
