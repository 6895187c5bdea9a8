"""The obtain phase: read a data set from its source, check it, store it once in the workspace."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.checks import check_name, verify_labels
from deepsight_tf.core.errors import ConfigError, DataError, StaleArtifactError
from deepsight_tf.core.manifest import Manifest, now_iso
from deepsight_tf.core.progress import Progress
from deepsight_tf.core.records import from_versioned_json
from deepsight_tf.core.settings import ObtainSettings
from deepsight_tf.core.storage import atomic_write_json, read_json, sha256_file
from deepsight_tf.core.workspace import IMAGES_FILE, MANIFEST, REPORT_JSON, Workspace
from deepsight_tf.data.dataset import SPLITS, Dataset, save_dataset
from deepsight_tf.data.raw import RawDataset, SkippedFile
from deepsight_tf.data.sources import (
    CIFAR10_SHA256,
    download_cifar10,
    fingerprint,
    read_source,
    source_kind,
)

PHASE_HINT = "deepsight obtain"
SCHEMA = 1  # the layout of obtain's report.json (core/records.py: version 0 had no field)


@dataclass
class ObtainResult:
    """Obtain's report.json: what was read from where, and what was stored."""

    dataset: str
    folder: str
    source: str
    kind: str
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    image_shape: list[int]
    sha256: str
    duration_s: float
    up_to_date: bool = False
    skipped: list[SkippedFile] = field(default_factory=list)
    conversions: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    schema: int = SCHEMA

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObtainResult:
        return from_versioned_json(cls, data, SCHEMA, "obtain report")


def dataset_name(settings: ObtainSettings) -> str:
    if settings.name is not None:
        name = settings.name
    elif settings.source is None:
        name = "cifar10"
    else:
        stem = Path(settings.source).resolve().name
        for suffix in (".tar.gz", ".tgz", ".tar", ".npz"):
            stem = stem.removesuffix(suffix)
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "dataset"
    check_name(name, "--name")
    return name


def obtain(
    settings: ObtainSettings, workspace: Workspace, progress: Progress | None = None
) -> ObtainResult:
    """Store the data set named by `settings` unless an identical copy is already stored."""
    name = dataset_name(settings)
    if settings.resize is not None and not 8 <= settings.resize <= 1024:
        raise ConfigError(f"--resize {settings.resize}: choose a size between 8 and 1024 pixels")
    if settings.source is not None:
        # A path that is no source fails here, before the workspace or a lock is made.
        source_kind(Path(settings.source))
    source = str(Path(settings.source).resolve()) if settings.source else "keras:cifar10"
    recorded = {"source": source, "resize": settings.resize, "strict": settings.strict}
    folder = workspace.data_dir(name)
    start = time.perf_counter()
    with workspace.lock(f"data-{name}"):
        if settings.source is None:
            source_id = f"keras:{CIFAR10_SHA256}"
        else:
            source_id = fingerprint(Path(settings.source))
        if not settings.force:
            stored = _stored_if_current(workspace, folder, source_id, recorded)
            if stored is not None:
                return stored
        started = now_iso()
        raw = _read(settings, source, progress)
        data = Dataset(
            name=name,
            class_names=raw.class_names,
            x_train=raw.x_train,
            y_train=raw.y_train,
            x_test=raw.x_test,
            y_test=raw.y_test,
            train_paths=raw.train_paths,
            test_paths=raw.test_paths,
            train_sizes=raw.train_sizes,
            test_sizes=raw.test_sizes,
        )
        save_dataset(folder / IMAGES_FILE, data)
        result = ObtainResult(
            dataset=name,
            folder=str(folder),
            source=source,
            kind=raw.kind,
            class_names=raw.class_names,
            counts={split: data.counts(split) for split in SPLITS},
            image_shape=list(data.image_shape),
            sha256=sha256_file(folder / IMAGES_FILE),  # the manifest records the same
            duration_s=round(time.perf_counter() - start, 2),
            skipped=raw.skipped,
            conversions=raw.conversions,
            warnings=raw.warnings,
        )
        atomic_write_json(folder / REPORT_JSON, result)
        source_input = {"path": source, "fingerprint": source_id, "kind": raw.kind}
        _vouch(workspace, folder, result, recorded, source_input, started)
        return result


def _read(settings: ObtainSettings, source: str, progress: Progress | None) -> RawDataset:
    """The images and labels of the source (or the Keras download), checked; with --strict
    a file that could not be read is an error instead of a skipped file."""
    raw = (
        download_cifar10()
        if settings.source is None
        else read_source(Path(settings.source), resize=settings.resize, progress=progress)
    )
    if settings.strict and raw.skipped:
        first = raw.skipped[0]
        raise DataError(
            f"{Path(source) / first.path}: {first.reason} ({len(raw.skipped)} such files); "
            "fix or remove them, or drop --strict to skip them"
        )
    check_raw(raw, source)
    return raw


def _vouch(
    workspace: Workspace,
    folder: Path,
    result: ObtainResult,
    recorded: dict[str, Any],
    source: dict[str, Any],
    started: str,
) -> None:
    """The manifest that vouches for the stored files."""
    manifest = Manifest(
        phase="obtain",
        settings=recorded,
        inputs={"source": source},
        outputs={IMAGES_FILE: "", REPORT_JSON: ""},
        started=started,
        finished=now_iso(),
        duration_s=result.duration_s,
        extra={"summary": _summary(result)},
    )
    workspace.write_manifest(folder, manifest)


def check_raw(raw: RawDataset, source: str) -> None:
    """Refuse a data set whose arrays are inconsistent, naming what to fix."""
    if len(raw.x_train) == 0:
        raise DataError(f"{source}: no training images found")
    if raw.x_train.shape[1:] != raw.x_test.shape[1:] and len(raw.x_test):
        raise DataError(
            f"{source}: train images are {raw.x_train.shape[1:]} but test images are "
            f"{raw.x_test.shape[1:]}; pass --resize N to bring both to NxN"
        )
    k = len(raw.class_names)
    _check_class_names(raw.class_names, source)
    for split, y in (("train", raw.y_train), ("test", raw.y_test)):
        verify_labels(y, k, where=f"{source}: {split} labels ({k} class names)")
    missing = [
        c
        for c, n in zip(raw.class_names, np.bincount(raw.y_train, minlength=k), strict=True)
        if n == 0
    ]
    if missing:
        raise DataError(
            f"{source}: classes {missing} have no training images; add images or drop the class"
        )


def _check_class_names(names: list[str], source: str) -> None:
    """At least two classes, each named once: a classifier of one class learns nothing, and a
    repeated name would merge two classes' counts in every report."""
    if len(names) < 2:
        raise DataError(
            f"{source}: {len(names)} class ({', '.join(names) or 'none'}); a classifier needs "
            "at least 2 classes"
        )
    seen: set[str] = set()
    for name in names:
        if not name.strip():
            raise DataError(f"{source}: a class name is empty; name every class")
        if name in seen:
            raise DataError(f"{source}: class name {name!r} is given twice; name each class once")
        seen.add(name)


def _summary(result: ObtainResult) -> dict:
    summary = asdict(result)
    summary["skipped"] = len(result.skipped)
    return summary


def _stored_if_current(
    workspace: Workspace, folder: Path, source_id: str, recorded: dict
) -> ObtainResult | None:
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = workspace.verify(folder, PHASE_HINT)
    except StaleArtifactError:
        return None
    if (
        manifest.inputs.get("source", {}).get("fingerprint") != source_id
        or manifest.settings != recorded
    ):
        return None
    summary = dict(manifest.extra["summary"])
    report = read_json(folder / REPORT_JSON)
    summary["skipped"] = [SkippedFile(**s) for s in report.get("skipped", [])]
    summary.update(up_to_date=True, sha256=manifest.outputs[IMAGES_FILE], duration_s=0.0)
    return ObtainResult(**summary)
