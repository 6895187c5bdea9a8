"""What a reader must not miss before the numbers: baselines, and signs a run did not learn.

A collapsed model (one class predicted everywhere) can still pass a low gate; an accuracy
inside its interval of the majority-class rate says nothing; a validation loss far above a
uniform guess's means training diverged or the model is confidently wrong. The report puts
these in a warning box above the headline, and chance and majority beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# One class predicted for more than this share of the test set: the model has collapsed.
COLLAPSE_SHARE = 0.5
# A validation loss above this many times ln(K), the loss of a uniform guess: diverged.
DIVERGED_LOSS_FACTOR = 3.0


@dataclass
class Baselines:
    """What a model that learned nothing would score on this test set."""

    chance: float  # 1 / K
    majority: float  # the largest class's share of the test images
    majority_class: str


def baselines(labels: np.ndarray, class_names: list[str]) -> Baselines:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    top = int(np.argmax(counts))
    return Baselines(1.0 / len(class_names), float(counts[top] / counts.sum()), class_names[top])


def run_warnings(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    accuracy_ci: list[float],
    history: list[dict[str, Any]],
) -> list[str]:
    """Plain sentences, one per problem found (none for a run that learned)."""
    found = []
    predicted = np.asarray(probs).argmax(axis=1)
    shares = np.bincount(predicted, minlength=len(class_names)) / len(predicted)
    top = int(np.argmax(shares))
    if shares[top] > COLLAPSE_SHARE:
        found.append(
            f"the model predicts {class_names[top]} for {shares[top]:.0%} of the test images: "
            "it has collapsed onto one class, whatever the gate says"
        )
    base = baselines(labels, class_names)
    if accuracy_ci[0] <= base.majority:
        found.append(
            f"the accuracy interval reaches down to {accuracy_ci[0]:.1%}, not clear of "
            f"{base.majority:.1%}, what always answering {base.majority_class} scores"
        )
    uniform = math.log(len(class_names))
    for row in history:
        losses = [row.get(k) for k in ("loss", "val_loss") if isinstance(row.get(k), int | float)]
        if any(not math.isfinite(v) for v in losses):
            found.append(f"the loss was not finite in epoch {row.get('epoch')}")
            break
    final = next((r["val_loss"] for r in reversed(history) if "val_loss" in r), None)
    if isinstance(final, int | float) and final > DIVERGED_LOSS_FACTOR * uniform:
        found.append(
            f"the final validation loss {final:,.2f} is over {DIVERGED_LOSS_FACTOR:g}x that of "
            f"a uniform guess (ln {len(class_names)} = {uniform:.2f}): training diverged or "
            "the model is confidently wrong"
        )
    return found
