"""The comparison page: runs side by side, and the paired differences diagnose/comparison.py
computes over their test set."""

from __future__ import annotations

import time
from collections.abc import Sequence

from deepsight_tf.core.storage import atomic_write_text
from deepsight_tf.core.workspace import CONFUSION_FIGURE, Workspace
from deepsight_tf.diagnose.comparison import Delta, RunComparison, compare_runs
from deepsight_tf.reporting.artifacts import (
    Headline,
    RunArtifacts,
    load_run_artifacts,
    make_headline,
    scored_summary,
)
from deepsight_tf.reporting.captions import CAPTIONS
from deepsight_tf.reporting.html import (
    Html,
    badge,
    element,
    figure,
    fmt,
    fmt_ci,
    join,
    paragraph,
    render_page,
    section,
    table,
    value_span,
)
from deepsight_tf.reporting.results_section import pct_points
from deepsight_tf.reporting.run_page import PROVENANCE_SUFFIXES, ReportResult, provenance
from deepsight_tf.reporting.training_section import SETTINGS_SHOWN, plain


def compare_report(
    workspace: Workspace, run_ids: Sequence[str], n_boot: int, seed: int
) -> ReportResult:
    start = time.perf_counter()
    runs = [load_run_artifacts(workspace, r) for r in run_ids]
    summaries = [scored_summary(r, n_boot, seed) for r in runs]
    heads = [make_headline(r, s) for r, s in zip(runs, summaries, strict=True)]
    base = runs[0]
    comparisons = [
        compare_runs(base.record, base.predictions, other.record, other.predictions, n_boot, seed)
        for other in runs[1:]
    ]
    path = workspace.reports_dir() / f"compare-{'-'.join(run_ids)}.html"
    page = render_page(
        title="Compare " + " vs ".join(run_ids),
        kicker="deepsight comparison",
        headline=compare_headline(heads, comparisons),
        nav=[
            ("runs", "Runs"),
            ("differences", "Differences"),
            ("per-class", "Per class"),
            ("confusions", "Confusions"),
            ("training", "Training"),
        ],
        body=compare_sections(runs, heads, comparisons),
        footer=provenance(
            [
                (f"run {r.run_id}", workspace.relative(r.run_dir / k), v)
                for r in runs
                for k, v in r.manifest.outputs.items()
                if k.endswith(PROVENANCE_SUFFIXES)
            ]
        ),
    )
    with workspace.lock("reports"):
        atomic_write_text(path, page)
    return ReportResult(
        kind="compare",
        run_ids=list(run_ids),
        path=str(path),
        size_bytes=path.stat().st_size,
        figures=page.count("<img "),
        sections={"runs": "shown", "differences": "shown"},
        headlines=heads,
        comparisons=comparisons,
        duration_s=round(time.perf_counter() - start, 2),
    )


def _delta_text(d: Delta, percent: bool) -> str:
    if percent:
        text = pct_points(d.delta)
        if d.low is not None:
            text += f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        return text
    return f"{d.delta:+.4f}" + (f" {fmt_ci([d.low, d.high], '+.4f')}" if d.low is not None else "")


def compare_headline(heads: Sequence[Headline], comparisons: Sequence[RunComparison]) -> Html:
    cards = []
    for h in heads:
        cards.append(
            element(
                "div",
                [
                    element("div", f"run {h.run_id}: test accuracy / macro-F1", class_="label"),
                    element(
                        "div",
                        [
                            value_span(f"accuracy-{h.run_id}", h.accuracy, f"{h.accuracy:.2%}"),
                            " / ",
                            value_span(f"macro-f1-{h.run_id}", h.macro_f1, f"{h.macro_f1:.4f}"),
                        ],
                    ),
                    element(
                        "div",
                        f"accuracy {fmt_ci(h.accuracy_ci, '.2%')}, macro-F1 "
                        f"{fmt_ci(h.macro_f1_ci, '.4f')}",
                        class_="ci",
                    ),
                    element(
                        "div", [badge("passed" if h.passed else "failed"), f" MVA {h.mva:.0%}"]
                    ),
                ],
                class_="metric-card",
            )
        )
    lines = []
    for c in comparisons:
        for d, percent in ((c.accuracy, True), (c.macro_f1, False)):
            lines.append(
                element(
                    "li",
                    [badge(d.verdict), f" {c.b} vs {c.a}: {d.name} {_delta_text(d, percent)}"],
                )
            )
    return join(
        [
            element("div", cards, class_="headline"),
            element("ul", lines, class_="verdicts", id="verdicts"),
            paragraph("; ".join(f"{c.b} vs {c.a}: {c.pairing}" for c in comparisons), css="note"),
        ]
    )


def compare_sections(
    runs: Sequence[RunArtifacts], heads: Sequence[Headline], comparisons: Sequence[RunComparison]
) -> list[Html]:
    diff_parts = [_difference_table(c) for c in comparisons]
    class_parts = [_recall_table(c) for c in comparisons]
    confusion_parts = [table for c in comparisons for table in _confusion_tables(c)]
    side = [
        figure(
            r.interpret_dir / CONFUSION_FIGURE,
            f"Run {r.run_id}: {CAPTIONS[CONFUSION_FIGURE]}",
            f"confusion matrix of {r.run_id}",
        )
        for r in runs
        if r.interpret is not None
    ]
    if side:
        confusion_parts.append(element("div", side, class_="side-by-side"))
    return [
        section("runs", "Runs", [_runs_table(runs, heads)]),
        section("differences", "Differences", diff_parts),
        section("per-class", "Per class", class_parts),
        section("confusions", "Confusions", confusion_parts),
        section("training", "Training", _training_tables(runs)),
    ]


def _runs_table(runs: Sequence[RunArtifacts], heads: Sequence[Headline]) -> Html:
    rows = []
    for r, h in zip(runs, heads, strict=True):
        s = r.record.settings
        rows.append(
            [
                r.run_id,
                f"{s.backbone} ({s.weights})",
                f"{s.image_size} px",
                f"{s.augment}, mix {s.mix}",
                f"{h.accuracy:.2%} {fmt_ci(h.accuracy_ci, '.2%')}",
                f"{h.macro_f1:.4f} {fmt_ci(h.macro_f1_ci, '.4f')}",
                "passed" if h.passed else "failed",
            ]
        )
    return table(
        f"The runs compared (intervals: {heads[0].ci_level:.0%} bootstrap on each run's test set)",
        ["run", "backbone", "input", "augmentation", "accuracy", "macro-F1", "gate"],
        rows,
        table_id="runs",
        numeric=(4, 5),
    )


def _difference_table(c: RunComparison) -> Html:
    return table(
        f"{c.b} − {c.a} on {c.n:,} test images ({c.pairing})",
        ["metric", c.a, c.b, "difference", f"{c.ci_level:.0%} CI", "verdict"],
        [
            [
                d.name,
                f"{d.a:.4f}",
                f"{d.b:.4f}",
                f"{d.delta:+.4f}",
                fmt_ci([d.low, d.high], "+.4f"),
                badge(d.verdict),
            ]
            for d in (c.accuracy, c.macro_f1)
        ],
        table_id=f"diff-{c.b}",
        numeric=range(1, 5),
    )


def _recall_table(c: RunComparison) -> Html:
    return table(
        f"Recall per class, {c.b} − {c.a} (paired within each class)",
        ["class", c.a, c.b, "difference", f"{c.ci_level:.0%} CI", "verdict"],
        [
            [
                d.name,
                f"{d.a:.3f}",
                f"{d.b:.3f}",
                f"{d.delta:+.3f}",
                fmt_ci([d.low, d.high], "+.3f"),
                badge(d.verdict),
            ]
            for d in c.recall
        ],
        table_id=f"recall-{c.b}",
        numeric=range(1, 5),
    )


def _confusion_tables(c: RunComparison) -> list[Html]:
    out = []
    for word, cells in (("worse", c.worse), ("better", c.better)):
        rows = [
            [f"{x.true} → {x.predicted}", f"{x.a:,}", f"{x.b:,}", f"{x.delta:+,}"] for x in cells
        ]
        out.append(
            table(
                f"Confusions that got {word} in {c.b} (test images, true → predicted)",
                ["confusion", c.a, c.b, "change"],
                rows,
                table_id=f"{word}-{c.b}",
                numeric=(1, 2, 3),
            )
            if rows
            else paragraph(f"No confusion got {word} in {c.b}.")
        )
    return out


def _training_tables(runs: Sequence[RunArtifacts]) -> list[Html]:
    """Training time relative to the first run, and the settings in which the runs differ."""
    time_rows = []
    base_duration = runs[0].metrics.duration_s
    for r in runs:
        seconds = sum(float(x.get("seconds", 0.0)) for x in r.history)
        duration = r.metrics.duration_s
        epochs = len(r.history)
        time_rows.append(
            [
                r.run_id,
                fmt(duration / 60 if duration is not None else None, ".1f"),
                fmt(duration / base_duration if duration and base_duration else None, ".2f"),
                str(epochs),
                fmt(seconds / epochs if epochs else None, ".1f"),
                str(r.metrics.best_epoch or "n/a"),
            ]
        )
    keys = [
        k for k in SETTINGS_SHOWN if len({plain(getattr(r.record.settings, k)) for r in runs}) > 1
    ]
    setting_rows = [[k, *(plain(getattr(r.record.settings, k)) for r in runs)] for k in keys]
    return [
        table(
            "Training time",
            ["run", "minutes in all", f"× {runs[0].run_id}", "epochs", "s per epoch", "best epoch"],
            time_rows,
            table_id="time",
            numeric=range(1, 6),
        ),
        table(
            "Settings that differ",
            ["setting", *(r.run_id for r in runs)],
            setting_rows,
            table_id="settings-diff",
        )
        if setting_rows
        else paragraph("The runs were trained with the same settings."),
    ]
