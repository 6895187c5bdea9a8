"""What a fastai or Keras user expects: a CLI that helps, watchable training, a Python API,
test-time augmentation, an honest report, checkpoints cleaned up. Each checked by value."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from deepsight_tf import __version__
from deepsight_tf.cli import app
from deepsight_tf.core.progress import TrainingMonitor, epoch_line
from deepsight_tf.core.settings import (
    PANELS,
    ExperimentSettings,
    ExploreSettings,
    InterpretSettings,
    ObtainSettings,
    ScrubSettings,
    TrainSettings,
    flag_name,
)
from deepsight_tf.core.workspace import (
    BATCH_FIGURE,
    CHECKPOINTS_DIR,
    HISTORY_FILE,
    MODEL_FILE,
    SCHEDULE_FIGURE,
    Workspace,
)
from deepsight_tf.model.preprocessing import Preprocessing
from deepsight_tf.reporting.warnings import baselines, run_warnings
from deepsight_tf.training.history import read_history
from deepsight_tf.training.loop import train
from deepsight_tf.training.pipeline import make_eval_dataset
from deepsight_tf.training.tta import mean_of_views, predict_probs, view_weights, views

from support.separable import CLASSES, separable_npz, tiny

COMMANDS = ["obtain", "scrub", "explore", "train", "interpret", "predict", "export", "report"]


# --- the command line -----------------------------------------------------------------------


def test_version_and_completion() -> None:
    done = CliRunner().invoke(app, ["--version"])
    assert done.exit_code == 0 and done.stdout.strip() == f"deepsight {__version__}"
    help_text = CliRunner().invoke(app, ["--help"]).stdout
    assert "--install-completion" in help_text


@pytest.mark.parametrize(
    ("command", "flag", "typo", "choices"),
    [
        ("train", "--backbone", "resnet19", ["resnet18", "resnet50"]),
        ("train", "--augment", "heavy", ["none", "light", "standard", "strong"]),
        ("train", "--precision", "fp16", ["float32", "mixed_float16", "mixed_bfloat16"]),
        ("train", "--mix", "cutout", ["cutmix", "mixup"]),
        ("train", "--optimizer", "adam", ["sgd", "adamw"]),
        ("train", "--strategy", "tpu", ["mirrored", "multiworker"]),
        ("export", "--format", "tflite", ["savedmodel", "keras", "onnx"]),
    ],
)
def test_a_typo_in_a_choice_fails_while_parsing_with_the_list(
    command: str, flag: str, typo: str, choices: list[str], tmp_path: Path
) -> None:
    args = ["--workspace", str(tmp_path), command, *(["run"] if command == "export" else [])]
    done = CliRunner().invoke(app, [*args, flag, typo])
    assert done.exit_code == 2
    text = re.sub(r"\s+", " ", done.output)
    assert typo in text and all(choice in text for choice in choices)
    assert not any(tmp_path.iterdir())  # refused before anything ran


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples_and_shows_defaults(command: str) -> None:
    # Wide enough that rich keeps each option's help on one line.
    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"}).stdout
    assert "Examples:" in text and f"deepsight {command}" in text.split("Examples:")[1]
    if command == "scrub":
        assert "[default: 0.1]" in text and "Default: ScrubSettings" not in text
    if command == "train":
        assert "[default: airbench94]" in text and "[default: 4]" in text
        # A setting its backbone's recipe decides names each backbone's value instead.
        assert (
            "Default: 32 for airbench94, airbench93 and resnet9, 96 for efficientnet-lite0, "
            "64 for the other" in text
        )


TRAIN_PANELS = [
    "Options",  # the command's own: --find-lr, --help
    "Data",
    "Model",
    "Schedule",
    "Regularisation",
    "Budget and precision",
    "Checkpoints",
    "Output",
]


def help_panels(text: str) -> dict[str, list[str]]:
    """Each panel of a rich --help, in order, with the long flags it lists."""
    panels = {}
    for chunk in text.split("╭─ ")[1:]:
        title = chunk.split(" ─", 1)[0]
        panels[title] = re.findall(r"^│ (--[a-z0-9-]+)", chunk, flags=re.MULTILINE)
    return panels


def test_train_help_groups_its_options_in_the_settings_panels() -> None:
    text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).stdout
    panels = help_panels(text)
    assert list(panels) == TRAIN_PANELS
    assert panels["Options"] == ["--find-lr", "--config", "--help"]
    for flag, panel in [
        ("--dataset", "Data"),
        ("--backbone", "Model"),
        ("--lr", "Schedule"),
        ("--augment", "Regularisation"),
        ("--budget", "Budget and precision"),
        ("--precision", "Budget and precision"),
        ("--resume", "Checkpoints"),
        ("--tta", "Output"),
    ]:
        assert flag in panels[panel], (flag, panel)
    # Every option sits in the panel its setting names, once.
    listed = [flag for flags in panels.values() for flag in flags]
    for f in fields(TrainSettings):
        if f.metadata["cli"]:
            assert f.metadata["panel"] in PANELS, f.name
            assert flag_name(f.name) in panels[f.metadata["panel"]], f.name
            assert listed.count(flag_name(f.name)) == 1


@pytest.mark.parametrize(
    "cls",
    [
        ObtainSettings,
        ScrubSettings,
        ExploreSettings,
        TrainSettings,
        ExperimentSettings,
        InterpretSettings,
    ],
)
def test_every_command_line_setting_names_a_help_panel(cls: type) -> None:
    for f in fields(cls):
        assert not f.metadata["cli"] or f.metadata["panel"] in PANELS, f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS), ["experiment"]])
def test_flags_show_no_value_and_options_show_theirs(command: list[str]) -> None:
    text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "250"}).stdout
    assert "<bool>" not in text
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ --")}
    assert re.match(r"│ --help +Show this message", rows["--help"])
    if command == ["train"]:
        assert re.match(r"│ --resume +--no-resume +Continue", rows["--resume"])
        assert re.match(r"│ --epochs +<int> +Epochs", rows["--epochs"])
    if command == []:
        assert re.match(r"│ --json +Print", rows["--json"])


# --- watchable training -------------------------------------------------------------------


class Recorder(TrainingMonitor):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def estimate(self, estimate) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("estimate", estimate))

    def step(self, done, total, logs) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("step", (done, total, dict(logs))))

    def epoch(self, row) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("epoch", dict(row)))


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_the_monitor_hears_an_estimate_every_step_and_the_history_rows(
    prepared: Workspace,
) -> None:
    recorder = Recorder()
    result = train(tiny(run_id="watched", epochs=2, estimate=True), prepared, monitor=recorder)
    kinds = [kind for kind, _ in recorder.events]
    assert kinds[0] == "estimate" and kinds.count("estimate") == 1
    estimate = recorder.events[0][1]
    steps = [value for kind, value in recorder.events if kind == "step"]
    assert estimate.steps == len(steps) == steps[-1][0] == steps[-1][1]  # type: ignore[attr-defined]
    assert estimate.total_seconds > estimate.train_seconds > 0  # type: ignore[attr-defined]
    assert "training steps timed after" in estimate.measured  # type: ignore[attr-defined]
    assert all({"loss", "accuracy"} <= set(logs) for _, _, logs in steps)
    rows = [value for kind, value in recorder.events if kind == "epoch"]
    assert rows == read_history(Path(result.run_dir) / HISTORY_FILE)
    assert epoch_line(rows[0]).startswith("phase 1 epoch 1  loss ")


def test_the_cli_prints_the_estimate_and_one_line_per_epoch(prepared: Workspace) -> None:
    flags = ["--backbone", "resnet18", "--image-size", "16", "--width-multiplier", "0.0625"]
    flags += ["--batch-size", "8"]
    flags += ["--epochs", "2", "--augment", "none", "--mva", "0", "--run-id", "lines"]
    done = CliRunner().invoke(app, ["--workspace", str(prepared.root), "train", *flags])
    assert done.exit_code == 0, done.output
    lines = done.stderr.splitlines()
    assert any(line.startswith("estimate: about") for line in lines)
    history = read_history(prepared.run_dir("lines") / HISTORY_FILE)
    assert [line for line in lines if re.match(r"phase \d+ epoch ", line)] == [
        epoch_line(row) for row in history
    ]


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_a_run_draws_its_batch_and_schedule_and_drops_its_checkpoints(
    prepared: Workspace,
) -> None:
    result = train(tiny(run_id="drawn", keep_checkpoints=False), prepared)
    run_dir = Path(result.run_dir)
    manifest = prepared.verify(run_dir, "deepsight train")
    assert {BATCH_FIGURE, SCHEDULE_FIGURE} <= set(manifest.outputs)
    assert (run_dir / BATCH_FIGURE).stat().st_size > 5000
    assert not (run_dir / CHECKPOINTS_DIR).exists() and (run_dir / MODEL_FILE).is_file()
    kept = train(tiny(run_id="kept", keep_checkpoints=True), prepared)
    assert (Path(kept.run_dir) / CHECKPOINTS_DIR).is_dir()


# --- test-time augmentation -------------------------------------------------------------------


def flip_invariant_model() -> keras.Model:
    """Per-pixel colour features pooled over the image: a mirror changes nothing."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 1, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_tta_of_a_flip_invariant_model_equals_the_plain_probabilities(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    data = np.load(separable_npz(tmp_path / "rgb.npz"))
    pre = Preprocessing(16, "bicubic", lambda t: t / 127.5 - 1.0)
    ds = make_eval_dataset(
        data["x_test"], data["y_test"], np.arange(30), 3, batch_size=8, preprocessing=pre
    )
    model = flip_invariant_model()
    plain = predict_probs(model, ds)
    np.testing.assert_allclose(predict_probs(model, ds, "flip"), plain, atol=1e-6)
    # Shifts are not free for this model at the reflected border, and the views are 6.
    assert len(views("flip-shift", 16)) == 6
    # flip-x-shift: the same 6, then each shift mirrored: a mirrored vertical shift is the
    # mirrored image shifted the same way, a mirrored shift right the mirrored image shifted
    # left (reflect padding mirrors too), and none of the 4 is among the first 6.
    images = tf.constant(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), tf.float32)
    ten = [np.asarray(view(images)) for view in views("flip-x-shift", 16)]
    six = [np.asarray(view(images)) for view in views("flip-shift", 16)]
    on_mirror = [
        np.asarray(view(tf.image.flip_left_right(images))) for view in views("flip-shift", 16)
    ]
    assert len(ten) == 10
    for a, b in zip(ten[:6], six, strict=True):
        np.testing.assert_array_equal(a, b)
    for got, same in zip(ten[6:], (2, 3, 5, 4), strict=True):
        np.testing.assert_array_equal(got, on_mirror[same])
        assert not any(np.array_equal(got, view) for view in six)
    # A model that reads the left half only does change under a mirror.
    inputs = keras.Input((16, 16, 3))
    left = keras.layers.Cropping2D(((0, 0), (0, 8)))(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 1)(left))
    lopsided = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    assert not np.allclose(predict_probs(lopsided, ds, "flip"), predict_probs(lopsided, ds))


def test_flip_translate_weighs_the_unshifted_pair_as_the_four_shifted_views() -> None:
    """airbench's 6 views: the image and its mirror, then the image moved one pixel up-left
    and down-right (reflect padding), each with its mirror; weights 1/4, 1/4, then 1/8 each."""
    images = tf.constant(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), tf.float32)
    six = [np.asarray(view(images)) for view in views("flip-translate", 8)]
    padded = np.pad(np.asarray(images), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, 0:8, 0:8], padded[:, 2:10, 2:10]
    expected = [np.asarray(images), np.asarray(images)[:, :, ::-1], up_left]
    expected += [up_left[:, :, ::-1], down_right, down_right[:, :, ::-1]]
    for got, want in zip(six, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert view_weights("flip-translate") == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    per_view = [np.full((3, 2), float(i)) for i in range(6)]
    np.testing.assert_allclose(mean_of_views(per_view, "flip-translate"), [[2.0, 2.0]] * 3)


# --- the report's honesty -----------------------------------------------------------------------


def test_warnings_flag_a_collapsed_model_and_not_a_good_one() -> None:
    labels = np.repeat(np.arange(3), 100)
    good = np.eye(3)[labels] * 0.9 + 0.1 / 3
    one_class = np.tile([0.8, 0.1, 0.1], (300, 1))
    history_good = [{"epoch": 1, "loss": 0.6, "val_loss": 0.5}]
    history_bad = [{"epoch": 1, "loss": 5.0, "val_loss": 11190.0}]
    assert run_warnings(labels, good, CLASSES, [0.97, 1.0], history_good) == []
    found = run_warnings(labels, one_class, CLASSES, [0.28, 0.38], history_bad)
    assert len(found) == 3
    assert "predicts red for 100% of the test images" in found[0]
    assert "not clear of 33.3%" in found[1]
    assert "11,190" in found[2] and "ln 3" in found[2]
    base = baselines(np.array([0, 0, 0, 1]), ["a", "b"])
    assert (base.chance, base.majority, base.majority_class) == (0.5, 0.75, "a")


def test_the_report_of_a_collapsed_run_opens_with_a_warning(tmp_path: Path) -> None:
    from support.tiny_run import make_tiny_run

    run = make_tiny_run(tmp_path)
    ws = run.workspace
    good = CliRunner().invoke(
        app, ["--workspace", str(ws.root), "report", "tiny", "--n-boot", "100"]
    )
    assert good.exit_code == 0, good.output
    page = (run.run_dir / "report.html").read_text()
    assert 'id="warnings"' not in page and 'id="baselines"' in page
    predictions = dict(np.load(run.run_dir / "predictions.npz"))
    predictions["test_probs"] = np.tile([0.9, 0.05, 0.05], (len(predictions["test_probs"]), 1))
    np.savez(run.run_dir / "predictions.npz", **predictions)
    ws.write_manifest(run.run_dir, ws.read_manifest(run.run_dir, "deepsight train"))
    bad = CliRunner().invoke(
        app, ["--workspace", str(ws.root), "report", "tiny", "--n-boot", "100"]
    )
    assert bad.exit_code == 0, bad.output
    page = (run.run_dir / "report.html").read_text()
    assert 'id="warnings"' in page and "collapsed onto one class" in page


# --- the Python API, as README shows it ---------------------------------------------------------


def readme_example() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- python-api-example -->")[1].split("```python")[1].split("```")[0]
    return block


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_the_readme_python_example_runs_on_tiny_data(tmp_path: Path, monkeypatch) -> None:
    """The README's notebook example, with the data source and sizes made tiny."""
    source = separable_npz(tmp_path / "rgb.npz")
    code = readme_example()
    assert "ds.ObtainSettings()" in code  # Keras's download, here a local file instead
    code = code.replace("ds.ObtainSettings()", f"ds.ObtainSettings(source={str(source)!r})")
    code = code.replace("ScrubSettings()", "ScrubSettings(image_size=16, interp_sample=16)")
    code = code.replace(
        "TrainSettings(epochs=4)",
        "TrainSettings(backbone='resnet18', image_size=16, width_multiplier=1 / 16, "
        "batch_size=8, epochs=1, "
        "augment='none', mva=0.0)",
    )
    code = code.replace(
        "InterpretSettings(run_id=run.run_id)",
        "InterpretSettings(run_id=run.run_id, methods='gradcam', max_images=4, "
        "context_images=30, sanity_images=2, grid_per_class=1, n_boot=100)",
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    page = Path(namespace["page"].path)  # type: ignore[attr-defined]
    assert page.is_file() and page.read_text().count("<img ") > 5
    shutil.rmtree(tmp_path / "workspace")
    assert json.dumps(namespace["run"].test)  # type: ignore[attr-defined]
