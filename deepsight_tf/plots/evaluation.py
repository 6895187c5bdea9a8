"""Figures of the interpret phase's diagnostics: confusion, calibration, recall, tests, examples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from deepsight_tf.plots import HEATMAP_CMAP, OKABE_ITO

if TYPE_CHECKING:
    from deepsight_tf.diagnose.calibration import ReliabilityBins
    from deepsight_tf.diagnose.evaluation import ClassRecall, ConfusedPair, TopLosses
    from deepsight_tf.diagnose.forensics import LabelIssue
    from deepsight_tf.diagnose.hypothesis_tests import HypothesisResult

# Verdict colours from Okabe-Ito: bluish green, vermillion, grey (told apart by colour-blind
# readers, and the legend names them as well).
VERDICT_COLOURS = {"supported": OKABE_ITO[2], "contradicted": OKABE_ITO[3], "inconclusive": "0.5"}
GRID_COLS = 8


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Colour by row-normalised rate (the diagonal is recall), annotated with the counts."""
    confusion = np.asarray(confusion)
    k = len(class_names)
    if confusion.shape != (k, k):
        raise ValueError(f"confusion must be ({k}, {k}). Received: shape {confusion.shape}")
    support = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
    size = max(4.0, 0.55 * k + 2.0)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    if k <= 30:  # beyond that the numbers no longer fit their cells
        for i in range(k):
            for j in range(k):
                # viridis is dark at the bottom: light text there, dark text on the bright end.
                colour = "black" if rates[i, j] > 0.6 else "white"
                ax.text(
                    j,
                    i,
                    str(int(confusion[i, j])),
                    ha="center",
                    va="center",
                    fontsize="x-small" if k > 12 else "small",
                    color=colour,
                )
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (n={int(confusion.sum()):,}; colour: row share, text: count)")
    return fig


def plot_reliability_diagram(
    before: ReliabilityBins,
    after: ReliabilityBins | None = None,
    ece_before: float | None = None,
    ece_after: float | None = None,
    temperature: float | None = None,
) -> Figure:
    """Accuracy against confidence per bin (markers sized by count), before and after scaling."""
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="perfect calibration")
    series = [(before, ece_before, "before", OKABE_ITO[3], "o")]
    if after is not None:
        t = "" if temperature is None else f", T={temperature:.2f}"
        series.append((after, ece_after, f"after temperature scaling{t}", OKABE_ITO[0], "s"))
    width = 1.0 / before.bins
    for i, (bins, ece, label, colour, marker) in enumerate(series):
        counts = np.asarray(bins.count, dtype=float)
        share = counts / max(counts.sum(), 1.0)
        text = label if ece is None else f"{label} (ECE {ece:.3f})"
        ax.plot(bins.confidence, bins.accuracy, color=colour, linewidth=1)
        ax.scatter(
            bins.confidence,
            bins.accuracy,
            s=20 + 400 * share,
            color=colour,
            marker=marker,
            label=text,
            zorder=3,
        )
        centres = (np.asarray(bins.lower) + np.asarray(bins.upper)) / 2
        offset = (i - (len(series) - 1) / 2) * width / len(series)
        hist.bar(centres + offset, counts, width=width / len(series), color=colour)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"Reliability diagram ({before.bins} equal-width confidence bins)")
    ax.legend(loc="upper left", fontsize="small")
    hist.set_xlabel("confidence (top-class probability)")
    hist.set_ylabel("examples")
    return fig


def plot_per_class_recall(recalls: Sequence[ClassRecall], ci_level: float = 0.95) -> Figure:
    """Recall per class with its bootstrap CI as error bars; the dashed line is mean recall."""
    k = len(recalls)
    fig = Figure(figsize=(max(6.0, 0.6 * k + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    values = np.array([r.recall for r in recalls])
    low = np.array([r.recall if r.low is None else r.low for r in recalls])
    high = np.array([r.recall if r.high is None else r.high for r in recalls])
    ax.bar(range(k), values, color=OKABE_ITO[0])
    ax.errorbar(
        range(k),
        values,
        yerr=[values - low, high - values],
        fmt="none",
        ecolor="black",
        capsize=3,
        label=f"{ci_level:.0%} bootstrap CI",
    )
    ax.axhline(
        values.mean(), color=OKABE_ITO[1], linestyle="--", label=f"mean recall {values.mean():.3f}"
    )
    names = [f"{r.name}\n(n={r.support})" for r in recalls]
    ax.set_xticks(
        range(k),
        names,
        rotation=45 if k > 6 else 0,
        ha="right" if k > 6 else "center",
        fontsize="small",
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall")
    ax.set_title("Recall per class")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_most_confused(pairs: Sequence[ConfusedPair]) -> Figure:
    """Horizontal bars of the most-confused (true → predicted) cells, largest at the top."""
    n = max(len(pairs), 1)
    fig = Figure(figsize=(6.4, 0.35 * n + 1.2), layout="constrained")
    ax = fig.add_subplot()
    labels = [f"{p.true} → {p.predicted}" for p in pairs]
    counts = [p.count for p in pairs]
    bars = ax.barh(range(len(pairs)), counts, color=OKABE_ITO[1])
    ax.bar_label(
        bars,
        labels=[f"{p.count} ({p.rate:.1%} of {p.true})" for p in pairs],
        padding=3,
        fontsize="small",
    )
    ax.set_yticks(range(len(pairs)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max(counts, default=1) * 1.35)  # room for the bar labels
    ax.set_xlabel("test images")
    ax.set_title("Most confused: true → predicted")
    return fig


def _image_grid(
    images: np.ndarray, titles: Sequence[str], suptitle: str, cols: int = GRID_COLS
) -> Figure:
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.dtype != np.uint8 or len(images) != len(titles):
        raise ValueError(
            "images must be uint8 (n, H, W[, C]) with one title each. "
            f"Received: {images.dtype} {images.shape}, {len(titles)} titles"
        )
    n = max(len(images), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.6 * cols, 1.75 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, title in zip(axes, images, titles, strict=False):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize="x-small")
    fig.suptitle(suptitle)
    return fig


def plot_top_losses(images: np.ndarray, losses: TopLosses, class_names: Sequence[str]) -> Figure:
    """The top-loss images (`images[i]` is the image of `losses.indices[i]`), titled
    "true → predicted (p)" with p the predicted class's probability."""
    titles = [
        f"{class_names[t]} → {class_names[p]} ({q:.2f})"
        for t, p, q in zip(losses.labels, losses.predicted, losses.probability, strict=True)
    ]
    return _image_grid(images, titles, "Top losses: true → predicted (probability)")


def plot_label_issues(images: np.ndarray, issues: Sequence[LabelIssue]) -> Figure:
    """Suspected label issues (`images[i]` is the image of `issues[i]`), titled
    "given → suggested (label quality)"."""
    titles = [f"{i.given_label} → {i.suggested_label} ({i.score:.2f})" for i in issues]
    return _image_grid(images, titles, "Label issues: given → suggested (label quality score)")


def plot_hypotheses(results: Sequence[HypothesisResult]) -> Figure:
    """Forest plot: each hypothesis's estimate with its CI, coloured by verdict."""
    n = max(len(results), 1)
    fig = Figure(figsize=(7.5, 0.5 * n + 1.6), layout="constrained")
    ax = fig.add_subplot()
    for row, result in enumerate(results):
        colour = VERDICT_COLOURS.get(result.verdict, "black")
        ax.errorbar(
            result.estimate,
            row,
            xerr=[[result.estimate - result.low], [result.high - result.estimate]],
            fmt="o",
            color=colour,
            ecolor=colour,
            capsize=4,
            markersize=6,
        )
    ax.axvline(0, color="0.3", linestyle="--", linewidth=1)
    ax.set_yticks(
        range(len(results)), [f"{r.name}\n(n={r.n:,})" for r in results], fontsize="small"
    )
    ax.invert_yaxis()
    level = results[0].ci_level if results else 0.95
    ax.set_xlabel(f"estimate (difference the hypothesis predicts > 0), {level:.0%} bootstrap CI")
    handles = [
        Line2D([], [], color=c, marker="o", linestyle="", label=v)
        for v, c in VERDICT_COLOURS.items()
    ]
    ax.legend(handles=handles, loc="best", fontsize="small", title="verdict")
    ax.set_title("Registered hypotheses")
    return fig
