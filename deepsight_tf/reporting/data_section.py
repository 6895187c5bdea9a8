"""The run page's data section: what obtain, scrub and explore found in the data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepsight_tf.core.workspace import IMAGES_FILE, INTERPOLATION_FIGURE, QUALITY_FILE
from deepsight_tf.data.interpolation import InterpolationStudy
from deepsight_tf.data.quality import QualitySummary
from deepsight_tf.data.scrub_artifacts import PLACES, ScrubResult
from deepsight_tf.reporting.artifacts import UpstreamArtifacts
from deepsight_tf.reporting.captions import CAPTIONS
from deepsight_tf.reporting.html import (
    Html,
    element,
    figure,
    fmt,
    missing,
    paragraph,
    section,
    table,
)


def data_section(up: UpstreamArtifacts, class_names: list[str], image_size: int) -> Html:
    """`image_size`: what the run trained at; scrub's interpolation study shows only for it."""
    parts: list[Any] = []
    if up.obtain is None:
        return section("data", "Data", [missing(up.notes.get("obtain", "not available"))])
    o = up.obtain
    h, w, c = o.image_shape
    sha = up.obtain_manifest.outputs.get(IMAGES_FILE, "") if up.obtain_manifest else ""
    parts.append(
        paragraph(
            f"Data set {o.dataset} ({o.kind}) read from ",
            element("code", o.source),
            f": {h}×{w}×{c} uint8 images in {len(class_names)} classes; {IMAGES_FILE} SHA-256 ",
            element("code", sha[:16] + "…"),
            f"; obtained {up.obtain_manifest.finished if up.obtain_manifest else 'n/a'}.",
        )
    )
    problems = [f"{len(o.skipped):,} unreadable files skipped"] + [
        f"{n:,} converted: {what}" for what, n in o.conversions.items()
    ]
    parts.append(paragraph("Input problems: " + "; ".join(problems) + "."))
    splits = list(o.counts)
    rows = [[cls, *(f"{o.counts[s].get(cls, 0):,}" for s in splits)] for cls in class_names]
    headers = ["class", *(f"stored {s}" for s in splits)]
    footer: list[Any] = ["total", *(f"{sum(o.counts[s].values()):,}" for s in splits)]
    scrub = up.scrub
    if scrub is not None:
        parts_counts = scrub.split.class_counts
        headers += [f"split {p}" for p in parts_counts]
        for row, cls in zip(rows, class_names, strict=True):
            row.extend(f"{parts_counts[p].get(cls, 0):,}" for p in parts_counts)
        footer += [f"{scrub.split.sizes[p]:,}" for p in parts_counts]
    parts.append(element("h3", "Counts"))
    parts.append(
        table(
            "Images per class: as stored, and in scrub's split",
            headers,
            rows,
            table_id="counts",
            numeric=range(1, len(headers)),
            footer=footer,
        )
    )
    if up.explore is not None:
        parts.extend(balance_parts(up))
    else:
        parts.append(missing(up.notes.get("explore", "not available")))
    if scrub is not None:
        parts.extend(scrub_parts(scrub, Path(up.scrub_dir or ""), image_size))
    else:
        parts.append(missing(up.notes.get("scrub", "not available")))
    return section("data", "Data", parts)


def balance_parts(up: UpstreamArtifacts) -> list[Any]:
    """Explore's class balance, pixel statistics, brightness and contrast, and its figures."""
    e = up.explore
    if e is None:
        return []
    rows = [
        [
            b.split,
            f"{b.total:,}",
            fmt(b.chi2, ".2f"),
            str(b.dof),
            fmt(b.p_value, ".3g"),
            fmt(b.imbalance_ratio, ".2f"),
        ]
        for b in e.balance
    ]
    px = e.pixel_stats
    pixel_rows = [[ch, f"{px.mean[i]:.2f}", f"{px.std[i]:.2f}"] for i, ch in enumerate("RGB")]
    parts: list[Any] = [
        element("h3", "Class balance"),
        table(
            "Chi-square test of uniform class counts per split",
            ["split", "images", "chi-square", "dof", "p-value", "largest / smallest"],
            rows,
            table_id="balance",
            numeric=range(1, 6),
        ),
        table(
            f"Pixel statistics of {px.split} ({px.n_images:,} images), 0..255",
            ["channel", "mean", "std"],
            pixel_rows,
            table_id="pixels",
            numeric=(1, 2),
        ),
        paragraph(
            f"Brightest class {e.brightest_class}, darkest {e.darkest_class}; highest "
            f"contrast {e.highest_contrast_class}, lowest {e.lowest_contrast_class}."
        ),
    ]
    for rel in e.figures:
        stem = Path(rel).stem
        parts.append(
            figure(Path(up.explore_dir or "") / rel, CAPTIONS.get(rel, stem), f"explore: {stem}")
        )
    return parts


def _duplicate_parts(s: ScrubResult) -> list[Any]:
    """Exact and near duplicates within and across the splits, and the test images that
    leak (a twin in train); the validation split's overlap, which must be none."""
    dup = s.duplicates
    rows = [
        [
            place,
            f"{dup.exact[category].pairs:,}",
            f"{dup.exact[category].images:,}",
            f"{dup.near[category].pairs:,}",
            f"{dup.near[category].images:,}",
            f"{dup.label_conflicts(category):,}",
        ]
        for category, place in PLACES.items()
    ]
    leaks = s.leakage
    share = leaks.test_images_with_train_twin / max(s.integrity.test.images, 1)
    overlap = s.split.duplicate_overlap
    return [
        element("h3", "Duplicates and leakage"),
        table(
            f"Exact and near duplicates (near: distance ≤ {dup.threshold})",
            [
                "where",
                "exact pairs",
                "exact images",
                "near pairs",
                "near images",
                "label conflicts",
            ],
            rows,
            table_id="duplicates",
            numeric=range(1, 6),
        ),
        paragraph(
            f"Leakage: {leaks.test_images_with_train_twin:,} test images ({share:.1%}) have a "
            f"twin in train ({leaks.exact:,} identical). The validation split keeps duplicate "
            f"groups on one side: near-duplicate pairs across train and validation "
            f"{overlap['near'].get('train-val', 0)}, exact {overlap['exact'].get('train-val', 0)}."
        ),
        paragraph(dup.method, css="note"),
    ]


def scrub_parts(s: ScrubResult, scrub_dir: Path, image_size: int) -> list[Any]:
    """Scrub's findings: duplicates and leakage, short classes, the threshold, the figures,
    image quality, and the interpolation study where it measured the run's size."""
    study = s.interpolation
    parts = _duplicate_parts(s)
    if s.split.short:
        gave = ", ".join(f"{c} {v.placed} of {v.drawn}" for c, v in s.split.short.items())
        parts.append(
            paragraph(
                f"Validation shares that shrank because the rest of the class is in duplicate "
                f"groups, which stay in train: {gave}."
            )
        )
    if s.duplicates.calibration is not None:
        statement = s.duplicates.calibration.statement()
        parts.append(paragraph(statement[:1].upper() + statement[1:] + ".", css="note"))
    figures = [f for f in s.files if f.endswith(".png")]
    for rel in figures:
        stem = Path(rel).stem
        if rel != INTERPOLATION_FIGURE:
            parts.append(figure(scrub_dir / rel, CAPTIONS.get(rel, stem), f"scrub: {stem}"))
    parts += quality_parts(s.quality)
    if study.image_size != image_size:
        return [
            *parts,
            element("h3", "Interpolation"),
            paragraph(
                f"scrub's interpolation study upsampled to {study.image_size} px; this run "
                f"trained at {image_size} px, so the study does not apply to it (rerun "
                f"`deepsight scrub --image-size {image_size}` to measure that size)."
            ),
        ]
    return parts + interpolation_parts(study, figures, scrub_dir)


def quality_parts(quality: QualitySummary) -> list[Any]:
    """Scrub's image-quality checks: per issue, the rule and the images flagged per split."""
    counts = quality.counts
    if not counts:
        return []
    splits = list(counts)
    rows = [
        [check.issue, check.rule, *(f"{counts[s].get(check.issue, 0):,}" for s in splits)]
        for check in quality.checks
    ]
    rows.append(["any", "flagged by one check or more", *(f"{counts[s]['any']:,}" for s in splits)])
    return [
        element("h3", "Image quality"),
        table(
            f"Images flagged by each quality check (listed in {QUALITY_FILE})",
            ["issue", "rule", *splits],
            rows,
            table_id="quality",
            numeric=range(2, 2 + len(splits)),
        ),
        paragraph(quality.method, css="note"),
        *([paragraph(f"The {quality.assumes}.", css="note")] if quality.assumes else []),
    ]


def interpolation_parts(
    study: InterpolationStudy, figures: list[str], scrub_dir: Path
) -> list[Any]:
    """Scrub's interpolation study: the table of methods and the example figure."""
    interp_rows = [
        [
            r.method + (" (selected)" if r.selected else ""),
            "candidate" if r.candidate else "context",
            f"{r.reconstruction_rmse:.2f}",
            f"{r.round_trip_rmse:.2f}",
            f"{r.high_freq_retained:.2f}",
            f"{r.overshoot_pct:.2f}",
        ]
        for r in study.rows
    ]
    parts: list[Any] = [element("h3", "Interpolation")]
    if interp_rows:  # none when the images are already at the training size
        parts.append(
            table(
                f"Upsampling {study.source_size[0]} px to {study.image_size} px "
                f"({study.sample} images; RMSE on 0..255)",
                ["method", "role", "recon. RMSE", "round-trip RMSE", "HF kept", "overshoot %"],
                interp_rows,
                table_id="interpolation",
                numeric=range(2, 6),
                highlight=[i for i, r in enumerate(study.rows) if r.selected],
            )
        )
    parts.append(paragraph(f"Selected: {study.selected} ({study.rule})."))
    if INTERPOLATION_FIGURE in figures:
        parts.append(
            figure(
                scrub_dir / INTERPOLATION_FIGURE,
                CAPTIONS[INTERPOLATION_FIGURE],
                "scrub: interpolation",
            )
        )
    return parts
