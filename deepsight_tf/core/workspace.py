"""The workspace folder: the one place that knows its layout and every artifact's name,
checks artifacts against their manifests, and locks them while a phase writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from deepsight_tf.core.errors import (
    ConfigError,
    PrerequisiteError,
    StaleArtifactError,
    WorkspaceBusyError,
)
from deepsight_tf.core.manifest import Manifest, now_iso
from deepsight_tf.core.storage import atomic_write_json, read_json, sha256_file, storage_error

# Artifact names, each spelled here only. Every phase folder holds a manifest and a report.
MANIFEST = "manifest.json"
REPORT_JSON = "report.json"  # each phase's numbers: data/, scrub/, explore/, runs/<id>/interpret/
FIGURES_DIR = "figures"
IMAGES_FILE = "images.npz"  # data/<name>/: the stored data set
SPLIT_FILE = "split.json"  # scrub/<name>/: train and validation indices
DUPLICATES_FILE = "duplicates.csv"  # scrub/<name>/
QUALITY_FILE = "quality.csv"  # scrub/<name>/: images flagged dark, blurry, ...
HYPOTHESES_FILE = "hypotheses.json"  # explore/<name>/
CONFIG_FILE = "config.json"  # runs/<id>/: resolved settings, preprocessing, phases
SETTINGS_FILE = "settings.toml"  # runs/<id>/: the settings it was given, for train --config
HISTORY_FILE = "history.csv"  # runs/<id>/: one row per epoch
MODEL_FILE = "model.keras"  # runs/<id>/: the best epoch's classifier
METRICS_FILE = "metrics.json"  # runs/<id>/: validation and test scores, the gate
PREDICTIONS_FILE = "predictions.npz"  # runs/<id>/: validation and test probabilities
CHECKPOINTS_DIR = "checkpoints"  # runs/<id>/: training state commits (train/checkpoints.py)
STATE_FILE = "state.json"  # runs/<id>/checkpoints/: names the latest commit
TENSORBOARD_DIR = "tensorboard"  # runs/<id>/
LR_FINDER_FILE = "lr_finder.json"  # runs/<id>/ of an LR range test
INTERPRET_DIR = "interpret"  # runs/<id>/interpret/
LABEL_ISSUES_FILE = "label_issues.csv"  # runs/<id>/interpret/
# runs/<id>/interpret/: the test images whose label the ImageNet probes doubt (attribution)
IMAGENET_ISSUES_FILE = "label_issues_imagenet.csv"
TRAIN_LABEL_ISSUES_FILE = "train_label_issues.csv"  # runs/<id>/interpret/: K-fold probes
# runs/<id>/interpret/: the training images' label issues from ImageNet features (the labels
# never seen by the features), the list the clean-labels-imagenet arm leaves out
IMAGENET_TRAIN_ISSUES_FILE = "train_label_issues_imagenet.csv"
FEATURES_DIR = "features"  # workspace/features/<dataset>/<variant>-<size>px-<images sha>/
FEATURES_FILE = "features.npz"  # pooled ImageNet features of every train and test image
FOCUS_PAIRS_FILE = "focus_pairs.txt"  # runs/<id>/interpret/: for train --focus-pairs @FILE
REPORT_PAGE = "report.html"  # runs/<id>/report.html
REPORTS_DIR = "reports"  # workspace/reports/: pages comparing runs
EXPERIMENTS_DIR = "experiments"  # workspace/experiments/<name>/: plan and comparison
PLAN_FILE = "plan.json"  # experiments/<name>/: the arms, their flags and run ids
BASELINE_RECALL_FILE = "baseline_val_recall.json"  # experiments/<name>/: class-weights arm
DROPPED_TRAIN_FILE = "dropped_train.csv"  # experiments/<name>/: clean-labels arm
DROPPED_TRAIN_IMAGENET_FILE = "dropped_train_imagenet.csv"  # clean-labels-imagenet arm
# Figures, each spelled here only, relative to the folder of the phase that draws it; the
# report finds them, and their captions, by these names.
DUPLICATES_FIGURE = f"{FIGURES_DIR}/duplicates.png"  # scrub/<name>/: the pairs worth a look
BORDERLINE_FIGURE = f"{FIGURES_DIR}/duplicates_borderline.png"  # scrub/<name>/: nearest calls
INTERPOLATION_FIGURE = f"{FIGURES_DIR}/interpolation.png"  # scrub/<name>/: one image resized
CLASS_BALANCE_FIGURE = f"{FIGURES_DIR}/class_balance.png"  # explore/<name>/
BRIGHTNESS_CONTRAST_FIGURE = f"{FIGURES_DIR}/brightness_contrast.png"  # explore/<name>/
SAMPLES_FIGURE = f"{FIGURES_DIR}/samples.png"  # explore/<name>/
CLASS_MEANS_FIGURE = f"{FIGURES_DIR}/class_means.png"  # explore/<name>/
BATCH_FIGURE = f"{FIGURES_DIR}/batch.png"  # runs/<id>/: a training batch as the model sees it
SCHEDULE_FIGURE = f"{FIGURES_DIR}/schedule.png"  # runs/<id>/: each phase's one-cycle curve
HISTORY_FIGURE = f"{FIGURES_DIR}/training_history.png"  # runs/<id>/: drawn by the report
LR_FINDER_FIGURE = "lr_finder.png"  # runs/<id>/ of an LR range test
CONFUSION_FIGURE = f"{FIGURES_DIR}/confusion_matrix.png"  # runs/<id>/interpret/
PER_CLASS_RECALL_FIGURE = f"{FIGURES_DIR}/per_class_recall.png"  # runs/<id>/interpret/
MOST_CONFUSED_FIGURE = f"{FIGURES_DIR}/most_confused.png"  # runs/<id>/interpret/
TOP_LOSSES_FIGURE = f"{FIGURES_DIR}/top_losses.png"  # runs/<id>/interpret/
RELIABILITY_FIGURE = f"{FIGURES_DIR}/reliability.png"  # runs/<id>/interpret/
HYPOTHESES_FIGURE = f"{FIGURES_DIR}/hypotheses.png"  # runs/<id>/interpret/
LABEL_ISSUES_FIGURE = f"{FIGURES_DIR}/label_issues.png"  # runs/<id>/interpret/
DELETION_INSERTION_FIGURE = f"{FIGURES_DIR}/deletion_insertion.png"  # runs/<id>/interpret/
SANITY_FIGURE = f"{FIGURES_DIR}/sanity_check.png"  # runs/<id>/interpret/
CONTEXT_FIGURE = f"{FIGURES_DIR}/context_reliance.png"  # runs/<id>/interpret/
CAM_FIGURE_PREFIX = "cam_"  # runs/<id>/interpret/figures/cam_<grid>.png: see cam_figure
LOCKS_DIR = ".locks"
DEFAULT_LOCK_TIMEOUT_S = 120.0


def cam_figure(grid: str) -> str:
    """interpret's CAM grid `grid` (<class>_correct, <class>_wrong, top_losses, pair_<a>_<b>)."""
    return f"{FIGURES_DIR}/{CAM_FIGURE_PREFIX}{grid}.png"


class Workspace:
    """Paths of every artifact; the one place that knows the workspace layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    # Layout -------------------------------------------------------------------------------
    def data_dir(self, dataset: str) -> Path:
        return self.root / "data" / dataset

    def images_path(self, dataset: str) -> Path:
        return self.data_dir(dataset) / IMAGES_FILE

    def scrub_dir(self, dataset: str) -> Path:
        return self.root / "scrub" / dataset

    def split_path(self, dataset: str) -> Path:
        return self.scrub_dir(dataset) / SPLIT_FILE

    def explore_dir(self, dataset: str) -> Path:
        return self.root / "explore" / dataset

    def features_dir(self, dataset: str, key: str) -> Path:
        """A cache of one backbone's features of the data set (key: variant, size, images)."""
        return self.root / FEATURES_DIR / dataset / key

    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir() / run_id

    def interpret_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / INTERPRET_DIR

    def reports_dir(self) -> Path:
        return self.root / REPORTS_DIR

    def experiment_dir(self, name: str) -> Path:
        return self.root / EXPERIMENTS_DIR / name

    def relative(self, path: Path) -> str:
        """`path` inside the workspace as manifests record it (data/cifar10/images.npz)."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def input_record(self, path: Path, sha256: str | None) -> dict[str, str | None]:
        """A manifest's entry for an input: where it is in the workspace and its SHA-256."""
        return {"path": self.relative(path), "sha256": sha256}

    def unfinished_runs(self) -> list[str]:
        """Runs that `train --resume` continues: a config.json and no manifest yet."""
        return self._folders(
            self.runs_dir(), lambda p: (p / CONFIG_FILE).is_file() and not (p / MANIFEST).is_file()
        )

    def experiments(self) -> list[str]:
        """Experiments that `experiment NAME --resume` continues: those with a plan."""
        return self._folders(self.root / EXPERIMENTS_DIR, lambda p: (p / PLAN_FILE).is_file())

    @staticmethod
    def _folders(parent: Path, keep: Callable[[Path], bool]) -> list[str]:
        if not parent.is_dir():
            return []
        return sorted(p.name for p in parent.iterdir() if p.is_dir() and keep(p))

    def datasets(self) -> list[str]:
        data = self.root / "data"
        if not data.is_dir():
            return []
        return sorted(p.name for p in data.iterdir() if (p / MANIFEST).is_file())

    def resolve_dataset(self, name: str | None) -> str:
        """The data set a phase works on: the one named, or the only one in the workspace."""
        stored = self.datasets()
        if name is not None:
            if name not in stored:
                have = ", ".join(stored) or "none"
                raise PrerequisiteError(
                    f"no data set '{name}' in {self.root / 'data'} (stored: {have}); "
                    f"run `deepsight obtain --name {name}` first"
                )
            return name
        if not stored:
            raise PrerequisiteError(
                f"no data set in workspace {self.root}; run `deepsight obtain` first"
            )
        if len(stored) > 1:
            raise ConfigError(
                f"workspace {self.root} holds several data sets ({', '.join(stored)}); "
                "choose one with --dataset"
            )
        return stored[0]

    # Manifests ----------------------------------------------------------------------------
    def write_manifest(self, artifact_dir: Path, manifest: Manifest) -> None:
        """Record the outputs' hashes and write manifest.json last, so it vouches for them."""
        for name in list(manifest.outputs):
            manifest.outputs[name] = sha256_file(artifact_dir / name)
        atomic_write_json(artifact_dir / MANIFEST, manifest)

    def read_manifest(self, artifact_dir: Path, phase_hint: str) -> Manifest:
        path = artifact_dir / MANIFEST
        if not path.is_file():
            raise PrerequisiteError(
                f"{self._rel(artifact_dir)} has not been made yet; run `{phase_hint}` first"
            )
        try:
            return Manifest.from_dict(read_json(path))
        except (OSError, ValueError, TypeError) as exc:
            raise StaleArtifactError(
                f"{self._rel(path)} is unreadable ({exc}); rerun `{phase_hint}`"
            ) from exc

    def verify(self, artifact_dir: Path, phase_hint: str) -> Manifest:
        """Check every output against its recorded SHA-256; refuse tampered or partial artifacts."""
        manifest = self.read_manifest(artifact_dir, phase_hint)
        for name, expected in manifest.outputs.items():
            path = artifact_dir / name
            if not path.is_file():
                raise StaleArtifactError(
                    f"{self._rel(path)} is missing though its manifest lists it; "
                    f"rerun `{phase_hint}`"
                )
            if sha256_file(path) != expected:
                raise StaleArtifactError(
                    f"{self._rel(path)} does not match the SHA-256 in its manifest "
                    f"(changed or half-written); rerun `{phase_hint}`"
                )
        return manifest

    def check_inputs(
        self, manifest: Manifest, current: Mapping[str, str], artifact: str, phase_hint: str
    ) -> None:
        """Refuse an artifact made from inputs that have since changed."""
        for label, sha in current.items():
            recorded = manifest.inputs.get(label, {}).get("sha256")
            if recorded != sha:
                raise StaleArtifactError(
                    f"{artifact} was made from an older {label}; rerun `{phase_hint}`"
                )

    def _rel(self, path: Path) -> str:
        try:
            return (
                str(path.relative_to(self.root.parent)) if self.root.parent != path else str(path)
            )
        except ValueError:
            return str(path)

    # Locks --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, timeout_s: float | None = None) -> Iterator[None]:
        """Hold an exclusive lock on one artifact; wait up to `timeout_s`, then refuse."""
        if timeout_s is None:
            timeout_s = float(os.environ.get("DEEPSIGHT_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S))
        lock_dir = self.root / LOCKS_DIR
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            handle = open(lock_dir / f"{name}.lock", "a+")  # noqa: SIM115 - held across yield
        except OSError as exc:
            raise storage_error(lock_dir, exc) from exc
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "another process"
                        raise WorkspaceBusyError(
                            f"{self.root}: '{name}' is locked by {holder}; wait for it to "
                            "finish or raise DEEPSIGHT_LOCK_TIMEOUT"
                        ) from None
                    time.sleep(0.2)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {now_iso()}")
            handle.flush()
            yield
        finally:
            handle.close()
