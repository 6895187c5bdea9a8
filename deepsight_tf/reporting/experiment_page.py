"""The experiment page: every arm against the baseline, read from the experiment's report.json
(nothing is recomputed), written beside it as experiments/<name>/report.html."""

from __future__ import annotations

from typing import Any

from deepsight_tf.core.storage import atomic_write_text
from deepsight_tf.core.workspace import REPORT_JSON, REPORT_PAGE, Workspace
from deepsight_tf.diagnose.comparison import ArmComparison
from deepsight_tf.diagnose.experiment import ExperimentResult, load_experiment_report
from deepsight_tf.reporting.html import (
    Html,
    badge,
    element,
    fmt_ci,
    paragraph,
    render_page,
    section,
    table,
)


def experiment_page(workspace: Workspace, name: str) -> str:
    """Write the page of experiment `name` and return its path."""
    folder = workspace.experiment_dir(name)
    result = load_experiment_report(workspace, name)
    comparison = result.comparison
    noise = comparison.noise
    headline = paragraph(
        f"{len(comparison.arms)} arm(s) against the baseline on {comparison.n:,} test "
        f"images; the baseline's {noise.seeds} other seed(s) moved macro-F1 by up to "
        f"{noise.macro_f1:.4f}, the noise every verdict must exceed."
    )
    page = render_page(
        title=f"Experiment {name}",
        kicker="deepsight experiment",
        headline=headline,
        nav=[("arms", "Arms"), ("per-class", "Per class"), ("pairs", "Confusable pairs")],
        body=[_arms(result), _per_class(comparison), _pairs(comparison)],
        footer=paragraph(f"From {workspace.relative(folder / REPORT_JSON)}.", css="note"),
    )
    path = folder / REPORT_PAGE
    atomic_write_text(path, page)
    return str(path)


def _arms(result: ExperimentResult) -> Html:
    comparison = result.comparison
    rows = []
    for name, score in result.scores.items():
        arm = comparison.arms.get(name)
        row: list[Any] = [name, f"{score.accuracy:.2%}", f"{score.macro_f1:.4f}"]
        if arm is None:
            row += ["", "", "", "baseline" if name == "baseline" else "seed (noise)"]
        else:
            row += [
                f"{arm.accuracy.change:+.2%}",
                f"{arm.macro_f1.change:+.4f}",
                fmt_ci(arm.macro_f1.ci, "+.4f"),
                badge(arm.verdict),
            ]
        images = f", {score.train_images:,} images" if score.train_images else ""
        row.append(f"{score.duration_s / 60:.1f} min, epochs: {score.epochs}{images}")
        rows.append(row)
    return section(
        "arms",
        "Arms",
        [
            table(
                "Each arm against the baseline (paired bootstrap over the shared test images)",
                [
                    "arm",
                    "accuracy",
                    "macro-F1",
                    "Δ accuracy",
                    "Δ macro-F1",
                    "95% CI",
                    "verdict",
                    "training",
                ],
                rows,
                table_id="arms",
                numeric=(1, 2, 3, 4, 5),
            ),
            paragraph(
                "helps / hurts: the interval of the macro-F1 change lies clear of 0 and the "
                "change is larger than the baseline seeds' own change; otherwise inconclusive.",
                css="note",
            ),
        ],
    )


def _per_class(comparison: ArmComparison) -> Html:
    arms = comparison.arms
    if not arms:
        return section("per-class", "Per class", [paragraph("No arm besides the baseline.")])
    classes = list(next(iter(arms.values())).recall)
    rows = [
        [
            c,
            *(
                f"{arm.recall[c].change:+.1%} {fmt_ci(arm.recall[c].ci, '+.1%')}"
                for arm in arms.values()
            ),
        ]
        for c in classes
    ]
    return section(
        "per-class",
        "Per class",
        [table("Change in recall per class", ["class", *arms], rows, table_id="recall")],
    )


def _pairs(comparison: ArmComparison) -> Html:
    arms = comparison.arms
    pairs = list(next(iter(arms.values())).pairs) if arms else []
    if not pairs:
        return section("pairs", "Confusable pairs", [paragraph("No registered pairs.")])
    rows = [
        [
            pair,
            *(
                element(
                    "span",
                    [f"{arm.pairs[pair].change:+.1%} ", badge(arm.pairs[pair].verdict)],
                )
                for arm in arms.values()
            ),
        ]
        for pair in pairs
    ]
    return section(
        "pairs",
        "Confusable pairs",
        [
            table(
                "Change in each registered pair's confusion rate (a drop helps)",
                ["pair", *arms],
                rows,
                table_id="pairs",
            )
        ],
    )
