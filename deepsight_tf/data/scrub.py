"""The scrub phase: integrity, exact and near duplicates, leakage, the validation split, resize."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsight_tf.core.checks import verify_batch, verify_labels
from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.manifest import DATA_INPUT, Manifest, now_iso
from deepsight_tf.core.progress import Progress
from deepsight_tf.core.settings import ScrubSettings
from deepsight_tf.core.storage import atomic_write_json
from deepsight_tf.core.workspace import (
    BORDERLINE_FIGURE,
    DUPLICATES_FIGURE,
    DUPLICATES_FILE,
    IMAGES_FILE,
    INTERPOLATION_FIGURE,
    QUALITY_FILE,
    REPORT_JSON,
    SPLIT_FILE,
    Workspace,
)
from deepsight_tf.data.dataset import SPLITS, Dataset, load_dataset
from deepsight_tf.data.interpolation import InterpolationStudy, interpolation_study
from deepsight_tf.data.quality import assess_quality
from deepsight_tf.data.scrub_artifacts import (
    CATEGORIES,
    DuplicatePair,
    DuplicateSummary,
    Integrity,
    Leakage,
    PairCounts,
    ScrubResult,
    ShortClass,
    Split,
    SplitIntegrity,
    SplitSummary,
    write_duplicates_csv,
    write_quality_csv,
    write_split,
)

if TYPE_CHECKING:
    from deepsight_tf.data.duplicates import Calibration

FIGURE_PAIRS = 20  # pairs per duplicates figure
CHECK_CHUNK = 10_000  # images per verify_batch call


@dataclass
class Duplicates:
    """Every exact and near duplicate pair, with the global indices (train first, then test)."""

    pairs: list[DuplicatePair]
    ids: np.ndarray  # (P, 2) global indices of each pair, in the same order
    candidates_verified: int
    calibration: Calibration


# Integrity ----------------------------------------------------------------------------------
def check_integrity(data: Dataset) -> Integrity:
    """Shape, dtype, value and label checks of every image (raises DataError on the first bad)."""
    shape = data.image_shape
    per_split: dict[str, SplitIntegrity] = {}
    for split in SPLITS:
        x, y = data.split(split)
        for start in range(0, len(x), CHECK_CHUNK):
            verify_batch(
                x[start : start + CHECK_CHUNK],
                shape,
                np.uint8,
                first_index=start,
                where=f"{data.name} {split}",
            )
        verify_labels(y, data.num_classes, where=f"{data.name} {split} labels")
        flat = x.reshape(len(x), -1)
        # A constant image (one colour everywhere) is usually a failed decode or a placeholder.
        constant = np.flatnonzero(flat.min(axis=1) == flat.max(axis=1))
        per_split[split] = SplitIntegrity(
            images=len(x),
            pixel_range=[int(flat.min(initial=255)), int(flat.max(initial=0))],
            labels_in_range=True,
            constant_images=constant.tolist(),
        )
    return Integrity(list(shape), "uint8", per_split["train"], per_split["test"])


# Duplicates ---------------------------------------------------------------------------------
def find_duplicates(
    data: Dataset, threshold: float | None, neighbours: int, progress: Progress | None = None
) -> Duplicates:
    """Exact duplicates by pixel hash and near duplicates by aligned structure, over both splits;
    the near-duplicate threshold is calibrated on the data set where `threshold` is None."""
    from deepsight_tf.data.duplicates import exact_duplicate_groups, find_near_duplicates

    images = np.concatenate([data.x_train, data.x_test])
    labels = np.concatenate([data.y_train, data.y_test])
    exact = exact_duplicate_groups(images).pairs()
    near = find_near_duplicates(images, threshold, neighbours, labels, progress)
    exact_keys = {(int(a), int(b)) for a, b in exact}
    keep = [i for i, (a, b) in enumerate(near.pairs) if (int(a), int(b)) not in exact_keys]
    ids = np.concatenate([exact, near.pairs[keep]]).astype(np.int64).reshape(-1, 2)
    distances = np.concatenate([np.zeros(len(exact)), near.distances[keep]])
    kinds = ["exact"] * len(exact) + ["near"] * len(keep)
    pairs = [
        _pair(data, kind, a, b, d) for kind, (a, b), d in zip(kinds, ids, distances, strict=True)
    ]
    return Duplicates(pairs, ids, near.candidates, near.calibration)


def _locate(data: Dataset, index: int) -> tuple[str, int]:
    n_train = len(data.x_train)
    return ("train", index) if index < n_train else ("test", index - n_train)


def _pair(data: Dataset, kind: str, a: int, b: int, distance: float) -> DuplicatePair:
    split_a, ia = _locate(data, int(a))
    split_b, ib = _locate(data, int(b))
    _, ya = data.split(split_a)
    _, yb = data.split(split_b)
    return DuplicatePair(
        kind=kind,
        split_a=split_a,
        index_a=ia,
        path_a=data.paths(split_a)[ia],
        label_a=data.class_names[int(ya[ia])],
        split_b=split_b,
        index_b=ib,
        path_b=data.paths(split_b)[ib],
        label_b=data.class_names[int(yb[ib])],
        distance=round(float(distance), 4),
    )


def summarize_duplicates(found: Duplicates, neighbours: int) -> DuplicateSummary:
    """Pairs, images involved and label conflicts per kind and category."""
    counts: dict[str, dict[str, PairCounts]] = {}
    for kind in ("exact", "near"):
        counts[kind] = {}
        for category in CATEGORIES:
            rows = [p for p in found.pairs if p.kind == kind and p.category == category]
            images = {(p.split_a, p.index_a) for p in rows} | {(p.split_b, p.index_b) for p in rows}
            counts[kind][category] = PairCounts(
                pairs=len(rows),
                images=len(images),
                label_conflicts=sum(not p.same_label for p in rows),
            )
    return DuplicateSummary(
        exact=counts["exact"],
        near=counts["near"],
        candidates_verified=found.candidates_verified,
        threshold=found.calibration.threshold,
        method=NEAR_METHOD,
        neighbours=neighbours,
        calibration=found.calibration,
    )


def leakage(found: Duplicates) -> Leakage:
    """Test images with a twin in train (exact or near), and the train images they twin."""
    cross = [p for p in found.pairs if p.category == "train-test"]
    test_ids = sorted({p.index_b for p in cross})
    return Leakage(
        test_indices_with_train_twin=test_ids,
        train_indices_with_test_twin=sorted({p.index_a for p in cross}),
        test_images_with_train_twin=len(test_ids),
        exact=len({p.index_b for p in cross if p.kind == "exact"}),
    )


# Split --------------------------------------------------------------------------------------
def train_groups(n_train: int, ids: np.ndarray) -> np.ndarray:
    """Connected components of duplicate pairs inside train: one label per training image."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    inside = ids[(ids < n_train).all(axis=1)] if len(ids) else np.empty((0, 2), np.int64)
    graph = coo_matrix(
        (np.ones(len(inside)), (inside[:, 0], inside[:, 1])), shape=(n_train, n_train)
    )
    return connected_components(graph, directed=False)[1]


def make_split(
    labels: np.ndarray,
    keep_in_train: np.ndarray,
    dropped: np.ndarray,
    val_size: float,
    seed: int,
    class_names: list[str] | None = None,
) -> Split:
    """Stratified validation split of the training images, with three guarantees.

    scikit-learn's StratifiedShuffleSplit draws it; then every validation image that must stay
    in train (`keep_in_train`: it has a duplicate in train or in test) is swapped for a random
    image of the same class that may go, so class counts stay as drawn. A class with too few
    images that may go gives validation all it has, a smaller share (Split.short records it);
    only a class with none at all is refused. `dropped` images take part in neither side.
    """
    names = class_names or [str(c) for c in range(int(labels.max(initial=0)) + 1)]
    pool = np.setdiff1d(np.arange(len(labels)), dropped)
    train, val = _stratified_draw(labels, pool, val_size, seed, names)
    rng = np.random.default_rng(seed)
    held = val[keep_in_train[val]]
    swap_in = [np.empty(0, dtype=np.int64)]
    short: dict[str, dict[str, int]] = {}
    for cls in np.unique(labels[held]):
        out = held[labels[held] == cls]
        free = train[(labels[train] == cls) & ~keep_in_train[train]]
        drawn = int(np.sum(labels[val] == cls))
        placed = drawn - len(out) + min(len(free), len(out))
        if placed == 0:
            raise ConfigError(
                f"--val-size {val_size}: every training image of class {names[cls]!r} has a "
                f"duplicate in train or a twin in test, so none can go to validation; look at "
                f"{DUPLICATES_FILE}, and pass --near-threshold lower if they are not copies"
            )
        if len(free) < len(out):
            short[names[cls]] = {"drawn": drawn, "placed": placed}
        swap_in.append(rng.choice(free, size=min(len(free), len(out)), replace=False))
    chosen = np.concatenate(swap_in)
    val = np.concatenate([val[~keep_in_train[val]], chosen])
    train = np.concatenate([train[~np.isin(train, chosen)], held])
    return Split(
        train=np.sort(train),
        val=np.sort(val),
        seed=seed,
        val_size=val_size,
        dropped=np.sort(np.asarray(dropped, dtype=np.int64)),
        short=short,
    )


def _stratified_draw(
    labels: np.ndarray, pool: np.ndarray, val_size: float, seed: int, names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """StratifiedShuffleSplit's train and validation parts of `pool`, or a ConfigError that
    names the classes too small to split."""
    from sklearn.model_selection import StratifiedShuffleSplit

    try:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_size, random_state=seed)
        train_pos, val_pos = next(splitter.split(np.zeros(len(pool)), labels[pool]))
    except ValueError as exc:
        counts = np.bincount(labels[pool], minlength=len(names))
        small = [f"{names[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < 2)]
        reason = f"classes with fewer than 2 images: {', '.join(small)}" if small else str(exc)
        raise ConfigError(
            f"--val-size {val_size}: cannot split {len(pool)} training images into stratified "
            f"train and validation parts ({reason}); choose a fraction that leaves every class "
            "at least one image on each side"
        ) from exc
    return pool[train_pos], pool[val_pos]


def describe_split(data: Dataset, split: Split, found: Duplicates) -> SplitSummary:
    """Sizes, class counts per part, and the overlaps that prove the parts are apart."""
    n_train = len(data.x_train)
    part = np.empty(n_train + len(data.x_test), dtype=object)
    part[split.train] = "train"
    part[split.val] = "val"
    part[split.dropped] = "dropped"
    part[n_train:] = "test"
    overlaps: dict[str, dict[str, int]] = {"exact": {}, "near": {}}
    for kind in overlaps:
        for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
            overlaps[kind][f"{first}-{second}"] = sum(
                p.kind == kind and {part[a], part[b]} == {first, second}
                for p, (a, b) in zip(found.pairs, found.ids, strict=True)
            )
    sets = {name: set(getattr(split, name).tolist()) for name in ("train", "val", "dropped")}
    counts = {
        "train": _class_counts(data, data.y_train[split.train]),
        "val": _class_counts(data, data.y_train[split.val]),
        "test": _class_counts(data, data.y_test),
    }
    if len(split.dropped):
        counts["dropped"] = _class_counts(data, data.y_train[split.dropped])
    return SplitSummary(
        seed=split.seed,
        val_size=split.val_size,
        sizes={
            "train": len(split.train),
            "val": len(split.val),
            "test": len(data.x_test),
            "dropped": len(split.dropped),
        },
        class_counts=counts,
        index_overlap={
            "train-val": len(sets["train"] & sets["val"]),
            "train-dropped": len(sets["train"] & sets["dropped"]),
            "val-dropped": len(sets["val"] & sets["dropped"]),
            "unassigned": n_train - len(sets["train"] | sets["val"] | sets["dropped"]),
        },
        duplicate_overlap=overlaps,
        short={name: ShortClass(**counts) for name, counts in split.short.items()},
    )


def _class_counts(data: Dataset, labels: np.ndarray) -> dict[str, int]:
    per_class = np.bincount(labels, minlength=data.num_classes)
    return {name: int(n) for name, n in zip(data.class_names, per_class, strict=True)}


# The phase ----------------------------------------------------------------------------------
NEAR_METHOD = (
    "exact: identical pixels (BLAKE2 hash, confirmed byte for byte); near: nearest neighbours "
    "by 8x8 layout and by low-frequency spectrum, verified by the correlation of band-pass "
    "structure in both orientations after the best shift (<= 3/32 of the side) and zoom (<= a "
    "4/32 crop); distance = 1 - correlation"
)


def scrub(
    settings: ScrubSettings, workspace: Workspace, progress: Progress | None = None
) -> ScrubResult:
    """Check the stored data set, find duplicates and leaks, split it, study interpolation."""
    data, data_manifest = load_dataset(workspace, settings.dataset)
    sha = data_manifest.outputs[IMAGES_FILE]
    folder = workspace.scrub_dir(data.name)
    start = time.perf_counter()
    with workspace.lock(f"scrub-{data.name}"):
        started = now_iso()
        integrity = check_integrity(data)
        quality, quality_flags = assess_quality(
            {s: data.split(s)[0] for s in SPLITS},
            {s: data.split(s)[1] for s in SPLITS},
            {s: data.paths(s) for s in SPLITS},
            list(data.class_names),
            {s: data.source_sizes(s) for s in SPLITS},
        )
        found = find_duplicates(data, settings.near_threshold, settings.neighbours, progress)
        leaks = leakage(found)
        split = _split(data, settings, found, leaks)
        if progress is not None:
            progress("interpolation study", 0, 1)
        study = interpolation_study(
            data.x_train, settings.image_size, settings.interp_sample, settings.seed
        )
        if progress is not None:
            progress("interpolation study", 1, 1)
        write_duplicates_csv(folder / DUPLICATES_FILE, found.pairs)
        write_quality_csv(folder / QUALITY_FILE, quality_flags)
        write_split(folder / SPLIT_FILE, data.name, sha, split, settings.drop_leaks)
        figures = _draw(data, found, study, settings.image_size, folder)
        result = ScrubResult(
            dataset=data.name,
            folder=str(folder),
            images_sha256=sha,
            duration_s=0.0,
            integrity=integrity,
            duplicates=summarize_duplicates(found, settings.neighbours),
            leakage=leaks,
            split=describe_split(data, split, found),
            interpolation=study,
            quality=quality,
            class_names=list(data.class_names),
            top_pairs=found.pairs[:10],
            files=[REPORT_JSON, SPLIT_FILE, DUPLICATES_FILE, QUALITY_FILE, *figures],
        )
        result.duration_s = round(time.perf_counter() - start, 2)
        atomic_write_json(folder / REPORT_JSON, result.to_dict())
        manifest = Manifest(
            phase="scrub",
            settings={**asdict(settings), "dataset": data.name},
            inputs={DATA_INPUT: workspace.input_record(workspace.images_path(data.name), sha)},
            outputs=dict.fromkeys(result.files, ""),
            seed=settings.seed,
            started=started,
            finished=now_iso(),
            duration_s=result.duration_s,
            extra={"dropped_train_images": len(split.dropped)},
        )
        workspace.write_manifest(folder, manifest)
    return result


def _split(data: Dataset, settings: ScrubSettings, found: Duplicates, leaks: Leakage) -> Split:
    """The stratified validation split; duplicates of any kind stay on the training side."""
    n_train = len(data.x_train)
    dropped = (
        np.asarray(leaks.train_indices_with_test_twin, dtype=np.int64)
        if settings.drop_leaks
        else np.empty(0, dtype=np.int64)
    )
    # Images with a copy elsewhere in train, or in test, never go to validation: it must
    # measure images the model has not seen in any form.
    groups = train_groups(n_train, found.ids)
    keep_in_train = np.bincount(groups, minlength=n_train)[groups] > 1
    keep_in_train[leaks.train_indices_with_test_twin] = True
    return make_split(
        data.y_train,
        keep_in_train,
        dropped,
        settings.val_size,
        settings.seed,
        list(data.class_names),
    )


def _draw(
    data: Dataset, found: Duplicates, study: InterpolationStudy, image_size: int, folder: Any
) -> list[str]:
    """The figures: the pairs most worth a look, the pairs nearest the threshold, resizing."""
    from deepsight_tf.data.interpolation import examples
    from deepsight_tf.plots import save_figure
    from deepsight_tf.plots.scrub import duplicate_pairs_figure, interpolation_figure

    images = np.concatenate([data.x_train, data.x_test])

    def panel(order: list[int], title: str) -> Any:
        pairs = [found.pairs[i] for i in order[:FIGURE_PAIRS]]
        return duplicate_pairs_figure(
            [images[found.ids[i, 0]] for i in order[:FIGURE_PAIRS]],
            [images[found.ids[i, 1]] for i in order[:FIGURE_PAIRS]],
            [(p.split_a, p.index_a, p.label_a) for p in pairs],
            [(p.split_b, p.index_b, p.label_b) for p in pairs],
            [None if p.kind == "exact" else p.distance for p in pairs],
            title,
        )

    # Label conflicts and train-test pairs first (they change results), closest first.
    priority = sorted(
        range(len(found.pairs)),
        key=lambda i: (
            found.pairs[i].same_label,
            found.pairs[i].category != "train-test",
            found.pairs[i].distance,
        ),
    )
    near = [i for i, p in enumerate(found.pairs) if p.kind == "near"]
    borderline = sorted(near, key=lambda i: -found.pairs[i].distance)
    save_figure(
        panel(priority, "Duplicates: label conflicts and train-test pairs first"),
        folder / DUPLICATES_FIGURE,
    )
    save_figure(
        panel(borderline, "Near duplicates closest to the threshold (the hardest calls)"),
        folder / BORDERLINE_FIGURE,
    )
    sample = data.x_train[int(np.random.default_rng(study.seed).integers(len(data.x_train)))]
    shown = image_size if study.rows else data.image_shape[0]
    figure = interpolation_figure(
        sample,
        examples(sample, shown),
        {row.method: row.reconstruction_rmse for row in study.rows},
        study.selected,
        study.image_size,
        study.rule,
    )
    save_figure(figure, folder / INTERPOLATION_FIGURE)
    return [DUPLICATES_FIGURE, BORDERLINE_FIGURE, INTERPOLATION_FIGURE]
