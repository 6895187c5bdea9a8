"""Near-duplicate detection on a stored data set: recall on planted copies, false matches on
random pairs, and (with --full) the time of the whole search.

    .venv/bin/python bench/duplicates.py --workspace /tmp/ws1 [--dataset cifar10] [--full]

Planted copies are made from real training photos (edge-padded so shifts have a border) and
hidden among every stored image: a copy counts as found when its original is among its
candidates and their aligned distance is within the threshold, as in the full search.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from synthetic_images import COPIES, MARGIN  # noqa: E402

from deepsight_tf.core.settings import ScrubSettings  # noqa: E402
from deepsight_tf.core.workspace import Workspace  # noqa: E402
from deepsight_tf.data.dataset import load_dataset  # noqa: E402
from deepsight_tf.data.duplicates import (  # noqa: E402
    aligned_distances,
    band_pass,
    find_near_duplicates,
    spectra,
    thumbnails,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--planted", type=int, default=100, help="copies of each kind")
    parser.add_argument("--random-pairs", type=int, default=100_000)
    parser.add_argument("--full", action="store_true", help="also time the whole search")
    args = parser.parse_args()
    settings = ScrubSettings()
    threshold, k = settings.near_threshold, settings.neighbours
    data, _ = load_dataset(Workspace(args.workspace), args.dataset)
    images = np.concatenate([data.x_train, data.x_test])
    rng = np.random.default_rng(0)
    print(f"{data.name}: {len(images):,} images; threshold {threshold}, {k} + {k} candidates")

    start = time.perf_counter()
    bands = band_pass(images)
    from sklearn.neighbors import NearestNeighbors

    indexes = {
        describe: (make, NearestNeighbors(n_neighbors=k, algorithm="brute").fit(make(images)))
        for describe, make in (("layout", thumbnails), ("spectrum", spectra))
    }
    print(f"band-pass, features and indexes: {time.perf_counter() - start:.1f} s")

    print(f"\nplanted copies ({args.planted} of each kind, hidden among all images)")
    print(f"{'kind':28s} {'median d':>9s} {'max d':>7s} {'d<=thr':>7s} {'found':>7s}")
    found_all = []
    for kind, make in COPIES.items():
        originals = rng.choice(len(data.x_train), args.planted, replace=False)
        padded = np.pad(images[originals], ((0, 0), (MARGIN,) * 2, (MARGIN,) * 2, (0, 0)), "edge")
        copies = np.stack([make(p) for p in padded])
        pool = np.concatenate([bands, band_pass(copies)])
        pairs = np.stack([originals, len(images) + np.arange(len(copies))], axis=1)
        d = aligned_distances(pool, pairs)
        candidate = np.zeros(len(copies), dtype=bool)
        for make, index in indexes.values():
            _, nearest = index.kneighbors(make(copies))
            candidate |= (nearest == originals[:, None]).any(axis=1)
        found = candidate & (d <= threshold)
        found_all.append(found)
        print(
            f"{kind:28s} {np.median(d):9.3f} {d.max():7.3f} {np.mean(d <= threshold):7.1%} "
            f"{np.mean(found):7.1%}"
        )
    recall = float(np.mean(np.concatenate(found_all)))
    print(f"recall on planted copies: {recall:.1%}")

    pairs = rng.integers(0, len(images), (args.random_pairs, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    start = time.perf_counter()
    d = aligned_distances(bands, pairs)
    elapsed = time.perf_counter() - start
    matches = int(np.sum(d <= threshold))
    print(
        f"\nrandom pairs: {len(pairs):,}, {matches} within the threshold "
        f"(false-match rate <= {max(matches, 1) / len(pairs):.1e}); min distance {d.min():.3f}, "
        f"0.01% quantile {np.quantile(d, 1e-4):.3f}; {1e6 * elapsed / len(pairs):.0f} us a pair"
    )

    if args.full:
        start = time.perf_counter()
        near = find_near_duplicates(images, threshold, k)
        elapsed = time.perf_counter() - start
        print(
            f"\nfull search: {near.candidates:,} candidate pairs, {len(near.pairs):,} within "
            f"the threshold, {elapsed:.1f} s; ratio to the 5-minute budget {elapsed / 300:.2f}"
        )


if __name__ == "__main__":
    main()
