"""Benchmark: how fast `obtain` reads an image-folder tree, against a bare PIL decode loop.

Usage: .venv/bin/python bench/obtain.py [ROOT] [--limit N]
Prints images/s for deepsight's reader (listing, decoding, checks, stacking) and for a plain
loop that only decodes the same files, and their ratio (the reader's overhead).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from deepsight_tf.data.image_folder import IMAGE_EXTENSIONS, read_image_folder

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg"


def subset(root: Path, limit: int | None, into: Path) -> Path:
    """Link the first `limit` files of each class into a temporary tree (no copies)."""
    if limit is None:
        return root
    for split in ("train", "test"):
        for class_dir in sorted((root / split).iterdir()):
            target = into / split / class_dir.name
            target.mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:limit]:
                os.symlink(path, target / path.name)
    return into


def bare_decode(root: Path) -> int:
    count = 0
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            with Image.open(path) as image:
                np.asarray(image.convert("RGB"))
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--limit", type=int, default=None, help="files per class and split")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-obtain-"))
    try:
        root = subset(args.root.resolve(), args.limit, tmp / "tree")
        start = time.perf_counter()
        data = read_image_folder(root)
        reader_s = time.perf_counter() - start
        n = len(data.x_train) + len(data.x_test)
        start = time.perf_counter()
        bare_n = bare_decode(root)
        bare_s = time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cpus: {os.cpu_count()}  images: {n}")
    print(f"deepsight reader : {n / reader_s:8.0f} images/s  ({reader_s:.1f} s)")
    print(f"bare PIL decode  : {bare_n / bare_s:8.0f} images/s  ({bare_s:.1f} s)")
    print(f"ratio reader/bare: {(n / reader_s) / (bare_n / bare_s):.2f}")


if __name__ == "__main__":
    main()
