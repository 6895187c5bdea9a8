"""What explore stores, as later phases read it: report.json as a typed record, and the
registered hypotheses (hypotheses.json).

explore.py computes and writes them; the loaders below first check the folder against its
manifest and the data set it was made from: training (the pixel statistics that normalise a
network trained from scratch), interpret and the experiment (the hypotheses), the run report
(the report's fields). `SCHEMA` is report.json's layout version, written into the file; a
file without one (version 0) has the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsight_tf.core.errors import StaleArtifactError
from deepsight_tf.core.manifest import DATA_INPUT
from deepsight_tf.core.records import from_versioned_json, read_record
from deepsight_tf.core.storage import read_json
from deepsight_tf.core.workspace import HYPOTHESES_FILE, REPORT_JSON, Workspace
from deepsight_tf.data.dataset import dataset_sha256
from deepsight_tf.data.hypotheses import Hypotheses

PHASE_HINT = "deepsight explore"


@dataclass
class ClassBalance:
    """Images per class in one split and a chi-square test of a uniform distribution."""

    split: str
    counts: dict[str, int]
    total: int
    chi2: float | None  # None when the test is undefined (empty split, one class)
    dof: int
    p_value: float | None
    imbalance_ratio: float | None  # largest class over smallest; None if a class is empty


@dataclass
class PixelStats:
    """Per-channel (RGB) mean and population std over every pixel of a split."""

    split: str
    n_images: int
    mean: list[float]  # 0..255
    std: list[float]  # 0..255
    mean_unit: list[float]  # 0..1, for inputs scaled by 1/255
    std_unit: list[float]


@dataclass
class Summary:
    """A distribution in five numbers."""

    mean: float
    std: float
    median: float
    q25: float
    q75: float


@dataclass
class ClassAppearance:
    """Per-image mean luma (brightness) and RMS contrast of one class, both in 0..1."""

    class_name: str
    n_images: int
    brightness: Summary
    contrast: Summary


SCHEMA = 1  # the layout of explore's report.json (core/records.py: version 0 had no field)


@dataclass
class ExploreResult:
    """Explore's report.json."""

    dataset: str
    folder: str
    input_sha256: str
    class_names: list[str]
    image_shape: list[int]
    balance: list[ClassBalance]
    pixel_stats: PixelStats
    appearance: list[ClassAppearance]
    brightest_class: str
    darkest_class: str
    highest_contrast_class: str
    lowest_contrast_class: str
    samples: dict[str, list[int]]  # train indices shown in the sample grid, per class
    hypotheses: Hypotheses
    figures: list[str]
    duration_s: float
    warnings: list[str] = field(default_factory=list)
    schema: int = SCHEMA

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExploreResult:
        return from_versioned_json(cls, data, SCHEMA, "explore report")


# Loading for later phases ------------------------------------------------------------------
def verified_explore_dir(workspace: Workspace, dataset: str | None = None) -> Path:
    """The explore folder of a data set, after checking its outputs and its input's hash."""
    name = workspace.resolve_dataset(dataset)
    folder = workspace.explore_dir(name)
    hint = f"{PHASE_HINT} --dataset {name}"
    manifest = workspace.verify(folder, hint)
    workspace.check_inputs(
        manifest, {DATA_INPUT: dataset_sha256(workspace, name)}, workspace.relative(folder), hint
    )
    return folder


def load_hypotheses(workspace: Workspace, dataset: str | None = None) -> Hypotheses:
    """The hypotheses explore registered for a data set, refused when stale or tampered."""
    folder = verified_explore_dir(workspace, dataset)
    try:
        return Hypotheses.from_dict(read_json(folder / HYPOTHESES_FILE))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise StaleArtifactError(
            f"{folder / HYPOTHESES_FILE} is unreadable ({exc}); rerun `{PHASE_HINT}`"
        ) from exc


def load_explore_report(workspace: Workspace, dataset: str | None = None) -> ExploreResult:
    """Explore's report.json, after its manifest and input are checked."""
    folder = verified_explore_dir(workspace, dataset)
    return read_record(folder / REPORT_JSON, ExploreResult.from_dict, PHASE_HINT)


def load_pixel_stats(workspace: Workspace, dataset: str | None = None) -> PixelStats:
    """Per-channel mean and std of the train split, for normalising inputs from scratch."""
    return load_explore_report(workspace, dataset).pixel_stats
