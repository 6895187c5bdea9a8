"""Error attribution: each test error assigned to the causes that may explain it, with counts
and bootstrap intervals, and a verdict on "errors come from semantic overlap, not data
quality".

The causes of an error (an image may have several):

    label_issue              cleanlab flags the image's label (interpret's label_issues.csv)
    independent_label_issue  the label is doubted by a model that never saw the labels:
                             cleanlab's flagged set on K-fold linear probes over ImageNet
                             features (interpret's label_issues_imagenet.csv)
    conflicting_twin         the image has an exact or near duplicate in train with another
                             label (scrub's duplicates.csv)
    low_quality              scrub's quality checks flag the image (dark, light, near-constant,
                             low information, blurry; quality.csv)
    confusable_pair          the true and the predicted class form a registered confusable
                             pair (explore's hypotheses)

Semantic overlap is the last cause. For the claim, data quality is the evidence that does not
come from the model under test: a conflicting twin, a low-quality image, or a label that the
ImageNet probes doubt (their features were learned without these labels, and no probe read the
label it is asked about). label_issue comes from the model under test (alone, or mixed with the
probes), so its errors are errors by construction (a confident vote for another class, which a
semantic confusion gives just as well): the table shows their share, but counting them as data
quality would decide the claim by definition. The claim's statistic is (share of errors in a
confusable pair) - (share of errors with a data-quality cause), bootstrapped over the test
images, twice: with every data-quality cause (an upper bound on data quality, since the
probes' doubts include their own mistakes) and with the certain ones alone (a lower bound).
"supported" when the interval with the upper bound lies above 0, "contradicted" when the one
with the lower bound lies below it, else "inconclusive": then the answer depends on how many
of the probes' doubts are real label issues, which no test here can tell. An error may count
on both sides (a cat called a dog whose label the probes doubt too); the claim reports that
share as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from deepsight_tf.core.settings import DEFAULT_ALPHA, DEFAULT_N_BOOT
from deepsight_tf.diagnose.bootstrap import (
    bootstrap_ci,
    verdict_from_ci,
)
from deepsight_tf.diagnose.checks import check_class_names, check_labels_probs

IMAGE_CAUSES = ("label_issue", "independent_label_issue", "conflicting_twin", "low_quality")
CAUSES = (*IMAGE_CAUSES, "confusable_pair")
# Evidence from outside the model under test: about the image itself (certain), and a label the
# ImageNet probes doubt (possible: the probes' own mistakes are among their doubts, so it bounds
# the label issues among the errors from above).
CERTAIN_DATA_QUALITY = ("conflicting_twin", "low_quality")
DATA_QUALITY = (*CERTAIN_DATA_QUALITY, "independent_label_issue")
CLAIM = "the primary sources of error are semantic overlap, not data quality"
NOTE = (
    "an error may have several causes, so the shares can add up to more than 1; "
    "label_issue comes from this model's probabilities and its errors are errors by "
    "construction, so the claim's data-quality side counts only evidence from outside the "
    "model: conflicting train twins, low-quality images and labels doubted by linear "
    "probes on ImageNet features (independent_label_issue), which never saw the labels"
)


@dataclass(frozen=True)
class CauseRow:
    """One cause: the errors with it and their share of all errors (CI); for a cause that
    belongs to the image, the images with it and the error rate with and without it."""

    cause: str
    measured: bool
    errors: int | None = None
    share: float | None = None  # None: no errors at all, or the cause was not measured
    share_ci: list[float] | None = None
    images: int | None = None
    error_rate_with: float | None = None
    error_rate_without: float | None = None


@dataclass(frozen=True)
class Claim:
    """The claim's verdict: share of errors in a confusable pair minus share with a data-quality
    cause, with every such cause (upper bound) and the certain ones alone (lower bound)."""

    claim: str
    verdict: str  # supported | contradicted | inconclusive | not tested
    why: str | None = None
    semantic_share: float | None = None
    data_quality_share: float | None = None
    both_share: float | None = None
    data_quality_causes: list[str] = field(default_factory=list)
    difference: float | None = None
    difference_ci: list[float] | None = None
    certain_causes: list[str] | None = None
    certain_share: float | None = None
    certain_difference: float | None = None
    certain_difference_ci: list[float] | None = None

    @property
    def has_bound(self) -> bool:
        """Whether the probes' doubts were counted, so the certain causes give a lower bound."""
        return self.certain_causes is not None and self.certain_causes != self.data_quality_causes


@dataclass(frozen=True)
class ErrorAttribution:
    n: int  # test images
    errors: int
    rows: list[CauseRow]
    claim: Claim
    ci_level: float
    note: str = NOTE


def pair_mask(
    labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], pairs: Sequence[tuple]
) -> np.ndarray:
    """True where the image is wrong and (true, predicted) is a registered pair, either way."""
    index = {name: i for i, name in enumerate(class_names)}
    registered = {frozenset((index[a], index[b])) for a, b in pairs if a in index and b in index}
    return np.array(
        [
            t != p and frozenset((t, p)) in registered
            for t, p in zip(labels, predicted, strict=True)
        ],
        dtype=bool,
    )


def attribute_errors(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    image_causes: Mapping[str, np.ndarray],
    confusable_pairs: Sequence[tuple[str, str]],
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> ErrorAttribution:
    """The attribution table and the claim's verdict.

    `image_causes` maps each of IMAGE_CAUSES to the indices of the test images that have it
    (a missing cause: not measured, shown as such).
    """
    labels, probs = check_labels_probs(labels, probs)
    check_class_names(class_names, probs.shape[1])
    n = len(labels)
    predicted = probs.argmax(axis=1)
    wrong = predicted != labels
    masks: dict[str, np.ndarray] = {}
    for cause in IMAGE_CAUSES:
        if cause in image_causes:
            mask = np.zeros(n, dtype=bool)
            mask[np.asarray(image_causes[cause], dtype=np.int64)] = True
            masks[cause] = mask
    if confusable_pairs:
        masks["confusable_pair"] = pair_mask(labels, predicted, class_names, confusable_pairs)
    any_cause = np.zeros(n, dtype=bool)
    for mask in masks.values():
        any_cause |= mask
    n_errors = int(wrong.sum())
    rows = []
    for cause in CAUSES:
        if cause not in masks:
            rows.append(CauseRow(cause, measured=False))
            continue
        rows.append(
            _row(
                cause,
                masks[cause],
                wrong,
                n_boot,
                alpha,
                seed + len(rows),
                image_level=cause in IMAGE_CAUSES,
            )
        )
    rows.append(_row("none of these", ~any_cause, wrong, n_boot, alpha, seed + 9, False))
    return ErrorAttribution(
        n=n,
        errors=n_errors,
        rows=rows,
        claim=_claim(masks, wrong, n_boot, alpha, seed + 17),
        ci_level=1 - alpha,
    )


def _row(
    cause: str,
    mask: np.ndarray,
    wrong: np.ndarray,
    n_boot: int,
    alpha: float,
    seed: int,
    image_level: bool,
) -> CauseRow:
    """Errors with the cause, their share of all errors (CI), and for a cause that belongs to
    the image, the error rate of the images with it against those without."""
    row = CauseRow(cause, measured=True, errors=int((mask & wrong).sum()))
    if wrong.any():
        share, low, high = bootstrap_ci(
            _share_of_errors, mask, wrong, n_boot=n_boot, alpha=alpha, seed=seed
        )
        row = replace(row, share=float(share), share_ci=[float(low), float(high)])
    if image_level:
        row = replace(
            row,
            images=int(mask.sum()),
            error_rate_with=float(wrong[mask].mean()) if mask.any() else None,
            error_rate_without=float(wrong[~mask].mean()) if (~mask).any() else None,
        )
    return row


def _share_of_errors(mask: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    errors = wrong.sum(axis=-1)
    return np.divide(
        (mask & wrong).sum(axis=-1), errors, out=np.zeros(errors.shape), where=errors > 0
    )


def _claim(
    masks: Mapping[str, np.ndarray], wrong: np.ndarray, n_boot: int, alpha: float, seed: int
) -> Claim:
    """Share of errors in confusable pairs minus share with a data-quality cause."""
    measured = [c for c in DATA_QUALITY if c in masks]
    if "confusable_pair" not in masks or not measured or not wrong.any():
        return Claim(
            CLAIM,
            "not tested",
            why="needs registered confusable pairs, a data-quality cause and some errors",
        )
    certain_causes = [c for c in measured if c in CERTAIN_DATA_QUALITY]
    data, certain = np.zeros_like(wrong), np.zeros_like(wrong)
    for cause in measured:
        data |= masks[cause]
        if cause in certain_causes:
            certain |= masks[cause]
    semantic = masks["confusable_pair"]

    def difference(semantic: np.ndarray, data: np.ndarray, wrong: np.ndarray) -> np.ndarray:
        return _share_of_errors(semantic, wrong) - _share_of_errors(data, wrong)

    # The same seed: both bounds are read off the same resamples of the test images.
    point, low, high = bootstrap_ci(
        difference, semantic, data, wrong, n_boot=n_boot, alpha=alpha, seed=seed
    )
    c_point, c_low, c_high = bootstrap_ci(
        difference, semantic, certain, wrong, n_boot=n_boot, alpha=alpha, seed=seed
    )
    verdict = "supported" if low > 0 else "contradicted" if c_high < 0 else "inconclusive"
    why = None
    with_all, with_none = verdict_from_ci(low, high), verdict_from_ci(c_low, c_high)
    if with_all != with_none:
        words = {"supported": "semantic overlap leads", "contradicted": "data quality leads"}
        why = (
            "the answer turns on how many of the ImageNet probes' doubts are real label "
            f"issues: counting all of them, {words.get(with_all, 'neither leads')}; counting "
            f"none, {words.get(with_none, 'neither leads')}"
        )
    return Claim(
        CLAIM,
        verdict,
        why=why,
        semantic_share=float(_share_of_errors(semantic, wrong)),
        data_quality_share=float(_share_of_errors(data, wrong)),
        both_share=float(_share_of_errors(semantic & data, wrong)),
        data_quality_causes=measured,
        difference=float(point),
        difference_ci=[float(low), float(high)],
        certain_causes=certain_causes,
        certain_share=float(_share_of_errors(certain, wrong)),
        certain_difference=float(c_point),
        certain_difference_ci=[float(c_low), float(c_high)],
    )
