"""The run page's results section: held-out metrics and the gate, per class, confusion,
calibration and the leakage check (interpret's numbers when it ran)."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepsight_tf.core.workspace import (
    CONFUSION_FIGURE,
    MOST_CONFUSED_FIGURE,
    PER_CLASS_RECALL_FIGURE,
    RELIABILITY_FIGURE,
)
from deepsight_tf.diagnose.interpret_record import TestScores
from deepsight_tf.reporting.artifacts import Headline, RunArtifacts, Scored, interpret_hint
from deepsight_tf.reporting.captions import CAPTIONS
from deepsight_tf.reporting.html import (
    Html,
    element,
    figure,
    fmt,
    fmt_ci,
    missing,
    paragraph,
    section,
    table,
)
from deepsight_tf.training.run_metrics import AverageScores, HeldOut


def pct_points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} points"


def results_section(run: RunArtifacts, scored: Scored, head: Headline) -> Html:
    parts = [
        *_metric_tables(run, head),
        *_per_class(run, scored.scores, head),
        *_confusion(run, scored),
        *_calibration(run),
    ]
    return section("results", "Results", parts)


def _interpret_figure(run: RunArtifacts, name: str, alt: str) -> list[Any]:
    if run.interpret is None:
        return []
    return [figure(run.interpret_dir / name, CAPTIONS[name], alt)]


def _scores_row(label: str, scores: HeldOut) -> list[str]:
    return [label, f"{scores.accuracy:.2%}", "", f"{scores.macro_f1:.4f}", "", f"{scores.n:,}"]


def _weight_average_rows(ema: AverageScores | None) -> list[list[str]]:
    """With --ema: the test scores of the weight average and of the best epoch, which kept."""
    rows: list[list[str]] = []
    for name, label in (("average", "weight average"), ("best_epoch", "best epoch")):
        scores = ema.test.get(name) if ema else None
        if ema is None or scores is None:
            continue
        kept = " (kept)" if ema.kept == name else ""
        val_f1 = ema.val_macro_f1.get(name)
        validation = "n/a" if val_f1 is None else f"{val_f1:.4f}"
        rows.append(_scores_row(f"test, {label}{kept}; validation macro-F1 {validation}", scores))
    return rows


def _metric_tables(run: RunArtifacts, head: Headline) -> list[Any]:
    """Accuracy and macro-F1 on test (with intervals) and validation, and the MVA gate."""
    metrics = run.metrics
    rows = [
        [
            "test",
            f"{head.accuracy:.2%}",
            fmt_ci(head.accuracy_ci, ".2%"),
            f"{head.macro_f1:.4f}",
            fmt_ci(head.macro_f1_ci, ".4f"),
            f"{head.n:,}",
        ]
    ]
    if metrics.tta is not None:
        rows.append(_scores_row(f"test without TTA ({metrics.tta.mode})", metrics.tta.test_without))
    rows += _weight_average_rows(metrics.ema)
    rows.append(_scores_row("validation", metrics.val))
    gate_rows = [
        [
            "test accuracy (the gate)",
            f"{head.accuracy:.2%}",
            f"{head.mva:.0%}",
            pct_points(head.accuracy - head.mva),
            "passed" if head.passed else "failed",
        ],
        [
            "test macro-F1 (for reference)",
            f"{head.macro_f1:.4f}",
            f"{head.mva:.2f}",
            f"{head.macro_f1 - head.mva:+.4f}",
            "above" if head.macro_f1 >= head.mva else "below",
        ],
    ]
    return [
        table(
            f"Accuracy and macro-F1 ({head.ci_level:.0%} bootstrap intervals on test)",
            ["split", "accuracy", "CI", "macro-F1", "CI", "images"],
            rows,
            table_id="metrics",
            numeric=range(1, 6),
        ),
        table(
            f"Minimum Viable Accuracy gate: test accuracy ≥ {head.mva:.0%}",
            ["measure", "value", "gate", "margin", "verdict"],
            gate_rows,
            table_id="gate",
            numeric=(1, 2, 3),
        ),
    ]


def _per_class(run: RunArtifacts, scores: TestScores, head: Headline) -> list[Any]:
    recalls = {r.name: r for r in scores.per_class_recall}
    rows = []
    for name in run.class_names:
        row, r = scores.per_class[name], recalls.get(name)
        rows.append(
            [
                name,
                f"{row['precision']:.3f}",
                f"{row['recall']:.3f}",
                fmt_ci([r.low, r.high], ".3f") if r else "n/a",
                f"{row['f1']:.3f}",
                f"{int(row['support']):,}",
            ]
        )
    return [
        element("h3", "Per class"),
        table(
            f"Per-class test metrics (recall with its {head.ci_level:.0%} interval)",
            ["class", "precision", "recall", "recall CI", "F1", "support"],
            rows,
            table_id="per-class",
            numeric=range(1, 6),
        ),
        *_interpret_figure(run, PER_CLASS_RECALL_FIGURE, "per-class recall"),
    ]


def _confusion(run: RunArtifacts, scored: Scored) -> list[Any]:
    """The confusion matrix, shaded by the share of its row, and the most-confused pairs."""
    names = run.class_names
    confusion = np.asarray(scored.scores.confusion, dtype=np.int64)
    rates = np.asarray(scored.scores.confusion_normalized, dtype=np.float64)
    styles = {}
    for (i, j), rate in np.ndenumerate(rates):
        # Shade by the row's rate so that rare and frequent classes read alike.
        alpha = min(1.0, float(rate)) * (0.85 if i == j else 1.6)
        colour = f"background-color: rgba(0, 114, 178, {min(alpha, 0.85):.2f})"
        if alpha > 0.5:
            colour += "; color: #fff"
        styles[(i, j + 1)] = ("diagonal" if i == j else None, colour)
    rows = [[names[i], *(f"{v:,}" for v in confusion[i])] for i in range(len(names))]
    pairs_rows = [
        [f"{p.a} / {p.b}", f"{p.a_as_b:,}", f"{p.b_as_a:,}", f"{p.rate:.2%}"]
        for p in scored.most_confused[:10]
    ]
    return [
        element("h3", "Confusion"),
        table(
            "Confusion matrix on test: rows are the true class, columns the predicted one "
            "(shade: share of the row)",
            ["true \\ predicted", *names],
            rows,
            table_id="confusion",
            numeric=range(1, len(names) + 1),
            css="confusion",
            cell_styles=styles,
        ),
        *_interpret_figure(run, CONFUSION_FIGURE, "confusion matrix"),
        table(
            "Most confused pairs (both directions; rate over the two classes' images)",
            ["pair", "a → b", "b → a", "rate"],
            pairs_rows,
            table_id="confused-pairs",
            numeric=(1, 2, 3),
        ),
        *_interpret_figure(run, MOST_CONFUSED_FIGURE, "most confused"),
    ]


def _calibration(run: RunArtifacts) -> list[Any]:
    """ECE and NLL before and after temperature scaling, and the leakage check (interpret's)."""
    parts: list[Any] = [element("h3", "Calibration")]
    if run.interpret is None:
        return [*parts, missing(f"calibration: not run yet: {interpret_hint(run.run_id)}")]
    cal = run.interpret.calibration
    parts += [
        table(
            f"Calibration on test; temperature T = {cal.temperature:.3f} fitted on "
            f"{cal.n_val:,} validation images",
            ["measure", "before", "after scaling"],
            [
                [
                    f"expected calibration error ({cal.bins} bins)",
                    f"{cal.ece_before:.4f}",
                    f"{cal.ece_after:.4f}",
                ],
                ["negative log-likelihood", f"{cal.nll_before:.4f}", f"{cal.nll_after:.4f}"],
            ],
            table_id="calibration",
            numeric=(1, 2),
        ),
        *_interpret_figure(run, RELIABILITY_FIGURE, "reliability"),
    ]
    leak = run.interpret.leakage
    if leak is not None and leak.in_mask.n:
        parts.append(
            paragraph(
                f"Leakage check: accuracy {fmt(leak.in_mask.accuracy, '.2%')} on the "
                f"{leak.in_mask.n:,} test images with a near duplicate in train, "
                f"{fmt(leak.rest.accuracy, '.2%')} on the other {leak.rest.n:,}; gap "
                f"{pct_points(leak.gap)} {fmt_ci(leak.gap_ci, '+.2%')}."
            )
        )
    return parts
