"""Forensics of the data: label issues (cleanlab) and the hard examples of confused pairs."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.storage import atomic_write_text
from deepsight_tf.diagnose.checks import check_class_names, check_labels_probs


def _check_inputs(
    labels: Any, probs: Any, class_names: Sequence[str], paths: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = check_labels_probs(labels, probs)
    check_class_names(class_names, probs.shape[1])
    if paths is not None and len(paths) != len(labels):
        raise ValueError(f"paths must have one entry per label. Received: {len(paths)}")
    return labels, probs


# Label issues --------------------------------------------------------------------------------
@dataclass
class LabelIssue:
    """An example whose given label cleanlab doubts, most doubtful first."""

    rank: int  # 0 = most likely mislabelled
    index: int  # into the arrays given
    path: str | None
    given: int
    given_label: str
    suggested: int  # the model's top class
    suggested_label: str
    suggested_probability: float
    score: float  # cleanlab's self-confidence label quality, p(given label); low = doubtful


def find_label_issues(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    paths: Sequence[str] | None = None,
) -> list[LabelIssue]:
    """Label issues by confident learning (cleanlab), ranked by self-confidence.

    `probs` must be out-of-sample: predicted by a model that never trained on these examples
    (a trained model's test predictions, or cross-validated ones). On in-sample probabilities
    the model has memorised the wrong labels and cleanlab finds little.
    """
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.rank import get_label_quality_scores

    labels, probs = _check_inputs(labels, probs, class_names, paths)
    # cleanlab expects each row to sum to 1; float32 softmax outputs are off by ~1e-7.
    probs = probs / probs.sum(axis=1, keepdims=True)
    # n_jobs=1: no worker processes forked from a process that may hold TensorFlow.
    ranked = cleanlab_find(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    suggested = probs.argmax(axis=1)
    return [
        LabelIssue(
            rank=rank,
            index=int(i),
            path=None if paths is None else str(paths[i]),
            given=int(labels[i]),
            given_label=class_names[labels[i]],
            suggested=int(suggested[i]),
            suggested_label=class_names[suggested[i]],
            suggested_probability=float(probs[i, suggested[i]]),
            score=float(scores[i]),
        )
        for rank, i in enumerate(ranked)
    ]


def write_label_issues_csv(path: Path, issues: Sequence[LabelIssue]) -> Path:
    """One row per issue (columns as LabelIssue's fields, most doubtful first), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=[f.name for f in fields(LabelIssue)], lineterminator="\n"
    )
    writer.writeheader()
    for issue in issues:
        row = asdict(issue)
        row["path"] = row["path"] or ""
        writer.writerow(row)
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)


def label_issue_recovery(
    flipped_indices: Sequence[int], issues: Sequence[LabelIssue], n_examples: int
) -> dict[str, Any]:
    """How well the issues recover labels known to be wrong (planted flips).

    precision = flagged flips / flagged; recall = flagged flips / flips. A random choice of the
    same size would have precision `chance_precision` = flips / n; `lift` is their ratio.
    `precision_at_flips` is the precision of the top len(flips) issues by rank.
    """
    flipped = {int(i) for i in flipped_indices}
    if n_examples < 1 or any(not 0 <= i < n_examples for i in flipped):
        raise ValueError(
            f"flipped_indices must lie in [0, n_examples={n_examples}). "
            f"Received: {sorted(flipped)[:5]}..."
        )
    flagged = [issue.index for issue in sorted(issues, key=lambda issue: issue.rank)]
    hits = len(flipped & set(flagged))
    top = len(flipped & set(flagged[: len(flipped)]))
    chance = len(flipped) / n_examples
    precision = hits / len(flagged) if flagged else None
    return {
        "n_examples": n_examples,
        "n_flipped": len(flipped),
        "n_flagged": len(flagged),
        "n_flagged_flipped": hits,
        "precision": precision,
        "recall": hits / len(flipped) if flipped else None,
        "precision_at_flips": top / len(flipped) if flipped else None,
        "chance_precision": chance,
        "lift": precision / chance if precision is not None and chance > 0 else None,
    }


# Hard examples -------------------------------------------------------------------------------
@dataclass
class HardExample:
    """An example of a confused pair: its true class is one of the pair, predicted the other."""

    pair: str  # "a:b", as --focus-pairs spells it
    index: int
    path: str | None
    true_label: str
    predicted_label: str
    probability: float  # of the predicted (wrong) class


def hard_examples(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    paths: Sequence[str] | None = None,
) -> list[HardExample]:
    """For each pair (a, b): the examples of a predicted b and of b predicted a, each pair's
    examples most confident first, pairs in the order given."""
    labels, probs = _check_inputs(labels, probs, class_names, paths)
    index = {name: i for i, name in enumerate(class_names)}
    predicted = probs.argmax(axis=1)
    result = []
    for a, b in _check_pairs(pairs, index):
        ia, ib = index[a], index[b]
        chosen = np.flatnonzero(
            ((labels == ia) & (predicted == ib)) | ((labels == ib) & (predicted == ia))
        )
        confidence = probs[chosen, predicted[chosen]]
        for i in chosen[np.argsort(-confidence, kind="stable")]:
            result.append(
                HardExample(
                    pair=f"{a}:{b}",
                    index=int(i),
                    path=None if paths is None else str(paths[i]),
                    true_label=class_names[labels[i]],
                    predicted_label=class_names[predicted[i]],
                    probability=float(probs[i, predicted[i]]),
                )
            )
    return result


def _check_pairs(pairs: Sequence[tuple[str, str]], index: dict[str, int]) -> list[tuple[str, str]]:
    checked = []
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1] or any(name not in index for name in pair):
            raise ValueError(
                f"pairs must hold two different known class names. Received: {tuple(pair)}"
            )
        checked.append((str(pair[0]), str(pair[1])))
    return checked


def format_focus_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    """The text `deepsight train --focus-pairs` parses: "cat:dog,automobile:truck"."""
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1] or any(":" in n or "," in n for n in pair):
            raise ValueError(
                "pairs must be two different class names without ':' or ','. "
                f"Received: {tuple(pair)}"
            )
    return ",".join(f"{a}:{b}" for a, b in pairs)


def write_focus_pairs(path: Path, pairs: Sequence[tuple[str, str]]) -> Path:
    """Write the pairs as one line of --focus-pairs text (pass it as --focus-pairs @FILE)."""
    atomic_write_text(Path(path), format_focus_pairs(pairs) + "\n")
    return Path(path)
