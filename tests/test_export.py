"""export: each format reproduces the run's predictions; sidecar, overwrite rules and the CLI."""

from __future__ import annotations

import importlib.util
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import ConfigError
from deepsight_tf.model.preprocessing import preprocess
from deepsight_tf.serve import export as export_module
from deepsight_tf.serve.export import (
    ExportResult,
    default_export_path,
    export_run,
    load_export,
    sidecar_path,
)
from deepsight_tf.serve.predict import load_run_model

from support.tiny_run import (
    CLASS_NAMES,
    IMAGE_SIZE,
    NORMALIZATION,
    SOURCE_SIZE,
    TinyRun,
    make_tiny_run,
)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def test_set(tiny: TinyRun) -> tuple[np.ndarray, np.ndarray]:
    """The run's test images preprocessed as in training, and model.predict on them."""
    inputs = preprocess(tiny.x_test, IMAGE_SIZE, NORMALIZATION, "bicubic").numpy()
    model = load_run_model(tiny.run_dir).model
    return inputs, np.asarray(model.predict(inputs, verbose=0))


def weight_groups(keras_file: Path) -> set[str]:
    import h5py

    with zipfile.ZipFile(keras_file) as archive:
        data = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(data, "r") as weights:
        return {key for key in weights if len(weights[key])}


def test_keras_export_predicts_as_the_run_and_has_no_optimizer(
    tiny: TinyRun, test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    import keras

    result = export_run(tiny.workspace, "tiny", "keras")
    path = Path(result.path)
    assert path == default_export_path(tiny.run_dir, "keras") == tiny.run_dir / "export/model.keras"
    _, expected = test_set
    # No custom object needed: the export carries no optimizer, schedule or metric. It takes
    # the raw uint8 images (12 px, the network 16): its preprocessing is its first layers.
    reloaded = keras.saving.load_model(path, safe_mode=True, custom_objects={})
    assert tiny.x_test.dtype == np.uint8 and tiny.x_test.shape[1] == SOURCE_SIZE != IMAGE_SIZE
    np.testing.assert_allclose(reloaded.predict(tiny.x_test, verbose=0), expected, atol=TOLERANCE)
    # Neither file carries optimizer state (the run's own model.keras is the network alone too).
    assert weight_groups(tiny.run_dir / "model.keras") == {"layers"}
    assert weight_groups(path) == {"layers"}
    assert json.loads(zipfile.ZipFile(path).read("config.json")).get("compile_config") in (None, {})
    assert result.check_images == 16  # 8 at the input size, 8 at half of it
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOLERANCE
    # An export written before the file held its preprocessing (the network alone, beside its
    # sidecar) is fed raw images all the same.
    from deepsight_tf.model.saving import load_classifier, save_classifier

    save_classifier(load_classifier(path), path)
    predict = load_export(path, "keras")
    assert predict is not None
    np.testing.assert_allclose(predict(tiny.x_test), expected, atol=TOLERANCE)


@pytest.fixture(scope="module")
def savedmodel(tiny: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """One SavedModel export (the slowest format to write) shared by the tests that read it."""
    out = tmp_path_factory.mktemp("savedmodel") / "served"
    return export_run(tiny.workspace, tiny.run_dir, "savedmodel", out)


def test_savedmodel_serve_and_baked_preprocessing_endpoint(
    savedmodel: ExportResult, tiny: TinyRun, test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    import tensorflow as tf

    result, out = savedmodel, Path(savedmodel.path)
    assert set(result.endpoints) == {"serve", "serve_images"}
    loaded = tf.saved_model.load(str(out))
    inputs, expected = test_set
    np.testing.assert_allclose(loaded.serve(tf.constant(inputs)), expected, atol=TOLERANCE)
    # Raw uint8 images at the stored size: the export resizes and normalises them itself.
    assert tiny.x_test.shape[1] == SOURCE_SIZE != IMAGE_SIZE
    raw = loaded.serve_images(tf.constant(tiny.x_test))
    np.testing.assert_allclose(raw, expected, atol=TOLERANCE)
    signature = loaded.signatures["serving_default"]
    (probs,) = signature(images=tf.constant(inputs)).values()
    np.testing.assert_allclose(probs, expected, atol=TOLERANCE)
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOLERANCE


def test_sidecar_describes_preprocessing_and_classes(
    savedmodel: ExportResult, tmp_path: Path
) -> None:
    result = savedmodel
    assert Path(result.sidecar) == Path(result.path) / "deepsight.json"
    sidecar = json.loads(Path(result.sidecar).read_text())
    assert sidecar["class_names"] == CLASS_NAMES
    assert sidecar["image_size"] == IMAGE_SIZE
    assert sidecar["interpolation"] == "bicubic"
    assert sidecar["normalization"]["mean"] == list(NORMALIZATION.mean)
    assert sidecar["normalization"]["std"] == list(NORMALIZATION.std)
    assert sidecar_path(tmp_path / "m.keras", "keras") == tmp_path / "m.keras.json"


def test_existing_output_is_refused_unless_forced(tiny: TinyRun, tmp_path: Path) -> None:
    out = tmp_path / "again.keras"
    export_run(tiny.workspace, "tiny", "keras", out, check=False)
    first = out.stat().st_mtime_ns
    with pytest.raises(ConfigError, match="--force"):
        export_run(tiny.workspace, "tiny", "keras", out)
    assert out.stat().st_mtime_ns == first
    export_run(tiny.workspace, "tiny", "keras", out, force=True, check=False)
    assert out.stat().st_mtime_ns != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.keras", "again.keras.json"]
    with pytest.raises(ConfigError, match=r"\.keras"):
        export_run(tiny.workspace, "tiny", "keras", tmp_path / "model.h5")


def test_onnx_without_tf2onnx_is_a_config_error_saying_what_to_install(
    tiny: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        export_module.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tf2onnx" else real(name, *args),
    )
    with pytest.raises(ConfigError, match="pip install tf2onnx onnxruntime"):
        export_run(tiny.workspace, "tiny", "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_export_predicts_as_the_run(
    tiny: TinyRun, test_set: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    result = export_run(tiny.workspace, "tiny", "onnx", tmp_path / "m.onnx")
    inputs, expected = test_set
    predict = load_export(result.path, "onnx")
    assert predict is not None
    np.testing.assert_allclose(predict(inputs), expected, atol=TOLERANCE)
    assert json.loads(Path(result.sidecar).read_text())["format"] == "onnx"


def test_cli_export(tiny: TinyRun, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--workspace", str(tiny.workspace.root)]
    out = tmp_path / "cli.keras"
    done = runner.invoke(
        app, [*base, "--json", "export", "tiny", "--format", "keras", "--out", str(out)]
    )
    assert done.exit_code == 0, done.output
    payload = json.loads(done.stdout)
    assert payload["path"] == str(out) and payload["format"] == "keras"
    assert payload["max_abs_diff"] <= TOLERANCE
    bad = runner.invoke(app, [*base, "export", "tiny", "--format", "tflite"])
    assert bad.exit_code == 2  # refused while parsing: the choices are listed
    assert "--format" in bad.output and "savedmodel" in bad.output
    missing = runner.invoke(app, [*base, "export", "nope"])
    assert missing.exit_code == 4
