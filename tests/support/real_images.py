"""Small sets of real images from installed packages, and copies planted into them at any size.

Three kinds of image, none of them made by us (no download: the packages ship them):
- photos: scikit-learn's two sample photos and matplotlib's Grace Hopper, halved (so a tile
  holds about as much as a CIFAR-10 photo) and cut into 32 px tiles, one class per photo;
- handwriting: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), stored as 16 px
  greyscale images, as an image folder of them holds them;
- greyscale textures: matplotlib's terrain elevation (Jacksboro fault) and MRI slice, cut into
  24 px tiles stretched to the full grey range, one class per source.

Every image keeps a margin of its surroundings (the neighbouring tiles, the digit's black
background), so a shifted or cropped copy shows real new content at its border, as a copy cut
again from the source would. Copies are stated for 32 px and scale with the side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from support.synthetic_images import jpeg, recoloured

REFERENCE_SIDE = 32  # the copies below are stated for 32 px images


@dataclass
class ImageKind:
    """A data set of one kind of image, each with `margin` px of its surroundings."""

    name: str
    sources: np.ndarray  # (N, side + 2 margin, side + 2 margin, 3) uint8
    labels: np.ndarray  # (N,) int64
    class_names: list[str]
    side: int
    margin: int

    @property
    def images(self) -> np.ndarray:
        """The (N, side, side, 3) images themselves: the centres of the sources."""
        m = self.margin
        return self.sources[:, m : m + self.side, m : m + self.side].copy()


def _tiles(picture: np.ndarray, side: int, margin: int) -> np.ndarray:
    """Non-overlapping side x side tiles of a picture, each with `margin` px around it (the
    picture's own edge repeated where it ends)."""
    pad = ((margin, margin), (margin, margin)) + ((0, 0),) * (picture.ndim - 2)
    padded = np.pad(picture, pad, mode="edge")
    rows, cols = picture.shape[0] // side, picture.shape[1] // side
    window = side + 2 * margin
    return np.stack(
        [
            padded[r * side : r * side + window, c * side : c * side + window]
            for r in range(rows)
            for c in range(cols)
        ]
    )


def photos() -> ImageKind:
    """32 px tiles of three photos at half their size; the class is the photo."""
    import matplotlib.cbook as cbook
    from sklearn.datasets import load_sample_images

    pictures = {
        name: image
        for name, image in zip(("china", "flower"), load_sample_images().images, strict=True)
    }
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        pictures["grace_hopper"] = np.asarray(Image.open(handle).convert("RGB"))
    sources, labels = [], []
    for label, picture in enumerate(pictures.values()):
        tiles = _tiles(np.asarray(Image.fromarray(picture).reduce(2)), 32, 8)
        sources.append(tiles)
        labels += [label] * len(tiles)
    return ImageKind("photos", np.concatenate(sources), np.asarray(labels), list(pictures), 32, 8)


def handwriting() -> ImageKind:
    """scikit-learn's digits at 16 px (each 8x8 pixel a 2x2 block), on their black ground."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.rint(digits.images * 255 / 16).astype(np.uint8).repeat(2, axis=1).repeat(2, axis=2)
    sources = np.pad(grey, ((0, 0), (4, 4), (4, 4)))
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return ImageKind("handwriting", _rgb(sources), digits.target.astype(np.int64), names, 16, 4)


def textures() -> ImageKind:
    """24 px tiles of terrain elevation and an MRI slice, each stretched to 0..255 over its
    margin too (so a copy keeps the scale); tiles of nearly one grey (the MRI's black
    surround) are left out."""
    import matplotlib.cbook as cbook

    elevation = cbook.get_sample_data("jacksboro_fault_dem.npz")["elevation"]
    with cbook.get_sample_data("s1045.ima.gz") as handle:
        mri = np.frombuffer(handle.read(), np.uint16).reshape(256, 256)
    sources, labels = [], []
    for label, picture in enumerate((elevation, mri)):
        tiles = _tiles(picture.astype(np.float64), 24, 6)
        low = tiles.min(axis=(1, 2), keepdims=True)
        high = tiles.max(axis=(1, 2), keepdims=True)
        tiles = np.rint(255 * (tiles - low) / np.maximum(high - low, 1e-9)).astype(np.uint8)
        textured = tiles[:, 6:30, 6:30].reshape(len(tiles), -1).std(axis=1) >= 8
        sources.append(tiles[textured])
        labels += [label] * int(textured.sum())
    return ImageKind(
        "greyscale textures",
        _rgb(np.concatenate(sources)),
        np.asarray(labels),
        ["terrain", "mri"],
        24,
        6,
    )


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


KINDS: dict[str, Callable[[], ImageKind]] = {
    "photos": photos,
    "handwriting": handwriting,
    "greyscale textures": textures,
}


# Copies -------------------------------------------------------------------------------------
def scaled(px: int, side: int) -> int:
    """`px` at 32 px as pixels at `side` (at least one pixel where px is not 0)."""
    if px == 0:
        return 0
    return int(np.sign(px)) * max(1, round(abs(px) * side / REFERENCE_SIDE))


def view(source: np.ndarray, side: int, margin: int, dy: int = 0, dx: int = 0) -> np.ndarray:
    """The image of a source shifted by (dy, dx) px at 32 px."""
    top, left = margin + scaled(dy, side), margin + scaled(dx, side)
    return source[top : top + side, left : left + side].copy()


def cropped(
    source: np.ndarray, side: int, margin: int, crop: int, dy: int = 0, dx: int = 0
) -> np.ndarray:
    """The image with `crop` px (at 32 px) cut from its side, resized back (bicubic)."""
    cut = scaled(crop, side)
    top, left = margin + cut // 2 + scaled(dy, side), margin + cut // 2 + scaled(dx, side)
    window = source[top : top + side - cut, left : left + side - cut]
    return np.asarray(Image.fromarray(window).resize((side, side), Image.BICUBIC))


Copy = Callable[[np.ndarray, int, int], np.ndarray]
# The copies a data set picks up, as bench/duplicates.py and tests/support/synthetic_images.py plant
# them into 32 px photos; each maps (source, side, margin) to a copy of the image.
COPIES: dict[str, Copy] = {
    "shift 1 px": lambda s, n, m: view(s, n, m, 1, 0),
    "shift 2 px": lambda s, n, m: view(s, n, m, -2, 1),
    "shift 3 px": lambda s, n, m: view(s, n, m, 2, -3),
    "crop 2 px": lambda s, n, m: cropped(s, n, m, 2),
    "crop 4 px": lambda s, n, m: cropped(s, n, m, 4),
    "crop 4 px off-centre": lambda s, n, m: cropped(s, n, m, 4, 2, -1),
    "brighter, lower contrast": lambda s, n, m: recoloured(view(s, n, m), 1.2, 0.8, 1.0),
    "darker, desaturated": lambda s, n, m: recoloured(view(s, n, m), 0.8, 1.2, 0.4),
    "JPEG quality 40": lambda s, n, m: jpeg(view(s, n, m), 40),
    "shift, colour and JPEG": lambda s, n, m: jpeg(
        recoloured(view(s, n, m, 1, -2), 1.1, 0.9, 1.3), 60
    ),
}


@dataclass
class Planted:
    """A kind's images with copies appended: copy k (of kind copy_kinds[k]) is image
    len(originals) + k, and truth[k] is the pair (original, copy)."""

    images: np.ndarray
    labels: np.ndarray
    truth: np.ndarray  # (C, 2) int64
    copy_kinds: list[str]
    originals: int  # images before the copies


def plant(kind: ImageKind, per_copy: int, seed: int) -> Planted:
    """`per_copy` copies of each kind in COPIES, of distinct images drawn at random."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(kind.sources), per_copy * len(COPIES), replace=False)
    names = [name for name in COPIES for _ in range(per_copy)]
    copies = np.stack(
        [
            COPIES[name](kind.sources[i], kind.side, kind.margin)
            for name, i in zip(names, chosen, strict=True)
        ]
    )
    n = len(kind.sources)
    return Planted(
        images=np.concatenate([kind.images, copies]),
        labels=np.concatenate([kind.labels, kind.labels[chosen]]),
        truth=np.stack([chosen, n + np.arange(len(chosen))], axis=1).astype(np.int64),
        copy_kinds=names,
        originals=n,
    )
