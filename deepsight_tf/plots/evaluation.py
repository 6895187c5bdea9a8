"""Figures of the interpret phase's diagnostics: confusion, calibration, recall, tests, examples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from deepsight_tf.plots import HEATMAP_CMAP, OKABE_ITO

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
    bins: int,
    before: Mapping[str, Sequence[float]],
    after: Mapping[str, Sequence[float]] | None = None,
    ece_before: float | None = None,
    ece_after: float | None = None,
    temperature: float | None = None,
) -> Figure:
    """Accuracy against confidence per bin (markers sized by count), before and after scaling.

    `before` and `after` hold the non-empty ones of `bins` equal-width confidence bins as
    parallel lists: "lower" and "upper" (the bin's edges), "confidence" (mean top-class
    probability), "accuracy" and "count".
    """
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="perfect calibration")
    series = [(before, ece_before, "before", OKABE_ITO[3], "o")]
    if after is not None:
        t = "" if temperature is None else f", T={temperature:.2f}"
        series.append((after, ece_after, f"after temperature scaling{t}", OKABE_ITO[0], "s"))
    width = 1.0 / bins
    for i, (values, ece, label, colour, marker) in enumerate(series):
        counts = np.asarray(values["count"], dtype=float)
        share = counts / max(counts.sum(), 1.0)
        text = label if ece is None else f"{label} (ECE {ece:.3f})"
        ax.plot(values["confidence"], values["accuracy"], color=colour, linewidth=1)
        ax.scatter(
            values["confidence"],
            values["accuracy"],
            s=20 + 400 * share,
            color=colour,
            marker=marker,
            label=text,
            zorder=3,
        )
        centres = (np.asarray(values["lower"]) + np.asarray(values["upper"])) / 2
        offset = (i - (len(series) - 1) / 2) * width / len(series)
        hist.bar(centres + offset, counts, width=width / len(series), color=colour)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"Reliability diagram ({bins} equal-width confidence bins)")
    ax.legend(loc="upper left", fontsize="small")
    hist.set_xlabel("confidence (top-class probability)")
    hist.set_ylabel("examples")
    return fig


def plot_per_class_recall(
    class_names: Sequence[str],
    recall: Sequence[float],
    low: Sequence[float | None],
    high: Sequence[float | None],
    support: Sequence[int],
    ci_level: float,
) -> Figure:
    """Recall per class with its bootstrap CI as error bars (an interval of None: none drawn);
    the dashed line is mean recall."""
    k = len(class_names)
    fig = Figure(figsize=(max(6.0, 0.6 * k + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    values = np.asarray(recall, dtype=float)
    lows = np.array([v if lo is None else lo for v, lo in zip(values, low, strict=True)])
    highs = np.array([v if hi is None else hi for v, hi in zip(values, high, strict=True)])
    ax.bar(range(k), values, color=OKABE_ITO[0])
    ax.errorbar(
        range(k),
        values,
        yerr=[values - lows, highs - values],
        fmt="none",
        ecolor="black",
        capsize=3,
        label=f"{ci_level:.0%} bootstrap CI",
    )
    ax.axhline(
        values.mean(), color=OKABE_ITO[1], linestyle="--", label=f"mean recall {values.mean():.3f}"
    )
    names = [f"{name}\n(n={n})" for name, n in zip(class_names, support, strict=True)]
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


def plot_most_confused(pairs: Sequence[tuple[str, str, int, float]]) -> Figure:
    """Horizontal bars of the most-confused cells, largest at the top: each pair is (true class,
    predicted class, count of test images, that count's share of the true class)."""
    n = max(len(pairs), 1)
    fig = Figure(figsize=(6.4, 0.35 * n + 1.2), layout="constrained")
    ax = fig.add_subplot()
    labels = [f"{true} → {predicted}" for true, predicted, _, _ in pairs]
    counts = [count for _, _, count, _ in pairs]
    bars = ax.barh(range(len(pairs)), counts, color=OKABE_ITO[1])
    ax.bar_label(
        bars,
        labels=[f"{count} ({rate:.1%} of {true})" for true, _, count, rate in pairs],
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


def plot_top_losses(
    images: np.ndarray,
    labels: Sequence[int],
    predicted: Sequence[int],
    probability: Sequence[float],
    class_names: Sequence[str],
) -> Figure:
    """The top-loss images, each titled "true → predicted (p)" with p the predicted class's
    probability (`images[i]` goes with `labels[i]`, `predicted[i]`, `probability[i]`)."""
    titles = [
        f"{class_names[t]} → {class_names[p]} ({q:.2f})"
        for t, p, q in zip(labels, predicted, probability, strict=True)
    ]
    return _image_grid(images, titles, "Top losses: true → predicted (probability)")


def plot_label_issues(
    images: np.ndarray, given: Sequence[str], suggested: Sequence[str], scores: Sequence[float]
) -> Figure:
    """Suspected label issues, each titled "given → suggested (label quality)"."""
    titles = [f"{g} → {s} ({q:.2f})" for g, s, q in zip(given, suggested, scores, strict=True)]
    return _image_grid(images, titles, "Label issues: given → suggested (label quality score)")


def plot_hypotheses(
    names: Sequence[str],
    estimates: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    counts: Sequence[int],
    verdicts: Sequence[str],
    ci_level: float,
) -> Figure:
    """Forest plot: each hypothesis's estimate with its CI (from `count` test images),
    coloured by verdict."""
    n = max(len(names), 1)
    fig = Figure(figsize=(7.5, 0.5 * n + 1.6), layout="constrained")
    ax = fig.add_subplot()
    rows = zip(estimates, low, high, verdicts, strict=True)
    for row, (estimate, lo, hi, verdict) in enumerate(rows):
        colour = VERDICT_COLOURS.get(verdict, "black")
        ax.errorbar(
            estimate,
            row,
            xerr=[[estimate - lo], [hi - estimate]],
            fmt="o",
            color=colour,
            ecolor=colour,
            capsize=4,
            markersize=6,
        )
    ax.axvline(0, color="0.3", linestyle="--", linewidth=1)
    ax.set_yticks(
        range(len(names)),
        [f"{name}\n(n={count:,})" for name, count in zip(names, counts, strict=True)],
        fontsize="small",
    )
    ax.invert_yaxis()
    ax.set_xlabel(f"estimate (difference the hypothesis predicts > 0), {ci_level:.0%} bootstrap CI")
    handles = [
        Line2D([], [], color=c, marker="o", linestyle="", label=v)
        for v, c in VERDICT_COLOURS.items()
    ]
    ax.legend(handles=handles, loc="best", fontsize="small", title="verdict")
    ax.set_title("Registered hypotheses")
    return fig
