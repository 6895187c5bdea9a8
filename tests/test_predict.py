"""predict: agreement with training's test predictions, any image size, errors, Grad-CAM, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import DataError, PrerequisiteError, StaleArtifactError
from deepsight_tf.core.settings import INTERPOLATIONS
from deepsight_tf.model.preprocessing import preprocess
from deepsight_tf.serve.predict import (
    collect_images,
    load_run_model,
    overlay_image,
    predict,
    predict_paths,
    resolve_run,
)

from support.tiny_run import (
    CLASS_NAMES,
    IMAGE_SIZE,
    NORMALIZATION,
    SOURCE_SIZE,
    TinyRun,
    make_tiny_run,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("predict"))


def model_probs(run_dir: Path, images: list[np.ndarray]) -> np.ndarray:
    """The run's model on images preprocessed one by one, independently of predict's batching."""
    model = load_run_model(run_dir).model
    inputs = np.stack(
        [preprocess(image, IMAGE_SIZE, NORMALIZATION, "bicubic").numpy() for image in images]
    )
    return np.asarray(model.predict(inputs, verbose=0))


def test_predict_paths_reproduces_the_runs_stored_test_predictions(tiny: TinyRun) -> None:
    stored = np.load(tiny.run_dir / "predictions.npz")
    result = predict_paths(tiny.run_dir, tiny.test_paths, batch_size=3)
    assert result.probs.shape == (len(tiny.test_paths), len(CLASS_NAMES))
    np.testing.assert_allclose(
        result.probs, stored["test_probs"][stored["test_indices"]], atol=1e-5
    )
    assert [p.index for p in result.predictions] == list(range(len(tiny.test_paths)))
    assert result.errors == []
    for prediction, row in zip(result.predictions, result.probs, strict=True):
        order = np.argsort(-row)
        assert prediction.class_name == CLASS_NAMES[order[0]]
        assert prediction.probability == pytest.approx(row.max())
        assert [t.class_name for t in prediction.top] == [CLASS_NAMES[c] for c in order[:3]]
        assert (prediction.width, prediction.height) == (12, 12)
    # The predictions are not all one class: the comparison above says something.
    assert len({p.class_name for p in result.predictions}) > 1


def test_any_size_and_mode_is_converted_and_resized_as_in_training(
    tiny: TinyRun, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    wide = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (50, 30), dtype=np.uint8)
    exact = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.bmp")
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    Image.fromarray(exact).save(tmp_path / "exact.webp", lossless=True)
    paths = [tmp_path / "wide.bmp", tmp_path / "gray.png", tmp_path / "exact.webp"]
    result = predict_paths(tiny.run_dir, paths, top_k=2)
    expected = model_probs(tiny.run_dir, [wide, np.repeat(gray[..., None], 3, axis=2), exact])
    np.testing.assert_allclose(result.probs, expected, atol=1e-5)
    assert [len(p.top) for p in result.predictions] == [2, 2, 2]
    assert [(p.width, p.height) for p in result.predictions] == [(40, 24), (30, 50), (16, 16)]


PLAIN_KERAS = """
import sys
import numpy as np
import deepsight_tf.model  # registers deepsight's layers; nothing else of deepsight is used
import keras
model = keras.saving.load_model(sys.argv[1])
for name in sys.argv[2:]:
    np.save(name + ".out.npy", np.asarray(model(np.load(name + ".npy"))))
"""


def test_model_file_predicts_uint8_images_of_any_size_in_plain_keras(
    tiny: TinyRun, tmp_path: Path
) -> None:
    """model.keras holds its resize and normalisation: Keras alone, in a fresh process, turns the
    data set's uint8 images (and other sizes) into what `deepsight predict` gives for them."""
    import subprocess
    import sys

    rng = np.random.default_rng(11)
    batches = {
        "stored": tiny.x_test,  # 12 px, the data set's size; the network takes 16
        "exact": rng.integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
        "large": rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8),
    }
    for name, images in batches.items():
        np.save(tmp_path / f"{name}.npy", images)
    subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS, str(tiny.run_dir / "model.keras")]
        + [str(tmp_path / name) for name in batches],
        check=True,
        capture_output=True,
    )
    for name, images in batches.items():
        paths = []
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / f"{name}{i}.png")
            paths.append(tmp_path / f"{name}{i}.png")
        expected = predict_paths(tiny.run_dir, paths).probs
        got = np.load(tmp_path / f"{name}.out.npy")
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_the_saved_preprocessing_is_preprocess_for_every_interpolation(
    tiny: TinyRun, tmp_path: Path, interpolation: str
) -> None:
    import keras

    from deepsight_tf.model.preprocessing import Preprocessing
    from deepsight_tf.model.saving import load_classifier, save_classifier

    network = load_classifier(tiny.run_dir / "model.keras")
    path = tmp_path / "m.keras"
    save_classifier(network, path, Preprocessing(IMAGE_SIZE, interpolation, NORMALIZATION))
    model = keras.saving.load_model(path)
    for side in (SOURCE_SIZE, IMAGE_SIZE):
        images = tiny.x_test if side == SOURCE_SIZE else tiny.x_test.repeat(2, 1).repeat(2, 2)
        images = images[:, :side, :side]
        expected = network(preprocess(images, IMAGE_SIZE, NORMALIZATION, interpolation))
        np.testing.assert_allclose(model(images), expected, atol=1e-5)


def test_load_model_takes_raw_images_from_new_and_older_run_folders(
    tiny: TinyRun, tmp_path: Path
) -> None:
    """ds.load_model reads a run folder or its model.keras; a run saved before the model file
    held its preprocessing (the network alone) is wrapped with its config.json's."""
    from deepsight_tf.model.saving import load_classifier
    from deepsight_tf.serve.predict import load_model

    expected = np.load(tiny.run_dir / "predictions.npz")["test_probs"]
    for source in (tiny.run_dir, tiny.run_dir / "model.keras"):
        model = load_model(source)
        np.testing.assert_allclose(model.predict(tiny.x_test, verbose=0), expected, atol=1e-5)
    older = make_tiny_run(tmp_path, older_model_file=True)  # the same seed: the same network
    assert load_classifier(older.run_dir / "model.keras", preprocessing=True).input_shape[1:3] == (
        IMAGE_SIZE,
        IMAGE_SIZE,
    )
    model = load_model(older.run_dir)
    np.testing.assert_allclose(model.predict(tiny.x_test, verbose=0), expected, atol=1e-5)


def test_unreadable_files_are_listed_and_the_rest_predicted(tiny: TinyRun, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    paths = [tiny.test_paths[0], broken, tiny.test_paths[1]]
    result = predict_paths(tiny.run_dir, paths)
    assert [e.path for e in result.errors] == [str(broken)]
    assert "corrupt or truncated" in result.errors[0].reason
    assert np.isnan(result.probs[1]).all()
    stored = np.load(tiny.run_dir / "predictions.npz")["test_probs"]
    np.testing.assert_allclose(result.probs[[0, 2]], stored[:2], atol=1e-5)
    assert [p.index for p in result.predictions] == [0, 2]


def test_nothing_readable_is_a_data_error_naming_the_file(tiny: TinyRun, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.png"):
        predict_paths(tiny.run_dir, [broken])


def test_folders_are_walked_recursively_for_image_extensions(tmp_path: Path) -> None:
    pixel = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    for name in ("a/one.png", "a/b/two.JPG", "a/b/three.jpeg", "a/four.bmp", "a/.hidden/x.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pixel.save(tmp_path / name, format="PNG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    paths, errors = collect_images([tmp_path / "a", tmp_path / "empty", tmp_path / "missing.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "a/b/three.jpeg",
        "a/b/two.JPG",
        "a/four.bmp",
        "a/one.png",
    ]
    assert [(Path(e.path).name, e.reason) for e in errors] == [
        ("empty", "folder holds no png/jpg/jpeg/bmp/webp"),
        ("missing.png", "no such file or folder"),
    ]


def test_predict_merges_missing_inputs_into_errors(tiny: TinyRun, tmp_path: Path) -> None:
    result = predict(tiny.workspace, "tiny", [tiny.test_paths[0].parent, tmp_path / "nope.jpg"])
    assert [p.path for p in result.predictions] == [
        str(p) for p in tiny.test_paths if "cat" in str(p)
    ]
    assert [e.reason for e in result.errors] == ["no such file or folder"]


def test_run_is_resolved_by_id_or_folder_and_verified(tiny: TinyRun, tmp_path: Path) -> None:
    assert resolve_run(tiny.workspace, "tiny").run_dir == tiny.run_dir
    assert resolve_run(tiny.workspace, tiny.run_dir).run_dir == tiny.run_dir
    with pytest.raises(PrerequisiteError, match="no run 'other'"):
        resolve_run(tiny.workspace, "other")
    copy = tmp_path / "runs" / "tiny"
    copy.mkdir(parents=True)
    for item in tiny.run_dir.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    (copy / "metrics.json").write_text(json.dumps({"class_names": ["x", "y", "z"]}))
    with pytest.raises(StaleArtifactError, match=r"metrics\.json"):
        resolve_run(tiny.workspace, copy)


def test_overlay_enlarges_small_images_under_the_explain_colours() -> None:
    from matplotlib import colormaps

    from deepsight_tf.plots import HEATMAP_CMAP
    from deepsight_tf.plots.explain import OVERLAY_ALPHA

    image = np.full((32, 16, 3), 200, np.uint8)
    for level in (0.0, 1.0):
        overlay = np.asarray(overlay_image(image, np.full((4, 4), level, np.float32)))
        assert overlay.shape == (256, 128, 3)  # shorter side enlarged by 8 to reach 128 px
        colour = np.asarray(colormaps[HEATMAP_CMAP](level)[:3])
        expected = np.round(255 * ((1 - OVERLAY_ALPHA) * 200 / 255 + OVERLAY_ALPHA * colour))
        np.testing.assert_array_equal(overlay[0, 0], expected)
        assert (overlay == overlay[0, 0]).all()
    large = np.zeros((300, 200, 3), np.uint8)
    assert np.asarray(overlay_image(large, np.zeros((4, 4)))).shape == (300, 200, 3)


def test_gradcam_overlays_are_tf_keras_vis_maps_on_the_registered_layer(
    tiny: TinyRun, tmp_path: Path
) -> None:
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    paths = tiny.test_paths[:3]
    result = predict_paths(tiny.run_dir, paths, gradcam_dir=tmp_path / "cams")
    assert result.gradcam_layer == "stack3_block1_out"
    written = [Path(p.gradcam) for p in result.predictions]
    assert [p.name for p in written] == ["00000-0000.png", "00001-0001.png", "00002-0002.png"]
    model = load_run_model(tiny.run_dir).model
    inputs = preprocess(tiny.x_test[:3], IMAGE_SIZE, NORMALIZATION, "bicubic").numpy()
    classes = [p.class_index for p in result.predictions]
    # On the loaded model itself: a clone would lose fastconv, and TensorFlow's own gradient of
    # this narrow model's 1x1 stride-2 convolutions crashes oneDNN on AVX-512 CPUs.
    maps = Gradcam(model, model_modifier=ReplaceToLinear(), clone=False)(
        CategoricalScore(classes),
        inputs,
        penultimate_layer="stack3_block1_out",
        seek_penultimate_conv_layer=False,
    )
    assert np.ptp(maps) > 0.5  # the maps are not blank, so the comparison below says something
    for path, image, cam in zip(written, tiny.x_test[:3], maps, strict=True):
        overlay = np.asarray(Image.open(path)).astype(int)
        assert overlay.shape == (132, 132, 3)  # 12 px enlarged 11 times
        expected = np.asarray(overlay_image(image, cam)).astype(int)
        assert np.abs(overlay - expected).max() <= 1


def test_cli_json_and_table(tiny: TinyRun, tmp_path: Path) -> None:
    runner = CliRunner()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    base = ["--workspace", str(tiny.workspace.root)]
    out = runner.invoke(
        app, [*base, "--json", "predict", "tiny", str(tiny.test_paths[0]), str(broken)]
    )
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert "probs" not in payload
    assert [p["path"] for p in payload["predictions"]] == [str(tiny.test_paths[0])]
    assert payload["predictions"][0]["class_name"] in CLASS_NAMES
    assert len(payload["predictions"][0]["top"]) == 3
    assert payload["errors"][0]["path"] == str(broken)
    table = runner.invoke(app, [*base, "predict", "tiny", str(tiny.test_paths[0])])
    assert table.exit_code == 0, table.output
    assert "0000.png" in table.stdout
    none = runner.invoke(app, [*base, "predict", "tiny", str(broken)])
    assert none.exit_code == 3
    assert "broken.jpg" in none.output
    missing = runner.invoke(app, [*base, "predict", "nope", str(broken)])
    assert missing.exit_code == 4


@pytest.mark.slow
def test_predict_and_export_agree_with_a_trained_runs_test_predictions(tmp_path: Path) -> None:
    """The acceptance check in miniature: obtain an image folder, scrub, train, then predict on
    the very files of the test split and compare with the probabilities training stored."""
    import tensorflow as tf

    from deepsight_tf.core.settings import ObtainSettings, ScrubSettings, TrainSettings
    from deepsight_tf.core.workspace import Workspace
    from deepsight_tf.data.dataset import load_dataset
    from deepsight_tf.data.obtain import obtain
    from deepsight_tf.data.scrub import scrub
    from deepsight_tf.serve.export import export_run
    from deepsight_tf.training.loop import train

    rng = np.random.default_rng(0)
    source = tmp_path / "source"
    for split, per_class in (("train", 20), ("test", 4)):
        for c, name in enumerate(CLASS_NAMES):
            folder = source / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 100, (12, 12, 3))
                image[..., c] += 150  # each class brightens one channel: learnable at once
                Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
    ws = Workspace(tmp_path / "ws")
    obtain(ObtainSettings(source=str(source), name="tiny"), ws)
    scrub(ScrubSettings(image_size=IMAGE_SIZE, interp_sample=16), ws)
    settings = TrainSettings(
        run_id="real",
        backbone="resnet18",
        image_size=IMAGE_SIZE,
        width_multiplier=1 / 16,
        batch_size=8,
        epochs=3,
        lr=0.05,
        augment="none",
        mva=0.0,
    )
    run_dir = Path(train(settings, ws).run_dir)
    data, _ = load_dataset(ws, "tiny")
    stored = np.load(run_dir / "predictions.npz")
    paths = [source / data.test_paths[i] for i in stored["test_indices"]]
    result = predict_paths(run_dir, paths)
    np.testing.assert_allclose(result.probs, stored["test_probs"], atol=1e-5)
    exported = export_run(ws, "real", "savedmodel")
    loaded = tf.saved_model.load(exported.path)  # held: its endpoints die with it
    raw = loaded.serve_images(tf.constant(data.x_test[stored["test_indices"]]))
    np.testing.assert_allclose(raw, stored["test_probs"], atol=1e-5)
