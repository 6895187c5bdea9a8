"""Using a trained run on new images: class, probability, top-k and optional Grad-CAM overlays."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepsight_tf.core.errors import ConfigError, DataError, PrerequisiteError, StaleArtifactError
from deepsight_tf.core.progress import Progress
from deepsight_tf.core.storage import atomic_path
from deepsight_tf.core.workspace import CONFIG_FILE, Workspace

# obtain's decoder, so that a file predicted on gives the pixels it would give in a data set.
from deepsight_tf.data.image_folder import IMAGE_EXTENSIONS, UnreadableImageError, decode_image
from deepsight_tf.model.preprocessing import Preprocessing
from deepsight_tf.training.record import TRAIN_HINT, RunRecord

# Same-sized images are resized together; past this many pixels a group is processed at once, so
# a batch of large photos never holds more than ~200 MB of float32 pixels before resizing.
MAX_PENDING_PIXELS = 1 << 24
# Grad-CAM overlays of small inputs (CIFAR's 32 px) are enlarged to at least this many pixels.
MIN_OVERLAY_SIDE = 128


@dataclass
class ClassProbability:
    class_name: str
    probability: float


@dataclass
class Prediction:
    """One readable image: its predicted class, that class's probability and the top k."""

    path: str
    index: int  # position in the list of paths (and row of PredictResult.probs)
    class_name: str
    class_index: int
    probability: float
    top: list[ClassProbability]
    width: int
    height: int
    gradcam: str | None = None


@dataclass
class UnreadableImage:
    path: str
    reason: str


@dataclass
class PredictResult:
    """Predictions for a list of images; unreadable ones are listed in `errors`, not fatal.

    `probs` has one row per path, in the order given, NaN where the image could not be read,
    so it lines up with any array indexed the same way (e.g. a run's stored test_probs).
    """

    run_id: str
    run_dir: str
    class_names: list[str]
    image_size: int
    interpolation: str
    normalization: dict[str, Any]
    paths: list[str]
    predictions: list[Prediction]
    errors: list[UnreadableImage]
    gradcam_dir: str | None
    gradcam_layer: str | None
    duration_s: float
    probs: np.ndarray = field(repr=False)


@dataclass
class RunModel:
    """A finished run's record and its loaded classifier: what feeding it as in training needs."""

    record: RunRecord
    model: Any

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def run_dir(self) -> Path:
        return self.record.run_dir

    @property
    def class_names(self) -> list[str]:
        return self.record.class_names

    @property
    def preprocessing(self) -> Preprocessing:
        return self.record.preprocessing

    @property
    def backbone(self) -> str:
        return self.record.settings.backbone

    def on_images(self) -> Any:
        """The classifier behind the run's preprocessing: 0..255 RGB of any size in."""
        from deepsight_tf.model.saving import with_preprocessing

        return with_preprocessing(self.model, self.preprocessing)


# Run loading ------------------------------------------------------------------------------------
def resolve_run(workspace: Workspace, run: str | Path) -> RunRecord:
    """A verified finished run: a run id in the workspace, or the path of a run folder."""
    path = Path(run)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return RunRecord.at(path)
    if len(path.parts) > 1:
        raise PrerequisiteError(
            f"{path}: not a run folder (no {CONFIG_FILE}); give a run id or a runs/<id> folder "
            "written by `deepsight train`"
        )
    return RunRecord.load(workspace, str(run))


def load_run_model(run: RunRecord | Path) -> RunModel:
    """The run's classifier (without its optimizer) beside its record."""
    record = run if isinstance(run, RunRecord) else RunRecord.at(Path(run))
    return RunModel(record, record.load_model())


def load_model(run: str | Path) -> Any:
    """A run's classifier as a Keras model on raw images, for use outside deepsight.

    `run` is a run folder or its model.keras. The model takes 0..255 RGB images of any size
    (uint8 or float, NHWC) and returns class probabilities in the run's class order: the
    run's resize and normalisation are its first layers. A model.keras saved before they
    moved into the file is wrapped with the preprocessing its config.json records.
    """
    from deepsight_tf.model.saving import has_preprocessing, load_classifier

    path = Path(run)
    run_dir = path.parent if path.suffix == ".keras" else path
    record = RunRecord.at(run_dir)
    try:
        model = load_classifier(record.model_path, preprocessing=True)
    except ValueError as exc:
        raise StaleArtifactError(f"{exc}; rerun `{TRAIN_HINT}`") from exc
    return model if has_preprocessing(model) else RunModel(record, model).on_images()


# Inputs -----------------------------------------------------------------------------------------
def collect_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[UnreadableImage]]:
    """Image files named or found (recursively, sorted) in folders; missing inputs as errors.

    A file named explicitly is tried whatever its extension; inside folders only the image
    extensions obtain reads (png, jpg, jpeg, bmp, webp) are taken.
    """
    paths: list[Path] = []
    errors: list[UnreadableImage] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                errors.append(UnreadableImage(str(path), "folder holds no png/jpg/jpeg/bmp/webp"))
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            errors.append(UnreadableImage(str(path), "no such file or folder"))
    return paths, errors


def _preprocess_batch(images: list[np.ndarray], run: RunModel) -> np.ndarray:
    """The run's preprocessing on each image; consecutive images of one size share one call."""
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            batch = run.preprocessing(np.stack(pending))
            out.append(np.asarray(batch, dtype=np.float32))
            pending.clear()

    for image in images:
        if pending and (
            image.shape != pending[0].shape
            or image.shape[0] * image.shape[1] * (len(pending) + 1) > MAX_PENDING_PIXELS
        ):
            flush()
        pending.append(image)
    flush()
    return np.concatenate(out)


# Prediction -------------------------------------------------------------------------------------
def predict_paths(
    run_dir: str | Path,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    *,
    top_k: int = 3,
    gradcam_dir: str | Path | None = None,
    progress: Progress | None = None,
    run: RunModel | None = None,
) -> PredictResult:
    """Class probabilities for image files, preprocessed exactly as the run's training was.

    Each image is decoded to RGB uint8 like obtain does, resized and normalised by
    pipeline.preprocess with the run's image size, interpolation and normalisation, and fed to
    the model in batches of `batch_size`. With `gradcam_dir`, a Grad-CAM overlay of the
    predicted class is written there for each image. DataError if no image could be read.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be positive")
    if top_k < 1:
        raise ConfigError(f"--top-k {top_k} must be positive")
    started = time.perf_counter()
    run = run or load_run_model(Path(run_dir))
    paths = [Path(p) for p in paths]
    n_classes = len(run.class_names)
    probs = np.full((len(paths), n_classes), np.nan, dtype=np.float32)
    predictions: list[Prediction] = []
    errors: list[UnreadableImage] = []
    cam = _GradcamWriter(run, Path(gradcam_dir)) if gradcam_dir is not None else None
    k = min(top_k, n_classes)
    for start in range(0, len(paths), batch_size):
        batch_range = range(start, min(start + batch_size, len(paths)))
        rows, images = _read_images(paths, batch_range, errors)
        if rows:
            probs[rows], batch = _predict_batch(run, cam, paths, rows, images, k)
            predictions += batch
        if progress is not None:
            progress("predicting", min(start + batch_size, len(paths)), len(paths))
    if not predictions:
        first = f" (first: {errors[0].path}: {errors[0].reason})" if errors else ""
        raise DataError(
            f"none of the {len(paths)} images could be read{first}; give png/jpg/jpeg/bmp/webp "
            "files or folders holding them"
        )
    return PredictResult(
        run_id=run.run_id,
        run_dir=str(run.run_dir),
        class_names=run.class_names,
        image_size=run.preprocessing.image_size,
        interpolation=run.preprocessing.interpolation,
        normalization=run.preprocessing.normalization.to_dict(),
        paths=[str(p) for p in paths],
        predictions=predictions,
        errors=errors,
        gradcam_dir=str(gradcam_dir) if gradcam_dir is not None else None,
        gradcam_layer=cam.layer if cam else None,
        duration_s=round(time.perf_counter() - started, 2),
        probs=probs,
    )


def _read_images(
    paths: list[Path], indices: range, errors: list[UnreadableImage]
) -> tuple[list[int], list[np.ndarray]]:
    """The positions and RGB uint8 images of the paths that decode; each that does not is
    added to `errors` with its reason."""
    rows, images = [], []
    for i in indices:
        try:
            images.append(decode_image(paths[i])[0])
            rows.append(i)
        except UnreadableImageError as exc:
            errors.append(UnreadableImage(str(paths[i]), str(exc)))
    return rows, images


def _predict_batch(
    run: RunModel,
    cam: _GradcamWriter | None,
    paths: list[Path],
    rows: list[int],
    images: list[np.ndarray],
    k: int,
) -> tuple[np.ndarray, list[Prediction]]:
    """One batch through the run's preprocessing and model: its probabilities and each
    image's prediction (with its Grad-CAM overlay where asked for)."""
    inputs = _preprocess_batch(images, run)
    probs = np.asarray(run.model.predict_on_batch(inputs), dtype=np.float32)
    predictions = [
        _prediction(paths[i], i, images[j], probs[j], run.class_names, k)
        for j, i in enumerate(rows)
    ]
    if cam is not None:
        overlays = cam.write(inputs, images, probs, rows, paths)
        for prediction, overlay in zip(predictions, overlays, strict=True):
            prediction.gradcam = overlay
    return probs, predictions


def _prediction(
    path: Path, index: int, image: np.ndarray, probs: np.ndarray, class_names: list[str], k: int
) -> Prediction:
    """One image's class, probability and top k (ties broken by class order)."""
    order = np.argsort(-probs, kind="stable")[:k]
    return Prediction(
        path=str(path),
        index=index,
        class_name=class_names[order[0]],
        class_index=int(order[0]),
        probability=float(probs[order[0]]),
        top=[ClassProbability(class_names[c], float(probs[c])) for c in order],
        width=int(image.shape[1]),
        height=int(image.shape[0]),
    )


def predict(
    workspace: Workspace,
    run: str | Path,
    inputs: Sequence[str | Path],
    batch_size: int = 64,
    *,
    top_k: int = 3,
    gradcam_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> PredictResult:
    """`deepsight predict`: a verified run on files and folders; missing inputs become errors."""
    record = resolve_run(workspace, run)
    paths, missing = collect_images(inputs)
    if not paths:
        first = f" (first: {missing[0].path}: {missing[0].reason})" if missing else ""
        raise DataError(
            f"no image files among the {len(inputs)} inputs{first}; give png/jpg/jpeg/bmp/webp "
            "files or folders holding them"
        )
    result = predict_paths(
        record.run_dir,
        paths,
        batch_size,
        top_k=top_k,
        gradcam_dir=gradcam_dir,
        progress=progress,
        run=load_run_model(record),
    )
    result.errors = missing + result.errors
    return result


# Grad-CAM ---------------------------------------------------------------------------------------
class _GradcamWriter:
    """Grad-CAM of the predicted class on the backbone's registered layer, as PNG overlays."""

    def __init__(self, run: RunModel, folder: Path) -> None:
        from deepsight_tf.model.backbones import get_backbone_spec

        self.layer = get_backbone_spec(run.backbone).last_conv_layer
        self.model = run.model
        self.folder = folder

    def write(
        self,
        inputs: np.ndarray,
        images: list[np.ndarray],
        probs: np.ndarray,
        rows: list[int],
        paths: list[Path],
    ) -> list[str]:
        from deepsight_tf.diagnose.explain import compute_cams

        maps = compute_cams(
            self.model, inputs, probs.argmax(axis=1), layer_name=self.layer, batch_size=len(inputs)
        )
        written = []
        for image, cam, i in zip(images, maps, rows, strict=True):
            # The input position makes names unique: folders often repeat names (cat/0001.jpg).
            out = self.folder / f"{i:05d}-{paths[i].stem}.png"
            with atomic_path(out) as tmp:
                overlay_image(image, cam).save(tmp, format="PNG")
            written.append(str(out))
        return written


def overlay_image(image: np.ndarray, cam: np.ndarray) -> Image.Image:
    """The explain plots' overlay of a 0..1 map on an RGB uint8 image, small images enlarged.

    CIFAR's 32 px pictures are enlarged (nearest, so their pixels stay as they are) until the
    shorter side reaches MIN_OVERLAY_SIDE; the map is stretched over the enlarged picture.
    """
    from deepsight_tf.plots.explain import cam_overlay

    height, width = image.shape[:2]
    scale = max(1, math.ceil(MIN_OVERLAY_SIDE / min(height, width)))
    base = np.asarray(Image.fromarray(image).resize((width * scale, height * scale), Image.NEAREST))
    blended = cam_overlay(base, cam)
    return Image.fromarray(np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8))
