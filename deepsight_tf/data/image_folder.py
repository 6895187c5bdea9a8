"""Image-folder sources (train/<class>/*, test/<class>/*) and the one decoder of image files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deepsight_tf.core.errors import DataError
from deepsight_tf.core.progress import Progress
from deepsight_tf.data.dataset import SPLITS
from deepsight_tf.data.raw import RawDataset, SkippedFile, first_line, image_sizes, stack_images

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
# PIL's modes for 16-bit (and 32-bit integer) greyscale, which .convert("RGB") clips at 255.
WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class UnreadableImageError(Exception):
    """An image file that cannot be decoded; the message says why."""


def decode_image(path: Path) -> tuple[np.ndarray, str | None]:
    """RGB uint8 HWC pixels and the conversion made (None for RGB): the one image decoder.

    Obtain reads image folders with it and predict reads new images with it, so a file gives
    the same pixels in a data set as at prediction time.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in WIDE_GREY_MODES:
                return _wide_grey_to_rgb(image, path), f"{mode} to RGB (16-bit levels scaled to 8)"
            if mode == "F":
                raise UnreadableImageError("32-bit float pixels; store 8- or 16-bit images")
            if mode == "RGB":
                return np.asarray(image, dtype=np.uint8), None
            return np.asarray(image.convert("RGB"), dtype=np.uint8), f"{mode} to RGB"
    except Image.DecompressionBombError as exc:
        # PIL refuses images past ~179 megapixels (a decompression bomb, or just huge).
        raise UnreadableImageError(f"image too large to decode safely ({first_line(exc)})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"corrupt or truncated image ({first_line(exc)})") from exc


def _wide_grey_to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    """16-bit greyscale to 8 bits by value / 257 (65535 -> 255), not PIL's clip at 255."""
    values = np.asarray(image, dtype=np.int64)
    if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        raise UnreadableImageError(f"{image.mode} pixels outside 0..65535 in {path.name}")
    grey = np.round(values / 257.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _class_folders(split_dir: Path, skipped: list[SkippedFile] | None = None) -> list[Path]:
    """A split's class folders; hidden ones (.git, .ipynb_checkpoints) are listed as skipped."""
    folders = []
    for path in sorted(split_dir.iterdir()):
        if not path.is_dir():
            continue
        if path.name.startswith("."):
            if skipped is not None:
                where = f"{split_dir.name}/{path.name}"
                skipped.append(
                    SkippedFile(where, "hidden folder (name starts with '.'), not a class")
                )
            continue
        folders.append(path)
    return folders


def read_image_folder(
    root: Path, resize: int | None = None, progress: Progress | None = None
) -> RawDataset:
    """`root/train/<class>/*` and `root/test/<class>/*`; class names are the folder names.

    Decisions per bad input, recorded in the result: grayscale, palette and RGBA images are
    converted to RGB; corrupt, truncated and non-image files are skipped and listed; an
    empty class folder, a test class unknown to train, or mixed image sizes (without
    `resize`) are refused.
    """
    skipped: list[SkippedFile] = []
    train_classes, test_classes, warnings = _classes(root, skipped)
    index = {name: i for i, name in enumerate(train_classes)}
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
        train_sizes=image_sizes(decoded["train"][0]),
        test_sizes=image_sizes(decoded["test"][0]),
    )


def _classes(root: Path, skipped: list[SkippedFile]) -> tuple[list[str], list[str], list[str]]:
    """Train and test class names (folder names), and warnings about classes without test."""
    if not (root / "test").is_dir():
        raise DataError(
            f"{root}: no test/ folder; an image-folder source needs train/<class>/ "
            "and test/<class>/"
        )
    train_classes = [p.name for p in _class_folders(root / "train", skipped)]
    test_classes = [p.name for p in _class_folders(root / "test", skipped)]
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
            reason = _not_readable(entry)
            if reason is None:
                images.append((entry, index[name]))
            else:
                skipped.append(SkippedFile(entry.relative_to(root).as_posix(), reason))
        if not images:
            raise DataError(
                f"{folder}: class folder holds no images; add images or remove the folder"
            )
        files.extend(images)
    return files


def _not_readable(entry: Path) -> str | None:
    """Why an entry of a class folder is not read as an image (None: it is)."""
    if entry.is_symlink() and not entry.exists():
        return "broken or looping symbolic link"
    if entry.is_dir():
        return "a folder inside a class folder; only its files are read"
    if not entry.is_file():
        return "not a regular file"
    if entry.suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image file"
    return None


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
                array, conversion = decode_image(path)
            except UnreadableImageError as exc:
                skipped.append(SkippedFile(rel, str(exc)))
            else:
                if conversion is not None:
                    conversions[conversion] += 1
                images.append(array)
                labels.append(label)
                paths.append(rel)
            done += 1
            if progress is not None and (done % 500 == 0 or done == total):
                progress("reading images", done, total)
        decoded[split] = (images, labels, paths)
    return decoded
