"""The run page's interpretation section: hypotheses, heat maps on trial, context, label issues.

Everything here is read from interpret's report.json and its figures; nothing is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsight_tf.core.workspace import (
    CAM_FIGURE_PREFIX,
    CONTEXT_FIGURE,
    DELETION_INSERTION_FIGURE,
    FIGURES_DIR,
    HYPOTHESES_FIGURE,
    LABEL_ISSUES_FIGURE,
    SANITY_FIGURE,
    TOP_LOSSES_FIGURE,
    cam_figure,
)
from deepsight_tf.diagnose.attribution import Claim
from deepsight_tf.diagnose.forensics import LabelIssue
from deepsight_tf.diagnose.interpret_record import ImagenetIssues, InterpretResult, ProbeIssues
from deepsight_tf.reporting.artifacts import RunArtifacts, interpret_hint
from deepsight_tf.reporting.captions import CAPTIONS, cam_caption
from deepsight_tf.reporting.html import (
    Html,
    badge,
    element,
    figure,
    fmt,
    fmt_ci,
    missing,
    paragraph,
    section,
    table,
)


@dataclass
class _Figures:
    """interpret's figures by name (core/workspace.py's, relative to the interpret folder): the
    ones it drew are shown with their captions."""

    folder: Path
    drawn: set[str]  # the file names of the figures interpret lists in its report

    def get(self, name: str, alt: str) -> list[Any]:
        if Path(name).name not in self.drawn:
            return []
        return [figure(self.folder / name, CAPTIONS[name], alt)]


def interpretation_section(run: RunArtifacts) -> Html:
    rep = run.interpret
    if rep is None:
        return section(
            "interpretation",
            "Interpretation",
            [missing(f"not run yet: {interpret_hint(run.run_id)}")],
        )
    figures = _Figures(run.interpret_dir, {Path(f).name for f in rep.figures})
    parts = [
        *_hypotheses(rep, figures),
        *_faithfulness(rep, figures),
        *_context(rep, figures),
        *_cam_gallery(run, figures),
        *_label_issues(run, rep, figures),
        *_attribution(rep),
        *_top_losses(run, rep, figures),
    ]
    return section("interpretation", "Interpretation", parts)


def _hypotheses(rep: InterpretResult, figures: _Figures) -> list[Any]:
    parts: list[Any] = [element("h3", "Hypotheses")]
    if not rep.hypotheses:
        return [*parts, missing(f"no hypotheses tested: {rep.hypotheses_note}")]
    rows = [
        [
            h.name,
            f"{h.estimate:+.3f}",
            fmt_ci([h.low, h.high], "+.3f"),
            f"{h.n:,}",
            badge(h.verdict),
        ]
        for h in rep.hypotheses
    ]
    parts.append(
        table(
            "Hypotheses registered by explore before training, tested on the test set",
            ["hypothesis", "estimate", "95% CI", "images", "verdict"],
            rows,
            table_id="hypotheses",
            numeric=(1, 2, 3),
        )
    )
    return parts + figures.get(HYPOTHESES_FIGURE, "hypotheses")


def _faithfulness(rep: InterpretResult, figures: _Figures) -> list[Any]:
    """Deletion and insertion against a random order, and the randomisation sanity check."""
    parts: list[Any] = [element("h3", "Do the heat maps show what the model uses?")]
    faith = rep.faithfulness
    if faith is not None:
        rows = [
            [
                name,
                f"{m.deletion_auc:.3f} ({m.random_deletion_auc:.3f})",
                f"{m.deletion_gain:+.3f} {fmt_ci(m.deletion_gain_ci, '+.3f')}",
                f"{m.insertion_auc:.3f} ({m.random_insertion_auc:.3f})",
                f"{m.insertion_gain:+.3f} {fmt_ci(m.insertion_gain_ci, '+.3f')}",
                f"{m.n_images:,}",
                badge(m.verdict),
            ]
            for name, m in faith.methods.items()
        ]
        headers = ["method", "deletion AUC (random)", "deletion gain [CI]"]
        headers += ["insertion AUC (random)", "insertion gain [CI]", "images", "verdict"]
        parts.append(
            table(
                "Faithfulness: deletion and insertion AUC against a random order (gain > 0 is "
                "better than random)",
                headers,
                rows,
                table_id="faithfulness",
                numeric=range(1, 6),
            )
        )
        parts += figures.get(DELETION_INSERTION_FIGURE, "deletion and insertion curves")
    sanity = rep.sanity
    if sanity is not None:
        steps = ", ".join(
            f"{g}: {fmt(s, '.2f')}"
            for g, s in zip(sanity.groups, sanity.mean_spearman, strict=False)
        )
        parts.append(
            paragraph(
                "Sanity check (cascading randomisation of ",
                f"{sanity.method} at {sanity.layer_name}): ",
                badge("passed" if sanity.passed else "flagged"),
                f" mean Spearman correlation with the original maps after each step: {steps} "
                f"(flagged above {sanity.threshold}).",
            )
        )
        parts += figures.get(SANITY_FIGURE, "sanity check")
    return parts


def _context(rep: InterpretResult, figures: _Figures) -> list[Any]:
    """Accuracy with the centre or the border hidden, per class, and the CAMs' centre share."""
    parts: list[Any] = [element("h3", "Context reliance")]
    ctx = rep.context
    if ctx is None:
        return parts
    rows = [
        [
            c.name,
            f"{c.n:,}",
            f"{c.clean:.1%}",
            f"{c.centre_occluded:.1%}",
            f"{c.border_occluded:.1%}",
            f"{c.context_gap:+.1%} {fmt_ci(c.context_gap_ci, '+.1%')}",
            "yes" if c.holds_without_object else "no",
            fmt(ctx.centre_share(c.name), ".2f"),
        ]
        for c in [*ctx.classes, ctx.overall]
    ]
    uniform = ctx.cam_energy.uniform if ctx.cam_energy else None
    headers = ["class", "images", "clean", "centre hidden", "border hidden", "context gap [CI]"]
    headers += ["holds without object", "CAM centre share"]
    parts.append(
        table(
            f"Accuracy with the centre or the border hidden (same area; chance "
            f"{ctx.chance:.0%}); CAM centre share against {fmt(uniform, '.2f')} for a uniform map",
            headers,
            rows,
            table_id="context",
            numeric=range(1, 8),
            highlight=[len(rows) - 1],
        )
    )
    parts.append(
        paragraph(
            "Relying on context: "
            f"{', '.join(ctx.relies_on_context) or 'none'}; relying on the object: "
            f"{', '.join(ctx.relies_on_object) or 'none'}."
        )
    )
    if ctx.assumes:
        parts.append(paragraph(f"The test assumes {ctx.assumes}.", css="note"))
    return parts + figures.get(CONTEXT_FIGURE, "context reliance")


def _cam_gallery(run: RunArtifacts, figures: _Figures) -> list[Any]:
    """The CAM grids: per class (correct, wrong), then top losses and the confused pairs."""
    settings = run.interpret_manifest.settings if run.interpret_manifest else {}
    method = str(settings.get("methods", "gradcam")).split(",")[0]
    names = run.class_names
    order = [Path(cam_figure(f"{n}_{k}")).name for n in names for k in ("correct", "wrong")]
    order += sorted(f for f in figures.drawn if f.startswith(CAM_FIGURE_PREFIX) and f not in order)
    # Per-class grids two to a row; the top losses and confused pairs (more images) span it.
    grids = [
        figure(
            figures.folder / FIGURES_DIR / file,
            cam_caption(Path(file).stem, method, names),
            Path(file).stem.replace("_", " "),
            css=None if Path(file).stem.endswith(("_correct", "_wrong")) else "wide",
        )
        for file in order
        if file in figures.drawn
    ]
    gallery = element("div", grids, class_="gallery") if grids else missing("no CAM grids")
    return [element("h3", "Grad-CAM"), gallery]


def _label_issues(run: RunArtifacts, rep: InterpretResult, figures: _Figures) -> list[Any]:
    issues = rep.label_issues
    focus_file = run.interpret_dir / Path(issues.focus_pairs_file).name
    rows = _issue_rows(issues.top)
    ranked = issues.ranked_by
    doubts = "the model doubts"
    if ranked is not None and ranked.weight_from:
        doubts = (
            f"the model and the ImageNet probes together doubt (their probabilities mixed, the "
            f"run's weight {ranked.run_weight:.2f} from the {ranked.weight_from})"
        )
    elif ranked is not None and ranked.ensemble_with:
        doubts = f"this run and run {ranked.ensemble_with} together doubt (their mean)"
    parts: list[Any] = [
        element("h3", "Label issues"),
        paragraph(
            f"cleanlab flags {issues.count:,} test images whose label {doubts}; all are in ",
            element("code", Path(issues.csv).name),
            "; the hardest pairs are written for ",
            element("code", f"deepsight train --focus-pairs @{focus_file}"),
            ".",
        ),
    ]
    if rows:
        parts.append(
            table(
                "The most doubtful labels (score: the model's probability of the given label)",
                ["rank", "test index", "file", "given", "suggested", "p(suggested)", "score"],
                rows,
                table_id="label-issues",
                numeric=(0, 1, 5, 6),
            )
        )
    return [
        *parts,
        *figures.get(LABEL_ISSUES_FIGURE, "label issues"),
        *_train_label_issues(issues.train),
        *_imagenet_label_issues(issues.imagenet),
    ]


def _certain_bound(claim: Claim) -> str:
    """The claim's difference with only the certain data-quality causes, where the probes'
    doubts (an upper bound) were counted too; "" otherwise (older reports have no bound)."""
    if not claim.has_bound:
        return ""
    certain = ", ".join(claim.certain_causes or []) or "no other cause measured"
    return (
        f"; without the probes' doubts ({certain}: a lower bound on data "
        f"quality, {fmt(claim.certain_share, '.1%')}) it is "
        f"{fmt(claim.certain_difference, '+.1%')} {fmt_ci(claim.certain_difference_ci, '+.1%')}"
    )


def _issue_rows(top: list[LabelIssue]) -> list[list[str]]:
    """Table rows of label issues (label_issues.csv's top rows, test or training)."""
    return [
        [
            str(i.rank + 1),
            str(i.index),
            i.path or "—",
            i.given_label,
            i.suggested_label,
            f"{i.suggested_probability:.3f}",
            f"{i.score:.3f}",
        ]
        for i in top
    ]


def _train_label_issues(train: ProbeIssues | None) -> list[Any]:
    """Label issues among the training images (K-fold linear probes on the run's features)."""
    if train is None:
        return []
    rows = _issue_rows(train.top)
    parts: list[Any] = [
        paragraph(
            f"In the training images: {train.count:,} of {train.images:,} flagged, from "
            f"{train.folds}-fold linear probes on the run's pooled features (probe accuracy "
            f"{train.probe_accuracy:.1%}); all are in ",
            element("code", Path(train.csv).name),
            ". The features were learned with these labels, so a wrong label the network "
            "memorised can still look right.",
        )
    ]
    if rows:
        parts.append(
            table(
                "The most doubtful training labels",
                ["rank", "train index", "file", "given", "suggested", "p(suggested)", "score"],
                rows,
                table_id="train-label-issues",
                numeric=(0, 1, 5, 6),
            )
        )
    return parts


def _imagenet_label_issues(imagenet: ImagenetIssues | None) -> list[Any]:
    """Labels doubted by linear probes on ImageNet features, which never saw the labels."""
    if imagenet is None:
        return []
    test, train = imagenet.test, imagenet.train
    parts: list[Any] = [
        paragraph(
            f"A witness that never saw the labels: {imagenet.folds}-fold linear probes on "
            f"{imagenet.backbone} features at {imagenet.image_size} px (probe accuracy "
            f"{imagenet.probe_accuracy:.1%} out of fold on the training images, "
            f"{imagenet.test_probe_accuracy:.1%} on test) doubt {test.count:,} test "
            f"labels and {train.count:,} of {train.images or 0:,} training labels; they are in ",
            element("code", Path(test.csv).name),
            " and ",
            element("code", Path(train.csv).name),
            " (the list the clean-labels-imagenet experiment arm leaves out).",
        )
    ]
    rows = _issue_rows(train.top)
    if rows:
        parts.append(
            table(
                "The training labels the ImageNet probes doubt most",
                ["rank", "train index", "file", "given", "suggested", "p(suggested)", "score"],
                rows,
                table_id="imagenet-label-issues",
                numeric=(0, 1, 5, 6),
            )
        )
    return parts


def _attribution(rep: InterpretResult) -> list[Any]:
    """Each test error's likely causes, and the verdict on "semantic overlap, not data"."""
    attribution = rep.error_attribution
    if attribution is None:
        return []
    rows = []
    for row in attribution.rows:
        if not row.measured:
            rows.append([row.cause, "not measured", "", "", ""])
            continue
        rates = "—"
        if row.error_rate_with is not None and row.error_rate_without is not None:
            rates = f"{row.error_rate_with:.1%} / {row.error_rate_without:.1%}"
        rows.append(
            [
                row.cause,
                f"{row.errors or 0:,}",
                f"{row.share or 0.0:.1%}",
                fmt_ci(row.share_ci, ".1%"),
                rates,
            ]
        )
    claim = attribution.claim
    if claim.verdict == "not tested":
        verdict: list[Any] = [f"Not tested: {claim.why}."]
    else:
        verdict = [
            f"Semantic overlap (a registered confusable pair) explains "
            f"{fmt(claim.semantic_share, '.1%')} of the errors, data quality "
            f"({', '.join(claim.data_quality_causes)}) {fmt(claim.data_quality_share, '.1%')}; "
            f"the difference is {fmt(claim.difference, '+.1%')} "
            f"{fmt_ci(claim.difference_ci, '+.1%')} "
            f"({claim.both_share or 0.0:.1%} of the errors count on both sides)"
            + _certain_bound(claim)
            + ": ",
            badge(claim.verdict),
        ]
        if claim.why:
            verdict.append(f" ({claim.why})")
    return [
        element("h3", "What the errors have in common"),
        table(
            f"The {attribution.errors:,} test errors by likely cause",
            ["cause", "errors", "share of errors", "95% CI", "error rate with / without"],
            rows,
            table_id="error-attribution",
            numeric=(1, 2, 3, 4),
        ),
        paragraph(f"Claim: {claim.claim}. ", *verdict),
        paragraph(attribution.note, css="note"),
    ]


def _top_losses(run: RunArtifacts, rep: InterpretResult, figures: _Figures) -> list[Any]:
    """The most confidently wrong test images, as interpret stored them."""
    names = run.class_names
    losses = rep.top_losses
    rows = [
        [str(int(i)), names[int(t)], names[int(p)], f"{pp:.3f}", f"{tp:.4f}", f"{loss:.2f}"]
        for i, t, p, pp, tp, loss in zip(
            losses.indices,
            losses.labels,
            losses.predicted,
            losses.probability,
            losses.true_probability,
            losses.loss,
            strict=True,
        )
    ]
    return [
        element("h3", "Top losses"),
        table(
            "The most confidently wrong test images (loss = -log p(true class))",
            ["test index", "true", "predicted", "p(predicted)", "p(true)", "loss"],
            rows,
            table_id="top-losses",
            numeric=(0, 3, 4, 5),
        ),
        *figures.get(TOP_LOSSES_FIGURE, "top losses"),
    ]
