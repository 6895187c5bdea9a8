"""Label-issue ranking on real images with planted flips: which score finds wrong labels?

    .venv/bin/python bench/label_issues.py --workspace /tmp/ws1 --run RUN [--flip 0.02]

The run's model never trained on the test set, so its test probabilities are out of sample
for any test label. --flip of the test labels are changed to a random other class (one draw
per --seeds); every score then ranks all test images, most doubtful first, and the bench
prints, per score, the share of the planted flips among the first k (k = the number of
flips: precision at k, which equals recall at k), the recall at 2k, and ROC AUC, with the
mean over seeds; random ranking finds flips at the flip rate. The scores (lower = doubtful):

  self-confidence    p(given label): cleanlab's default ranking, interpret's until now
  normalized margin  p(given) - max p(other) (cleanlab's normalized_margin, rescaled)
  kNN agreement      the share of the image's k nearest training images (cosine on the
                     run's pooled features) whose label is the given one
  combined           the mean of self-confidence and kNN agreement
  cleanlab set       cleanlab.filter.find_label_issues' flagged set (its size varies)

Every set of test probabilities the run stored is ranked, one table each: the kept model's
(averaged over test-time views when the run used --tta), those without test-time
augmentation, and for a run trained with --ema the weight average's and the best epoch's
(both test-time augmented) and their mean. The kNN features are the kept model's. Real
CIFAR-10 test labels that are already wrong count against every score alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from deepsight_tf.core.workspace import Workspace  # noqa: E402
from deepsight_tf.data.dataset import load_dataset  # noqa: E402
from deepsight_tf.data.scrub import load_split  # noqa: E402
from deepsight_tf.diagnose.label_scores import (  # noqa: E402
    LABEL_SCORES,
    knn_label_agreement,
    run_features,
)
from deepsight_tf.training.record import RunRecord  # noqa: E402


def flip_labels(labels: np.ndarray, k: int, share: float, rng: np.random.Generator):
    flipped = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, k, len(flipped))) % k
    return noisy, flipped


def ranking_metrics(score: np.ndarray, is_flip: np.ndarray) -> tuple[float, float, float]:
    from sklearn.metrics import roc_auc_score

    k = int(is_flip.sum())
    order = np.argsort(score, kind="stable")
    at_k = is_flip[order[:k]].mean()
    recall_2k = is_flip[order[: 2 * k]].sum() / k
    return float(at_k), float(recall_2k), float(roc_auc_score(is_flip, -score))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--run", required=True)
    parser.add_argument("--flip", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--neighbours", type=int, default=10)
    args = parser.parse_args()
    ws = Workspace(args.workspace)
    record = RunRecord.load(ws, args.run)
    data, _ = load_dataset(ws, record.dataset)
    split = load_split(ws, data.name)
    predictions = record.predictions()
    sources = probability_sources(predictions)
    labels = predictions["test_labels"]
    start = time.perf_counter()
    model = record.load_model()
    test_features = run_features(model, record.preprocessing, data.x_test)
    reference = run_features(model, record.preprocessing, data.x_train[split.train])
    reference_labels = data.y_train[split.train]
    print(
        f"run {args.run}: features of {len(data.x_test):,} test and {len(reference):,} "
        f"training images in {time.perf_counter() - start:.0f} s"
    )
    neighbours = knn_label_agreement(
        test_features, reference, reference_labels, data.num_classes, args.neighbours
    )
    for name, probs in sources.items():
        accuracy = np.mean(probs.argmax(1) == labels)
        print(f"\n== test probabilities: {name} (test accuracy {accuracy:.2%})")
        bench_scores(probs, labels, neighbours, data.num_classes, args)


def probability_sources(predictions: dict) -> dict[str, np.ndarray]:
    """Each distinct set of stored test probabilities, normalised, by what it is."""
    named = {
        "kept model": "test_probs",
        "kept model, no test-time augmentation": "test_probs_plain",
        "weight average (--ema)": "average_test_probs",
        "best epoch": "best_epoch_test_probs",
    }
    sources: dict[str, np.ndarray] = {}
    for name, key in named.items():
        if key not in predictions:
            continue
        probs = predictions[key].astype(np.float64)
        probs /= probs.sum(axis=1, keepdims=True)
        if not any(np.array_equal(probs, seen) for seen in sources.values()):
            sources[name] = probs
    if "average_test_probs" in predictions and "best_epoch_test_probs" in predictions:
        both = (predictions["average_test_probs"] + predictions["best_epoch_test_probs"]) / 2
        sources["mean of weight average and best epoch"] = both / both.sum(1, keepdims=True)
    return sources


def bench_scores(
    probs: np.ndarray,
    labels: np.ndarray,
    neighbours: np.ndarray,
    num_classes: int,
    args: argparse.Namespace,
) -> None:
    results: dict[str, list[tuple[float, float, float]]] = {}
    cleanlab_set: list[tuple[float, float, int]] = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        noisy, flipped = flip_labels(labels, num_classes, args.flip, rng)
        is_flip = np.zeros(len(labels), dtype=bool)
        is_flip[flipped] = True
        for name, score_fn in LABEL_SCORES.items():
            score = score_fn(noisy, probs, neighbours)
            results.setdefault(name, []).append(ranking_metrics(score, is_flip))
        from cleanlab.filter import find_label_issues

        flagged = find_label_issues(noisy, probs, n_jobs=1)
        cleanlab_set.append(
            (float(is_flip[flagged].mean()), float(flagged[is_flip].mean()), int(flagged.sum()))
        )
    n_flips = round(args.flip * len(labels))
    print(
        f"\n{n_flips} planted flips ({args.flip:.0%}) of {len(labels):,} test labels, "
        f"{args.seeds} seeds, k = {n_flips}, {args.neighbours} neighbours; random finds "
        f"{args.flip:.1%} at k"
    )
    print(f"  {'score':20s} {'precision@k':>12s} {'recall@2k':>10s} {'ROC AUC':>8s}")
    for name, rows in results.items():
        p, r, auc = np.mean(rows, axis=0)
        print(f"  {name:20s} {p:12.1%} {r:10.1%} {auc:8.3f}")
    precision, recall, size = np.mean(cleanlab_set, axis=0)
    print(
        f"  {'cleanlab set':20s} precision {precision:.1%}, recall {recall:.1%} "
        f"of {size:.0f} flagged"
    )


if __name__ == "__main__":
    main()
