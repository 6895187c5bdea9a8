"""The run page's training section: configuration, phases (as the run recorded them), curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepsight_tf.core.workspace import BATCH_FIGURE, HISTORY_FIGURE, HISTORY_FILE, SCHEDULE_FIGURE
from deepsight_tf.reporting.artifacts import RunArtifacts
from deepsight_tf.reporting.captions import CAPTIONS
from deepsight_tf.reporting.html import (
    Html,
    element,
    figure,
    fmt,
    kv_table,
    missing,
    paragraph,
    section,
)
from deepsight_tf.reporting.html import table as html_table

SETTINGS_SHOWN = (
    "backbone",
    "weights",
    "stem",
    "image_size",
    "width_multiplier",
    "batch_size",
    "frozen_epochs",
    "epochs",
    "unfreeze",
    "optimizer",
    "lr",
    "backbone_lr_mult",
    "weight_decay",
    "pct_start",
    "dropout",
    "augment",
    "mix",
    "mix_alpha",
    "label_smoothing",
    "class_weights",
    "focus_pairs",
    "max_train_images",
    "mva",
    "seed",
)
HISTORY_COLUMNS = (
    "epoch",
    "phase",
    "lr_end",
    "loss",
    "val_loss",
    "accuracy",
    "val_accuracy",
    "macro_f1",
    "val_macro_f1",
    "seconds",
)


def plain(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value)
    return str(value)


def training_section(run: RunArtifacts, history_figure: Path | None) -> Html:
    history, best = run.history, run.metrics.best_epoch
    phase_rows = _phase_rows(run)
    duration = run.metrics.duration_s or run.manifest.duration_s
    epoch_seconds = sum(float(r.get("seconds", 0.0)) for r in history)
    parts: list[Any] = [
        paragraph(
            f"Run {run.run_id}: {len(history)} epochs in {fmt((duration or 0) / 60, '.1f')} min "
            f"in all ({epoch_seconds / 60:.1f} min in epochs, the rest scoring and saving); "
            f"best epoch by validation macro-F1: {best if best is not None else 'n/a'}; "
            f"started {run.manifest.started}, finished {run.manifest.finished}."
        ),
        element("h3", "Configuration"),
        kv_table("Settings the run was trained with", _config_pairs(run), table_id="config"),
        element("h3", "Phases"),
        html_table(
            "Training phases, each with its own one-cycle schedule",
            ["phase", "what trains", "epochs", "peak lr", "backbone lr", "epochs run", "minutes"],
            phase_rows,
            table_id="phases",
            numeric=(0, 3, 4, 5, 6),
        ),
        *_input_figures(run),
        element("h3", "Curves"),
    ]
    if history_figure is not None:
        starts = ", ".join(f"phase {r[0]} is epochs {r[2]}" for r in phase_rows)
        caption = f"{CAPTIONS[HISTORY_FIGURE]} Phases: {starts}."
        parts.append(figure(history_figure, caption, "training history"))
    parts.append(_history_table(run))
    return section("training", "Training", parts)


def _input_figures(run: RunArtifacts) -> list[Any]:
    """What the model was fed (a real batch) and the schedule each phase followed."""
    shown = [
        figure(run.run_dir / BATCH_FIGURE, CAPTIONS[BATCH_FIGURE], "a training batch"),
        figure(run.run_dir / SCHEDULE_FIGURE, CAPTIONS[SCHEDULE_FIGURE], "one-cycle schedules"),
    ]
    return [element("div", shown, class_="side-by-side")]


def _config_pairs(run: RunArtifacts) -> list[tuple[str, str]]:
    """The settings shown, then what the run resolved: precision, preprocessing, distribution."""
    config = run.record.config
    pre = config.preprocessing
    norm = pre.normalization
    pairs = [(k, plain(getattr(config.settings, k))) for k in SETTINGS_SHOWN]
    pairs += [
        ("precision", config.precision),
        ("interpolation", pre.interpolation),
        (
            "normalization",
            f"mean ({', '.join(f'{v:.1f}' for v in norm.mean)}), std "
            f"({', '.join(f'{v:.1f}' for v in norm.std)}), from {norm.source}",
        ),
    ]
    if config.distribution:
        d = config.distribution
        pairs.append(("distribution", ", ".join(f"{k} {plain(v)}" for k, v in d.items())))
    return pairs


def _phase_rows(run: RunArtifacts) -> list[list[str]]:
    """One row per phase as config.json recorded it, with the epochs and minutes it ran."""
    first, rows = 1, []
    for p in run.record.phases:
        ran = [r for r in run.history if r.get("phase") == p.index]
        seconds = sum(float(r.get("seconds", 0.0)) for r in ran)
        last = first + p.epochs - 1
        rows.append(
            [
                str(p.index),
                p.name,
                f"{first}–{last}" if last > first else str(first),
                f"{p.peak_lr:g}",
                f"×{p.backbone_lr_mult:g}",
                f"{len(ran)}/{p.epochs}",
                f"{seconds / 60:.1f}",
            ]
        )
        first = last + 1
    return rows


def _history_table(run: RunArtifacts) -> Html:
    history, best = run.history, run.metrics.best_epoch
    if not history:
        return missing(f"{HISTORY_FILE} has no epochs")
    columns = [c for c in HISTORY_COLUMNS if any(c in r for r in history)]
    specs = {"lr_end": ".3g", "seconds": ".1f", "epoch": "d", "phase": "d"}
    rows = [[fmt(r.get(c), specs.get(c, ".4f")) for c in columns] for r in history]
    return html_table(
        f"Per-epoch history ({HISTORY_FILE}); the best epoch is in bold",
        columns,
        rows,
        table_id="history",
        numeric=range(len(columns)),
        highlight=[i for i, r in enumerate(history) if r.get("epoch") == best],
    )


def draw_history(run: RunArtifacts) -> Path | None:
    """Training curves drawn by plots.training, beside the run (None when there are no epochs)."""
    if not run.history:
        return None
    from deepsight_tf.plots import save_figure
    from deepsight_tf.plots.training import plot_history

    columns: dict[str, list[float]] = {}
    for row in run.history:
        for key, value in row.items():
            if isinstance(value, (int, float)):
                columns.setdefault(key, []).append(float(value))
    return save_figure(
        plot_history(columns, metrics=("loss", "macro_f1", "lr_end")), run.run_dir / HISTORY_FIGURE
    )
