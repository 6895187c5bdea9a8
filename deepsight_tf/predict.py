"""Using a trained run on new images: class, probability, top-k and optional Grad-CAM overlays."""

from __future__ import annotations

import math
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepsight_tf.errors import ConfigError, DataError, PrerequisiteError, StaleArtifactError
from deepsight_tf.sources import IMAGE_EXTENSIONS, Progress, _UnreadableImage

# obtain's decoder, so that a file predicted on gives the pixels it would give in a data set.
from deepsight_tf.sources import _decode as decode_like_obtain
from deepsight_tf.training import CONFIG_FILE, METRICS_FILE, MODEL_FILE
from deepsight_tf.workspace import Workspace, atomic_path, read_json

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
    """A finished run's classifier with everything needed to feed it as in training."""

    run_id: str
    run_dir: Path
    model: Any
    class_names: list[str]
    image_size: int
    backbone: str
    interpolation: str
    normalization: Any  # backbones.Normalization


# Run loading ------------------------------------------------------------------------------------
def resolve_run_dir(workspace: Workspace, run: str | Path) -> Path:
    """A verified finished run: a run id in the workspace, or the path of a run folder."""
    from deepsight_tf.training import load_run

    path = Path(run)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        Workspace(path.parent).verify(path, "deepsight train")
        return path
    if len(path.parts) > 1:
        raise PrerequisiteError(
            f"{path}: not a run folder (no {CONFIG_FILE}); give a run id or a runs/<id> folder "
            "written by `deepsight train`"
        )
    run_dir, _ = load_run(workspace, str(run))
    return run_dir


def load_run_model(run_dir: Path) -> RunModel:
    """The run's model (without its optimizer) and its preprocessing settings from config.json."""
    import keras

    from deepsight_tf.backbones import Normalization
    from deepsight_tf.fastconv import accelerate_convolutions

    run_dir = Path(run_dir)
    try:
        config = read_json(run_dir / CONFIG_FILE)
        metrics = read_json(run_dir / METRICS_FILE)
        settings = config["settings"]
        image_size = int(settings["image_size"])
        backbone = str(settings["backbone"])
        interpolation = str(config["interpolation"])
        normalization = Normalization(
            mean=tuple(config["normalization"]["mean"]),
            std=tuple(config["normalization"]["std"]),
            source=config["normalization"]["source"],
        )
        class_names = [str(name) for name in metrics["class_names"]]
    except FileNotFoundError as exc:
        raise PrerequisiteError(
            f"{exc.filename}: missing; the run is unfinished, rerun `deepsight train`"
        ) from exc
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise StaleArtifactError(
            f"{run_dir}: config.json or metrics.json lacks what prediction needs ({exc!r}); "
            "rerun `deepsight train`"
        ) from exc
    try:
        # compile=False: inference needs no optimizer, and so no custom optimizer classes.
        model = keras.saving.load_model(run_dir / MODEL_FILE, safe_mode=True, compile=False)
    except (ValueError, OSError, TypeError, zipfile.BadZipFile) as exc:
        raise StaleArtifactError(
            f"{run_dir / MODEL_FILE}: cannot be loaded ({str(exc).splitlines()[0]}); "
            "rerun `deepsight train`"
        ) from exc
    accelerate_convolutions(model)  # fast gradients for Grad-CAM, clear of the oneDNN crash
    outputs = int(model.outputs[0].shape[-1])
    if outputs != len(class_names):
        raise StaleArtifactError(
            f"{run_dir / MODEL_FILE}: {outputs} outputs but metrics.json names "
            f"{len(class_names)} classes; rerun `deepsight train`"
        )
    return RunModel(
        run_id=str(config.get("run_id", run_dir.name)),
        run_dir=run_dir,
        model=model,
        class_names=class_names,
        image_size=image_size,
        backbone=backbone,
        interpolation=interpolation,
        normalization=normalization,
    )


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


def decode_image(path: Path) -> np.ndarray:
    """RGB uint8 HWC, decoded exactly as obtain decodes an image folder; DataError if unreadable."""
    try:
        return _decode(path)
    except _UnreadableImage as exc:
        raise DataError(f"{path}: {exc}") from exc


def _decode(path: Path) -> np.ndarray:
    try:
        return decode_like_obtain(path)[0]
    except Image.DecompressionBombError as exc:
        # PIL refuses images past ~179 megapixels; obtain's decoder does not catch that kind.
        raise _UnreadableImage(f"image too large to decode safely ({exc})") from exc


def _preprocess_batch(images: list[np.ndarray], run: RunModel) -> np.ndarray:
    """pipeline.preprocess on each image; consecutive images of one size share one call."""
    from deepsight_tf.pipeline import preprocess

    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            batch = preprocess(
                np.stack(pending), run.image_size, run.normalization, run.interpolation
            )
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
        rows, images = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                images.append(_decode(paths[i]))
                rows.append(i)
            except _UnreadableImage as exc:
                errors.append(UnreadableImage(str(paths[i]), str(exc)))
        if rows:
            inputs = _preprocess_batch(images, run)
            batch_probs = np.asarray(run.model.predict_on_batch(inputs), dtype=np.float32)
            probs[rows] = batch_probs
            overlays = cam.write(inputs, images, batch_probs, rows, paths) if cam else None
            for j, i in enumerate(rows):
                order = np.argsort(-batch_probs[j], kind="stable")[:k]
                predictions.append(
                    Prediction(
                        path=str(paths[i]),
                        index=i,
                        class_name=run.class_names[order[0]],
                        class_index=int(order[0]),
                        probability=float(batch_probs[j, order[0]]),
                        top=[
                            ClassProbability(run.class_names[c], float(batch_probs[j, c]))
                            for c in order
                        ],
                        width=int(images[j].shape[1]),
                        height=int(images[j].shape[0]),
                        gradcam=overlays[j] if overlays else None,
                    )
                )
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
        image_size=run.image_size,
        interpolation=run.interpolation,
        normalization={
            "mean": list(run.normalization.mean),
            "std": list(run.normalization.std),
            "source": run.normalization.source,
        },
        paths=[str(p) for p in paths],
        predictions=predictions,
        errors=errors,
        gradcam_dir=str(gradcam_dir) if gradcam_dir is not None else None,
        gradcam_layer=cam.layer if cam else None,
        duration_s=round(time.perf_counter() - started, 2),
        probs=probs,
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
    run_dir = resolve_run_dir(workspace, run)
    paths, missing = collect_images(inputs)
    if not paths:
        first = f" (first: {missing[0].path}: {missing[0].reason})" if missing else ""
        raise DataError(
            f"no image files among the {len(inputs)} inputs{first}; give png/jpg/jpeg/bmp/webp "
            "files or folders holding them"
        )
    result = predict_paths(
        run_dir, paths, batch_size, top_k=top_k, gradcam_dir=gradcam_dir, progress=progress
    )
    result.errors = missing + result.errors
    return result


# Grad-CAM ---------------------------------------------------------------------------------------
class _GradcamWriter:
    """Grad-CAM of the predicted class on the backbone's registered layer, as PNG overlays."""

    def __init__(self, run: RunModel, folder: Path) -> None:
        from deepsight_tf.backbones import get_backbone_spec

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
        from deepsight_tf.explain import compute_cams

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
