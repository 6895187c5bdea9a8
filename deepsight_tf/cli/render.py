"""Rich renderings of each phase's result: what the command line prints (and nothing else does)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from deepsight_tf.cli.console import console
from deepsight_tf.core.workspace import FIGURES_DIR, IMAGES_FILE, QUALITY_FILE, REPORT_JSON

if TYPE_CHECKING:  # the phases' modules load numpy and scipy: not at the command line's start
    from deepsight_tf.data.explore_artifacts import ExploreResult
    from deepsight_tf.data.obtain import ObtainResult
    from deepsight_tf.data.quality import QualitySummary
    from deepsight_tf.data.scrub_artifacts import DuplicateSummary, ScrubResult
    from deepsight_tf.diagnose.attribution import ErrorAttribution
    from deepsight_tf.diagnose.experiment import ExperimentResult
    from deepsight_tf.diagnose.hypothesis_tests import HypothesisResult
    from deepsight_tf.diagnose.interpret_record import InterpretResult, LabelIssues
    from deepsight_tf.reporting.run_page import ReportResult
    from deepsight_tf.serve.export import ExportResult
    from deepsight_tf.serve.predict import PredictResult
    from deepsight_tf.training.lr_finder import LRFinderReport
    from deepsight_tf.training.outcome import TrainResult


def render_obtain(result: ObtainResult) -> None:
    status = "[green]up to date[/]" if result.up_to_date else f"stored in {result.duration_s:.1f} s"
    console.print(f"[bold]{result.dataset}[/] ({result.kind}) from {result.source}: {status}")
    table = Table(title="Images per class", show_footer=True)
    table.add_column("class", footer="total")
    for split, counts in result.counts.items():
        table.add_column(split, justify="right", footer=f"{sum(counts.values()):,}")
    for cls in result.class_names:
        table.add_row(cls, *(f"{result.counts[s].get(cls, 0):,}" for s in result.counts))
    console.print(table)
    h, w, c = result.image_shape
    console.print(f"image size {h}x{w}x{c} uint8; {IMAGES_FILE} sha256 {result.sha256[:16]}…")
    console.print(f"stored at {result.folder}")
    for what, count in result.conversions.items():
        console.print(f"[yellow]converted[/] {count:,} images: {what}")
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} files[/] (listed in {REPORT_JSON}):")
        for item in result.skipped[:5]:
            console.print(f"  {item.path}: {item.reason}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {warning}")


def quality_line(quality: QualitySummary) -> None:
    """Scrub's image-quality counts on one line per split."""
    for split, per_issue in quality.counts.items():
        found = ", ".join(f"{issue} {n:,}" for issue, n in per_issue.items() if issue != "any")
        colour = "yellow" if per_issue.get("any") else "green"
        console.print(
            f"[{colour}]quality[/] ({split}): {per_issue.get('any', 0):,} images flagged "
            f"({found}); listed in {QUALITY_FILE}"
        )
    if quality.assumes:
        console.print(f"[dim]quality {quality.assumes}[/]")


def render_duplicates(dup: DuplicateSummary) -> None:
    """Scrub's duplicate counts per kind and place, the method and the threshold's calibration."""
    from deepsight_tf.data.scrub_artifacts import PLACES

    table = Table(title=f"Duplicates (near: distance <= {dup.threshold})")
    for column in ("where", "exact pairs", "exact images", "near pairs", "near images"):
        table.add_column(column, justify="left" if column == "where" else "right")
    table.add_column("label conflicts", justify="right")
    for category, place in PLACES.items():
        exact, near = dup.exact[category], dup.near[category]
        conflicts = dup.label_conflicts(category)
        table.add_row(
            place,
            f"{exact.pairs:,}",
            f"{exact.images:,}",
            f"{near.pairs:,}",
            f"{near.images:,}",
            f"[red]{conflicts:,}[/]" if conflicts else "0",
        )
    console.print(table)
    console.print(f"[dim]{dup.method}; {dup.candidates_verified:,} candidate pairs[/]")
    if dup.calibration is not None:
        console.print(f"[dim]{dup.calibration.statement()}[/]")


def render_scrub(result: ScrubResult) -> None:
    integrity = result.integrity
    h, w, c = integrity.image_shape
    console.print(
        f"[bold]{result.dataset}[/] scrubbed in {result.duration_s:.1f} s "
        f"({IMAGES_FILE} sha256 {result.images_sha256[:16]}…)"
    )
    console.print(
        f"[green]integrity[/]: {integrity.train.images:,} train and "
        f"{integrity.test.images:,} test images are {h}x{w}x{c} uint8, labels in range; "
        f"{integrity.constant_images} constant (one-colour) images"
    )
    quality_line(result.quality)
    render_duplicates(result.duplicates)
    leaks = result.leakage
    share = 100 * leaks.test_images_with_train_twin / max(integrity.test.images, 1)
    console.print(
        f"[yellow]leakage[/]: {leaks.test_images_with_train_twin:,} test images ({share:.1f}%) "
        f"have a twin in train ({leaks.exact:,} identical); listed in {REPORT_JSON} "
        "leakage.test_indices_with_train_twin"
    )
    split = result.split
    counts = Table(title=f"Split (val {split.val_size}, seed {split.seed})", show_footer=True)
    counts.add_column("class", footer="total")
    for part in split.class_counts:
        counts.add_column(part, justify="right", footer=f"{split.sizes[part]:,}")
    for cls in result.class_names:
        counts.add_row(cls, *(f"{split.class_counts[p][cls]:,}" for p in split.class_counts))
    console.print(counts)
    overlap = split.duplicate_overlap
    console.print(
        f"index overlap train-val {split.index_overlap['train-val']}, unassigned "
        f"{split.index_overlap['unassigned']}; duplicate pairs across parts (exact/near): "
        + ", ".join(
            f"{pair} {overlap['exact'][pair]}/{overlap['near'][pair]}" for pair in overlap["exact"]
        )
    )
    for cls, short in split.short.items():
        console.print(
            f"[yellow]validation[/]: class {cls} gave {short.placed} of the {short.drawn} "
            "images its share asks for; the rest are in duplicate groups, which stay in train"
        )
    study = result.interpolation
    interp = Table(title=f"Upsampling {study.source_size[0]} px to {study.image_size} px")
    for column in ("method", "role", "recon. RMSE", "round-trip RMSE", "HF kept", "overshoot %"):
        interp.add_column(column, justify="left" if column in ("method", "role") else "right")
    for row in study.rows:
        style = "bold green" if row.selected else None
        interp.add_row(
            row.method + (" ✓" if row.selected else ""),
            "candidate" if row.candidate else "context",
            f"{row.reconstruction_rmse:.2f}",
            f"{row.round_trip_rmse:.2f}",
            f"{row.high_freq_retained:.2f}",
            f"{row.overshoot_pct:.2f}",
            style=style,
        )
    if study.rows:
        console.print(interp)
    console.print(
        f"selected interpolation: [bold]{study.selected}[/] ({study.rule}; {study.sample} images)"
    )
    console.print(f"written to {result.folder}: {', '.join(result.files)}")


def render_explore(result: ExploreResult) -> None:
    console.print(
        f"[bold]{result.dataset}[/] explored in {result.duration_s:.1f} s "
        f"({IMAGES_FILE} sha256 {result.input_sha256[:16]}…)"
    )
    balance = Table(title="Class balance", show_footer=True)
    balance.add_column("class", footer="total")
    for split in result.balance:
        balance.add_column(split.split, justify="right", footer=f"{split.total:,}")
    for cls in result.class_names:
        balance.add_row(cls, *(f"{split.counts[cls]:,}" for split in result.balance))
    console.print(balance)
    for split in result.balance:
        if split.p_value is None:
            console.print(f"{split.split}: chi-square test undefined (empty split or one class)")
            continue
        console.print(
            f"{split.split}: chi-square {split.chi2:.2f} (dof {split.dof}), p = {split.p_value:.3g}"
            f"; largest over smallest class {split.imbalance_ratio or float('inf'):.2f}"
        )
    px = result.pixel_stats
    pixels = Table(title=f"Pixel statistics ({px.split}, {px.n_images:,} images)")
    for column in ("channel", "mean 0..255", "std 0..255", "mean 0..1", "std 0..1"):
        pixels.add_column(column, justify="left" if column == "channel" else "right")
    for i, channel in enumerate("RGB"):
        pixels.add_row(
            channel,
            f"{px.mean[i]:.3f}",
            f"{px.std[i]:.3f}",
            f"{px.mean_unit[i]:.4f}",
            f"{px.std_unit[i]:.4f}",
        )
    console.print(pixels)
    looks = Table(title="Brightness (mean luma) and RMS contrast per class, train, 0..1")
    for column in ("class", "images", "brightness", "median", "contrast", "median "):
        looks.add_column(column, justify="left" if column == "class" else "right")
    for row in result.appearance:
        b, c = row.brightness, row.contrast
        looks.add_row(
            row.class_name,
            f"{row.n_images:,}",
            f"{b.mean:.3f} ± {b.std:.3f}",
            f"{b.median:.3f}",
            f"{c.mean:.3f} ± {c.std:.3f}",
            f"{c.median:.3f}",
        )
    console.print(looks)
    console.print(
        f"brightest class [bold]{result.brightest_class}[/], darkest [bold]{result.darkest_class}"
        f"[/]; highest contrast [bold]{result.highest_contrast_class}[/], lowest "
        f"[bold]{result.lowest_contrast_class}[/]"
    )
    hyp = result.hypotheses
    if hyp.registered:
        console.print(f"[bold]hypotheses[/] registered from {hyp.source}:")
        for a, b in hyp.comparisons:
            console.print(
                f"  compare {a} ({', '.join(hyp.groups[a])}) with {b} ({', '.join(hyp.groups[b])})",
                highlight=False,
            )
        if hyp.confusable_pairs:
            pairs = ", ".join(f"{a}/{b}" for a, b in hyp.confusable_pairs)
            console.print(f"  confusable pairs to watch: {pairs}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {warning}", highlight=False)
    console.print(f"figures in {Path(result.folder) / FIGURES_DIR}; {REPORT_JSON} beside them")


def render_train(result: TrainResult) -> None:
    test, val = result.test, result.val
    verdict = "[green]passed[/]" if result.passed else "[red]failed[/]"
    console.print(
        f"run [bold]{result.run_id}[/]: {result.epochs_run} epochs on {result.train_images:,} "
        f"images in {result.duration_s / 60:.1f} min ({result.precision})"
    )
    table = Table(title="Held-out results")
    for column in ("split", "accuracy", "macro-F1", "images"):
        table.add_column(column, justify="right" if column != "split" else "left")
    table.add_row("validation", f"{val['accuracy']:.2%}", f"{val['macro_f1']:.4f}", f"{val['n']:,}")
    table.add_row("test", f"{test['accuracy']:.2%}", f"{test['macro_f1']:.4f}", f"{test['n']:,}")
    console.print(table)
    per_class = Table(title="Test recall per class")
    per_class.add_column("class")
    per_class.add_column("recall", justify="right")
    per_class.add_column("F1", justify="right")
    for name, row in test["per_class"].items():
        per_class.add_row(name, f"{row['recall']:.2%}", f"{row['f1']:.3f}")
    console.print(per_class)
    console.print(f"MVA gate {result.mva:.0%}: {verdict}; artifacts in {result.run_dir}")


def _ci(low: float | None, high: float | None, percent: bool = True) -> str:
    if low is None or high is None:
        return ""
    return f" [{low:.1%}, {high:.1%}]" if percent else f" [{low:+.3f}, {high:+.3f}]"


def render_interpret(result: InterpretResult) -> None:
    head = result.headline
    console.print(
        f"[bold]{result.run_id}[/] on {result.dataset} test set ({head.n:,} images): "
        f"accuracy {head.accuracy:.2%}{_ci(*head.accuracy_ci[-2:])}, macro-F1 "
        f"{head.macro_f1:.4f}{_ci(*head.macro_f1_ci[-2:], percent=False)}"
    )
    _errors_and_confidence(result)
    if result.hypotheses:
        _hypotheses_table(result.hypotheses)
    elif result.hypotheses_note:
        console.print(f"hypotheses: {result.hypotheses_note}")
    _heat_map_tests(result)
    if result.error_attribution is not None:
        attribution_table(result.error_attribution)
    label_issue_lines(result.label_issues)
    console.print(
        f"{len(result.figures)} figures and {REPORT_JSON} in {result.folder} "
        f"({result.duration_s / 60:.1f} min)"
    )


def _errors_and_confidence(result: InterpretResult) -> None:
    """The most confused pairs, calibration, and accuracy on leaked test images."""
    pairs = Table(title="Most confused pairs (both directions)")
    for column in ("pair", "a → b", "b → a", "rate"):
        pairs.add_column(column, justify="left" if column == "pair" else "right")
    for p in result.most_confused[:5]:
        pairs.add_row(f"{p.a} / {p.b}", str(p.a_as_b), str(p.b_as_a), f"{p.rate:.2%}")
    console.print(pairs)
    cal = result.calibration
    console.print(
        f"calibration: ECE {cal.ece_before:.3f} → {cal.ece_after:.3f} after temperature "
        f"T={cal.temperature:.2f} (fitted on validation)"
    )
    leak = result.leakage
    if leak is not None and leak.in_mask.n and leak.rest.n:
        console.print(
            f"leakage: accuracy {leak.in_mask.accuracy:.2%} on {leak.in_mask.n} test "
            f"images with a train twin vs {leak.rest.accuracy:.2%} on the rest"
        )


def _hypotheses_table(hypotheses: list[HypothesisResult]) -> None:
    table = Table(title="Hypotheses registered before training")
    for column in ("hypothesis", "estimate", "95% CI", "verdict"):
        table.add_column(column)
    for h in hypotheses:
        table.add_row(h.name, f"{h.estimate:+.3f}", f"[{h.low:+.3f}, {h.high:+.3f}]", h.verdict)
    console.print(table)


def _heat_map_tests(result: InterpretResult) -> None:
    """Whether the heat maps are faithful and sane, and which classes rely on context."""
    if result.faithfulness is not None:
        table = Table(title="Do the heat maps point at what the model uses? (vs random order)")
        for column in ("method", "deletion AUC", "random", "insertion AUC", "random", "verdict"):
            table.add_column(column)
        for name, m in result.faithfulness.methods.items():
            table.add_row(
                name,
                f"{m.deletion_auc:.3f}",
                f"{m.random_deletion_auc:.3f}",
                f"{m.insertion_auc:.3f}",
                f"{m.random_insertion_auc:.3f}",
                m.verdict,
            )
        console.print(table)
    if result.sanity is not None:
        verdict = "passed" if result.sanity.passed else "FLAGGED"
        console.print(
            f"sanity check (randomised top layers): {verdict}; mean Spearman "
            f"{', '.join(f'{v:.2f}' for v in result.sanity.mean_spearman)}"
        )
    if result.context is not None:
        ctx = result.context
        console.print(
            f"context reliance: classes that keep their accuracy with the centre hidden: "
            f"{', '.join(ctx.holds_without_object) or 'none'}; relying on context: "
            f"{', '.join(ctx.relies_on_context) or 'none'}"
        )
        if ctx.assumes:
            console.print(f"[dim]the test assumes {ctx.assumes}[/]")


def label_issue_lines(issues: LabelIssues) -> None:
    """Where interpret's label issues are, for the test and the training images."""
    ranked = issues.ranked_by
    how = ""
    if ranked is not None and ranked.weight_from:
        how = (
            f", ranked by {ranked.probabilities} probabilities (run weight "
            f"{ranked.run_weight:.2f} from the {ranked.weight_from})"
        )
    elif ranked is not None and ranked.ensemble_with:
        how = f", ranked by {ranked.probabilities} probabilities"
    console.print(
        f"label issues: {issues.count} test images flagged{how} ({issues.csv}); "
        f"hard pairs for --focus-pairs @{issues.focus_pairs_file}"
    )
    train = issues.train
    if train is not None:
        console.print(
            f"training label issues: {train.count:,} of {train.images:,} flagged by "
            f"{train.folds}-fold linear probes (accuracy {train.probe_accuracy:.1%}; "
            f"{train.csv})"
        )
    imagenet = issues.imagenet
    if imagenet is not None:
        made = (
            "cached features"
            if imagenet.cached
            else f"features computed in {imagenet.feature_pass_s or 0:.0f} s, now cached"
        )
        console.print(
            f"labels doubted by {imagenet.folds}-fold probes on {imagenet.backbone} "
            f"features at {imagenet.image_size} px, which never saw them ({made}; probe "
            f"accuracy {imagenet.probe_accuracy:.1%} out of fold, "
            f"{imagenet.test_probe_accuracy:.1%} on test): {imagenet.test.count:,} "
            f"test images ({imagenet.test.csv}), {imagenet.train.count:,} of "
            f"{imagenet.train.images or 0:,} training images ({imagenet.train.csv})"
        )


def attribution_table(attribution: ErrorAttribution) -> None:
    """Interpret's error attribution: one row per cause, then the claim's verdict."""
    table = Table(title=f"What the {attribution.errors:,} test errors have in common")
    for column in ("cause", "errors", "share of errors", "95% CI", "error rate with / without"):
        table.add_column(column, justify="left" if column == "cause" else "right")
    for row in attribution.rows:
        if not row.measured:
            table.add_row(row.cause, "not measured", "", "", "")
            continue
        low, high = row.share_ci or (0.0, 0.0)
        rates = ""
        if row.error_rate_with is not None and row.error_rate_without is not None:
            rates = f"{row.error_rate_with:.1%} / {row.error_rate_without:.1%}"
        table.add_row(
            row.cause,
            f"{row.errors or 0:,}",
            f"{row.share or 0.0:.1%}",
            f"[{low:.1%}, {high:.1%}]",
            rates,
        )
    console.print(table)
    claim = attribution.claim
    if claim.verdict == "not tested":
        console.print(f'claim "{claim.claim}": not tested ({claim.why})')
        return
    low, high = claim.difference_ci or (0.0, 0.0)
    line = (
        f'claim "{claim.claim}": {claim.verdict} (semantic '
        f"{claim.semantic_share or 0.0:.1%} minus data quality "
        f"{claim.data_quality_share or 0.0:.1%} = {claim.difference or 0.0:+.1%} "
        f"[{low:+.1%}, {high:+.1%}]; data quality counts "
        f"{', '.join(claim.data_quality_causes)}; {claim.both_share or 0.0:.1%} of the "
        "errors on both sides"
    )
    if claim.has_bound:
        c_low, c_high = claim.certain_difference_ci or (0.0, 0.0)
        certain = ", ".join(claim.certain_causes or []) or "no other cause measured"
        line += (
            f"; without the probes' doubts ({certain}), "
            f"{claim.certain_difference or 0.0:+.1%} [{c_low:+.1%}, {c_high:+.1%}]"
        )
    line += ")" + (f"; {claim.why}" if claim.why else "")
    console.print(line)


def render_experiment(result: ExperimentResult) -> None:
    """Per arm: its scores, the paired change against the baseline, the verdict."""
    comparison = result.comparison
    noise = comparison.noise
    table = Table(
        title=f"Experiment {result.name}: paired changes against the baseline "
        f"({comparison.n:,} test images)"
    )
    columns = ("arm", "accuracy", "macro-F1", "Δ macro-F1", "95% CI", "verdict")
    for column in columns:
        table.add_column(column, justify="left" if column in ("arm", "verdict") else "right")
    for name, score in result.scores.items():
        arm = comparison.arms.get(name)
        cells = [name, f"{score.accuracy:.2%}", f"{score.macro_f1:.4f}"]
        if arm is None:
            cells += ["", "", "baseline" if name == "baseline" else "seed (noise)"]
        else:
            low, high = arm.macro_f1.ci
            cells += [f"{arm.macro_f1.change:+.4f}", f"[{low:+.4f}, {high:+.4f}]", arm.verdict]
        table.add_row(*cells)
    console.print(table)
    console.print(
        f"noise: the baseline's {noise.seeds} other seed(s) moved macro-F1 by up to "
        f"{noise.macro_f1:.4f}; a verdict needs an interval clear of 0 and a larger change"
    )
    for name, arm in comparison.arms.items():
        pairs = ", ".join(f"{pair} {p.change:+.1%} ({p.verdict})" for pair, p in arm.pairs.items())
        if pairs:
            console.print(f"{name}: confusion of {pairs}")
    console.print(
        f"plan, comparison and page in {result.folder} ({result.duration_s / 60:.1f} min): "
        f"{result.files[-1]}"
    )


def render_predict(result: PredictResult) -> None:
    table = Table(title=f"Predictions of run {result.run_id} ({result.image_size} px)")
    table.add_column("image", overflow="fold")
    table.add_column("class")
    table.add_column("probability", justify="right")
    table.add_column(f"top {len(result.predictions[0].top)}")
    if result.gradcam_dir:
        table.add_column("Grad-CAM", overflow="fold")
    for item in result.predictions:
        top = ", ".join(f"{t.class_name} {t.probability:.1%}" for t in item.top)
        name, probability = f"[bold]{escape(item.class_name)}[/]", f"{item.probability:.1%}"
        cells = [escape(item.path), name, probability, escape(top)]
        if result.gradcam_dir:
            cells.append(escape(Path(item.gradcam).name))
        table.add_row(*cells)
    console.print(table)
    console.print(
        f"{len(result.predictions):,} images in {result.duration_s:.1f} s"
        + (f"; Grad-CAM overlays in {escape(result.gradcam_dir)}" if result.gradcam_dir else "")
    )
    if result.errors:
        console.print(f"[yellow]{len(result.errors)} inputs could not be read[/]:")
        for error in result.errors:
            console.print(f"  {error.path}: {error.reason}", markup=False, highlight=False)


def render_export(result: ExportResult) -> None:
    console.print(
        f"run [bold]{result.run_id}[/] exported as {result.format} to {result.path} "
        f"({result.size_bytes / 1e6:.1f} MB) in {result.duration_s:.1f} s"
    )
    for name, takes in result.endpoints.items():
        console.print(f"  {name}: {takes}", markup=False, highlight=False)
    if result.max_abs_diff is None:
        console.print("[yellow]not checked[/]: no runtime for this format is installed")
    else:
        colour = "green" if result.max_abs_diff <= 1e-5 else "yellow"
        console.print(
            f"[{colour}]checked[/] on {result.check_images} images: largest probability "
            f"difference from the run's model {result.max_abs_diff:.1e}"
        )
    console.print(f"preprocessing and class names for consumers: {result.sidecar}")


def render_report(result: ReportResult) -> None:
    for head in result.headlines:
        gate = "[green]passed[/]" if head.passed else "[red]failed[/]"
        (a_low, a_high), (f_low, f_high) = head.accuracy_ci, head.macro_f1_ci
        intervals = (
            escape(f"[{a_low:.2%}, {a_high:.2%}]"),
            escape(f"[{f_low:.4f}, {f_high:.4f}]"),
        )
        console.print(
            f"[bold]{escape(head.run_id)}[/]: test accuracy {head.accuracy:.2%} {intervals[0]}, "
            f"macro-F1 {head.macro_f1:.4f} {intervals[1]}; MVA gate {head.mva:.0%} {gate}",
            highlight=False,
        )
    for h in result.hypotheses:
        console.print(
            f"  {h['verdict']}: {escape(h['name'])} {h['estimate']:+.3f} "
            f"[{h['low']:+.3f}, {h['high']:+.3f}]",
            markup=False,
            highlight=False,
        )
    for c in result.comparisons:
        for d in (c.accuracy, c.macro_f1):
            interval = "" if d.low is None else f" [{d.low:+.4f}, {d.high:+.4f}]"
            console.print(
                f"{c.b} vs {c.a}: {d.name} {d.delta:+.4f}{interval} ({d.verdict})",
                markup=False,
                highlight=False,
            )
        moved = [d.name for d in c.recall if d.verdict in ("better", "worse")]
        console.print(f"  recall changed clearly in: {', '.join(moved) or 'no class'}; {c.pairing}")
    for name, note in result.sections.items():
        if note != "shown":
            console.print(f"[yellow]{name}[/]: {escape(note)}")
    console.print(
        f"{result.figures} figures in {escape(result.path)} "
        f"({result.size_bytes / 1e6:.1f} MB, {result.duration_s:.1f} s)"
    )


def render_lr_finder(report: LRFinderReport) -> None:
    console.print(
        f"LR range test ({report.phase}, {report.steps} steps): suggested --lr "
        f"[bold]{report.suggestion:.3g}[/] ({report.method}); lowest loss at "
        f"{report.min_loss_lr:.3g}. Curve: {report.figure}"
    )
