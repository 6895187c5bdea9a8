"""Label evidence from a model that never saw the labels: K-fold linear probes and kNN label
agreement on ImageNet features (imagenet_features.py), for the training, validation and test
images of a data set.

The features were learned on ImageNet, so no label of this data set shaped them; the probes
read the training labels of the other folds only, so every probability is out of sample for
the label it is asked about (cleanlab's recommended input, from a model other than the run).
The test and validation images are predicted by the mean of the K fold probes, which never
read a test or validation label.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepsight_tf.core.progress import Progress
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.diagnose.imagenet_features import (
    FEATURE_SIZE,
    FEATURE_VARIANT,
    dataset_features,
)
from deepsight_tf.diagnose.label_scores import (
    KNN_NEIGHBOURS,
    PROBE_FOLDS,
    kfold_probes,
    knn_label_agreement,
)

# Principal components of the features (each stage's block unit-normalised, so that the head's
# 1280 values do not drown the 112 of stack 5) that the probes read. Measured once on CIFAR-10
# at 96 px with the head's features alone (10,000 training images): 256 components cost the
# probe 0.4 points of test accuracy and fitted about 4 times as fast (the projection reads no
# label); C = 1 was as accurate as 10 in half the steps. tol 1e-3 against 1e-4 on all 45,000
# training images: 0.4 points of out-of-fold accuracy, 1.0 and 0.5 of the probe's precision at
# k on planted uniform and confusable flips, none of the run mixture's, in 2.4 times fewer
# seconds.
PROJECTED_DIMENSIONS = 256
INDEPENDENT_C = 1.0
INDEPENDENT_TOL = 1e-3


@dataclass
class IndependentEvidence:
    """Out-of-sample probabilities from the ImageNet features."""

    variant: str
    image_size: int
    features_folder: str
    features_sha256: str
    pass_s: float | None  # the forward pass made now; None: the features were cached
    folds: int
    train_indices: np.ndarray  # into x_train: scrub's training images
    train_probs: np.ndarray  # their out-of-fold probe probabilities
    val_indices: np.ndarray  # into x_train: scrub's validation images
    val_probs: np.ndarray  # the fold probes' mean
    test_probs: np.ndarray  # the fold probes' mean
    probe_accuracy: float  # out of fold, against the training images' given labels

    def summary(self) -> dict[str, Any]:
        """What interpret's report says about the evidence (no arrays)."""
        return {
            "backbone": f"EfficientNet-{self.variant.capitalize()} (ImageNet)",
            "image_size": self.image_size,
            "features": self.features_folder,
            "feature_pass_s": None if self.pass_s is None else round(self.pass_s, 1),
            "cached": self.pass_s is None,
            "folds": self.folds,
            "dimensions": PROJECTED_DIMENSIONS,
            "probe_accuracy": self.probe_accuracy,
        }


def project(
    train: np.ndarray,
    *others: np.ndarray,
    widths: Sequence[int] | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """The features with each block of `widths` columns unit-normalised (one block: all),
    projected on the training features' first principal components (PROJECTED_DIMENSIONS,
    fewer when there are fewer images or columns)."""
    from sklearn.decomposition import PCA

    bounds = np.cumsum([0, *(widths or [train.shape[1]])])
    if bounds[-1] != train.shape[1]:
        raise ValueError(f"widths must add up to {train.shape[1]} columns. Received: {widths}")

    def unit(x: np.ndarray) -> np.ndarray:
        blocks = [x[:, a:b].astype(np.float32) for a, b in itertools.pairwise(bounds)]
        norms = [np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12) for b in blocks]
        return np.concatenate([b / n for b, n in zip(blocks, norms, strict=True)], axis=1)

    dims = min(PROJECTED_DIMENSIONS, len(train), train.shape[1])
    pca = PCA(dims, random_state=seed).fit(unit(train))
    return [pca.transform(unit(x)).astype(np.float32) for x in (train, *others)]


def evidence_from_features(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    test_features: np.ndarray,
    num_classes: int,
    widths: Sequence[int] | None = None,
    seed: int = 0,
    neighbours: bool = False,
) -> dict[str, Any]:
    """The probes' verdicts from features alone (no workspace): train_probs (out of fold),
    val_probs and test_probs (the fold probes' mean); with `neighbours`, also train_knn (leave
    one out) and test_knn (against the training images): bench/label_issues.py ranks with them,
    interpret does not, since they found fewer planted issues than the probes."""
    train, val, test = project(
        train_features, val_features, test_features, widths=widths, seed=seed
    )
    oof, queries = kfold_probes(
        train,
        train_labels,
        num_classes,
        queries=np.concatenate([val, test]),
        folds=PROBE_FOLDS,
        seed=seed,
        C=INDEPENDENT_C,
        tol=INDEPENDENT_TOL,
    )
    assert queries is not None
    found = {
        "train_probs": oof,
        "val_probs": queries[: len(val)],
        "test_probs": queries[len(val) :],
    }
    if neighbours:
        k = KNN_NEIGHBOURS
        found["train_knn"] = knn_label_agreement(train, train, train_labels, num_classes, k, True)
        found["test_knn"] = knn_label_agreement(test, train, train_labels, num_classes, k)
    return found


def independent_evidence(
    workspace: Workspace,
    data: Any,
    images_sha256: str,
    split: Any,
    seed: int = 0,
    progress: Progress | None = None,
) -> IndependentEvidence:
    """The evidence for a stored data set and scrub's split; the features come from the
    workspace's cache (computed there first when missing or stale)."""
    features = dataset_features(
        workspace, data, images_sha256, FEATURE_VARIANT, FEATURE_SIZE, progress=progress
    )
    train, val = np.asarray(split.train), np.asarray(split.val)
    labels = data.y_train[train]
    found = evidence_from_features(
        features.train[train],
        labels,
        features.train[val],
        features.test,
        data.num_classes,
        widths=features.widths,
        seed=seed,
    )
    return IndependentEvidence(
        variant=features.variant,
        image_size=features.image_size,
        features_folder=features.folder,
        features_sha256=features.sha256,
        pass_s=features.pass_s,
        folds=PROBE_FOLDS,
        train_indices=train,
        val_indices=val,
        probe_accuracy=float((found["train_probs"].argmax(axis=1) == labels).mean()),
        **found,
    )
