"""Label-issue ranking on real images with planted label issues: which score finds them?

    .venv/bin/python bench/label_issues.py --workspace WS [--run RUN] [--share 0.02]
        [--seeds 3] [--csv docs/results/label_issues.csv]

Three kinds of label issue are planted on --share of the test images, one draw per seed
(tests/support/planted_labels.py): uniform (a random other class), confusable (the class the true
class is most often confused with, read from the ImageNet probe's out-of-fold predictions on
the training images, never from the test set or any published list) and composite (a
CutMix-style box of an image of another class pasted in, a quarter to 45% of the image, and
the image labelled with that smaller part; every model scores the composites afresh). Every
score then ranks all test images, most doubtful first; the bench prints, per score and kind,
the share of the planted issues among the first k (k = the number planted: precision at k,
which equals recall at k) and the recall at 2k, means over the seeds; a random ranking finds
--share at k. The scores (lower = doubtful):

  run self-confidence       the run's p(given label) on its test probabilities (the kept
                            model's, test-time augmented as it was trained): interpret's
                            ranking until now (needs --run)
  ImageNet kNN              the share of the 10 nearest training images (ImageNet features)
                            that carry the given label
  ImageNet probe            p(given) from 5-fold linear probes on the ImageNet features (the
                            fold probes' mean: no probe read a test label)
  ImageNet probe + kNN      p(given) of the mean of the two distributions
  run normalized margin     (p(given) - max p(other) + 1) / 2 of the run's (cleanlab's)
  run self-confidence,      p(given) after each class's mean self-confidence is subtracted
    class-adjusted          (cleanlab's adjust_pred_probs; thresholds from the ranked labels)
  run + probe, equal        p(given) of the equal mixture of the run's and the probe's
                            probabilities (needs --run)
  run + probe, stacked      the same mixture weighted to maximise the validation images'
                            log-likelihood (label_scores.mixture_weight; needs --run)
  run x probe, equal        p(given) of the normalised geometric mean of the two (a product
                            of experts); needs --run
  run x probe, stacked      the geometric mixture, its weight stacked on validation
  second run self-confidence  p(given) of a second trained run (--second-run: another
                            network, trained on the same split or not)
  two runs, equal           p(given) of the equal mixture of the two runs' probabilities (an
                            ensemble of two networks, each with its own blind spots)

and cleanlab's flagged set (cleanlab.filter.find_label_issues) on three of them. The
ImageNet features come from the workspace's cache (computed there on first use, timed).
Real CIFAR-10 test labels that are already wrong count against every score alike.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from deepsight_tf.core.workspace import IMAGES_FILE, Workspace  # noqa: E402
from deepsight_tf.data.dataset import load_dataset  # noqa: E402
from deepsight_tf.data.scrub_artifacts import load_split  # noqa: E402
from deepsight_tf.diagnose.imagenet_features import (  # noqa: E402
    dataset_features,
    pooled_features,
)
from deepsight_tf.diagnose.independent import evidence_from_features  # noqa: E402
from deepsight_tf.diagnose.label_scores import (  # noqa: E402
    class_adjusted,
    mixture,
    mixture_weight,
    normalized_margin,
    self_confidence,
)

from support.planted_labels import (  # noqa: E402
    KINDS,
    composites,
    confusable_flips,
    most_confused_with,
    uniform_flips,
)

CSV_COLUMNS = (
    "run",
    "run_accuracy",
    "kind",
    "share",
    "k",
    "seeds",
    "score",
    "precision_at_k",
    "recall_at_2k",
    "cleanlab_precision",
    "cleanlab_recall",
    "cleanlab_flagged",
)


def cpu_name() -> str:
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def ranking_metrics(score: np.ndarray, is_planted: np.ndarray) -> tuple[float, float]:
    """Precision at k (k = planted) and recall at 2k of the ranking by ascending score."""
    k = int(is_planted.sum())
    order = np.argsort(score, kind="stable")
    return float(is_planted[order[:k]].mean()), float(is_planted[order[: 2 * k]].sum() / k)


def cleanlab_set(labels: np.ndarray, probs: np.ndarray, is_planted: np.ndarray) -> tuple:
    from cleanlab.filter import find_label_issues

    flagged = find_label_issues(labels, probs / probs.sum(1, keepdims=True), n_jobs=1)
    return float(is_planted[flagged].mean()), float(flagged[is_planted].mean()), int(flagged.sum())


def plant(kind: str, seed: int, data, targets: np.ndarray, share: float):
    """(labels, planted indices, images of the planted composites or None) for one draw."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    labels = data.y_test
    if kind == "uniform":
        return (*uniform_flips(labels, data.num_classes, share, rng), None)
    if kind == "confusable":
        return (*confusable_flips(labels, targets, share, rng), None)
    images, noisy, planted, _ = composites(data.x_test, labels, share, rng)
    return noisy, planted, images[planted]


def run_probs(record, images: np.ndarray) -> np.ndarray:
    """The run's probabilities of new images, preprocessed and test-time augmented as its
    test set was."""
    from deepsight_tf.training.pipeline import make_eval_dataset
    from deepsight_tf.training.tta import predict_probs

    model = record.load_model()
    dataset = make_eval_dataset(
        images,
        np.zeros(len(images), np.int64),
        np.arange(len(images)),
        len(record.class_names),
        batch_size=256,
        preprocessing=record.preprocessing,
    )
    return predict_probs(model, dataset, record.settings.tta).astype(np.float64)


def normalised(probs: np.ndarray) -> np.ndarray:
    probs = probs.astype(np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def scores_of(
    labels, probe, knn, run, weight, second=None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each score's (per-image score, the distribution its p(given) is read from)."""
    distributions = {"ImageNet kNN": knn, "ImageNet probe": probe}
    distributions["ImageNet probe + kNN"] = mixture(probe, knn, 0.5)
    if run is not None:
        distributions["run self-confidence"] = run
        distributions["run + probe, equal"] = mixture(run, probe, 0.5)
        distributions["run + probe, stacked"] = mixture(run, probe, weight[0])
        distributions["run x probe, equal"] = mixture(run, probe, 0.5, geometric=True)
        distributions["run x probe, stacked"] = mixture(run, probe, weight[1], geometric=True)
    if run is not None and second is not None:
        distributions["second run self-confidence"] = second
        distributions["two runs, equal"] = mixture(run, second, 0.5)
    scores = {name: (self_confidence(labels, p), p) for name, p in distributions.items()}
    if run is not None:
        scores["run normalized margin"] = (normalized_margin(labels, run), run)
        adjusted = class_adjusted(labels, run)
        scores["run self-confidence, class-adjusted"] = (self_confidence(labels, adjusted), run)
    return scores


CLEANLAB_SETS = (
    "run self-confidence",
    "two runs, equal",
    "ImageNet probe",
    "run + probe, stacked",
    "run x probe, stacked",
)


def bench_kind(kind, args, data, targets, evidence, run, weight, extra, second=None) -> list[dict]:
    """Every score's precision at k and recall at 2k on one kind of planted issue, per seed."""
    per_score: dict[str, list] = {}
    for seed in range(args.seeds):
        labels, planted, _ = plant(kind, seed, data, targets, args.share)
        n = len(data.y_test)  # the rows after the test set's are the composites'
        probe, knn = evidence["test_probs"][:n].copy(), evidence["test_knn"][:n].copy()
        run_seed = None if run is None else run["test"].copy()
        second_seed = None if second is None else second["test"].copy()
        if kind == "composite":  # the pasted images, as every model scored them
            rows = extra[seed]
            probe[planted], knn[planted] = evidence["test_probs"][rows], evidence["test_knn"][rows]
            if run_seed is not None:
                run_seed[planted] = run["composites"][rows - n]
            if second_seed is not None:
                second_seed[planted] = second["composites"][rows - n]
        is_planted = np.zeros(len(labels), bool)
        is_planted[planted] = True
        scores = scores_of(labels, probe, knn, run_seed, weight, second_seed)
        for name, (score, probs) in scores.items():
            found = [*ranking_metrics(score, is_planted)]
            found += [*cleanlab_set(labels, probs, is_planted)] if name in CLEANLAB_SETS else []
            per_score.setdefault(name, []).append(found)
    rows = []
    for name, found in per_score.items():
        mean = np.mean(np.asarray([f[:2] for f in found]), axis=0)
        row = {"kind": kind, "score": name, "precision_at_k": mean[0], "recall_at_2k": mean[1]}
        if len(found[0]) > 2:
            sets = np.mean(np.asarray([f[2:] for f in found]), axis=0)
            row.update(cleanlab_precision=sets[0], cleanlab_recall=sets[1])
            row.update(cleanlab_flagged=sets[2])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--run", default=None, help="a trained run: its probabilities too")
    parser.add_argument(
        "--second-run",
        default=None,
        help="a second run's folder (any workspace, the same data set): the two-run ensemble",
    )
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--csv", default=None, help="write the table here")
    args = parser.parse_args()
    ws = Workspace(args.workspace)
    data, manifest = load_dataset(ws, args.dataset)
    split = load_split(ws, data.name)
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    features = dataset_features(ws, data, manifest.outputs[IMAGES_FILE])
    made = "read from the cache" if features.pass_s is None else "computed"
    print(
        f"ImageNet features ({features.variant}, {features.image_size} px) of "
        f"{len(features.train) + len(features.test):,} images {made} in "
        f"{time.perf_counter() - start:.0f} s"
    )
    record = run = None
    val_rows = np.asarray(split.val)
    if args.run:
        from deepsight_tf.training.record import RunRecord

        record = RunRecord.load(ws, args.run)
        predictions = record.predictions()
        val_rows = predictions["val_indices"]
        run = {
            "test": normalised(predictions["test_probs"]),
            "val": normalised(predictions["val_probs"]),
            "val_labels": predictions["val_labels"],
        }
    composite_images = [plant("composite", s, data, None, args.share)[2] for s in range(args.seeds)]
    pasted = np.concatenate(composite_images)
    pasted_features, _ = pooled_features(pasted, features.variant, features.image_size)
    extra, offset = [], len(data.y_test)
    for images in composite_images:
        extra.append(np.arange(offset, offset + len(images)))
        offset += len(images)
    start = time.perf_counter()
    train = np.asarray(split.train)
    evidence = evidence_from_features(
        features.train[train],
        data.y_train[train],
        features.train[val_rows],
        np.concatenate([features.test, pasted_features]),
        data.num_classes,
        widths=features.widths,
        neighbours=True,
    )
    oof = evidence["train_probs"].argmax(axis=1)
    print(
        f"probes and neighbours in {time.perf_counter() - start:.0f} s; probe accuracy "
        f"{np.mean(oof == data.y_train[train]):.2%} out of fold (training images), "
        f"{np.mean(evidence['test_probs'][: len(data.y_test)].argmax(1) == data.y_test):.2%} "
        "on the test images"
    )
    k = data.num_classes
    targets = most_confused_with(
        np.bincount(data.y_train[train] * k + oof, minlength=k * k).reshape(k, k)
    )
    names = data.class_names
    print(
        "confusable flips: " + ", ".join(f"{names[c]}->{names[t]}" for c, t in enumerate(targets))
    )
    weight, accuracy = (0.5, 0.5), None
    if run is not None:
        run["composites"] = run_probs(record, pasted)
        weight = tuple(
            mixture_weight(run["val_labels"], run["val"], evidence["val_probs"], geometric)
            for geometric in (False, True)
        )
        accuracy = float(np.mean(run["test"].argmax(1) == data.y_test))
        print(
            f"run {args.run}: test accuracy {accuracy:.2%}; stacked weight of the run "
            f"{weight[0]:.2f} (arithmetic), {weight[1]:.2f} (geometric)"
        )
    second = None
    if args.second_run and run is not None:
        from deepsight_tf.training.record import RunRecord

        other = RunRecord.at(Path(args.second_run))
        predicted = other.predictions()
        if not np.array_equal(predicted["test_labels"], data.y_test):
            sys.exit(f"{args.second_run}: its test labels are not this data set's")
        second = {
            "test": normalised(predicted["test_probs"]),
            "composites": run_probs(other, pasted),
        }
        print(
            f"second run {args.second_run}: test accuracy "
            f"{np.mean(second['test'].argmax(1) == data.y_test):.2%}"
        )
    rows = []
    for kind in KINDS:
        rows += bench_kind(kind, args, data, targets, evidence, run, weight, extra, second)
    report(rows, args, accuracy, len(data.y_test))


def report(rows: list[dict], args: argparse.Namespace, accuracy: float | None, n: int) -> None:
    planted = round(args.share * n)
    print(
        f"\n{planted} planted issues ({args.share:.0%}) of {n:,} test labels per kind, "
        f"{args.seeds} seeds, k = {planted}; a random ranking finds {args.share:.1%} at k"
    )
    print(f"  {'kind':11s} {'score':22s} {'precision@k':>11s} {'recall@2k':>9s}   cleanlab set")
    for row in rows:
        found = ""
        if "cleanlab_precision" in row:
            found = (
                f"  {row['cleanlab_precision']:.1%} precise, {row['cleanlab_recall']:.1%} "
                f"recall of {row['cleanlab_flagged']:.0f}"
            )
        print(
            f"  {row['kind']:11s} {row['score']:22s} {row['precision_at_k']:11.1%} "
            f"{row['recall_at_2k']:9.1%} {found}"
        )
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        "run": args.run or "",
                        "share": args.share,
                        "k": planted,
                        "seeds": args.seeds,
                        "run_accuracy": accuracy or "",
                        **{
                            key: round(v, 4) if isinstance(v, float) else v
                            for key, v in row.items()
                        },
                    }
                )
        print(f"written to {args.csv}")


if __name__ == "__main__":
    main()
