"""The run page: the headline, then data, training, results and interpretation (OSEMN order)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from deepsight_tf.core.manifest import Manifest, now_iso
from deepsight_tf.core.storage import atomic_write_text
from deepsight_tf.core.workspace import REPORT_PAGE, Workspace
from deepsight_tf.diagnose.hypothesis_tests import HypothesisResult
from deepsight_tf.reporting.artifacts import (
    Headline,
    RunArtifacts,
    UpstreamArtifacts,
    interpret_hint,
    load_run_artifacts,
    load_upstream,
    make_headline,
    scored_summary,
)
from deepsight_tf.reporting.data_section import data_section
from deepsight_tf.reporting.html import (
    Html,
    badge,
    element,
    fmt_ci,
    join,
    paragraph,
    render_page,
    table,
    value_span,
    version,
)
from deepsight_tf.reporting.interpretation import interpretation_section
from deepsight_tf.reporting.results_section import pct_points, results_section
from deepsight_tf.reporting.training_section import draw_history, training_section
from deepsight_tf.reporting.warnings import Baselines, baselines, run_warnings

SECTIONS = ("data", "training", "results", "interpretation")
PROVENANCE_SUFFIXES = (".json", ".npz", ".csv")  # the artifacts a page's numbers come from


@dataclass
class ReportResult:
    kind: str  # "run" or "compare"
    run_ids: list[str]
    path: str
    size_bytes: int
    figures: int
    sections: dict[str, str]  # section: "shown", or what to run to fill it
    headlines: list[Headline]
    hypotheses: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[Any] = field(default_factory=list)  # diagnose.comparison.RunComparison
    duration_s: float = 0.0


def _metric_cards(head: Headline, base: Baselines) -> list[Html]:
    """Test accuracy (with the chance and majority baselines), macro-F1, and the gate."""
    level = f"{head.ci_level:.0%}"
    return [
        element(
            "div",
            [
                element("div", "Test accuracy", class_="label"),
                element("div", value_span("test-accuracy", head.accuracy, f"{head.accuracy:.2%}")),
                element("div", f"{level} CI {fmt_ci(head.accuracy_ci, '.2%')}", class_="ci"),
                element(
                    "div",
                    f"chance {base.chance:.1%}; always {base.majority_class}: {base.majority:.1%}",
                    class_="ci",
                    id="baselines",
                ),
            ],
            class_="metric-card",
        ),
        element(
            "div",
            [
                element("div", "Test macro-F1", class_="label"),
                element("div", value_span("test-macro-f1", head.macro_f1, f"{head.macro_f1:.4f}")),
                element("div", f"{level} CI {fmt_ci(head.macro_f1_ci, '.4f')}", class_="ci"),
            ],
            class_="metric-card",
        ),
        element(
            "div",
            [
                element("div", f"MVA gate: test accuracy ≥ {head.mva:.0%}", class_="label"),
                element("div", badge("passed" if head.passed else "failed")),
                element("div", gate_sentence(head), class_="ci"),
            ],
            class_="metric-card",
        ),
    ]


def headline_html(
    head: Headline,
    hypotheses: list[HypothesisResult],
    note: str,
    base: Baselines,
    warnings: list[str],
) -> Html:
    cards = _metric_cards(head, base)
    lines: list[Html] = []
    for h in hypotheses:
        lines.append(
            element(
                "li",
                [
                    badge(h.verdict),
                    " ",
                    h.name,
                    f": {h.estimate:+.3f} {fmt_ci([h.low, h.high], '+.3f')}",
                ],
            )
        )
    if not lines:
        lines.append(element("li", [badge("not run"), " ", note]))
    source = (
        "intervals from interpret's bootstrap"
        if head.source == "interpret"
        else "intervals bootstrapped by this report"
    )
    return join(
        [
            *warning_box(warnings),
            element("div", cards, class_="headline"),
            element("h3", "Hypotheses registered before training"),
            element("ul", lines, class_="verdicts", id="verdicts"),
            paragraph(f"{head.n:,} test images; {source}.", css="note"),
        ]
    )


def warning_box(warnings: list[str]) -> list[Html]:
    """Above everything, when the run shows signs it did not learn (reporting/warnings.py)."""
    if not warnings:
        return []
    items = [element("li", text) for text in warnings]
    return [
        element(
            "div",
            [element("strong", "Do not trust these numbers yet:"), element("ul", items)],
            class_="warning",
            id="warnings",
            role="alert",
        )
    ]


def gate_sentence(head: Headline) -> str:
    low, high = head.accuracy_ci
    margin = head.accuracy - head.mva
    word = "above" if margin >= 0 else "below"
    if low >= head.mva:
        interval = "the whole interval clears the gate"
    elif high < head.mva:
        interval = "the whole interval is below the gate"
    else:
        interval = "the interval straddles the gate"
    return f"{pct_points(abs(margin)).lstrip('+')} {word}; {interval}"


def provenance(items: Sequence[tuple[str, str, str]]) -> Html:
    rows = [
        [what, element("code", path), element("code", sha[:16] + "…")] for what, path, sha in items
    ]
    return join(
        [
            table(
                "Made from (SHA-256 from the manifests)",
                ["input", "file", "SHA-256"],
                rows,
                table_id="provenance",
            ),
            paragraph(
                f"Written {now_iso()} by deepsight {version()}. One file: figures are "
                "embedded, nothing is fetched."
            ),
        ]
    )


def manifest_sources(
    workspace: Workspace, label: str, folder: Any, manifest: Manifest | None
) -> list[tuple[str, str, str]]:
    """(phase, file in the workspace, SHA-256) of the artifacts a manifest vouches for."""
    if manifest is None:
        return []
    return [
        (label, workspace.relative(folder / name), sha)
        for name, sha in manifest.outputs.items()
        if name.endswith(PROVENANCE_SUFFIXES)
    ]


def _hypotheses_note(run: RunArtifacts, up: UpstreamArtifacts) -> str:
    if run.interpret is not None:
        return run.interpret.hypotheses_note
    registered = up.explore is not None and up.explore.hypotheses.registered
    if registered:
        return f"registered by explore, not tested yet: {interpret_hint(run.run_id)}"
    return f"not run yet: {interpret_hint(run.run_id)}"


def _sources(workspace: Workspace, run: RunArtifacts, up: UpstreamArtifacts) -> list[Any]:
    """The provenance footer's rows: the run's files and each earlier phase's manifest."""
    sources = [
        ("run", workspace.relative(run.run_dir / name), sha)
        for name, sha in run.manifest.outputs.items()
    ]
    sources += manifest_sources(
        workspace, "obtain", workspace.data_dir(run.dataset), up.obtain_manifest
    )
    sources += manifest_sources(workspace, "scrub", up.scrub_dir, up.scrub_manifest)
    sources += manifest_sources(workspace, "explore", up.explore_dir, up.explore_manifest)
    sources += manifest_sources(workspace, "interpret", run.interpret_dir, run.interpret_manifest)
    return sources


def run_report(workspace: Workspace, run_id: str, n_boot: int, seed: int) -> ReportResult:
    """runs/<id>/report.html: one self-contained page for a run."""
    start = time.perf_counter()
    run = load_run_artifacts(workspace, run_id)
    up = load_upstream(workspace, run)
    scored = scored_summary(run, n_boot, seed)
    head = make_headline(run, scored)
    hypotheses = run.interpret.hypotheses if run.interpret else []
    path = run.run_dir / REPORT_PAGE
    with workspace.lock(f"run-{run_id}-report"):
        history_figure = draw_history(run)
        sections = [
            data_section(up, run.class_names, run.record.preprocessing.image_size),
            training_section(run, history_figure),
            results_section(run, scored, head),
            interpretation_section(run),
        ]
        sources = _sources(workspace, run, up)
        page = render_page(
            title=f"Run {run_id} on {run.dataset}",
            kicker="deepsight report",
            headline=headline_html(
                head,
                hypotheses,
                _hypotheses_note(run, up),
                baselines(run.predictions["test_labels"], run.class_names),
                run_warnings(
                    run.predictions["test_labels"],
                    run.predictions["test_probs"],
                    run.class_names,
                    head.accuracy_ci,
                    run.history,
                ),
            ),
            nav=[(s, s.capitalize()) for s in SECTIONS],
            body=sections,
            footer=provenance(sources),
        )
        atomic_write_text(path, page)
    notes = {
        "data": up.notes.get("obtain")
        or up.notes.get("scrub")
        or up.notes.get("explore")
        or "shown",
        "training": "shown",
        "results": "shown",
        "interpretation": "shown" if run.interpret else f"not run yet: {interpret_hint(run_id)}",
    }
    return ReportResult(
        kind="run",
        run_ids=[run_id],
        path=str(path),
        size_bytes=path.stat().st_size,
        figures=page.count("<img "),
        sections=notes,
        headlines=[head],
        hypotheses=[
            {k: getattr(h, k) for k in ("name", "estimate", "low", "high", "verdict")}
            for h in hypotheses
        ],
        duration_s=round(time.perf_counter() - start, 2),
    )
