"""The explore phase: class balance, pixel statistics, sample grids and registered hypotheses."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from deepsight_tf.core.checks import verify_labels
from deepsight_tf.core.manifest import DATA_INPUT, Manifest, now_iso
from deepsight_tf.core.progress import Progress
from deepsight_tf.core.settings import ExploreSettings
from deepsight_tf.core.storage import atomic_write_json, sha256_file
from deepsight_tf.core.workspace import (
    BRIGHTNESS_CONTRAST_FIGURE,
    CLASS_BALANCE_FIGURE,
    CLASS_MEANS_FIGURE,
    HYPOTHESES_FILE,
    IMAGES_FILE,
    REPORT_JSON,
    SAMPLES_FIGURE,
    Workspace,
)
from deepsight_tf.data.dataset import SPLITS, Dataset, load_dataset
from deepsight_tf.data.explore_artifacts import (
    ClassAppearance,
    ClassBalance,
    ExploreResult,
    PixelStats,
    Summary,
)
from deepsight_tf.data.hypotheses import Hypotheses, default_hypotheses, read_hypotheses_file

FIGURES = (CLASS_BALANCE_FIGURE, BRIGHTNESS_CONTRAST_FIGURE, SAMPLES_FIGURE, CLASS_MEANS_FIGURE)
# ITU-R BT.601 luma weights, the same PIL uses for convert("L").
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
# Pixel values per streaming step: about 32 MB as int64 or float64 whatever the image size,
# so 50,000 images never need a whole-data-set float64 copy.
CHUNK_VALUES = 1 << 22
# A chi-square p-value below this flags a split as imbalanced in the report's warnings.
BALANCE_ALPHA = 0.01


@dataclass
class PixelScan:
    """What one streaming pass over a split's images yields."""

    stats: PixelStats
    brightness: np.ndarray  # (N,) mean BT.601 luma of each image, 0..1
    contrast: np.ndarray  # (N,) RMS contrast (std of luma) of each image, 0..1
    class_means: np.ndarray  # (K, H, W, C) float64 mean image of each class, 0..255


# Statistics --------------------------------------------------------------------------------
def class_balance(labels: np.ndarray, class_names: list[str], split: str) -> ClassBalance:
    """Counts per class and Pearson's chi-square test against equal class frequencies."""
    k = len(class_names)
    labels = np.asarray(labels, dtype=np.int64)
    verify_labels(labels, k, where=f"{split} labels")
    counts = np.bincount(labels, minlength=k)
    total = int(counts.sum())
    chi2 = p_value = None
    if total > 0 and k > 1:
        test = stats.chisquare(counts)
        chi2, p_value = float(test.statistic), float(test.pvalue)
    return ClassBalance(
        split=split,
        counts={name: int(n) for name, n in zip(class_names, counts, strict=True)},
        total=total,
        chi2=chi2,
        dof=k - 1,
        p_value=p_value,
        imbalance_ratio=float(counts.max() / counts.min()) if counts.min() > 0 else None,
    )


def scan_pixels(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    split: str = "train",
    chunk_images: int | None = None,
    progress: Progress | None = None,
) -> PixelScan:
    """Channel statistics, per-image brightness and contrast, and class mean images in one pass.

    Channel sums and sums of squares are accumulated as exact integers, so the mean and the
    population std do not depend on the chunking or on floating-point summation order.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or not len(images):
        raise ValueError(
            f"images must be a non-empty uint8 (N, H, W, 3) array. "
            f"Received: {images.dtype}{images.shape}"
        )
    n, h, w, c = images.shape
    if chunk_images is None:
        chunk_images = max(1, CHUNK_VALUES // (h * w * c))
    sums = np.zeros(c, dtype=np.int64)
    squares = np.zeros(c, dtype=np.int64)
    class_sums = np.zeros((num_classes, h, w, c), dtype=np.int64)
    brightness = np.empty(n, dtype=np.float64)
    contrast = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk_images):
        stop = min(start + chunk_images, n)
        chunk, chunk_labels = images[start:stop], labels[start:stop]
        wide = chunk.astype(np.int64)
        sums += wide.sum(axis=(0, 1, 2))
        squares += (wide * wide).sum(axis=(0, 1, 2))
        for cls in np.unique(chunk_labels):
            class_sums[cls] += wide[chunk_labels == cls].sum(axis=0)
        luma = (chunk @ LUMA_WEIGHTS) / 255.0
        brightness[start:stop] = luma.mean(axis=(1, 2))
        contrast[start:stop] = luma.std(axis=(1, 2))
        if progress is not None:
            progress(f"pixel statistics ({split})", stop, n)
    pixels = n * h * w
    # Python integers: exact sums, one correctly rounded division at the end.
    mean = [int(s) / pixels for s in sums]
    std = [
        math.sqrt((pixels * int(q) - int(s) ** 2) / pixels**2)
        for s, q in zip(sums, squares, strict=True)
    ]
    per_class = np.bincount(labels, minlength=num_classes).astype(np.float64)
    class_means = class_sums / np.maximum(per_class, 1)[:, None, None, None]
    return PixelScan(
        stats=PixelStats(
            split=split,
            n_images=n,
            mean=mean,
            std=std,
            mean_unit=[m / 255.0 for m in mean],
            std_unit=[s / 255.0 for s in std],
        ),
        brightness=brightness,
        contrast=contrast,
        class_means=class_means,
    )


def summarise(values: np.ndarray) -> Summary:
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return Summary(
        mean=float(np.mean(values)),
        std=float(np.std(values)),
        median=float(median),
        q25=float(q25),
        q75=float(q75),
    )


def class_appearance(
    scan: PixelScan, labels: np.ndarray, class_names: list[str]
) -> list[ClassAppearance]:
    """Brightness and contrast summaries per class (classes without images are left out)."""
    rows = []
    for index, name in enumerate(class_names):
        mask = labels == index
        if mask.any():
            rows.append(
                ClassAppearance(
                    class_name=name,
                    n_images=int(mask.sum()),
                    brightness=summarise(scan.brightness[mask]),
                    contrast=summarise(scan.contrast[mask]),
                )
            )
    return rows


def pick_samples(
    labels: np.ndarray, class_names: list[str], per_class: int, seed: int
) -> dict[str, list[int]]:
    """Up to `per_class` image indices per class, drawn without replacement, in index order."""
    rng = np.random.default_rng(seed)
    picks = {}
    for index, name in enumerate(class_names):
        members = np.flatnonzero(labels == index)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        picks[name] = sorted(int(i) for i in chosen)
    return picks


# The phase ---------------------------------------------------------------------------------
def explore(
    settings: ExploreSettings, workspace: Workspace, progress: Progress | None = None
) -> ExploreResult:
    """Describe the stored data set and register the hypotheses interpret will test."""
    start = time.perf_counter()
    started = now_iso()
    data, data_manifest = load_dataset(workspace, settings.dataset)
    input_sha = data_manifest.outputs[IMAGES_FILE]
    if settings.hypotheses is not None:
        hypotheses = read_hypotheses_file(Path(settings.hypotheses), data.class_names)
    else:
        hypotheses = default_hypotheses(data.class_names)
    folder = workspace.explore_dir(data.name)
    with workspace.lock(f"explore-{data.name}"):
        balance = [class_balance(data.split(s)[1], data.class_names, s) for s in SPLITS]
        x_train, y_train = data.split("train")
        scan = scan_pixels(x_train, y_train, data.num_classes, "train", progress=progress)
        appearance = class_appearance(scan, y_train, data.class_names)
        samples = pick_samples(y_train, data.class_names, settings.samples_per_class, settings.seed)
        _draw_figures(folder, data, balance, scan, samples)
        hypotheses.registered_at = now_iso()
        by_brightness = sorted(appearance, key=lambda a: a.brightness.mean)
        by_contrast = sorted(appearance, key=lambda a: a.contrast.mean)
        result = ExploreResult(
            dataset=data.name,
            folder=str(folder),
            input_sha256=input_sha,
            class_names=data.class_names,
            image_shape=list(data.image_shape),
            balance=balance,
            pixel_stats=scan.stats,
            appearance=appearance,
            brightest_class=by_brightness[-1].class_name,
            darkest_class=by_brightness[0].class_name,
            highest_contrast_class=by_contrast[-1].class_name,
            lowest_contrast_class=by_contrast[0].class_name,
            samples=samples,
            hypotheses=hypotheses,
            figures=list(FIGURES),
            duration_s=round(time.perf_counter() - start, 2),
            warnings=_warnings(balance, hypotheses),
        )
        atomic_write_json(folder / HYPOTHESES_FILE, hypotheses)
        atomic_write_json(folder / REPORT_JSON, result)
        inputs = {DATA_INPUT: workspace.input_record(workspace.images_path(data.name), input_sha)}
        if settings.hypotheses is not None:
            path = Path(settings.hypotheses).resolve()
            inputs["hypotheses"] = {"path": str(path), "sha256": sha256_file(path)}
        manifest = Manifest(
            phase="explore",
            settings={**asdict(settings), "dataset": data.name},
            inputs=inputs,
            outputs=dict.fromkeys([REPORT_JSON, HYPOTHESES_FILE, *FIGURES], ""),
            seed=settings.seed,
            started=started,
            finished=now_iso(),
            duration_s=result.duration_s,
        )
        workspace.write_manifest(folder, manifest)
    return result


def _draw_figures(
    folder: Path,
    data: Dataset,
    balance: list[ClassBalance],
    scan: PixelScan,
    samples: dict[str, list[int]],
) -> None:
    # Imported here: matplotlib costs a second, and interpret imports this module only to load.
    from deepsight_tf.plots import save_figure
    from deepsight_tf.plots.explore import (
        plot_brightness_contrast,
        plot_class_balance,
        plot_class_means,
        plot_sample_grid,
    )

    names = data.class_names
    x_train, y_train = data.split("train")
    save_figure(
        plot_class_balance(
            names,
            {b.split: [b.counts[name] for name in names] for b in balance},
            {b.split: b.p_value for b in balance},
        ),
        folder / CLASS_BALANCE_FIGURE,
    )
    save_figure(
        plot_brightness_contrast(
            names,
            [scan.brightness[y_train == i] for i in range(len(names))],
            [scan.contrast[y_train == i] for i in range(len(names))],
        ),
        folder / BRIGHTNESS_CONTRAST_FIGURE,
    )
    save_figure(
        plot_sample_grid([x_train[samples[name]] for name in names], names),
        folder / SAMPLES_FIGURE,
    )
    save_figure(plot_class_means(scan.class_means, names), folder / CLASS_MEANS_FIGURE)


def _warnings(balance: list[ClassBalance], hypotheses: Hypotheses) -> list[str]:
    warnings = [
        f"{b.split} classes are not uniform (chi-square p = {b.p_value:.3g}, largest over "
        f"smallest {b.imbalance_ratio or float('inf'):.2f}); weigh classes or report macro metrics"
        for b in balance
        if b.p_value is not None and b.p_value < BALANCE_ALPHA
    ]
    if not hypotheses.registered:
        warnings.append(hypotheses.note)
    return warnings
