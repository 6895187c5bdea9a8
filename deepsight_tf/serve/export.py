"""Exporting a run's model for serving: SavedModel (raw-image endpoint too), .keras or ONNX."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import ConfigError, StorageError
from deepsight_tf.core.manifest import library_versions, now_iso
from deepsight_tf.core.settings import EXPORT_FORMATS
from deepsight_tf.core.storage import atomic_write_json, read_json, sha256_file, storage_error
from deepsight_tf.core.workspace import MODEL_FILE, Workspace
from deepsight_tf.serve.predict import RunModel, load_run_model, resolve_run

DEFAULT_NAMES = {"savedmodel": "savedmodel", "keras": MODEL_FILE, "onnx": "model.onnx"}
SAVEDMODEL_SIDECAR = "deepsight.json"  # inside the SavedModel folder, which ships as one unit
# The SavedModel's endpoints: the model as trained, and the same with preprocessing baked in.
SERVE_ENDPOINT = "serve"
SERVE_IMAGES_ENDPOINT = "serve_images"
CHECK_IMAGES = 8  # random images per probe size the export is compared on against the model
CHECK_SEED = 0
ONNX_INSTALL = "pip install tf2onnx onnxruntime"
RAW_IMAGES = "uint8 [batch, height, width, 3] RGB of any one size: preprocessing is built in"

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class ExportResult:
    """An exported model, its sidecar, and how closely it reproduced the run's predictions."""

    run_id: str
    format: str
    path: str
    sidecar: str
    size_bytes: int
    endpoints: dict[str, str]  # name: what it takes
    check_images: int  # images the export was compared on (0: not checked or no runtime)
    max_abs_diff: float | None  # largest |p_export - p_model| over those images and classes
    duration_s: float


def default_export_path(run_dir: Path, fmt: str) -> Path:
    """runs/<id>/export/savedmodel, runs/<id>/export/model.keras or runs/<id>/export/model.onnx."""
    check_format(fmt)
    return Path(run_dir) / "export" / DEFAULT_NAMES[fmt]


def sidecar_path(path: Path, fmt: str) -> Path:
    """Inside a SavedModel folder; beside a file as <name>.json (model.onnx.json)."""
    path = Path(path)
    return path / SAVEDMODEL_SIDECAR if fmt == "savedmodel" else path.with_name(path.name + ".json")


def check_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")


def export_run(
    workspace: Workspace,
    run: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    force: bool = False,
    check: bool = True,
) -> ExportResult:
    """Export a verified run's model as `fmt` with a JSON sidecar, then check it reproduces the
    model's probabilities on random images preprocessed the run's way.

    The artifact is written under a temporary name and renamed into place, so a failed export
    never leaves a whole-looking one. An existing `out` is refused unless `force`. `check`
    False skips the comparison (a few seconds: the export is loaded back as a consumer would).
    """
    check_format(fmt)
    if fmt == "onnx" and importlib.util.find_spec("tf2onnx") is None:
        raise ConfigError(f"--format onnx needs tf2onnx, which is not installed; {ONNX_INSTALL}")
    started = time.perf_counter()
    record = resolve_run(workspace, run)
    path = Path(out) if out is not None else default_export_path(record.run_dir, fmt)
    if fmt == "keras" and path.suffix != ".keras":
        raise ConfigError(f"--out {path}: a Keras model file must end in .keras")
    check_replaceable(path, fmt, force)
    run_model = load_run_model(record)
    with workspace.lock(f"export-{run_model.run_id}"):
        endpoints = _write(run_model, fmt, path)
    checked, diff = check_export(run_model, path, fmt) if check else (0, None)
    return ExportResult(
        run_id=run_model.run_id,
        format=fmt,
        path=str(path),
        sidecar=str(sidecar_path(path, fmt)),
        size_bytes=_size(path),
        endpoints=endpoints,
        check_images=checked,
        max_abs_diff=diff,
        duration_s=round(time.perf_counter() - started, 2),
    )


# Writers ----------------------------------------------------------------------------------------
def _write(run_model: RunModel, fmt: str, path: Path) -> dict[str, str]:
    """The export and its sidecar at `path`, under a temporary name first; a failed write
    (a read-only or full disk, /proc) is a StorageError and leaves nothing behind."""
    import tensorflow as tf

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            endpoints = _WRITERS[fmt](run_model, tmp)
            sidecar = _sidecar(run_model, fmt, endpoints)
            if fmt == "savedmodel":
                atomic_write_json(sidecar_path(tmp, fmt), sidecar)
            _replace(tmp, path)
        finally:
            _remove(tmp)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    except tf.errors.OpError as exc:  # TensorFlow's own file system (SavedModel) fails so
        raise StorageError(f"could not write {path}: {exc.message}; check the folder") from exc
    if fmt != "savedmodel":
        atomic_write_json(sidecar_path(path, fmt), sidecar)
    return endpoints


def check_replaceable(path: Path, fmt: str, force: bool) -> None:
    """Refuse to overwrite anything but an earlier export; --force replaces only such a one.

    An export is recognised by its sidecar (inside a SavedModel folder, beside a file); a
    folder or file without one was not written by `deepsight export`, and is never replaced.
    """
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        raise ConfigError(f"--out {path} exists; pass --force to replace it or choose another")
    is_export = sidecar_path(path, fmt).is_file() and not path.is_symlink()
    if path.is_dir() != (fmt == "savedmodel") or not is_export:
        raise ConfigError(
            f"--out {path}: exists and is not a deepsight {fmt} export (no "
            f"{sidecar_path(path, fmt).name}); --force replaces only earlier exports, so "
            "choose another --out"
        )


def _input_spec(run: RunModel) -> Any:
    import tensorflow as tf

    size = run.preprocessing.image_size
    return tf.TensorSpec((None, size, size, 3), tf.float32, name="images")


def _float_input(run: RunModel) -> str:
    size, interpolation = run.preprocessing.image_size, run.preprocessing.interpolation
    return (
        f"float32 [batch, {size}, {size}, 3]: RGB resized to {size} px ({interpolation}), "
        "clipped to 0..255, then (x - mean) / std as in the sidecar"
    )


def _write_savedmodel(run: RunModel, path: Path) -> dict[str, str]:
    """`serve` takes preprocessed float32 inputs exactly like model.export's; `serve_images`
    takes raw uint8 RGB batches of any size and resizes and normalises them with the training
    pipeline's own `preprocess`, baked into the graph, so a consumer needs no preprocessing."""
    import keras
    import tensorflow as tf

    model = run.model

    @tf.function(
        input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")],
    )
    def serve_images(images: tf.Tensor) -> tf.Tensor:
        size = run.preprocessing.image_size
        inputs = tf.ensure_shape(run.preprocessing(images), (None, size, size, 3))
        return model(inputs, training=False)

    archive = keras.export.ExportArchive()
    archive.track_and_add_endpoint(SERVE_ENDPOINT, model, [_input_spec(run)])
    archive.add_endpoint(SERVE_IMAGES_ENDPOINT, serve_images)
    archive.write_out(str(path), verbose=False)
    return {
        SERVE_ENDPOINT: _float_input(run) + " (also serving_default)",
        SERVE_IMAGES_ENDPOINT: RAW_IMAGES,
    }


def _write_keras(run: RunModel, path: Path) -> dict[str, str]:
    # The network behind its preprocessing layers, as the run's own model.keras is; loaded with
    # compile=False, so the copy carries no optimizer state.
    run.on_images().save(path)
    return {"model": RAW_IMAGES}


def _write_onnx(run: RunModel, path: Path) -> dict[str, str]:
    # Keras's own ONNX route: tf2onnx on the traced forward pass (with its numpy 2 patch).
    run.model.export(str(path), format="onnx", input_signature=[_input_spec(run)], verbose=False)
    return {"images": _float_input(run)}


_WRITERS: dict[str, Callable[[RunModel, Path], dict[str, str]]] = {
    "savedmodel": _write_savedmodel,
    "keras": _write_keras,
    "onnx": _write_onnx,
}


def _sidecar(run: RunModel, fmt: str, endpoints: dict[str, str]) -> dict[str, Any]:
    """What a consumer needs to feed the export as the run was fed, and what comes out."""
    return {
        "run_id": run.run_id,
        "format": fmt,
        "class_names": run.class_names,
        **run.preprocessing.to_dict(),
        "normalization_units": "0..255 pixels, per RGB channel",
        "preprocessing": run.preprocessing.describe(),
        "endpoints": endpoints,
        "output": "softmax probabilities, one per class in class_names order",
        "backbone": run.backbone,
        "source_model_sha256": sha256_file(run.record.model_path),
        "exported": now_iso(),
        "versions": library_versions(),
    }


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# Loading and checking ---------------------------------------------------------------------------
def load_export(path: str | Path, fmt: str, endpoint: str = SERVE_ENDPOINT) -> Predictor | None:
    """A batch predict function of an exported model, as a consumer would load it.

    For `serve` (and the ONNX file) it takes preprocessed float32 inputs; for `serve_images`
    and the .keras file, raw uint8 images. None for ONNX when onnxruntime is not installed.
    """
    check_format(fmt)
    path = Path(path)
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        serve = getattr(loaded, endpoint)

        def predict_savedmodel(x: np.ndarray) -> np.ndarray:
            return np.asarray(serve(tf.constant(x)))

        predict_savedmodel.loaded = loaded  # type: ignore[attr-defined] - keeps it alive
        return predict_savedmodel
    if fmt == "keras":
        from deepsight_tf.model.preprocessing import Preprocessing
        from deepsight_tf.model.saving import has_preprocessing, load_classifier, with_preprocessing

        model = load_classifier(path, preprocessing=True)
        if not has_preprocessing(model):  # exported before the file held its preprocessing
            sidecar = read_json(sidecar_path(path, fmt))
            model = with_preprocessing(model, Preprocessing.from_dict(sidecar))
        return lambda x: np.asarray(model.predict_on_batch(x))
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: np.asarray(x, np.float32)})[0])


def probe_images(size: int, n: int = CHECK_IMAGES) -> np.ndarray:
    """Random uint8 RGB images of size x size: a fixed probe for comparing exports."""
    rng = np.random.default_rng([CHECK_SEED, size])
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def check_export(run: RunModel, path: Path, fmt: str) -> tuple[int, float | None]:
    """(images compared, largest |probability difference|) between the export and run.model.

    Probe images come at the input size and at half of it, so that `serve_images` and the
    .keras file are checked through their baked-in resize too.
    """

    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # once: each load costs seconds
        predictor = getattr(loaded, SERVE_ENDPOINT)
        raw_predictor = getattr(loaded, SERVE_IMAGES_ENDPOINT)
    elif fmt == "keras":
        predictor, raw_predictor = None, load_export(path, fmt)
    else:
        predictor, raw_predictor = load_export(path, fmt), None
        if predictor is None:
            return 0, None
    size = run.preprocessing.image_size
    probes = [probe_images(side) for side in (size, max(1, size // 2))]
    inputs = np.concatenate([np.asarray(run.preprocessing(p)) for p in probes]).astype(np.float32)
    # One batch for every probe: each new batch shape costs a retrace on both sides.
    expected = np.asarray(run.model.predict_on_batch(inputs), np.float32)
    diffs = [] if predictor is None else [np.abs(np.asarray(predictor(inputs)) - expected).max()]
    if raw_predictor is not None:
        for i, images in enumerate(probes):
            rows = slice(i * len(images), (i + 1) * len(images))
            diffs.append(np.abs(np.asarray(raw_predictor(images)) - expected[rows]).max())
    return len(inputs), float(max(diffs))
