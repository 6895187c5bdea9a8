"""Which input size for the ImageNet features: probe accuracy and planted-flip precision
against the seconds of the forward pass.

    .venv/bin/python bench/imagenet_feature_size.py --workspace WS [--sizes 64 96 128]
        [--train-images 10000] [--csv docs/results/imagenet_feature_size.csv]

For each size, EfficientNet-Lite0's pooled ImageNet features (imagenet_features.pooled_features,
bicubic upsampling, float32) of a stratified subset of scrub's training images and of every
test image are timed; the pass over the whole data set is projected from that rate. The
5-fold probes and neighbours of independent.py are fitted on the subset (the same code
interpret runs on every training image) and rank the test images with planted flips (--share,
3 seeds): uniform flips, and confusable flips to the class each true class is most often
confused with by the probes (their out-of-fold confusion on the subset, summed over the sizes,
so every size is judged on the same flips). Printed per size: images/s, the projected pass,
the probe's test accuracy, precision at k and recall at 2k of the probe's p(given label); for
the features interpret reads (the last three stacks' and the head's, side by side) and for the
head's alone.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from label_issues import cpu_name, ranking_metrics  # noqa: E402

from deepsight_tf.core.workspace import Workspace  # noqa: E402
from deepsight_tf.data.dataset import load_dataset  # noqa: E402
from deepsight_tf.data.scrub_artifacts import load_split  # noqa: E402
from deepsight_tf.diagnose.imagenet_features import pooled_features  # noqa: E402
from deepsight_tf.diagnose.independent import evidence_from_features  # noqa: E402
from deepsight_tf.diagnose.label_scores import self_confidence  # noqa: E402
from deepsight_tf.training.data import stratified_subset  # noqa: E402

from support.planted_labels import confusable_flips, most_confused_with, uniform_flips  # noqa: E402

CSV_COLUMNS = (
    "image_size",
    "images_timed",
    "seconds",
    "images_per_s",
    "projected_pass_s",
    "load_average",
    "probe_test_accuracy",
    "uniform_precision_at_k",
    "uniform_recall_at_2k",
    "confusable_precision_at_k",
    "confusable_recall_at_2k",
    "head_only_probe_test_accuracy",
    "head_only_uniform_precision_at_k",
    "head_only_uniform_recall_at_2k",
    "head_only_confusable_precision_at_k",
    "head_only_confusable_recall_at_2k",
)


def measure(size: int, data, subset: np.ndarray, val: np.ndarray) -> dict:
    """Time the pass at `size`; fit the probes on all four stages' features and on the head's
    alone (the last block of columns)."""
    images = np.concatenate([data.x_train[subset], data.x_train[val], data.x_test])
    load = os.getloadavg()[0]
    start = time.perf_counter()
    features, widths = pooled_features(images, image_size=size)
    seconds = time.perf_counter() - start
    n_sub, n_val = len(subset), len(val)
    rate = len(images) / seconds
    row = {
        "image_size": size,
        "images_timed": len(images),
        "seconds": round(seconds, 1),
        "images_per_s": round(rate, 1),
        "projected_pass_s": round((len(data.x_train) + len(data.x_test)) / rate, 1),
        "load_average": round((load + os.getloadavg()[0]) / 2, 2),
    }
    for name, columns, blocks in (
        ("stages", slice(None), widths),
        ("head", slice(-widths[-1], None), widths[-1:]),
    ):
        chosen = features[:, columns]
        row[name] = evidence_from_features(
            chosen[:n_sub],
            data.y_train[subset],
            chosen[n_sub : n_sub + n_val],
            chosen[n_sub + n_val :],
            data.num_classes,
            widths=blocks,
        )
    return row


def flip_scores(row: dict, data, targets: np.ndarray, share: float, seeds: int) -> None:
    for name in ("stages", "head"):
        probs = row.pop(name)["test_probs"]
        prefix = "" if name == "stages" else "head_only_"
        accuracy = float(np.mean(probs.argmax(1) == data.y_test))
        row[f"{prefix}probe_test_accuracy"] = round(accuracy, 4)
        for kind in ("uniform", "confusable"):
            found = []
            for seed in range(seeds):
                rng = np.random.default_rng([seed, 0 if kind == "uniform" else 1])
                if kind == "uniform":
                    labels, flipped = uniform_flips(data.y_test, data.num_classes, share, rng)
                else:
                    labels, flipped = confusable_flips(data.y_test, targets, share, rng)
                is_flip = np.zeros(len(labels), bool)
                is_flip[flipped] = True
                found.append(ranking_metrics(self_confidence(labels, probs), is_flip))
            precision, recall = np.mean(found, axis=0)
            row[f"{prefix}{kind}_precision_at_k"] = round(float(precision), 4)
            row[f"{prefix}{kind}_recall_at_2k"] = round(float(recall), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    ws = Workspace(args.workspace)
    data, _ = load_dataset(ws, args.dataset)
    split = load_split(ws, data.name)
    train = np.asarray(split.train)
    subset = np.sort(stratified_subset(train, data.y_train[train], args.train_images, 0))
    val = np.asarray(split.val)[:500]
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs; {len(subset):,} training, {len(val)} validation "
        f"and {len(data.x_test):,} test images per size"
    )
    rows = [measure(size, data, subset, val) for size in args.sizes]
    k = data.num_classes
    confusion = np.zeros((k, k))
    for row in rows:
        predicted = row["stages"]["train_probs"].argmax(1)
        confusion += np.bincount(data.y_train[subset] * k + predicted, minlength=k * k).reshape(
            k, k
        )
    targets = most_confused_with(confusion)
    names = data.class_names
    print(
        "confusable flips: " + ", ".join(f"{names[c]}->{names[t]}" for c, t in enumerate(targets))
    )
    for row in rows:
        flip_scores(row, data, targets, args.share, args.seeds)
    print(
        f"{'size':>5} {'img/s':>6} {'whole pass':>10} {'load':>5} {'features':>8} "
        f"{'probe acc':>9} {'uniform p@k':>11} {'r@2k':>6} {'confusable p@k':>14} {'r@2k':>6}"
    )
    for r in rows:
        for prefix, name in (("", "stages"), ("head_only_", "head")):
            print(
                f"{r['image_size']:>5} {r['images_per_s']:>6.0f} {r['projected_pass_s']:>9.0f}s "
                f"{r['load_average']:>5.1f} {name:>8} {r[prefix + 'probe_test_accuracy']:>9.1%} "
                f"{r[prefix + 'uniform_precision_at_k']:>11.1%} "
                f"{r[prefix + 'uniform_recall_at_2k']:>6.1%} "
                f"{r[prefix + 'confusable_precision_at_k']:>14.1%} "
                f"{r[prefix + 'confusable_recall_at_2k']:>6.1%}"
            )
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        print(f"written to {args.csv}")


if __name__ == "__main__":
    main()
