"""Checks of the arrays every diagnostic takes: labels against probabilities, class names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deepsight_tf.core.checks import verify_labels


def check_labels_probs(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (n, classes). Received: shape {probs.shape}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(
            f"labels must be (n,) matching probs {probs.shape}. Received: shape {labels.shape}"
        )
    if len(labels) == 0:
        raise ValueError("labels and probs must hold at least one example. Received: n=0")
    verify_labels(labels, probs.shape[1], where="labels")
    return labels.astype(np.int64), probs


def check_class_names(class_names: Sequence[str], k: int) -> list[str]:
    if len(class_names) != k:
        raise ValueError(
            f"class_names must name the {k} columns of probs. Received: {len(class_names)} names"
        )
    return list(class_names)


def class_ids(names: Sequence[str], class_names: Sequence[str], what: str) -> list[int]:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [n for n in names if n not in index]
    if unknown or not names:
        raise ValueError(
            f"{what} must be a non-empty list of known class names. Received: {list(names)}"
        )
    return [index[n] for n in names]
