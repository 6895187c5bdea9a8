"""Near-duplicate detection on planted copies: recall and precision per kind of image, the
threshold each data set calibrates, and the share of its untouched images it flags.

    .venv/bin/python bench/duplicates.py [--workspace /tmp/ws1 [--dataset cifar10]]
        [--near-threshold 0.2] [--csv docs/results/duplicates.csv]

Kinds of image (tests/support/real_images.py): photos, handwriting and greyscale textures that
scikit-learn and matplotlib ship; each is searched as scrub searches it (find_near_duplicates,
labels given), once untouched and then --rounds times with copies planted (--per-copy of each
copy kind, from images drawn at random). A planted pair is found when the search returns it;
precision is the share of the pairs returned in a planted round that are planted ones.

With --workspace, the stored data set too (CIFAR-10): the whole search on it once (its
threshold, the images it flags, the time), then copies of real training photos hidden among
every stored image: a copy counts as found when its original is among its candidates and
their aligned distance is within that threshold, as in the whole search. Its own duplicates
make precision against planted copies meaningless there, so none is given.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

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

from support.real_images import COPIES, KINDS, ImageKind, plant  # noqa: E402
from support.synthetic_images import COPIES as PHOTO_COPIES  # noqa: E402
from support.synthetic_images import MARGIN  # noqa: E402

CSV_COLUMNS = (
    "kind",
    "images",
    "side_px",
    "threshold",
    "rule",
    "flagged_untouched",
    "planted",
    "found",
    "recall",
    "precision",
)


def touched(pairs: np.ndarray, limit: int) -> int:
    """Images below `limit` (the untouched ones) that are in any of the pairs."""
    return len(np.intersect1d(np.unique(pairs), np.arange(limit)))


def bench_kind(kind: ImageKind, args: argparse.Namespace, k: int) -> dict[str, object]:
    """One kind: the untouched search, then --rounds searches with planted copies."""
    start = time.perf_counter()
    plain = find_near_duplicates(kind.images, args.near_threshold, k, kind.labels)
    n = len(kind.images)
    flagged = touched(plain.pairs, n)
    hits = {name: [] for name in COPIES}
    returned = correct = 0
    for round_ in range(args.rounds):
        planted = plant(kind, args.per_copy, seed=round_)
        found = find_near_duplicates(planted.images, args.near_threshold, k, planted.labels)
        keys = {tuple(map(int, p)) for p in found.pairs}
        for name, pair in zip(planted.copy_kinds, planted.truth, strict=True):
            hits[name].append(tuple(map(int, pair)) in keys)
        returned += len(keys)
        correct += sum(tuple(map(int, p)) in keys for p in planted.truth)
    planted_total = sum(len(v) for v in hits.values())
    print(
        f"\n{kind.name}: {n:,} images of {kind.side} px, {len(kind.class_names)} classes; "
        f"{time.perf_counter() - start:.1f} s"
    )
    print(f"  {plain.calibration.statement()}")
    print(f"  untouched: {len(plain.pairs)} pairs flag {flagged} images ({flagged / n:.2%})")
    for name, found_ in hits.items():
        print(f"  {name:28s} found {np.mean(found_):7.1%} of {len(found_)}")
    recall = correct / planted_total
    precision = correct / max(returned, 1)
    print(f"  recall {recall:.1%} ({correct} of {planted_total}), precision {precision:.1%}")
    return {
        "kind": kind.name,
        "images": n,
        "side_px": kind.side,
        "threshold": plain.calibration.threshold,
        "rule": plain.calibration.rule,
        "flagged_untouched": round(flagged / n, 4),
        "planted": planted_total,
        "found": correct,
        "recall": round(recall, 4),
        "precision": round(precision, 4),
    }


def bench_stored(args: argparse.Namespace, k: int) -> dict[str, object]:
    """The stored data set: the whole search once, then copies hidden among all its images."""
    data, _ = load_dataset(Workspace(args.workspace), args.dataset)
    images = np.concatenate([data.x_train, data.x_test])
    labels = np.concatenate([data.y_train, data.y_test])
    start = time.perf_counter()
    whole = find_near_duplicates(images, args.near_threshold, k, labels)
    elapsed = time.perf_counter() - start
    threshold = whole.calibration.threshold
    flagged = touched(whole.pairs, len(images))
    print(f"\n{data.name}: {len(images):,} images of {images.shape[1]} px")
    print(f"  {whole.calibration.statement()}")
    print(
        f"  whole search: {whole.candidates:,} candidate pairs, {len(whole.pairs):,} within the "
        f"threshold touching {flagged:,} images ({flagged / len(images):.2%}), {elapsed:.1f} s"
    )
    rng = np.random.default_rng(0)
    bands = band_pass(images)
    from sklearn.neighbors import NearestNeighbors

    indexes = [
        (make, NearestNeighbors(n_neighbors=k, algorithm="brute").fit(make(images)))
        for make in (thumbnails, spectra)
    ]
    found_all = []
    print(f"  planted copies ({args.planted} of each kind, hidden among all images)")
    print(f"  {'kind':28s} {'median d':>9s} {'max d':>7s} {'d<=thr':>7s} {'found':>7s}")
    for name, make in PHOTO_COPIES.items():
        originals = rng.choice(len(data.x_train), args.planted, replace=False)
        padded = np.pad(images[originals], ((0, 0), (MARGIN,) * 2, (MARGIN,) * 2, (0, 0)), "edge")
        copies = np.stack([make(p) for p in padded])
        pool = np.concatenate([bands, band_pass(copies)])
        pairs = np.stack([originals, len(images) + np.arange(len(copies))], axis=1)
        d = aligned_distances(pool, pairs)
        candidate = np.zeros(len(copies), dtype=bool)
        for features, index in indexes:
            _, nearest = index.kneighbors(features(copies))
            candidate |= (nearest == originals[:, None]).any(axis=1)
        found = candidate & (d <= threshold)
        found_all.append(found)
        print(
            f"  {name:28s} {np.median(d):9.3f} {d.max():7.3f} {np.mean(d <= threshold):7.1%} "
            f"{np.mean(found):7.1%}"
        )
    found = np.concatenate(found_all)
    print(f"  recall on planted copies: {np.mean(found):.1%}")
    random_pairs(bands, threshold, rng, args.random_pairs)
    return {
        "kind": f"photos: {data.name} (stored)",
        "images": len(images),
        "side_px": images.shape[1],
        "threshold": threshold,
        "rule": whole.calibration.rule,
        "flagged_untouched": round(flagged / len(images), 4),
        "planted": len(found),
        "found": int(found.sum()),
        "recall": round(float(np.mean(found)), 4),
        "precision": "",
    }


def random_pairs(bands: np.ndarray, threshold: float, rng: np.random.Generator, n: int) -> None:
    pairs = rng.integers(0, len(bands), (n, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    start = time.perf_counter()
    d = aligned_distances(bands, pairs)
    elapsed = time.perf_counter() - start
    matches = int(np.sum(d <= threshold))
    print(
        f"  random pairs: {len(pairs):,}, {matches} within the threshold (false-match rate <= "
        f"{max(matches, 1) / len(pairs):.1e}); min distance {d.min():.3f}, 0.01% quantile "
        f"{np.quantile(d, 1e-4):.3f}; {1e6 * elapsed / len(pairs):.0f} us a pair"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=None, help="also the stored data set")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--near-threshold", type=float, default=ScrubSettings().near_threshold)
    parser.add_argument("--rounds", type=int, default=5, help="planted rounds per kind")
    parser.add_argument("--per-copy", type=int, default=2, help="copies of each kind a round")
    parser.add_argument("--planted", type=int, default=100, help="stored set: copies of each")
    parser.add_argument("--random-pairs", type=int, default=100_000)
    parser.add_argument("--csv", default=None, help="write the table per kind here")
    args = parser.parse_args()
    k = ScrubSettings().neighbours
    given = "calibrated" if args.near_threshold is None else f"fixed at {args.near_threshold}"
    print(f"near-duplicate threshold {given}; {k} + {k} candidates per image")
    rows = [bench_kind(make(), args, k) for make in KINDS.values()]
    if args.workspace:
        rows.append(bench_stored(args, k))
    print(f"\n{'kind':30s} {'images':>7s} {'thr':>7s} {'flagged':>8s} {'recall':>7s} {'prec.':>7s}")
    for row in rows:
        precision = f"{row['precision']:.1%}" if row["precision"] != "" else "-"
        print(
            f"{row['kind']:30s} {row['images']:7,} {row['threshold']:7.4f} "
            f"{row['flagged_untouched']:8.2%} {row['recall']:7.1%} {precision:>7s}"
        )
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        print(f"written to {args.csv}")


if __name__ == "__main__":
    main()
