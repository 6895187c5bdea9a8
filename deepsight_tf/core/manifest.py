"""What made an artifact: the phase, inputs and outputs with SHA-256, settings and versions."""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

# Libraries whose versions are recorded in every manifest (read from package metadata, no import).
RECORDED_PACKAGES = (
    "deepsight",
    "numpy",
    "tensorflow",
    "keras",
    "keras-hub",
    "albumentations",
    "scikit-learn",
    "tf-keras-vis",
    "cleanlab",
    "pillow",
)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


@dataclass
class Manifest:
    """What made an artifact: the phase, its inputs and outputs with SHA-256, settings, versions."""

    phase: str
    settings: dict[str, Any]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    started: str = field(default_factory=now_iso)
    finished: str | None = None
    duration_s: float | None = None
    versions: dict[str, str] = field(default_factory=library_versions)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


# The labels under which manifests record their inputs; a later phase checks an input by label.
DATA_INPUT = "data set"  # data/<name>/images.npz
SPLIT_INPUT = "split"  # scrub/<name>/split.json
DROPPED_INPUT = "dropped training images"  # --drop-train's CSV
MODEL_INPUT = "model"  # runs/<id>/model.keras
PREDICTIONS_INPUT = "predictions"  # runs/<id>/predictions.npz
FEATURES_INPUT = "imagenet features"  # features/<dataset>/<key>/features.npz
ENSEMBLE_INPUT = "ensemble predictions"  # runs/<other>/predictions.npz (--ensemble-with)
